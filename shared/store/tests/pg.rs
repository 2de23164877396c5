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
