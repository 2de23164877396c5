//! PostgreSQL implementation of [`RequestStore`].

use std::{collections::HashMap, time::Duration};

use async_trait::async_trait;
use cas_core::{ClientTimestamp, RequestStatus};
use chrono::{DateTime, Utc};
use sqlx::{
    PgPool, Row,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions, PgRow},
};
use uuid::Uuid;

use crate::{
    AnchorRecord, AnchoredBatch, BatchLock, BatchRecord, InsertOutcome, NewBatch, NewRequest,
    RequestRecord, RequestStore, StoreError, SweepPosition, TipClaim, TipClaims, UnbatchedPage,
    messages, pg_lifecycle,
};

/// The migrations in `migrations/`, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

const SELECT_REQUEST: &str = "SELECT r.id, r.cid, r.stream_id, r.origin, r.client_ts_ns, r.status, \
     r.message, r.created_at, r.updated_at, m.batch_id, m.leaf_index, b.anchored_at \
     FROM request r \
     LEFT JOIN batch_member m ON m.request_id = r.id \
     LEFT JOIN batch b ON b.id = m.batch_id AND b.anchored_at IS NOT NULL";

/// PostgreSQL's SQLSTATE for a unique key violation.
const UNIQUE_VIOLATION: &str = "23505";

/// Write a batch's members (`request_id`, `batch_id`, `leaf_index` = position) with a binary
/// `COPY`; returns the rows written.
async fn copy_members(conn: &mut sqlx::PgConnection, batch: &NewBatch) -> Result<u64, sqlx::Error> {
    // The binary COPY format: a signature, flags and an empty header extension, then per
    // row the field count and each field as a length and its bytes, then -1.
    const ROW: usize = 2 + (4 + 16) + (4 + 16) + (4 + 4);
    let mut copy = conn
        .copy_in_raw(
            "COPY batch_member (request_id, batch_id, leaf_index) FROM STDIN (FORMAT binary)",
        )
        .await?;
    // In request id order (UUIDv7: the order requests were stored), so that the key index
    // of batch_member grows at its end instead of at random places: a 2^20 COPY took about
    // 2.7 s in leaf (CID) order on the benchmark machine.
    let mut rows: Vec<(Uuid, i32)> = batch
        .members
        .iter()
        .enumerate()
        .map(|(leaf, id)| (*id, leaf as i32))
        .collect();
    rows.sort_unstable();
    let mut buffer = Vec::with_capacity(19 + ROW * batch.members.len().min(65_536));
    buffer.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    buffer.extend_from_slice(&0i32.to_be_bytes());
    buffer.extend_from_slice(&0i32.to_be_bytes());
    for (member, leaf) in &rows {
        buffer.extend_from_slice(&3i16.to_be_bytes());
        buffer.extend_from_slice(&16i32.to_be_bytes());
        buffer.extend_from_slice(member.as_bytes());
        buffer.extend_from_slice(&16i32.to_be_bytes());
        buffer.extend_from_slice(batch.id.as_bytes());
        buffer.extend_from_slice(&4i32.to_be_bytes());
        buffer.extend_from_slice(&leaf.to_be_bytes());
        if buffer.len() >= ROW * 65_536 {
            copy.send(std::mem::take(&mut buffer)).await?;
        }
    }
    buffer.extend_from_slice(&(-1i16).to_be_bytes());
    copy.send(buffer).await?;
    copy.finish().await
}

/// Requests stored in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connect lazily with a bounded pool. `acquire_timeout` bounds how long a request waits
    /// for a connection before the API answers 503.
    pub fn connect_lazy(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e: sqlx::Error| StoreError::Internal(format!("invalid database url: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .min_connections(0)
            .acquire_timeout(acquire_timeout)
            .connect_lazy_with(options);
        Ok(Self { pool })
    }

    /// Wrap an existing pool.
    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Apply every pending migration.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Internal(format!("migration failed: {e}")))
    }

    /// Fail unless every migration this build knows is applied.
    pub async fn check_migrated(&self) -> Result<(), StoreError> {
        let applied: Vec<i64> = match sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&self.pool)
        .await
        {
            Ok(v) => v,
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => {
                return Err(StoreError::NotMigrated("no migrations applied".to_owned()));
            }
            Err(e) => return Err(e.into()),
        };
        let missing: Vec<i64> = MIGRATOR
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .map(|m| m.version)
            .filter(|v| !applied.contains(v))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(StoreError::NotMigrated(format!(
                "missing migrations {missing:?}"
            )))
        }
    }
}

pub(crate) fn record_from_row(row: &PgRow) -> Result<RequestRecord, StoreError> {
    let code: i16 = row.try_get("status")?;
    let stored_status = RequestStatus::from_code(code)
        .ok_or_else(|| StoreError::Internal(format!("unknown status code {code}")))?;
    let id: Uuid = row.try_get("id")?;
    let anchored_at: Option<DateTime<Utc>> = row.try_get("anchored_at")?;
    let anchor = match anchored_at {
        Some(anchored_at) => Some(AnchorRecord {
            batch_id: row.try_get("batch_id")?,
            leaf_index: row.try_get("leaf_index")?,
            anchored_at,
        }),
        None => None,
    };
    Ok(RequestRecord {
        id,
        cid: row.try_get("cid")?,
        stream_id: row.try_get("stream_id")?,
        origin: row.try_get("origin")?,
        timestamp: ClientTimestamp::from_unix_nanos(row.try_get("client_ts_ns")?),
        stored_status,
        stored_message: row.try_get("message")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        anchor,
    })
}

#[async_trait]
impl RequestStore for PgStore {
    async fn insert_requests(
        &self,
        requests: &[NewRequest],
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        // Only the first request for a CID in this call is a candidate for insertion.
        let mut first_by_cid: HashMap<&str, usize> = HashMap::with_capacity(requests.len());
        for (i, r) in requests.iter().enumerate() {
            first_by_cid.entry(r.cid.as_str()).or_insert(i);
        }
        let candidates: Vec<&NewRequest> = requests
            .iter()
            .enumerate()
            .filter(|(i, r)| first_by_cid[r.cid.as_str()] == *i)
            .map(|(_, r)| r)
            .collect();
        let ids: Vec<Uuid> = candidates.iter().map(|r| r.id).collect();
        let cids: Vec<&str> = candidates.iter().map(|r| r.cid.as_str()).collect();
        let streams: Vec<&str> = candidates.iter().map(|r| r.stream_id.as_str()).collect();
        let origins: Vec<&str> = candidates.iter().map(|r| r.origin.as_str()).collect();
        let stamps: Vec<i64> = candidates
            .iter()
            .map(|r| r.timestamp.unix_nanos())
            .collect();
        let created: Vec<DateTime<Utc>> = candidates.iter().map(|r| r.created_at).collect();

        let inserted: Vec<String> = sqlx::query_scalar(
            "INSERT INTO request (id, cid, stream_id, origin, client_ts_ns, status, message, created_at, updated_at) \
             SELECT t.id, t.cid, t.stream_id, t.origin, t.ts, 0, $7, t.created_at, t.created_at \
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::timestamptz[]) \
                  AS t(id, cid, stream_id, origin, ts, created_at) \
             ON CONFLICT (cid) DO NOTHING \
             RETURNING cid",
        )
        .bind(&ids)
        .bind(&cids)
        .bind(&streams)
        .bind(&origins)
        .bind(&stamps)
        .bind(&created)
        .bind(messages::PENDING)
        .fetch_all(&self.pool)
        .await?;

        let inserted: std::collections::HashSet<String> = inserted.into_iter().collect();
        let existing_cids: Vec<&str> = cids
            .iter()
            .copied()
            .filter(|c| !inserted.contains(*c))
            .collect();
        let mut existing: HashMap<String, RequestRecord> = HashMap::new();
        if !existing_cids.is_empty() {
            let sql = const_format_select_any();
            let rows = sqlx::query(sql)
                .bind(&existing_cids)
                .fetch_all(&self.pool)
                .await?;
            for row in &rows {
                let record = record_from_row(row)?;
                existing.insert(record.cid.clone(), record);
            }
        }

        requests
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let first = first_by_cid[r.cid.as_str()];
                if inserted.contains(&r.cid) {
                    let record = RequestRecord::pending(&requests[first]);
                    Ok(if first == i {
                        InsertOutcome::Created(record)
                    } else {
                        InsertOutcome::Existing(record)
                    })
                } else {
                    existing
                        .get(&r.cid)
                        .cloned()
                        .map(InsertOutcome::Existing)
                        .ok_or_else(|| {
                            StoreError::Internal(format!(
                                "request {} neither inserted nor found",
                                r.cid
                            ))
                        })
                }
            })
            .collect()
    }

    async fn get_request(&self, cid: &str) -> Result<Option<RequestRecord>, StoreError> {
        let row = sqlx::query(const_format_select_one())
            .bind(cid)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(record_from_row).transpose()
    }

    async fn get_requests(&self, cids: &[String]) -> Result<Vec<RequestRecord>, StoreError> {
        if cids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(const_format_select_any())
            .bind(cids)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(record_from_row).collect()
    }

    async fn unbatched_pending(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_scalar(
            "SELECT r.id FROM request r \
             WHERE r.id = ANY($1::uuid[]) AND r.status = 0 \
               AND NOT EXISTS (SELECT 1 FROM batch_member m WHERE m.request_id = r.id)",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn create_batch(&self, batch: &NewBatch) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let created = sqlx::query(
            "INSERT INTO batch (id, request_count, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(batch.id)
        .bind(batch.members.len() as i32)
        .bind(batch.created_at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if created == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        // Binary COPY: several times faster than a multi-row insert for 2^20 members (the
        // largest part of a batch close before). A member already in a batch violates the
        // key, which fails the COPY and with it the transaction: nothing is changed.
        let copied = copy_members(&mut tx, batch).await;
        match copied {
            Ok(rows) if rows == batch.members.len() as u64 => {}
            Ok(rows) => {
                tx.rollback().await?;
                return Err(StoreError::Internal(format!(
                    "copied {rows} of the {} members of batch {}",
                    batch.members.len(),
                    batch.id
                )));
            }
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(UNIQUE_VIOLATION) => {
                tx.rollback().await?;
                return Err(StoreError::Conflict(format!(
                    "a member of batch {} already belongs to a batch",
                    batch.id
                )));
            }
            Err(e) => return Err(e.into()),
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn get_batch(&self, id: Uuid) -> Result<Option<BatchRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, request_count, created_at, root_cid, proof_cid, tx_hash, chain_id, anchored_at, \
                 announced_at, failure, replaced_by \
             FROM batch WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let text = |column: &str| -> Result<String, StoreError> {
            Ok(row
                .try_get::<Option<String>, _>(column)?
                .unwrap_or_default())
        };
        let anchored = match row.try_get::<Option<DateTime<Utc>>, _>("anchored_at")? {
            Some(anchored_at) => Some(AnchoredBatch {
                root_cid: text("root_cid")?,
                proof_cid: text("proof_cid")?,
                tx_hash: text("tx_hash")?,
                chain_id: text("chain_id")?,
                anchored_at,
            }),
            None => None,
        };
        Ok(Some(BatchRecord {
            id: row.try_get("id")?,
            request_count: row.try_get("request_count")?,
            created_at: row.try_get("created_at")?,
            announced_at: row.try_get("announced_at")?,
            anchored,
            failed: row.try_get("failure")?,
            replaced_by: row.try_get("replaced_by")?,
        }))
    }

    async fn mark_batch_anchored(
        &self,
        id: Uuid,
        anchored: &AnchoredBatch,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE batch SET root_cid = $2, proof_cid = $3, tx_hash = $4, chain_id = $5, anchored_at = $6 \
             WHERE id = $1 AND anchored_at IS NULL",
        )
        .bind(id)
        .bind(&anchored.root_cid)
        .bind(&anchored.proof_cid)
        .bind(&anchored.tx_hash)
        .bind(&anchored.chain_id)
        .bind(anchored.anchored_at)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(updated == 1)
    }

    async fn unanchored_batches(
        &self,
        before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Uuid>, StoreError> {
        pg_lifecycle::unanchored_batches(&self.pool, before, limit).await
    }

    async fn mark_batch_announced(&self, id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError> {
        pg_lifecycle::mark_batch_announced(&self.pool, id, at).await
    }

    async fn unannounced_batches(
        &self,
        before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Uuid>, StoreError> {
        pg_lifecycle::unannounced_batches(&self.pool, before, limit).await
    }

    async fn fail_batch(&self, id: Uuid, reason: &str) -> Result<bool, StoreError> {
        pg_lifecycle::fail_batch(&self.pool, id, reason).await
    }

    async fn failed_batches(&self, limit: i64) -> Result<Vec<Uuid>, StoreError> {
        pg_lifecycle::failed_batches(&self.pool, limit).await
    }

    async fn batch_members(&self, id: Uuid) -> Result<Vec<(Uuid, String)>, StoreError> {
        pg_lifecycle::batch_members(&self.pool, id).await
    }

    async fn rebatch(&self, from: Uuid, to: &NewBatch) -> Result<bool, StoreError> {
        pg_lifecycle::rebatch(&self.pool, from, to).await
    }

    async fn reopen_batch(&self, id: Uuid) -> Result<bool, StoreError> {
        pg_lifecycle::reopen_batch(&self.pool, id).await
    }

    async fn claim_tips(&self, claims: &[TipClaim]) -> Result<TipClaims, StoreError> {
        pg_lifecycle::claim_tips(&self.pool, claims).await
    }

    async fn unbatched_after(
        &self,
        after: SweepPosition,
        limit: i64,
    ) -> Result<UnbatchedPage, StoreError> {
        pg_lifecycle::unbatched_after(&self.pool, after, limit).await
    }

    async fn cursor(&self, name: &str) -> Result<Option<i64>, StoreError> {
        pg_lifecycle::cursor(&self.pool, name).await
    }

    async fn set_cursor(&self, name: &str, position: i64) -> Result<(), StoreError> {
        pg_lifecycle::set_cursor(&self.pool, name, position).await
    }

    async fn replace_requests(&self, ids: &[Uuid], at: DateTime<Utc>) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        Ok(sqlx::query(
            "UPDATE request r SET status = 5, updated_at = $2 \
             WHERE r.id = ANY($1::uuid[]) AND r.status = 0 \
               AND NOT EXISTS (SELECT 1 FROM batch_member m WHERE m.request_id = r.id)",
        )
        .bind(ids)
        .bind(at)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn try_lock_batch(&self, id: Uuid) -> Result<Option<BatchLock>, StoreError> {
        // A transaction-scoped advisory lock: it is released when the transaction ends,
        // which happens when the guard (holding the open transaction) is dropped, or when the
        // connection dies with its process.
        let mut tx = self.pool.begin().await?;
        let (hi, lo) = id.as_u64_pair();
        let key = (hi ^ lo) as i64;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
        if locked {
            Ok(Some(BatchLock::new(tx)))
        } else {
            tx.rollback().await?;
            Ok(None)
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

fn const_format_select_one() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| format!("{SELECT_REQUEST} WHERE r.cid = $1"))
}

fn const_format_select_any() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| format!("{SELECT_REQUEST} WHERE r.cid = ANY($1::text[])"))
}
