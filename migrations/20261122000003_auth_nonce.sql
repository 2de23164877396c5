-- One-time nonces of DID-signed requests: a nonce claimed by one API instance is a replay
-- on every other one. Rows live until expires_at; the API purges expired rows periodically.
--
-- UNLOGGED: a claim writes no WAL, so it costs no disk flush on the ingest path. The price:
-- a crash of PostgreSQL (or a failover to a replica) forgets the nonces, so tokens issued
-- before it could be replayed once more within their lifetime. A replay can only repeat the
-- exact signed body, and creating a request is idempotent on its CID.
CREATE UNLOGGED TABLE auth_nonce (
    nonce      uuid        PRIMARY KEY,
    expires_at timestamptz NOT NULL
);

CREATE INDEX auth_nonce_expires_at ON auth_nonce (expires_at);
