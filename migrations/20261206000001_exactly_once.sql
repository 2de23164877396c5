-- Exactly once under faults (issue 14): the batch lifecycle, the newest tip per stream, and a
-- commit-ordered position for the re-publish sweeper.

-- A batch is announced (its message sent to the workers) once recorded, and may fail for good
-- (its batch file is missing or corrupt): then its members move to a new batch, named here.
ALTER TABLE batch ADD COLUMN announced_at timestamptz;
ALTER TABLE batch ADD COLUMN failed_at    timestamptz;
ALTER TABLE batch ADD COLUMN failure      text;
ALTER TABLE batch ADD COLUMN replaced_by  uuid;
-- Batches recorded before this migration were announced when they were recorded.
UPDATE batch SET announced_at = created_at;

DROP INDEX batch_unanchored;
CREATE INDEX batch_unanchored ON batch (created_at) WHERE anchored_at IS NULL AND failed_at IS NULL;
CREATE INDEX batch_failed ON batch (failed_at) WHERE failed_at IS NOT NULL AND replaced_by IS NULL;

-- The newest request batched per (stream id, origin), as the reference's queue mode keeps it:
-- a request older than the tip of its stream and origin is REPLACED instead of batched. The
-- key is a 16-byte digest of the pair (sha256 of stream id, a zero byte and origin), which
-- keeps the index small and its comparisons cheap.
CREATE TABLE stream_tip (
    tip_key      uuid   PRIMARY KEY,
    request_id   uuid   NOT NULL,
    client_ts_ns bigint NOT NULL
);

-- The transaction that inserted each request. Every request inserted by a transaction older
-- than the oldest one still running is committed (or gone), so the sweeper can keep a
-- position in this order that no late commit can slip behind, whatever its created_at.
-- Existing rows take the id of this migration's transaction.
ALTER TABLE request ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX request_xid ON request (xid);
-- The sweeper no longer scans by creation time.
DROP INDEX request_created_at;

-- Integer positions of periodic jobs (the sweeper's).
CREATE TABLE job_cursor (
    name     text   PRIMARY KEY,
    position bigint NOT NULL
);

-- Replaced by job_cursor: the sweeper no longer keeps a time.
DROP TABLE job_checkpoint;
