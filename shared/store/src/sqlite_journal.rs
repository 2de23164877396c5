//! SQLite implementation of [`TxJournal`]: the `eth_tx_attempt` table
//! (`migrations/sqlite/20261122000002_tx_journal.sql`), the twin of
//! [`PgStore`](crate::PgStore)'s, with the same statements wherever SQLite allows.
//!
//! Writes go through the store's single writer connection, so `record_attempt` is synced to
//! the file (WAL, `synchronous = FULL`) before it returns, as the contract requires before a
//! broadcast. Reads use the read pool. The `u128` fees are stored as decimal TEXT: SQLite's
//! INTEGER stops at 2^63 and REAL would round them.
//!
//! The wallet lock is held in memory, not in the database. SQLite has no advisory locks, and
//! holding a write transaction as a lock would stop every other writer. An embedded database
//! serves one process (`cas dev`), so [`LocalWalletLocks`] gives the exclusion the contract
//! asks for: the locks are shared by every [`SqliteStore`] this process has open on the same
//! database file (clones of one store, or stores opened separately), and released when the
//! guard is dropped or the process ends. Two *processes* opening the same file do not
//! exclude each other; the embedded store does not support that.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError, Weak},
    time::Duration,
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Row, Sqlite, sqlite::SqliteRow};
use uuid::Uuid;

use crate::{
    LocalWalletLocks, NewTxAttempt, SqliteStore, StoreError, TxAttempt, TxJournal, TxState,
    WalletKey, WalletLock,
};

/// The columns of a [`TxAttempt`].
macro_rules! select_attempt {
    () => {
        "SELECT batch_id, chain_id, wallet, nonce, tx_hash, root_digest, max_fee_per_gas, \
         max_priority_fee_per_gas, gas_limit, raw_tx, state, block_number, created_at, \
         updated_at FROM eth_tx_attempt "
    };
}

/// The wallet locks of the SQLite databases open in this process, by database file.
///
/// An entry lives as long as someone holds or waits for one of its locks (they keep its
/// `Arc`); when none does, no lock of that database is held and a fresh, empty set of locks
/// is equivalent, so the dead entry is removed.
static WALLET_LOCKS: Mutex<BTreeMap<PathBuf, Weak<LocalWalletLocks>>> = Mutex::new(BTreeMap::new());

/// The wallet locks shared by every store of this process on the same database as `store`.
async fn wallet_locks(store: &SqliteStore) -> Arc<LocalWalletLocks> {
    let file = store.pool().connect_options().get_filename().to_owned();
    // One file has one key whatever path opened it. An in-memory database has no file; sqlx
    // names each one uniquely, and that name is its key.
    let key = tokio::fs::canonicalize(&file).await.unwrap_or(file);
    let mut registry = WALLET_LOCKS.lock().unwrap_or_else(PoisonError::into_inner);
    registry.retain(|_, locks| locks.strong_count() > 0);
    if let Some(locks) = registry.get(&key).and_then(Weak::upgrade) {
        return locks;
    }
    let locks = Arc::new(LocalWalletLocks::new());
    registry.insert(key, Arc::downgrade(&locks));
    locks
}

/// Timestamps are microseconds since the Unix epoch, as in the rest of the embedded store.
fn to_micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn from_micros(micros: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| StoreError::Internal(format!("timestamp {micros} is out of range")))
}

fn column<'r, T>(row: &'r SqliteRow, name: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    row.try_get(name).map_err(SqliteStore::error)
}

fn fixed<const N: usize>(row: &SqliteRow, name: &str) -> Result<[u8; N], StoreError> {
    let bytes: Vec<u8> = column(row, name)?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        StoreError::Internal(format!("{name} has {} bytes, expected {N}", b.len()))
    })
}

fn wei(row: &SqliteRow, name: &str) -> Result<u128, StoreError> {
    let text: String = column(row, name)?;
    text.parse()
        .map_err(|_| StoreError::Internal(format!("{name} is not a u128: {text}")))
}

fn attempt_from_row(row: &SqliteRow) -> Result<TxAttempt, StoreError> {
    let state: String = column(row, "state")?;
    let state = TxState::parse(&state)
        .ok_or_else(|| StoreError::Internal(format!("unknown transaction state {state}")))?;
    // u64 values are stored as i64 (as PgStore stores them); `as` restores them.
    let chain_id: i64 = column(row, "chain_id")?;
    let nonce: i64 = column(row, "nonce")?;
    let gas_limit: i64 = column(row, "gas_limit")?;
    let block_number: Option<i64> = column(row, "block_number")?;
    Ok(TxAttempt {
        attempt: NewTxAttempt {
            batch_id: column(row, "batch_id")?,
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
            raw_tx: column(row, "raw_tx")?,
        },
        state,
        block_number: block_number.map(|b| b as u64),
        created_at: from_micros(column(row, "created_at")?)?,
        updated_at: from_micros(column(row, "updated_at")?)?,
    })
}

#[async_trait]
impl TxJournal for SqliteStore {
    async fn record_attempt(&self, attempt: &NewTxAttempt) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO eth_tx_attempt (tx_hash, batch_id, chain_id, wallet, nonce, root_digest, \
                 max_fee_per_gas, max_priority_fee_per_gas, gas_limit, raw_tx, state, \
                 created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'signed', $11, $11) \
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
        .bind(to_micros(Utc::now()))
        .execute(self.pool())
        .await
        .map_err(SqliteStore::error)?;
        Ok(())
    }

    async fn set_attempt_state(
        &self,
        tx_hash: &[u8; 32],
        state: TxState,
        block_number: Option<u64>,
    ) -> Result<bool, StoreError> {
        // `max`: `updated_at` never moves backwards, even if the wall clock does.
        let updated = sqlx::query(
            "UPDATE eth_tx_attempt SET state = $2, block_number = $3, \
                 updated_at = max(updated_at, $4) \
             WHERE tx_hash = $1",
        )
        .bind(&tx_hash[..])
        .bind(state.as_str())
        .bind(block_number.map(|b| b as i64))
        .bind(to_micros(Utc::now()))
        .execute(self.pool())
        .await
        .map_err(SqliteStore::error)?
        .rows_affected();
        Ok(updated == 1)
    }

    async fn batch_attempts(&self, batch_id: Uuid) -> Result<Vec<TxAttempt>, StoreError> {
        let rows = sqlx::query(concat!(
            select_attempt!(),
            "WHERE batch_id = $1 ORDER BY id"
        ))
        .bind(batch_id)
        .fetch_all(self.reader())
        .await
        .map_err(SqliteStore::error)?;
        rows.iter().map(attempt_from_row).collect()
    }

    async fn nonce_attempts(
        &self,
        wallet: &WalletKey,
        nonce: u64,
    ) -> Result<Vec<TxAttempt>, StoreError> {
        let rows = sqlx::query(concat!(
            select_attempt!(),
            "WHERE chain_id = $1 AND wallet = $2 AND nonce = $3 ORDER BY id"
        ))
        .bind(wallet.chain_id as i64)
        .bind(&wallet.address[..])
        .bind(nonce as i64)
        .fetch_all(self.reader())
        .await
        .map_err(SqliteStore::error)?;
        rows.iter().map(attempt_from_row).collect()
    }

    async fn open_attempts(&self, wallet: &WalletKey) -> Result<Vec<TxAttempt>, StoreError> {
        let rows = sqlx::query(concat!(
            select_attempt!(),
            "WHERE chain_id = $1 AND wallet = $2 AND nonce IN ( \
                 SELECT nonce FROM eth_tx_attempt \
                 WHERE chain_id = $1 AND wallet = $2 AND state IN ('signed', 'broadcast')) \
             ORDER BY nonce, id"
        ))
        .bind(wallet.chain_id as i64)
        .bind(&wallet.address[..])
        .fetch_all(self.reader())
        .await
        .map_err(SqliteStore::error)?;
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
        .fetch_one(self.reader())
        .await
        .map_err(SqliteStore::error)?;
        Ok(nonce.map(|n| n as u64))
    }

    async fn mined_attempts(
        &self,
        wallet: &WalletKey,
        limit: i64,
    ) -> Result<Vec<TxAttempt>, StoreError> {
        let rows = sqlx::query(concat!(
            select_attempt!(),
            "WHERE chain_id = $1 AND wallet = $2 AND state = 'mined' ORDER BY id DESC LIMIT $3"
        ))
        .bind(wallet.chain_id as i64)
        .bind(&wallet.address[..])
        .bind(limit)
        .fetch_all(self.reader())
        .await
        .map_err(SqliteStore::error)?;
        rows.iter().map(attempt_from_row).collect()
    }

    async fn lock_wallet(
        &self,
        wallet: &WalletKey,
        max_wait: Duration,
    ) -> Result<Option<WalletLock>, StoreError> {
        // In-process locks; see the module docs for why that is enough here. The guard keeps
        // the database's set of locks alive while it is held.
        let locks = wallet_locks(self).await;
        Ok(locks
            .lock(wallet, max_wait)
            .await
            .map(|held| WalletLock::new((held, locks))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_wallet_locks_are_per_database() {
        let one = SqliteStore::open_in_memory().await.unwrap();
        let other = SqliteStore::open_in_memory().await.unwrap();
        let w = WalletKey {
            chain_id: 1,
            address: [7; 20],
        };
        let held = one
            .lock_wallet(&w, Duration::from_secs(1))
            .await
            .unwrap()
            .expect("free");
        let clone = one.clone();
        assert!(
            clone
                .lock_wallet(&w, Duration::from_millis(50))
                .await
                .unwrap()
                .is_none(),
            "clones share the locks"
        );
        assert!(
            other
                .lock_wallet(&w, Duration::from_millis(50))
                .await
                .unwrap()
                .is_some(),
            "another database has its own"
        );
        drop(held);
        assert!(
            clone
                .lock_wallet(&w, Duration::from_millis(50))
                .await
                .unwrap()
                .is_some()
        );
    }
}
