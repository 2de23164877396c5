//! The store conformance suite and group commit, against a real PostgreSQL.

use std::sync::Arc;

use cas_store::{RequestStore, StoreError, test_support::TestDb, testsuite};

#[tokio::test]
async fn pg_store_passes_the_conformance_suite() {
    let db = TestDb::new().await.unwrap();
    db.store.check_migrated().await.unwrap();
    testsuite::run_all(&db.store).await;
}

#[tokio::test]
async fn unmigrated_database_is_reported() {
    let db = TestDb::unmigrated().await.unwrap();
    let err = db.store.check_migrated().await.unwrap_err();
    assert!(matches!(err, StoreError::NotMigrated(_)), "{err}");
    assert!(err.to_string().contains("cas migrate"));
    db.store.migrate().await.unwrap();
    db.store.check_migrated().await.unwrap();
    // Migrating twice is a no-op.
    db.store.migrate().await.unwrap();
}

#[tokio::test]
async fn group_commit_coalesces_concurrent_inserts() {
    let db = TestDb::new().await.unwrap();
    testsuite::group_commit_coalesces_concurrent_inserts(Arc::new(db.store.clone())).await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM request")
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    assert_eq!(count, 500);
}

#[tokio::test]
async fn group_commit_creates_a_cid_once_under_concurrency() {
    let db = TestDb::new().await.unwrap();
    testsuite::group_commit_creates_a_cid_once(Arc::new(db.store.clone())).await;
}

#[tokio::test]
async fn group_reads_answer_every_caller() {
    let db = TestDb::new().await.unwrap();
    testsuite::group_reads_answer_every_caller(Arc::new(db.store.clone())).await;
}

#[tokio::test]
async fn group_commit_sheds_load_when_its_queue_is_full() {
    let db = TestDb::new().await.unwrap();
    testsuite::group_commit_sheds_load_when_its_queue_is_full(Arc::new(db.store.clone())).await;
}

#[tokio::test]
async fn unreachable_database_is_a_retryable_error() {
    // Nothing listens on port 1.
    let store = cas_store::PgStore::connect_lazy(
        "postgres://postgres@127.0.0.1:1/none",
        1,
        std::time::Duration::from_millis(500),
    )
    .unwrap();
    let err = store.ping().await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}

#[tokio::test]
async fn pg_store_passes_the_journal_conformance_suite() {
    let db = TestDb::new().await.unwrap();
    cas_store::journal_testsuite::run_all(&db.store).await;
    // The wallet lock is held by a connection: a second pool (another process) sees it.
    let w = cas_store::journal_testsuite::wallet(1);
    let other =
        cas_store::PgStore::connect_lazy(&db.url, 2, std::time::Duration::from_secs(5)).unwrap();
    use cas_store::TxJournal;
    let held = db
        .store
        .lock_wallet(&w, std::time::Duration::from_secs(1))
        .await
        .unwrap()
        .expect("lock");
    assert!(
        other
            .lock_wallet(&w, std::time::Duration::from_millis(200))
            .await
            .unwrap()
            .is_none(),
        "held across pools"
    );
    drop(held);
    assert!(
        other
            .lock_wallet(&w, std::time::Duration::from_secs(5))
            .await
            .unwrap()
            .is_some()
    );
}

/// A wallet lock dies with its connection without the holder noticing: a terminated backend
/// (an operator's `pg_terminate_backend`, a failover) releases it, another process takes it,
/// and the first holder learns it is gone the next time it checks.
#[tokio::test]
async fn a_wallet_lock_lost_with_its_backend_is_noticed_before_use() {
    use cas_store::TxJournal;
    let db = TestDb::new().await.unwrap();
    let w = cas_store::journal_testsuite::wallet(1);
    // Keys on both sides of i32's sign, since advisory keys are stored as oids.
    for address_byte in [0x01u8, 0x03] {
        let w = cas_store::WalletKey {
            address: [address_byte; 20],
            ..w
        };
        let mut held = db
            .store
            .lock_wallet(&w, std::time::Duration::from_secs(1))
            .await
            .unwrap()
            .expect("lock");
        held.ensure_held().await.expect("held");
        let holder: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2 \
             AND objid = ($1::int)::oid",
        )
        .bind(w.lock_key())
        .fetch_all(db.store.pool())
        .await
        .unwrap();
        assert_eq!(holder.len(), 1, "one backend holds it");
        let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(holder[0])
            .fetch_one(db.store.pool())
            .await
            .unwrap();
        assert!(killed);
        let other = cas_store::PgStore::connect_lazy(&db.url, 1, std::time::Duration::from_secs(5))
            .unwrap();
        let taken = other
            .lock_wallet(&w, std::time::Duration::from_secs(5))
            .await
            .unwrap();
        assert!(taken.is_some(), "the lock was released with the backend");
        let err = held.ensure_held().await.unwrap_err();
        assert!(
            matches!(err, cas_store::StoreError::LockLost(_)) && err.is_retryable(),
            "{err:?}"
        );
    }
}

/// The sweeper's scan never gets ahead of a request whose insert is still running, however
/// long it takes to commit (a stalled group commit, a client that gave up long ago): the
/// horizon stays at the oldest running transaction, and the late request is at or above it.
#[tokio::test]
async fn a_request_committed_late_is_never_behind_the_sweep_horizon() {
    use cas_store::{RequestStore, SweepPosition};
    let db = TestDb::new().await.unwrap();
    let late = cas_store::testsuite::new_request("late");
    let mut slow = db.store.pool().begin().await.unwrap();
    sqlx::query(
        "INSERT INTO request (id, cid, stream_id, origin, client_ts_ns, status, message, \
             created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 0, 'Request is pending.', $6, $6)",
    )
    .bind(late.id)
    .bind(&late.cid)
    .bind(&late.stream_id)
    .bind(&late.origin)
    .bind(late.timestamp.unix_nanos())
    .bind(late.created_at)
    .execute(&mut *slow)
    .await
    .unwrap();
    // Requests inserted after it commit first.
    let early = cas_store::testsuite::new_request("early");
    db.store
        .insert_requests(std::slice::from_ref(&early))
        .await
        .unwrap();
    let before = db
        .store
        .unbatched_after(SweepPosition::before(0), 1000)
        .await
        .unwrap();
    let ids: Vec<_> = before.rows.iter().map(|(_, r)| r.id).collect();
    assert!(
        !ids.contains(&early.id),
        "held back behind the running insert"
    );
    assert!(!ids.contains(&late.id));
    slow.commit().await.unwrap();

    let after = db
        .store
        .unbatched_after(SweepPosition::before(before.horizon), 1000)
        .await
        .unwrap();
    let found: Vec<_> = after.rows.iter().map(|(p, r)| (p.position, r.id)).collect();
    let late_at = found
        .iter()
        .position(|(_, id)| *id == late.id)
        .expect("late found");
    let early_at = found
        .iter()
        .position(|(_, id)| *id == early.id)
        .expect("early found");
    assert!(late_at < early_at, "commit order: {found:?}");
    assert!(found[late_at].0 >= before.horizon);
}
