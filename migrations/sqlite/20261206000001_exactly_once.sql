-- The embedded (SQLite) twin of ../20261206000001_exactly_once.sql. Differences:
--
-- * the sweeper's commit order is the request's rowid: the embedded store has one writer, so
--   a row is visible only after every row with a lower rowid committed, and none is
--   inserted with a lower rowid later. No column is needed.
-- * keys and ids are 16-byte BLOBs, timestamps INTEGER microseconds, as elsewhere.
ALTER TABLE batch ADD COLUMN announced_at INTEGER;
ALTER TABLE batch ADD COLUMN failed_at    INTEGER;
ALTER TABLE batch ADD COLUMN failure      TEXT;
ALTER TABLE batch ADD COLUMN replaced_by  BLOB;
UPDATE batch SET announced_at = created_at;

DROP INDEX batch_unanchored;
CREATE INDEX batch_unanchored ON batch (created_at) WHERE anchored_at IS NULL AND failed_at IS NULL;
CREATE INDEX batch_failed ON batch (failed_at) WHERE failed_at IS NOT NULL AND replaced_by IS NULL;

CREATE TABLE stream_tip (
    tip_key      BLOB    NOT NULL PRIMARY KEY CHECK (length(tip_key) = 16),
    request_id   BLOB    NOT NULL,
    client_ts_ns INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

DROP INDEX request_created_at;

CREATE TABLE job_cursor (
    name     TEXT    NOT NULL PRIMARY KEY,
    position INTEGER NOT NULL
) STRICT;

-- Replaced by job_cursor: the sweeper no longer keeps a time.
DROP TABLE job_checkpoint;
