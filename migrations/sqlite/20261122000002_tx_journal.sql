-- The embedded (SQLite) twin of ../20261122000002_tx_journal.sql: the Ethereum transaction
-- journal, every signed anchor transaction attempt recorded before it is broadcast. Same
-- table, columns, keys and indexes; storage differs as in 20261122000001_requests.sql
-- (16-byte BLOB ids, INTEGER microsecond timestamps, STRICT), and:
--
-- * id is AUTOINCREMENT, so like bigserial it is never reused: ordering by id is insertion
--   order, which the journal's lists promise;
-- * the u128 fee fields are TEXT holding the decimal digits (what PostgreSQL's numeric(39,0)
--   reads back as); INTEGER would overflow at 2^63 and REAL would round. The CHECK keeps
--   them to 1 to 39 digits, like numeric(39,0);
-- * chain_id, gas_limit and block_number are u64 values stored as i64, as in PostgreSQL.
CREATE TABLE eth_tx_attempt (
    id                       INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    tx_hash                  BLOB    NOT NULL UNIQUE CHECK (length(tx_hash) = 32),
    batch_id                 BLOB    NOT NULL CHECK (length(batch_id) = 16),
    chain_id                 INTEGER NOT NULL,
    wallet                   BLOB    NOT NULL CHECK (length(wallet) = 20),
    nonce                    INTEGER NOT NULL CHECK (nonce >= 0),
    root_digest              BLOB    NOT NULL CHECK (length(root_digest) = 32),
    -- wei, decimal digits
    max_fee_per_gas          TEXT    NOT NULL CHECK (
        length(max_fee_per_gas) BETWEEN 1 AND 39 AND max_fee_per_gas NOT GLOB '*[^0-9]*'),
    max_priority_fee_per_gas TEXT    NOT NULL CHECK (
        length(max_priority_fee_per_gas) BETWEEN 1 AND 39
        AND max_priority_fee_per_gas NOT GLOB '*[^0-9]*'),
    gas_limit                INTEGER NOT NULL,
    -- the signed EIP-2718 bytes, as sent with eth_sendRawTransaction
    raw_tx                   BLOB    NOT NULL,
    state                    TEXT    NOT NULL CHECK (state IN
        ('signed', 'broadcast', 'mined', 'replaced', 'dropped', 'failed')),
    block_number             INTEGER,
    created_at               INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    updated_at               INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER))
) STRICT;

-- A redelivered batch looks up its attempts.
CREATE INDEX eth_tx_attempt_batch ON eth_tx_attempt (batch_id);
-- "Every earlier attempt at this nonce" after a nonce error.
CREATE INDEX eth_tx_attempt_nonce ON eth_tx_attempt (chain_id, wallet, nonce);
-- Attempts that may still be pending, read when a worker takes the wallet lock.
CREATE INDEX eth_tx_attempt_open ON eth_tx_attempt (chain_id, wallet, nonce)
    WHERE state IN ('signed', 'broadcast');
