//! PostgreSQL implementation of [`NonceStore`]: one row per unexpired nonce, shared by every
//! API instance (table `auth_nonce`, migration `20261122000003_auth_nonce.sql`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{NonceStore, PgStore, StoreError};

/// Rows deleted per purge statement, so a purge never holds locks for long.
const PURGE_CHUNK: i64 = 10_000;

#[async_trait]
impl NonceStore for PgStore {
    async fn claim(&self, nonce: Uuid, expires_at: DateTime<Utc>) -> Result<bool, StoreError> {
        // A held but expired nonce is taken over; a live one returns no row. Concurrent
        // claims of one nonce serialize on its primary key, so exactly one wins.
        let claimed = sqlx::query_scalar::<_, Uuid>(
            "INSERT INTO auth_nonce (nonce, expires_at) VALUES ($1, $2) \
             ON CONFLICT (nonce) DO UPDATE SET expires_at = EXCLUDED.expires_at \
             WHERE auth_nonce.expires_at <= now() \
             RETURNING nonce",
        )
        .bind(nonce)
        .bind(expires_at)
        .fetch_optional(self.pool())
        .await?;
        Ok(claimed.is_some())
    }

    async fn purge_expired(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut removed = 0;
        loop {
            let deleted = sqlx::query(
                "DELETE FROM auth_nonce WHERE nonce IN \
                 (SELECT nonce FROM auth_nonce WHERE expires_at <= $1 LIMIT $2)",
            )
            .bind(now)
            .bind(PURGE_CHUNK)
            .execute(self.pool())
            .await?
            .rows_affected();
            removed += deleted;
            if deleted < PURGE_CHUNK as u64 {
                return Ok(removed);
            }
        }
    }
}
