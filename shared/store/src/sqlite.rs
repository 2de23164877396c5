//! SQLite implementation of [`RequestStore`]: the embedded store of `cas dev` and of tests
//! that need no database server.
//!
//! It mirrors [`PgStore`](crate::PgStore): the same tables and keys (schema in
//! `migrations/sqlite/`) and the same statements wherever SQLite allows. PostgreSQL's array
//! parameters (`UNNEST($1::uuid[]) WITH ORDINALITY`, `= ANY($1)`) become one JSON array
//! parameter read with `json_each` (whose `key` is the element's position), so a statement
//! binds a fixed, small number of parameters whatever the number of rows, and SQLite's limit
//! on bound parameters never applies. Large inputs are still cut into chunks of
//! [`CHUNK`] elements, inside one transaction, to bound the size of one statement.
//!
//! SQLite has a single writer. Every write goes through a pool of exactly one connection,
//! so concurrent writers (the group committer's workers, the scheduler) queue in the pool
//! instead of failing with `SQLITE_BUSY`, and multi-statement writes start with
//! `BEGIN IMMEDIATE` so they take the write lock up front (waiting up to the busy timeout if
//! another process holds it) rather than failing when upgrading a read transaction. Reads
//! use a separate small pool of read-only connections; in WAL mode they neither wait for
//! the writer nor block it.
//!
//! Two places differ from PgStore by design:
//! - `insert_requests` reads the requests that exist already (first from a read
//!   connection, so a re-POST of a stored request never waits for the writer, then again
//!   under the write lock) and inserts the rest, instead of inserting with `RETURNING`:
//!   rows come back only for requests that exist, which the caller needs anyway.
//! - Batch locks are held in memory: an embedded database serves one process, so
//!   `try_lock_batch` excludes the holders within this process (across clones of one
//!   store), not other processes opening the same file.

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    path::Path,
    str::FromStr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use async_trait::async_trait;
use cas_core::{ClientTimestamp, RequestStatus};
use chrono::{DateTime, Utc};
use sqlx::{
    Row,
    migrate::Migrator,
    sqlite::{
        SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
        SqliteRow, SqliteSynchronous,
    },
};
use uuid::Uuid;

use crate::{
    AnchorRecord, AnchoredBatch, BatchLock, BatchRecord, InsertOutcome, NewBatch, NewRequest,
    RequestRecord, RequestStore, StoreError, SweepPosition, TipClaim, TipClaims, UnbatchedPage,
    messages, sqlite_lifecycle,
};

/// The migrations in `migrations/sqlite/`, embedded at build time.
pub static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("../../migrations/sqlite");

/// Most elements in one JSON array parameter (the same chunk size PgStore uses for arrays).
const CHUNK: usize = 65_536;
/// Connections of the read pool.
const READERS: u32 = 4;
/// How long a statement waits for a lock held by another connection (another process, or
/// a WAL checkpoint) before failing with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller waits for a pooled connection; writers queue here behind each other.
/// Recording a batch of 2^20 members holds the writer for a few seconds.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// The request columns and their anchor, as PgStore selects them.
macro_rules! select_request {
    () => {
        "SELECT r.id, r.cid, r.stream_id, r.origin, r.client_ts_ns, r.status, \
         r.message, r.created_at, r.updated_at, m.batch_id, m.leaf_index, b.anchored_at \
         FROM request r \
         LEFT JOIN batch_member m ON m.request_id = r.id \
         LEFT JOIN batch b ON b.id = m.batch_id AND b.anchored_at IS NOT NULL"
    };
}

/// Requests stored in an SQLite database file (or in memory).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Exactly one connection: SQLite has one writer.
    writer: SqlitePool,
    /// Read-only connections (the writer's pool itself for an in-memory database).
    reader: SqlitePool,
    /// Batches whose processing lock is held in this process.
    batch_locks: Arc<Mutex<HashSet<Uuid>>>,
}

impl SqliteStore {
    /// Open the database file at `path`, creating it (and its parent directories) if
    /// missing, and apply every pending migration.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await.map_err(|e| {
                StoreError::Internal(format!(
                    "cannot create the directory {} for the SQLite database: {e}",
                    dir.display()
                ))
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let writer_options = options
            .clone()
            .create_if_missing(true)
            // WAL: readers and the writer do not block each other, and a commit appends to
            // the log instead of rewriting pages through a rollback journal.
            .journal_mode(SqliteJournalMode::Wal)
            // FULL, not NORMAL: with NORMAL a WAL commit is only written to the OS, so it
            // survives a crash of this process but not a power loss or kernel crash, which
            // could lose requests already answered 201. FULL syncs the log on every commit,
            // like PostgreSQL's default `synchronous_commit`; group commit amortizes that
            // sync over every request of a statement.
            .synchronous(SqliteSynchronous::Full);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(writer_options)
            .await
            .map_err(|e| {
                with_context(
                    sqlite_error(e),
                    format_args!("cannot open the SQLite database {}", path.display()),
                )
            })?;
        // Opened once the writer has created the file and switched it to WAL (a property of
        // the file); `query_only` makes any write through them an error.
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options.pragma("query_only", "ON"));
        let store = Self {
            writer,
            reader,
            batch_locks: Arc::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// A private, migrated in-memory database, for tests. It lives on a single connection
    /// (reads and writes share it) and disappears with the store.
    pub async fn open_in_memory() -> Result<Self, StoreError> {
        // `sqlite::memory:` names a fresh database per call.
        let options = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(sqlite_error)?
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        // The database exists only as long as a connection to it: keep exactly one, forever.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(sqlite_error)?;
        let store = Self {
            writer: pool.clone(),
            reader: pool,
            batch_locks: Arc::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The writer's pool (one connection).
    pub fn pool(&self) -> &SqlitePool {
        &self.writer
    }

    /// Close every connection, waiting for the ones in use to be returned. Closing the last
    /// connection checkpoints the write-ahead log into the database file.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    /// Apply every pending migration.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        SQLITE_MIGRATOR
            .run(&self.writer)
            .await
            .map_err(|e| StoreError::Internal(format!("migration failed: {e}")))
    }

    /// Fail unless every migration this build knows is applied.
    pub async fn check_migrated(&self) -> Result<(), StoreError> {
        let has_table: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sqlite_schema \
             WHERE type = 'table' AND name = '_sqlx_migrations')",
        )
        .fetch_one(&self.reader)
        .await
        .map_err(sqlite_error)?;
        if !has_table {
            return Err(StoreError::NotMigrated("no migrations applied".to_owned()));
        }
        let applied: Vec<i64> = sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(sqlite_error)?;
        let missing: Vec<i64> = SQLITE_MIGRATOR
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

    /// Start a write transaction holding the write lock from its first statement.
    pub(crate) async fn begin_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(sqlite_error)
    }

    /// The read-only pool (the writer's own pool for an in-memory database), for the other
    /// boundaries this store implements (`sqlite_journal`, `sqlite_nonce`).
    pub(crate) fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    /// How this store classifies an SQLite error, for the other boundaries it implements.
    pub(crate) fn error(err: sqlx::Error) -> StoreError {
        sqlite_error(err)
    }
}

// SQLite primary result codes (the low byte of an extended code) after which the same call
// may succeed later: contention, exhausted memory or disk, failing I/O.
// https://www.sqlite.org/rescode.html
const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;
const SQLITE_NOMEM: i32 = 7;
const SQLITE_IOERR: i32 = 10;
const SQLITE_FULL: i32 = 13;
const SQLITE_CANTOPEN: i32 = 14;
const SQLITE_PROTOCOL: i32 = 15;

/// Like `StoreError::from`, and SQLite's transient failures are [`StoreError::Unavailable`].
pub(crate) fn sqlite_error(err: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &err {
        let primary = db
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .map(|code| code & 0xff);
        if matches!(
            primary,
            Some(
                SQLITE_BUSY
                    | SQLITE_LOCKED
                    | SQLITE_NOMEM
                    | SQLITE_IOERR
                    | SQLITE_FULL
                    | SQLITE_CANTOPEN
                    | SQLITE_PROTOCOL
            )
        ) {
            return StoreError::Unavailable(err.to_string());
        }
    }
    err.into()
}

fn with_context(err: StoreError, context: std::fmt::Arguments<'_>) -> StoreError {
    match err {
        StoreError::Unavailable(m) => StoreError::Unavailable(format!("{context}: {m}")),
        StoreError::Internal(m) => StoreError::Internal(format!("{context}: {m}")),
        StoreError::Conflict(m) => StoreError::Conflict(format!("{context}: {m}")),
        StoreError::NotMigrated(m) => StoreError::NotMigrated(format!("{context}: {m}")),
        StoreError::LockLost(m) => StoreError::LockLost(format!("{context}: {m}")),
    }
}

/// Timestamps are stored as microseconds since the Unix epoch. Like PostgreSQL's
/// `timestamptz`, this drops nanoseconds (toward the past).
pub(crate) fn to_micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

pub(crate) fn from_micros(micros: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| StoreError::Internal(format!("timestamp {micros} is out of range")))
}

/// Append `s` as a JSON string.
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Append a UUID as a JSON string of 32 hex digits (`unhex` turns it into its 16 bytes).
fn push_json_uuid(out: &mut String, id: Uuid) {
    let mut buf = [0u8; uuid::fmt::Simple::LENGTH];
    out.push('"');
    out.push_str(id.simple().encode_lower(&mut buf));
    out.push('"');
}

/// `["<hex>", …]`, for `SELECT unhex(value) FROM json_each($1)`.
pub(crate) fn json_uuids(ids: &[Uuid]) -> String {
    let mut out = String::with_capacity(2 + ids.len() * (uuid::fmt::Simple::LENGTH + 3));
    out.push('[');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_uuid(&mut out, *id);
    }
    out.push(']');
    out
}

/// `["<text>", …]`, for `SELECT value FROM json_each($1)`.
fn json_strings(items: &[&str]) -> String {
    let mut out = String::with_capacity(2 + items.iter().map(|s| s.len() + 3).sum::<usize>());
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(&mut out, item);
    }
    out.push(']');
    out
}

/// `[[id, cid, stream_id, origin, client_ts_ns, created_at], …]`, for the insert.
fn json_requests(requests: &[&NewRequest]) -> String {
    let mut out = String::with_capacity(2 + requests.len() * 256);
    out.push('[');
    for (i, r) in requests.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('[');
        push_json_uuid(&mut out, r.id);
        out.push(',');
        push_json_string(&mut out, &r.cid);
        out.push(',');
        push_json_string(&mut out, &r.stream_id);
        out.push(',');
        push_json_string(&mut out, &r.origin);
        let _ = write!(
            out,
            ",{},{}]",
            r.timestamp.unix_nanos(),
            to_micros(r.created_at)
        );
    }
    out.push(']');
    out
}

pub(crate) fn record_from_row(row: &SqliteRow) -> Result<RequestRecord, StoreError> {
    let code: i16 = row.try_get("status").map_err(sqlite_error)?;
    let stored_status = RequestStatus::from_code(code)
        .ok_or_else(|| StoreError::Internal(format!("unknown status code {code}")))?;
    let anchored_at: Option<i64> = row.try_get("anchored_at").map_err(sqlite_error)?;
    let anchor = match anchored_at {
        Some(anchored_at) => Some(AnchorRecord {
            batch_id: row.try_get("batch_id").map_err(sqlite_error)?,
            leaf_index: row.try_get("leaf_index").map_err(sqlite_error)?,
            anchored_at: from_micros(anchored_at)?,
        }),
        None => None,
    };
    Ok(RequestRecord {
        id: row.try_get("id").map_err(sqlite_error)?,
        cid: row.try_get("cid").map_err(sqlite_error)?,
        stream_id: row.try_get("stream_id").map_err(sqlite_error)?,
        origin: row.try_get("origin").map_err(sqlite_error)?,
        timestamp: ClientTimestamp::from_unix_nanos(
            row.try_get("client_ts_ns").map_err(sqlite_error)?,
        ),
        stored_status,
        stored_message: row.try_get("message").map_err(sqlite_error)?,
        created_at: from_micros(row.try_get("created_at").map_err(sqlite_error)?)?,
        updated_at: from_micros(row.try_get("updated_at").map_err(sqlite_error)?)?,
        anchor,
    })
}

/// Add the stored requests among `cids` to `found`, keyed by CID.
async fn find_requests(
    conn: &mut SqliteConnection,
    cids: &[&str],
    found: &mut HashMap<String, RequestRecord>,
) -> Result<(), StoreError> {
    for chunk in cids.chunks(CHUNK) {
        let rows = sqlx::query(concat!(
            select_request!(),
            " WHERE r.cid IN (SELECT value FROM json_each($1))"
        ))
        .bind(json_strings(chunk))
        .fetch_all(&mut *conn)
        .await
        .map_err(sqlite_error)?;
        for row in &rows {
            let record = record_from_row(row)?;
            found.insert(record.cid.clone(), record);
        }
    }
    Ok(())
}

/// The answer to `insert_requests`, in input order: what existed before the call is
/// `Existing`; the rest was created by this call, by the first request for its CID.
fn outcomes(
    requests: &[NewRequest],
    first_by_cid: &HashMap<&str, usize>,
    existing: &HashMap<String, RequestRecord>,
) -> Vec<InsertOutcome> {
    requests
        .iter()
        .enumerate()
        .map(|(i, r)| match existing.get(&r.cid) {
            Some(record) => InsertOutcome::Existing(record.clone()),
            None => {
                let first = first_by_cid[r.cid.as_str()];
                let record = RequestRecord::pending(&requests[first]);
                if first == i {
                    InsertOutcome::Created(record)
                } else {
                    InsertOutcome::Existing(record)
                }
            }
        })
        .collect()
}

#[async_trait]
impl RequestStore for SqliteStore {
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

        let cids: Vec<&str> = candidates.iter().map(|r| r.cid.as_str()).collect();
        let mut existing: HashMap<String, RequestRecord> = HashMap::new();
        {
            // Re-POSTs of stored requests (how ceramic-one polls) are answered from a read
            // connection, without waiting for the writer.
            let mut conn = self.reader.acquire().await.map_err(sqlite_error)?;
            find_requests(&mut conn, &cids, &mut existing).await?;
        }
        if existing.len() == candidates.len() {
            return Ok(outcomes(requests, &first_by_cid, &existing));
        }

        // Under the write lock nothing else inserts, so the rows found now are exactly the
        // ones the insert will skip. Reading them before inserting (instead of PgStore's
        // `RETURNING cid` of the inserted rows) sends rows back only for requests that exist.
        // One transaction: one sync of the log per call.
        let mut tx = self.begin_write().await?;
        let missing: Vec<&str> = cids
            .iter()
            .copied()
            .filter(|cid| !existing.contains_key(*cid))
            .collect();
        find_requests(&mut tx, &missing, &mut existing).await?;
        let new: Vec<&NewRequest> = candidates
            .iter()
            .copied()
            .filter(|r| !existing.contains_key(&r.cid))
            .collect();
        for chunk in new.chunks(CHUNK) {
            let inserted = sqlx::query(
                "INSERT INTO request (id, cid, stream_id, origin, client_ts_ns, status, message, created_at, updated_at) \
                 SELECT unhex(t.value ->> 0), t.value ->> 1, t.value ->> 2, t.value ->> 3, \
                        t.value ->> 4, 0, $2, t.value ->> 5, t.value ->> 5 \
                 FROM json_each($1) AS t \
                 WHERE true \
                 ON CONFLICT (cid) DO NOTHING",
            )
            .bind(json_requests(chunk))
            .bind(messages::PENDING)
            .execute(&mut *tx)
            .await
            .map_err(sqlite_error)?
            .rows_affected();
            if inserted != chunk.len() as u64 {
                return Err(StoreError::Internal(format!(
                    "inserted {inserted} of {} new requests while holding the write lock",
                    chunk.len()
                )));
            }
        }
        tx.commit().await.map_err(sqlite_error)?;
        Ok(outcomes(requests, &first_by_cid, &existing))
    }

    async fn get_request(&self, cid: &str) -> Result<Option<RequestRecord>, StoreError> {
        let row = sqlx::query(concat!(select_request!(), " WHERE r.cid = $1"))
            .bind(cid)
            .fetch_optional(&self.reader)
            .await
            .map_err(sqlite_error)?;
        row.as_ref().map(record_from_row).transpose()
    }

    async fn get_requests(&self, cids: &[String]) -> Result<Vec<RequestRecord>, StoreError> {
        let cids: Vec<&str> = cids.iter().map(String::as_str).collect();
        let mut found = HashMap::with_capacity(cids.len());
        let mut conn = self.reader.acquire().await.map_err(sqlite_error)?;
        find_requests(&mut conn, &cids, &mut found).await?;
        Ok(found.into_values().collect())
    }

    async fn unbatched_pending(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
        let mut found = Vec::new();
        for chunk in ids.chunks(CHUNK) {
            let rows: Vec<Uuid> = sqlx::query_scalar(
                "SELECT r.id FROM request r \
                 WHERE r.id IN (SELECT unhex(value) FROM json_each($1)) AND r.status = 0 \
                   AND NOT EXISTS (SELECT 1 FROM batch_member m WHERE m.request_id = r.id)",
            )
            .bind(json_uuids(chunk))
            .fetch_all(&self.reader)
            .await
            .map_err(sqlite_error)?;
            found.extend(rows);
        }
        Ok(found)
    }

    async fn create_batch(&self, batch: &NewBatch) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let created = sqlx::query(
            "INSERT INTO batch (id, request_count, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(batch.id)
        .bind(batch.members.len() as i32)
        .bind(to_micros(batch.created_at))
        .execute(&mut *tx)
        .await
        .map_err(sqlite_error)?
        .rows_affected();
        if created == 0 {
            tx.rollback().await.map_err(sqlite_error)?;
            return Ok(false);
        }
        for (chunk_index, chunk) in batch.members.chunks(CHUNK).enumerate() {
            let first_leaf = (chunk_index * CHUNK) as i64;
            let inserted = sqlx::query(
                "INSERT INTO batch_member (request_id, batch_id, leaf_index) \
                 SELECT unhex(t.value), $2, $3 + t.key \
                 FROM json_each($1) AS t \
                 WHERE true \
                 ON CONFLICT (request_id) DO NOTHING",
            )
            .bind(json_uuids(chunk))
            .bind(batch.id)
            .bind(first_leaf)
            .execute(&mut *tx)
            .await
            .map_err(sqlite_error)?
            .rows_affected();
            if inserted != chunk.len() as u64 {
                tx.rollback().await.map_err(sqlite_error)?;
                return Err(StoreError::Conflict(format!(
                    "{} of the members of batch {} already belong to a batch",
                    chunk.len() as u64 - inserted,
                    batch.id
                )));
            }
        }
        tx.commit().await.map_err(sqlite_error)?;
        Ok(true)
    }

    async fn get_batch(&self, id: Uuid) -> Result<Option<BatchRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, request_count, created_at, root_cid, proof_cid, tx_hash, chain_id, anchored_at, \
                 announced_at, failure, replaced_by \
             FROM batch WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.reader)
        .await
        .map_err(sqlite_error)?;
        let Some(row) = row else { return Ok(None) };
        let text = |column: &str| -> Result<String, StoreError> {
            Ok(row
                .try_get::<Option<String>, _>(column)
                .map_err(sqlite_error)?
                .unwrap_or_default())
        };
        let anchored = match row
            .try_get::<Option<i64>, _>("anchored_at")
            .map_err(sqlite_error)?
        {
            Some(anchored_at) => Some(AnchoredBatch {
                root_cid: text("root_cid")?,
                proof_cid: text("proof_cid")?,
                tx_hash: text("tx_hash")?,
                chain_id: text("chain_id")?,
                anchored_at: from_micros(anchored_at)?,
            }),
            None => None,
        };
        Ok(Some(BatchRecord {
            id: row.try_get("id").map_err(sqlite_error)?,
            request_count: row.try_get("request_count").map_err(sqlite_error)?,
            created_at: from_micros(row.try_get("created_at").map_err(sqlite_error)?)?,
            announced_at: sqlite_lifecycle::optional_time(
                row.try_get("announced_at").map_err(sqlite_error)?,
            )?,
            anchored,
            failed: row.try_get("failure").map_err(sqlite_error)?,
            replaced_by: row.try_get("replaced_by").map_err(sqlite_error)?,
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
        .bind(to_micros(anchored.anchored_at))
        .execute(&self.writer)
        .await
        .map_err(sqlite_error)?
        .rows_affected();
        Ok(updated == 1)
    }

    async fn unanchored_batches(
        &self,
        before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Uuid>, StoreError> {
        sqlite_lifecycle::unanchored_batches(self, before, limit).await
    }

    async fn mark_batch_announced(&self, id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError> {
        sqlite_lifecycle::mark_batch_announced(self, id, at).await
    }

    async fn unannounced_batches(
        &self,
        before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Uuid>, StoreError> {
        sqlite_lifecycle::unannounced_batches(self, before, limit).await
    }

    async fn fail_batch(&self, id: Uuid, reason: &str) -> Result<bool, StoreError> {
        sqlite_lifecycle::fail_batch(self, id, reason).await
    }

    async fn failed_batches(&self, limit: i64) -> Result<Vec<Uuid>, StoreError> {
        sqlite_lifecycle::failed_batches(self, limit).await
    }

    async fn batch_members(&self, id: Uuid) -> Result<Vec<(Uuid, String)>, StoreError> {
        sqlite_lifecycle::batch_members(self, id).await
    }

    async fn rebatch(&self, from: Uuid, to: &NewBatch) -> Result<bool, StoreError> {
        sqlite_lifecycle::rebatch(self, from, to).await
    }

    async fn reopen_batch(&self, id: Uuid) -> Result<bool, StoreError> {
        sqlite_lifecycle::reopen_batch(self, id).await
    }

    async fn claim_tips(&self, claims: &[TipClaim]) -> Result<TipClaims, StoreError> {
        sqlite_lifecycle::claim_tips(self, claims).await
    }

    async fn unbatched_after(
        &self,
        after: SweepPosition,
        limit: i64,
    ) -> Result<UnbatchedPage, StoreError> {
        sqlite_lifecycle::unbatched_after(self, after, limit).await
    }

    async fn cursor(&self, name: &str) -> Result<Option<i64>, StoreError> {
        sqlite_lifecycle::cursor(self, name).await
    }

    async fn set_cursor(&self, name: &str, position: i64) -> Result<(), StoreError> {
        sqlite_lifecycle::set_cursor(self, name, position).await
    }

    async fn replace_requests(&self, ids: &[Uuid], at: DateTime<Utc>) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin_write().await?;
        let mut replaced = 0;
        for chunk in ids.chunks(CHUNK) {
            replaced += sqlx::query(
                "UPDATE request SET status = 5, updated_at = $2 \
                 WHERE id IN (SELECT unhex(value) FROM json_each($1)) AND status = 0 \
                   AND NOT EXISTS (SELECT 1 FROM batch_member m WHERE m.request_id = request.id)",
            )
            .bind(json_uuids(chunk))
            .bind(to_micros(at))
            .execute(&mut *tx)
            .await
            .map_err(sqlite_error)?
            .rows_affected();
        }
        tx.commit().await.map_err(sqlite_error)?;
        Ok(replaced)
    }

    async fn try_lock_batch(&self, id: Uuid) -> Result<Option<BatchLock>, StoreError> {
        // The embedded store serves a single process, so the lock lives in memory (shared by
        // the clones of this store). It is released when the guard is dropped, or with the
        // process.
        let newly_taken = self
            .batch_locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id);
        Ok(newly_taken.then(|| {
            BatchLock::new(HeldBatchLock {
                locks: Arc::clone(&self.batch_locks),
                id,
            })
        }))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(sqlite_error)?;
        Ok(())
    }
}

/// Holds one batch's in-process lock; dropping it releases the lock.
struct HeldBatchLock {
    locks: Arc<Mutex<HashSet<Uuid>>>,
    id: Uuid,
}

impl Drop for HeldBatchLock {
    fn drop(&mut self) {
        self.locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        push_json_string(&mut out, "a\"b\\c\nd\u{1}é😀");
        assert_eq!(out, r#""a\"b\\c\u000ad\u0001é😀""#);
    }

    #[test]
    fn uuids_become_hex_strings() {
        let id = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(
            json_uuids(&[id, id]),
            r#"["0123456789abcdef0123456789abcdef","0123456789abcdef0123456789abcdef"]"#
        );
        assert_eq!(json_uuids(&[]), "[]");
    }

    #[test]
    fn timestamps_keep_microseconds() {
        let at = DateTime::from_timestamp(1_795_309_818, 716_123_999).unwrap();
        let back = from_micros(to_micros(at)).unwrap();
        assert_eq!(
            back,
            DateTime::from_timestamp(1_795_309_818, 716_123_000).unwrap()
        );
    }

    #[test]
    fn errors_outside_the_database_keep_their_class() {
        assert!(sqlite_error(sqlx::Error::PoolTimedOut).is_retryable());
        assert!(!sqlite_error(sqlx::Error::Protocol("unexpected".into())).is_retryable());
    }
}
