//! SQLite twins of [`pg_lifecycle`](crate::pg_lifecycle)'s statements: the batch lifecycle
//! beyond recording and anchoring, the stream tips, and the sweeper's commit-ordered scan
//! (by rowid: with one writer, a row is visible only once every row with a lower rowid is
//! committed). [`SqliteStore`]'s `RequestStore` methods call these.

use std::{collections::HashSet, fmt::Write as _};

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use crate::{
    NewBatch, SqliteStore, StoreError, SweepPosition, TipClaim, TipClaims, UnbatchedPage,
    sqlite::{from_micros, record_from_row, sqlite_error, to_micros},
};

/// Claims per statement (one JSON array parameter each).
const CHUNK: usize = 65_536;

pub(crate) async fn mark_batch_announced(
    store: &SqliteStore,
    id: Uuid,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE batch SET announced_at = $2 WHERE id = $1")
        .bind(id)
        .bind(to_micros(at))
        .execute(store.pool())
        .await
        .map_err(sqlite_error)?;
    Ok(())
}

pub(crate) async fn unannounced_batches(
    store: &SqliteStore,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Uuid>, StoreError> {
    sqlx::query_scalar(
        "SELECT id FROM batch WHERE anchored_at IS NULL AND failed_at IS NULL \
           AND announced_at IS NULL AND created_at < $1 \
         ORDER BY created_at LIMIT $2",
    )
    .bind(to_micros(before))
    .bind(limit)
    .fetch_all(store.reader())
    .await
    .map_err(sqlite_error)
}

pub(crate) async fn unanchored_batches(
    store: &SqliteStore,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Uuid>, StoreError> {
    sqlx::query_scalar(
        "SELECT id FROM batch WHERE anchored_at IS NULL AND failed_at IS NULL \
           AND created_at < $1 AND coalesce(announced_at, created_at) < $1 \
         ORDER BY created_at LIMIT $2",
    )
    .bind(to_micros(before))
    .bind(limit)
    .fetch_all(store.reader())
    .await
    .map_err(sqlite_error)
}

pub(crate) async fn fail_batch(
    store: &SqliteStore,
    id: Uuid,
    reason: &str,
) -> Result<bool, StoreError> {
    let updated = sqlx::query(
        "UPDATE batch SET failed_at = $3, failure = $2 \
         WHERE id = $1 AND anchored_at IS NULL AND failed_at IS NULL",
    )
    .bind(id)
    .bind(reason)
    .bind(to_micros(Utc::now()))
    .execute(store.pool())
    .await
    .map_err(sqlite_error)?
    .rows_affected();
    Ok(updated == 1)
}

pub(crate) async fn failed_batches(
    store: &SqliteStore,
    limit: i64,
) -> Result<Vec<Uuid>, StoreError> {
    sqlx::query_scalar(
        "SELECT id FROM batch WHERE failed_at IS NOT NULL AND replaced_by IS NULL \
         ORDER BY failed_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(store.reader())
    .await
    .map_err(sqlite_error)
}

pub(crate) async fn batch_members(
    store: &SqliteStore,
    id: Uuid,
) -> Result<Vec<(Uuid, String)>, StoreError> {
    sqlx::query_as(
        "SELECT m.request_id, r.cid FROM batch_member m JOIN request r ON r.id = m.request_id \
         WHERE m.batch_id = $1 ORDER BY m.leaf_index",
    )
    .bind(id)
    .fetch_all(store.reader())
    .await
    .map_err(sqlite_error)
}

pub(crate) async fn rebatch(
    store: &SqliteStore,
    from: Uuid,
    to: &NewBatch,
) -> Result<bool, StoreError> {
    let mut tx = store.begin_write().await?;
    let claimed = sqlx::query(
        "UPDATE batch SET replaced_by = $2 \
         WHERE id = $1 AND failed_at IS NOT NULL AND replaced_by IS NULL",
    )
    .bind(from)
    .bind(to.id)
    .execute(&mut *tx)
    .await
    .map_err(sqlite_error)?
    .rows_affected();
    if claimed == 0 {
        tx.rollback().await.map_err(sqlite_error)?;
        return Ok(false);
    }
    sqlx::query("INSERT INTO batch (id, request_count, created_at) VALUES ($1, $2, $3)")
        .bind(to.id)
        .bind(to.members.len() as i32)
        .bind(to_micros(to.created_at))
        .execute(&mut *tx)
        .await
        .map_err(sqlite_error)?;
    let moved = sqlx::query("UPDATE batch_member SET batch_id = $2 WHERE batch_id = $1")
        .bind(from)
        .bind(to.id)
        .execute(&mut *tx)
        .await
        .map_err(sqlite_error)?
        .rows_affected();
    if moved != to.members.len() as u64 {
        tx.rollback().await.map_err(sqlite_error)?;
        return Err(StoreError::Conflict(format!(
            "batch {from} has {moved} members, the new batch {} lists {}",
            to.id,
            to.members.len()
        )));
    }
    tx.commit().await.map_err(sqlite_error)?;
    Ok(true)
}

pub(crate) async fn reopen_batch(store: &SqliteStore, id: Uuid) -> Result<bool, StoreError> {
    let updated = sqlx::query(
        "UPDATE batch SET root_cid = NULL, proof_cid = NULL, tx_hash = NULL, chain_id = NULL, \
             anchored_at = NULL, announced_at = $2 \
         WHERE id = $1 AND anchored_at IS NOT NULL",
    )
    .bind(id)
    .bind(to_micros(Utc::now()))
    .execute(store.pool())
    .await
    .map_err(sqlite_error)?
    .rows_affected();
    Ok(updated == 1)
}

/// `[["<key hex>", "<request id hex>", client_ts_ns], …]`.
fn json_claims(claims: &[TipClaim]) -> String {
    let mut out = String::with_capacity(2 + claims.len() * 96);
    out.push('[');
    for (i, claim) in claims.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "[\"{}\",\"{}\",{}]",
            claim.key.simple(),
            claim.request_id.simple(),
            claim.timestamp.unix_nanos()
        );
    }
    out.push(']');
    out
}

pub(crate) async fn claim_tips(
    store: &SqliteStore,
    claims: &[TipClaim],
) -> Result<TipClaims, StoreError> {
    // One writer: the claims of one call are decided together, after every earlier writer's.
    let mut tx = store.begin_write().await?;
    let mut outcome = TipClaims::default();
    for chunk in claims.chunks(CHUNK) {
        let json = json_claims(chunk);
        let live: Vec<Uuid> = sqlx::query_scalar(
            "SELECT r.id FROM json_each($1) AS t JOIN request r ON r.id = unhex(t.value ->> 1) \
             WHERE r.status = 0 \
               AND NOT EXISTS (SELECT 1 FROM batch_member m WHERE m.request_id = r.id)",
        )
        .bind(&json)
        .fetch_all(&mut *tx)
        .await
        .map_err(sqlite_error)?;
        let live: HashSet<Uuid> = live.into_iter().collect();
        let live_claims: Vec<TipClaim> = chunk
            .iter()
            .filter(|c| live.contains(&c.request_id))
            .copied()
            .collect();
        outcome.gone.extend(
            chunk
                .iter()
                .map(|c| c.request_id)
                .filter(|id| !live.contains(id)),
        );
        let won: Vec<Uuid> = sqlx::query_scalar(
            "INSERT INTO stream_tip AS tip (tip_key, request_id, client_ts_ns) \
             SELECT unhex(t.value ->> 0), unhex(t.value ->> 1), t.value ->> 2 \
             FROM json_each($1) AS t WHERE true \
             ON CONFLICT (tip_key) DO UPDATE \
                 SET request_id = excluded.request_id, client_ts_ns = excluded.client_ts_ns \
                 WHERE tip.client_ts_ns <= excluded.client_ts_ns \
                    OR tip.request_id = excluded.request_id \
             RETURNING request_id",
        )
        .bind(json_claims(&live_claims))
        .fetch_all(&mut *tx)
        .await
        .map_err(sqlite_error)?;
        let won: HashSet<Uuid> = won.into_iter().collect();
        outcome.outdated.extend(
            live_claims
                .iter()
                .map(|c| c.request_id)
                .filter(|id| !won.contains(id)),
        );
    }
    tx.commit().await.map_err(sqlite_error)?;
    Ok(outcome)
}

pub(crate) async fn unbatched_after(
    store: &SqliteStore,
    after: SweepPosition,
    limit: i64,
) -> Result<UnbatchedPage, StoreError> {
    // One writer: every row with a rowid up to the largest visible one is committed, and a
    // row committed later gets a larger rowid.
    let newest: Option<i64> = sqlx::query_scalar("SELECT max(rowid) FROM request")
        .fetch_one(store.reader())
        .await
        .map_err(sqlite_error)?;
    let horizon = newest.map_or(1, |n| n + 1);
    let rows = sqlx::query(
        "SELECT r.rowid AS position, r.id, r.cid, r.stream_id, r.origin, r.client_ts_ns, \
             r.status, r.message, r.created_at, r.updated_at, \
             NULL AS batch_id, NULL AS leaf_index, NULL AS anchored_at \
         FROM request r \
         WHERE r.rowid >= $1 AND r.rowid < $3 AND (r.rowid > $1 OR r.id > $2) \
           AND r.status = 0 \
           AND NOT EXISTS (SELECT 1 FROM batch_member m WHERE m.request_id = r.id) \
         ORDER BY r.rowid LIMIT $4",
    )
    .bind(after.position)
    .bind(after.id)
    .bind(horizon)
    .bind(limit)
    .fetch_all(store.reader())
    .await
    .map_err(sqlite_error)?;
    let rows = rows
        .iter()
        .map(|row| {
            let record = record_from_row(row)?;
            let position: i64 = row.try_get("position").map_err(sqlite_error)?;
            Ok((
                SweepPosition {
                    position,
                    id: record.id,
                },
                record,
            ))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(UnbatchedPage { rows, horizon })
}

pub(crate) async fn cursor(store: &SqliteStore, name: &str) -> Result<Option<i64>, StoreError> {
    sqlx::query_scalar("SELECT position FROM job_cursor WHERE name = $1")
        .bind(name)
        .fetch_optional(store.reader())
        .await
        .map_err(sqlite_error)
}

pub(crate) async fn set_cursor(
    store: &SqliteStore,
    name: &str,
    position: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO job_cursor (name, position) VALUES ($1, $2) \
         ON CONFLICT (name) DO UPDATE SET position = excluded.position",
    )
    .bind(name)
    .bind(position)
    .execute(store.pool())
    .await
    .map_err(sqlite_error)?;
    Ok(())
}

/// A stored time, for [`crate::sqlite`]'s batch reads.
pub(crate) fn optional_time(micros: Option<i64>) -> Result<Option<DateTime<Utc>>, StoreError> {
    micros.map(from_micros).transpose()
}
