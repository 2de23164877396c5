-- Anchor requests, keyed by the canonical string of the anchored CID (the idempotency key).
--
-- Status is stored only for states written per request (PENDING, REPLACED). COMPLETED is
-- derived: a request is completed when it is a member of an anchored batch. Anchoring a
-- batch therefore updates one batch row, never the request rows.
CREATE TABLE request (
    id           uuid        PRIMARY KEY,
    cid          text        NOT NULL UNIQUE,
    stream_id    text        NOT NULL,
    origin       text        NOT NULL,
    -- The client's own timestamp, Unix nanoseconds (ceramic-one sends nanoseconds).
    client_ts_ns bigint      NOT NULL,
    status       smallint    NOT NULL DEFAULT 0,
    message      text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- The re-publish sweeper scans requests by creation time from a checkpoint.
CREATE INDEX request_created_at ON request (created_at);

-- One row per batch. The anchor fields are filled once, when the batch is anchored.
CREATE TABLE batch (
    id            uuid        PRIMARY KEY,
    request_count integer     NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    root_cid      text,
    proof_cid     text,
    tx_hash       text,
    chain_id      text,
    anchored_at   timestamptz
);

CREATE INDEX batch_unanchored ON batch (created_at) WHERE anchored_at IS NULL;

-- Batch membership, written insert-only when the scheduler closes a batch. The key makes a
-- request a member of at most one batch, so redelivered ingest messages cannot put it in a
-- second one. leaf_index is the request's position among the batch's sorted leaves.
CREATE TABLE batch_member (
    request_id uuid    PRIMARY KEY,
    batch_id   uuid    NOT NULL,
    leaf_index integer NOT NULL
);

-- Checkpoints of periodic jobs (the re-publish sweeper).
CREATE TABLE job_checkpoint (
    name       text        PRIMARY KEY,
    checkpoint timestamptz NOT NULL
);
