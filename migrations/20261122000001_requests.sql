-- Anchor requests, keyed by the canonical string of the anchored CID (the idempotency key).
--
-- Status is stored only for states the API writes (PENDING, REPLACED); COMPLETED is derived
-- from the presence of an anchor row, so anchoring a batch never rewrites request rows.
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

-- The re-publish sweeper reads old PENDING rows; REPLACED looks up (stream, origin).
CREATE INDEX request_pending_created_at ON request (created_at) WHERE status = 0;
CREATE INDEX request_stream_origin ON request (stream_id, origin);

-- One row per anchored request, written insert-only by the worker. The first anchor of a
-- request wins (request_id is the key), as in the reference.
CREATE TABLE anchor (
    request_id  uuid        PRIMARY KEY REFERENCES request (id),
    batch_id    uuid        NOT NULL,
    leaf_index  integer     NOT NULL,
    path        text        NOT NULL,
    commit_cid  text        NOT NULL,
    proof_cid   text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX anchor_batch ON anchor (batch_id);
