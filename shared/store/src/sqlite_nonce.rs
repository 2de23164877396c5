//! SQLite implementation of [`NonceStore`]: one row per unexpired nonce (table `auth_nonce`,
//! `migrations/sqlite/20261122000003_auth_nonce.sql`), the twin of
//! [`PgStore`](crate::PgStore)'s.
//!
//! A claim is one statement on the store's single writer connection: SQLite runs one write
//! at a time, so of concurrent claims of one nonce (from this process or, through the
//! database's write lock, another one) exactly one inserts or takes over the row.
//! Unlike PostgreSQL's UNLOGGED table, a claim is a synced commit like every write of the
//! embedded store; a replay changes nothing and writes nothing.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{NonceStore, SqliteStore, StoreError};

/// Rows deleted per purge statement, so a purge never holds the writer for long.
const PURGE_CHUNK: i64 = 10_000;

/// Microseconds since the Unix epoch, as the embedded store keeps every timestamp.
fn to_micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

#[async_trait]
impl NonceStore for SqliteStore {
    async fn claim(&self, nonce: Uuid, expires_at: DateTime<Utc>) -> Result<bool, StoreError> {
        // A held but expired nonce is taken over; a live one returns no row (the upsert's
        // WHERE leaves it unchanged).
        let claimed = sqlx::query_scalar::<_, Uuid>(
            "INSERT INTO auth_nonce (nonce, expires_at) VALUES ($1, $2) \
             ON CONFLICT (nonce) DO UPDATE SET expires_at = excluded.expires_at \
             WHERE auth_nonce.expires_at <= $3 \
             RETURNING nonce",
        )
        .bind(nonce)
        .bind(to_micros(expires_at))
        .bind(to_micros(Utc::now()))
        .fetch_optional(self.pool())
        .await
        .map_err(SqliteStore::error)?;
        Ok(claimed.is_some())
    }

    async fn purge_expired(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut removed = 0;
        loop {
            // SQLite's `DELETE … LIMIT` needs a compile-time option; a subquery does not.
            let deleted = sqlx::query(
                "DELETE FROM auth_nonce WHERE nonce IN \
                 (SELECT nonce FROM auth_nonce WHERE expires_at <= $1 LIMIT $2)",
            )
            .bind(to_micros(now))
            .bind(PURGE_CHUNK)
            .execute(self.pool())
            .await
            .map_err(SqliteStore::error)?
            .rows_affected();
            removed += deleted;
            if deleted < PURGE_CHUNK as u64 {
                return Ok(removed);
            }
        }
    }
}
