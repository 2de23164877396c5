-- The embedded (SQLite) twin of ../20261122000001_requests.sql: the same tables, columns
-- and keys, so SqliteStore can mirror PgStore's queries. Differences are in storage only:
--
-- * ids are 16-byte BLOBs (how sqlx encodes a Uuid for SQLite);
-- * timestamps are INTEGER microseconds since the Unix epoch (timestamptz also keeps
--   microseconds), so they compare and sort as numbers;
-- * tables are STRICT, so a value of the wrong type is an error rather than stored as is;
-- * batch_member is WITHOUT ROWID: its key is the only index it needs, which halves the
--   B-tree work of recording a batch of 2^20 members.
--
-- Status is stored only for states written per request (PENDING = 0, REPLACED = 5).
-- COMPLETED is derived: a request is completed when it is a member of an anchored batch.
CREATE TABLE request (
    id           BLOB    NOT NULL PRIMARY KEY CHECK (length(id) = 16),
    cid          TEXT    NOT NULL UNIQUE,
    stream_id    TEXT    NOT NULL,
    origin       TEXT    NOT NULL,
    -- The client's own timestamp, Unix nanoseconds (ceramic-one sends nanoseconds).
    client_ts_ns INTEGER NOT NULL,
    status       INTEGER NOT NULL DEFAULT 0,
    message      TEXT    NOT NULL,
    created_at   INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    updated_at   INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER))
) STRICT;

-- The re-publish sweeper scans requests by creation time from a checkpoint.
CREATE INDEX request_created_at ON request (created_at);

-- One row per batch. The anchor fields are filled once, when the batch is anchored.
CREATE TABLE batch (
    id            BLOB    NOT NULL PRIMARY KEY CHECK (length(id) = 16),
    request_count INTEGER NOT NULL,
    created_at    INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    root_cid      TEXT,
    proof_cid     TEXT,
    tx_hash       TEXT,
    chain_id      TEXT,
    anchored_at   INTEGER
) STRICT;

CREATE INDEX batch_unanchored ON batch (created_at) WHERE anchored_at IS NULL;

-- Batch membership, written insert-only when the scheduler closes a batch. The key makes a
-- request a member of at most one batch, so redelivered ingest messages cannot put it in a
-- second one. leaf_index is the request's position among the batch's sorted leaves.
CREATE TABLE batch_member (
    request_id BLOB    NOT NULL PRIMARY KEY,
    batch_id   BLOB    NOT NULL,
    leaf_index INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

-- Checkpoints of periodic jobs (the re-publish sweeper).
CREATE TABLE job_checkpoint (
    name       TEXT    NOT NULL PRIMARY KEY,
    checkpoint INTEGER NOT NULL
) STRICT;
