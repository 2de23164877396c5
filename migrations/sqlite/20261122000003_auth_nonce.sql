-- The embedded (SQLite) twin of ../20261122000003_auth_nonce.sql: one-time nonces of
-- DID-signed requests, each row living until expires_at (INTEGER microseconds since the Unix
-- epoch); the API purges expired rows periodically.
--
-- PostgreSQL keeps this table UNLOGGED so a claim costs no disk flush. SQLite has no such
-- table option: a claim is an ordinary commit through the store's single writer (synced,
-- like every commit of the embedded store), and the nonces survive a crash.
--
-- WITHOUT ROWID: the nonce is the only key the table needs.
CREATE TABLE auth_nonce (
    nonce      BLOB    NOT NULL PRIMARY KEY CHECK (length(nonce) = 16),
    expires_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE INDEX auth_nonce_expires_at ON auth_nonce (expires_at);
