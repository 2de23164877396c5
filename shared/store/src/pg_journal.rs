//! PostgreSQL implementation of [`TxJournal`]: the `eth_tx_attempt` table
//! (`migrations/20261122000002_tx_journal.sql`) and a transaction-scoped advisory lock per
//! wallet.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::{Row, postgres::PgRow};
use uuid::Uuid;

use crate::{
    HeldLock, NewTxAttempt, PgStore, StoreError, TxAttempt, TxJournal, TxState, WalletKey,
    WalletLock,
};

/// First key of the two-key advisory locks on wallets ("CASW"). The two-key space does not
/// overlap the one-key space of the batch locks.
const WALLET_LOCK_CLASS: i32 = 0x4341_5357;

/// PostgreSQL's SQLSTATE for "lock_not_available" (raised when `lock_timeout` expires).
const LOCK_NOT_AVAILABLE: &str = "55P03";

const SELECT_ATTEMPT: &str = "SELECT batch_id, chain_id, wallet, nonce, tx_hash, root_digest, \
     max_fee_per_gas::text AS max_fee_per_gas, \
     max_priority_fee_per_gas::text AS max_priority_fee_per_gas, \
     gas_limit, raw_tx, state, block_number, created_at, updated_at \
     FROM eth_tx_attempt";

fn fixed<const N: usize>(row: &PgRow, column: &str) -> Result<[u8; N], StoreError> {
    let bytes: Vec<u8> = row.try_get(column)?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        StoreError::Internal(format!("{column} has {} bytes, expected {N}", b.len()))
    })
}

fn wei(row: &PgRow, column: &str) -> Result<u128, StoreError> {
    let text: String = row.try_get(column)?;
    text.parse()
        .map_err(|_| StoreError::Internal(format!("{column} is not a u128: {text}")))
}

fn attempt_from_row(row: &PgRow) -> Result<TxAttempt, StoreError> {
    let state: String = row.try_get("state")?;
    let state = TxState::parse(&state)
        .ok_or_else(|| StoreError::Internal(format!("unknown transaction state {state}")))?;
    let chain_id: i64 = row.try_get("chain_id")?;
    let nonce: i64 = row.try_get("nonce")?;
    let gas_limit: i64 = row.try_get("gas_limit")?;
    let block_number: Option<i64> = row.try_get("block_number")?;
    Ok(TxAttempt {
        attempt: NewTxAttempt {
            batch_id: row.try_get("batch_id")?,
            wallet: WalletKey {
                chain_id: chain_id as u64,
                address: fixed(row, "wallet")?,
            },
            nonce: nonce as u64,
            tx_hash: fixed(row, "tx_hash")?,
            root_digest: fixed(row, "root_digest")?,
            max_fee_per_gas: wei(row, "max_fee_per_gas")?,
            max_priority_fee_per_gas: wei(row, "max_priority_fee_per_gas")?,
            gas_limit: gas_limit as u64,
            raw_tx: row.try_get("raw_tx")?,
        },
        state,
        block_number: block_number.map(|b| b as u64),
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// A wallet lock held by an open transaction: lost if its connection dies or its backend is
/// terminated, which [`HeldLock::is_held`] finds out by asking on that same connection.
struct PgAdvisoryLock {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    key: i32,
}

#[async_trait]
impl HeldLock for PgAdvisoryLock {
    async fn is_held(&mut self) -> Result<bool, StoreError> {
        // A two-key advisory lock shows in pg_locks as (classid, objid, objsubid = 2).
        let held: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
                 AND pid = pg_backend_pid() AND granted AND objsubid = 2 \
                 AND classid = ($1::int)::oid AND objid = ($2::int)::oid)",
        )
        .bind(WALLET_LOCK_CLASS)
        .bind(self.key)
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(held)
    }
}

fn select(condition: &str) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(format!("{SELECT_ATTEMPT} {condition}"))
}

#[async_trait]
impl TxJournal for PgStore {
    async fn record_attempt(&self, attempt: &NewTxAttempt) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO eth_tx_attempt (tx_hash, batch_id, chain_id, wallet, nonce, root_digest, \
                 max_fee_per_gas, max_priority_fee_per_gas, gas_limit, raw_tx, state) \
             VALUES ($1, $2, $3, $4, $5, $6, $7::numeric, $8::numeric, $9, $10, 'signed') \
             ON CONFLICT (tx_hash) DO NOTHING",
        )
        .bind(&attempt.tx_hash[..])
        .bind(attempt.batch_id)
        .bind(attempt.wallet.chain_id as i64)
        .bind(&attempt.wallet.address[..])
        .bind(attempt.nonce as i64)
        .bind(&attempt.root_digest[..])
        .bind(attempt.max_fee_per_gas.to_string())
        .bind(attempt.max_priority_fee_per_gas.to_string())
        .bind(attempt.gas_limit as i64)
        .bind(&attempt.raw_tx)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn set_attempt_state(
        &self,
        tx_hash: &[u8; 32],
        state: TxState,
        block_number: Option<u64>,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE eth_tx_attempt SET state = $2, block_number = $3, updated_at = now() \
             WHERE tx_hash = $1",
        )
        .bind(&tx_hash[..])
        .bind(state.as_str())
        .bind(block_number.map(|b| b as i64))
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(updated == 1)
    }

    async fn batch_attempts(&self, batch_id: Uuid) -> Result<Vec<TxAttempt>, StoreError> {
        let rows = sqlx::query(select("WHERE batch_id = $1 ORDER BY id"))
            .bind(batch_id)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(attempt_from_row).collect()
    }

    async fn nonce_attempts(
        &self,
        wallet: &WalletKey,
        nonce: u64,
    ) -> Result<Vec<TxAttempt>, StoreError> {
        let rows = sqlx::query(select(
            "WHERE chain_id = $1 AND wallet = $2 AND nonce = $3 ORDER BY id",
        ))
        .bind(wallet.chain_id as i64)
        .bind(&wallet.address[..])
        .bind(nonce as i64)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(attempt_from_row).collect()
    }

    async fn open_attempts(&self, wallet: &WalletKey) -> Result<Vec<TxAttempt>, StoreError> {
        let rows = sqlx::query(select(
            "WHERE chain_id = $1 AND wallet = $2 AND nonce IN ( \
                 SELECT nonce FROM eth_tx_attempt \
                 WHERE chain_id = $1 AND wallet = $2 AND state IN ('signed', 'broadcast')) \
             ORDER BY nonce, id",
        ))
        .bind(wallet.chain_id as i64)
        .bind(&wallet.address[..])
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(attempt_from_row).collect()
    }

    async fn highest_used_nonce(&self, wallet: &WalletKey) -> Result<Option<u64>, StoreError> {
        let nonce: Option<i64> = sqlx::query_scalar(
            "SELECT max(nonce) FROM eth_tx_attempt WHERE chain_id = $1 AND wallet = $2 \
               AND (state IN ('mined', 'dropped') \
                    OR (state = 'failed' AND block_number IS NOT NULL))",
        )
        .bind(wallet.chain_id as i64)
        .bind(&wallet.address[..])
        .fetch_one(self.pool())
        .await?;
        Ok(nonce.map(|n| n as u64))
    }

    async fn mined_attempts(
        &self,
        wallet: &WalletKey,
        limit: i64,
    ) -> Result<Vec<TxAttempt>, StoreError> {
        let rows = sqlx::query(select(
            "WHERE chain_id = $1 AND wallet = $2 AND state = 'mined' ORDER BY id DESC LIMIT $3",
        ))
        .bind(wallet.chain_id as i64)
        .bind(&wallet.address[..])
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(attempt_from_row).collect()
    }

    async fn lock_wallet(
        &self,
        wallet: &WalletKey,
        max_wait: Duration,
    ) -> Result<Option<WalletLock>, StoreError> {
        // A transaction-scoped advisory lock, held by the open transaction inside the guard:
        // released when the guard is dropped, or when the connection dies with its process.
        // `lock_timeout` bounds the wait (and 0 would mean "forever", hence at least 1 ms).
        let mut tx = self.pool().begin().await?;
        let wait_ms = max_wait.as_millis().clamp(1, i32::MAX as u128);
        sqlx::query("SELECT set_config('lock_timeout', $1, true)")
            .bind(format!("{wait_ms}ms"))
            .execute(&mut *tx)
            .await?;
        let locked = sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
            .bind(WALLET_LOCK_CLASS)
            .bind(wallet.lock_key())
            .execute(&mut *tx)
            .await;
        match locked {
            Ok(_) => {
                sqlx::query("SELECT set_config('lock_timeout', '0', true)")
                    .execute(&mut *tx)
                    .await?;
                Ok(Some(WalletLock::checked(PgAdvisoryLock {
                    tx,
                    key: wallet.lock_key(),
                })))
            }
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(LOCK_NOT_AVAILABLE) => {
                tx.rollback().await?;
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }
}
