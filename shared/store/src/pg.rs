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
    AnchorRecord, InsertOutcome, NewRequest, RequestRecord, RequestStore, StoreError, messages,
};

/// The migrations in `migrations/`, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

const SELECT_REQUEST: &str = "SELECT r.id, r.cid, r.stream_id, r.origin, r.client_ts_ns, r.status, \
     r.message, r.created_at, r.updated_at, a.batch_id, a.leaf_index, a.path, a.commit_cid, \
     a.proof_cid, a.created_at AS anchored_at \
     FROM request r LEFT JOIN anchor a ON a.request_id = r.id";

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

fn record_from_row(row: &PgRow) -> Result<RequestRecord, StoreError> {
    let code: i16 = row.try_get("status")?;
    let stored_status = RequestStatus::from_code(code)
        .ok_or_else(|| StoreError::Internal(format!("unknown status code {code}")))?;
    let id: Uuid = row.try_get("id")?;
    let anchor = match row.try_get::<Option<Uuid>, _>("batch_id")? {
        Some(batch_id) => Some(AnchorRecord {
            request_id: id,
            batch_id,
            leaf_index: row.try_get("leaf_index")?,
            path: row.try_get("path")?,
            commit_cid: row.try_get("commit_cid")?,
            proof_cid: row.try_get("proof_cid")?,
            created_at: row.try_get("anchored_at")?,
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

    async fn insert_anchors(&self, anchors: &[AnchorRecord]) -> Result<u64, StoreError> {
        if anchors.is_empty() {
            return Ok(0);
        }
        let request_ids: Vec<Uuid> = anchors.iter().map(|a| a.request_id).collect();
        let batch_ids: Vec<Uuid> = anchors.iter().map(|a| a.batch_id).collect();
        let leaf_indexes: Vec<i32> = anchors.iter().map(|a| a.leaf_index).collect();
        let paths: Vec<&str> = anchors.iter().map(|a| a.path.as_str()).collect();
        let commits: Vec<&str> = anchors.iter().map(|a| a.commit_cid.as_str()).collect();
        let proofs: Vec<&str> = anchors.iter().map(|a| a.proof_cid.as_str()).collect();
        let created: Vec<DateTime<Utc>> = anchors.iter().map(|a| a.created_at).collect();
        let result = sqlx::query(
            "INSERT INTO anchor (request_id, batch_id, leaf_index, path, commit_cid, proof_cid, created_at) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::int[], $4::text[], $5::text[], $6::text[], $7::timestamptz[]) \
             ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(&request_ids)
        .bind(&batch_ids)
        .bind(&leaf_indexes)
        .bind(&paths)
        .bind(&commits)
        .bind(&proofs)
        .bind(&created)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
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
