-- The Ethereum transaction journal: every signed anchor transaction attempt, recorded before
-- it is broadcast, so a worker that starts (or receives a batch again) finds the transactions
-- already sent instead of sending a second anchor. See shared/store/src/journal.rs for the
-- states and their transitions, and docs/tx-manager.md for how the worker uses them.
CREATE TABLE eth_tx_attempt (
    id                       bigserial     PRIMARY KEY,
    tx_hash                  bytea         NOT NULL UNIQUE CHECK (length(tx_hash) = 32),
    batch_id                 uuid          NOT NULL,
    chain_id                 bigint        NOT NULL,
    wallet                   bytea         NOT NULL CHECK (length(wallet) = 20),
    nonce                    bigint        NOT NULL CHECK (nonce >= 0),
    root_digest              bytea         NOT NULL CHECK (length(root_digest) = 32),
    -- wei; u128 values, hence numeric (read back as text)
    max_fee_per_gas          numeric(39,0) NOT NULL,
    max_priority_fee_per_gas numeric(39,0) NOT NULL,
    gas_limit                bigint        NOT NULL,
    -- the signed EIP-2718 bytes, as sent with eth_sendRawTransaction
    raw_tx                   bytea         NOT NULL,
    state                    text          NOT NULL CHECK (state IN
        ('signed', 'broadcast', 'mined', 'replaced', 'dropped', 'failed')),
    block_number             bigint,
    created_at               timestamptz   NOT NULL DEFAULT now(),
    updated_at               timestamptz   NOT NULL DEFAULT now()
);

-- A redelivered batch looks up its attempts.
CREATE INDEX eth_tx_attempt_batch ON eth_tx_attempt (batch_id);
-- "Every earlier attempt at this nonce" after a nonce error.
CREATE INDEX eth_tx_attempt_nonce ON eth_tx_attempt (chain_id, wallet, nonce);
-- Attempts that may still be pending, read when a worker takes the wallet lock.
CREATE INDEX eth_tx_attempt_open ON eth_tx_attempt (chain_id, wallet, nonce)
    WHERE state IN ('signed', 'broadcast');
