//! PostgreSQL statements of the batch lifecycle beyond recording and anchoring (announcing,
//! failing, moving members to a new batch, reopening), of the stream tips, and of the
//! sweeper's commit-ordered scan. [`PgStore`](crate::PgStore)'s `RequestStore` methods call
//! these.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{NewBatch, StoreError, SweepPosition, TipClaim, TipClaims, UnbatchedPage};

/// Rows per statement when claiming tips (as for batch members).
const CHUNK: usize = 65_536;

pub(crate) async fn mark_batch_announced(
    pool: &PgPool,
    id: Uuid,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE batch SET announced_at = $2 WHERE id = $1")
        .bind(id)
        .bind(at)
        .execute(pool)
        .await?;
    Ok(())
}

pub(crate) async fn unannounced_batches(
    pool: &PgPool,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM batch WHERE anchored_at IS NULL AND failed_at IS NULL \
           AND announced_at IS NULL AND created_at < $1 \
         ORDER BY created_at LIMIT $2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

pub(crate) async fn unanchored_batches(
    pool: &PgPool,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM batch WHERE anchored_at IS NULL AND failed_at IS NULL \
           AND created_at < $1 AND coalesce(announced_at, created_at) < $1 \
         ORDER BY created_at LIMIT $2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

pub(crate) async fn fail_batch(pool: &PgPool, id: Uuid, reason: &str) -> Result<bool, StoreError> {
    let updated = sqlx::query(
        "UPDATE batch SET failed_at = now(), failure = $2 \
         WHERE id = $1 AND anchored_at IS NULL AND failed_at IS NULL",
    )
    .bind(id)
    .bind(reason)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

pub(crate) async fn failed_batches(pool: &PgPool, limit: i64) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM batch WHERE failed_at IS NOT NULL AND replaced_by IS NULL \
         ORDER BY failed_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

pub(crate) async fn batch_members(
    pool: &PgPool,
    id: Uuid,
) -> Result<Vec<(Uuid, String)>, StoreError> {
    // batch_member has no index on batch_id (the insert path of 2^20 members would pay for
    // it); this is read only for batches that failed, so a scan is acceptable.
    Ok(sqlx::query_as(
        "SELECT m.request_id, r.cid FROM batch_member m JOIN request r ON r.id = m.request_id \
         WHERE m.batch_id = $1 ORDER BY m.leaf_index",
    )
    .bind(id)
    .fetch_all(pool)
    .await?)
}

pub(crate) async fn rebatch(pool: &PgPool, from: Uuid, to: &NewBatch) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    let claimed = sqlx::query(
        "UPDATE batch SET replaced_by = $2 \
         WHERE id = $1 AND failed_at IS NOT NULL AND replaced_by IS NULL",
    )
    .bind(from)
    .bind(to.id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if claimed == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    sqlx::query("INSERT INTO batch (id, request_count, created_at) VALUES ($1, $2, $3)")
        .bind(to.id)
        .bind(to.members.len() as i32)
        .bind(to.created_at)
        .execute(&mut *tx)
        .await?;
    let moved = sqlx::query("UPDATE batch_member SET batch_id = $2 WHERE batch_id = $1")
        .bind(from)
        .bind(to.id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if moved != to.members.len() as u64 {
        tx.rollback().await?;
        return Err(StoreError::Conflict(format!(
            "batch {from} has {moved} members, the new batch {} lists {}",
            to.id,
            to.members.len()
        )));
    }
    tx.commit().await?;
    Ok(true)
}

pub(crate) async fn reopen_batch(pool: &PgPool, id: Uuid) -> Result<bool, StoreError> {
    let updated = sqlx::query(
        "UPDATE batch SET root_cid = NULL, proof_cid = NULL, tx_hash = NULL, chain_id = NULL, \
             anchored_at = NULL, announced_at = now() \
         WHERE id = $1 AND anchored_at IS NOT NULL",
    )
    .bind(id)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

pub(crate) async fn claim_tips(
    pool: &PgPool,
    claims: &[TipClaim],
) -> Result<TipClaims, StoreError> {
    use futures::{StreamExt as _, TryStreamExt as _};
    // In request id order (UUIDv7: the order requests were stored), so that the lookups of
    // a chunk walk the request table's index and pages in order; two chunks at a time, on
    // two connections (a close is the only writer of its pairs: each pair is claimed once).
    let mut sorted = claims.to_vec();
    sorted.sort_unstable_by_key(|c| c.request_id);
    let owned: Vec<Vec<TipClaim>> = sorted.chunks(CHUNK).map(<[TipClaim]>::to_vec).collect();
    drop(sorted);
    let chunks: Vec<TipClaims> = futures::stream::iter(owned)
        .map(|chunk| {
            let pool = pool.clone();
            async move { claim_chunk(&pool, &chunk).await }
        })
        .buffer_unordered(2)
        .try_collect()
        .await?;
    let mut outcome = TipClaims::default();
    for chunk in chunks {
        outcome.gone.extend(chunk.gone);
        outcome.outdated.extend(chunk.outdated);
    }
    Ok(outcome)
}

async fn claim_chunk(pool: &PgPool, chunk: &[TipClaim]) -> Result<TipClaims, StoreError> {
    let keys: Vec<Uuid> = chunk.iter().map(|c| c.key).collect();
    let ids: Vec<Uuid> = chunk.iter().map(|c| c.request_id).collect();
    let stamps: Vec<i64> = chunk.iter().map(|c| c.timestamp.unix_nanos()).collect();
    // One pass: which requests are still PENDING and unbatched, and for those the tip
    // claim. The upsert locks each pair's row, so concurrent claims of one pair (several
    // schedulers) are decided one after the other against the newest tip. The inserts go
    // in key order, so they walk the tip index in order.
    let rows: Vec<(Uuid, bool)> = sqlx::query_as(
        "WITH incoming AS ( \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::bigint[]) \
                 AS t(tip_key, request_id, client_ts_ns)), \
         live AS ( \
             SELECT i.* FROM incoming i JOIN request r ON r.id = i.request_id \
             WHERE r.status = 0 \
               AND NOT EXISTS (SELECT 1 FROM batch_member m WHERE m.request_id = i.request_id)), \
         claimed AS ( \
             INSERT INTO stream_tip AS tip (tip_key, request_id, client_ts_ns) \
             SELECT tip_key, request_id, client_ts_ns FROM live ORDER BY tip_key \
             ON CONFLICT (tip_key) DO UPDATE \
                 SET request_id = EXCLUDED.request_id, client_ts_ns = EXCLUDED.client_ts_ns \
                 WHERE tip.client_ts_ns <= EXCLUDED.client_ts_ns \
                    OR tip.request_id = EXCLUDED.request_id \
             RETURNING request_id) \
         SELECT request_id, true FROM claimed \
         UNION ALL SELECT request_id, false FROM live",
    )
    .bind(&keys)
    .bind(&ids)
    .bind(&stamps)
    .fetch_all(pool)
    .await?;
    let mut won = std::collections::HashSet::new();
    let mut live = std::collections::HashSet::new();
    for (id, claimed) in rows {
        if claimed {
            won.insert(id);
        } else {
            live.insert(id);
        }
    }
    Ok(TipClaims {
        gone: ids
            .iter()
            .filter(|id| !live.contains(id))
            .copied()
            .collect(),
        outdated: live
            .iter()
            .filter(|id| !won.contains(id))
            .copied()
            .collect(),
    })
}

/// The request columns of [`crate::pg`]'s reads, with the commit position.
const SELECT_UNBATCHED: &str = "SELECT r.xid::text::bigint AS position, r.id, r.cid, r.stream_id, \
     r.origin, r.client_ts_ns, r.status, r.message, r.created_at, r.updated_at, \
     NULL::uuid AS batch_id, NULL::int AS leaf_index, NULL::timestamptz AS anchored_at \
     FROM request r \
     WHERE r.xid >= $1::text::xid8 AND r.xid < $3::text::xid8 \
       AND (r.xid > $1::text::xid8 OR r.id > $2) \
       AND r.status = 0 \
       AND NOT EXISTS (SELECT 1 FROM batch_member m WHERE m.request_id = r.id) \
     ORDER BY r.xid, r.id LIMIT $4";

pub(crate) async fn unbatched_after(
    pool: &PgPool,
    after: SweepPosition,
    limit: i64,
) -> Result<UnbatchedPage, StoreError> {
    // Every transaction older than the oldest one still running has ended: a request with a
    // smaller xid is committed (visible to the next statement) or will never exist.
    let horizon: i64 =
        sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            .fetch_one(pool)
            .await?;
    let rows = sqlx::query(SELECT_UNBATCHED)
        .bind(after.position.to_string())
        .bind(after.id)
        .bind(horizon.to_string())
        .bind(limit)
        .fetch_all(pool)
        .await?;
    let rows = rows
        .iter()
        .map(|row| {
            use sqlx::Row;
            let record = crate::pg::record_from_row(row)?;
            let position: i64 = row.try_get("position")?;
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

pub(crate) async fn cursor(pool: &PgPool, name: &str) -> Result<Option<i64>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT position FROM job_cursor WHERE name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await?,
    )
}

pub(crate) async fn set_cursor(pool: &PgPool, name: &str, position: i64) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO job_cursor (name, position) VALUES ($1, $2) \
         ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position",
    )
    .bind(name)
    .bind(position)
    .execute(pool)
    .await?;
    Ok(())
}
