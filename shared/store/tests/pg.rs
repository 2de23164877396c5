//! The store conformance suite and group commit, against a real PostgreSQL.

use std::{collections::HashSet, sync::Arc};

use cas_store::{
    GroupCommitConfig, GroupCommitter, InsertOutcome, RequestStore, StoreError,
    test_support::TestDb, testsuite,
};

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
    let store: Arc<dyn RequestStore> = Arc::new(db.store.clone());
    let committer = GroupCommitter::spawn(
        Arc::clone(&store),
        GroupCommitConfig {
            max_batch: 64,
            workers: 2,
            queue_capacity: 4096,
        },
    );
    let requests: Vec<_> = (0..500)
        .map(|i| testsuite::new_request(&format!("gc{i}")))
        .collect();
    let mut tasks = Vec::new();
    for r in requests.clone() {
        let c = committer.clone();
        tasks.push(tokio::spawn(async move { c.submit(r).await }));
    }
    let mut created = 0;
    for t in tasks {
        if let InsertOutcome::Created(_) = t.await.unwrap().unwrap() {
            created += 1;
        }
    }
    assert_eq!(created, 500);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM request")
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    assert_eq!(count, 500);
    for r in requests.iter().step_by(50) {
        assert_eq!(store.get_request(&r.cid).await.unwrap().unwrap().id, r.id);
    }
}

#[tokio::test]
async fn group_commit_creates_a_cid_once_under_concurrency() {
    let db = TestDb::new().await.unwrap();
    let store: Arc<dyn RequestStore> = Arc::new(db.store.clone());
    let committer = GroupCommitter::spawn(store, GroupCommitConfig::default());
    let base = testsuite::new_request("same");
    let mut tasks = Vec::new();
    for i in 0..100 {
        let mut r = testsuite::new_request(&format!("same{i}"));
        r.cid = base.cid.clone();
        let c = committer.clone();
        tasks.push(tokio::spawn(async move { c.submit(r).await }));
    }
    let mut created = 0;
    let mut ids = HashSet::new();
    for t in tasks {
        let outcome = t.await.unwrap().unwrap();
        if matches!(outcome, InsertOutcome::Created(_)) {
            created += 1;
        }
        ids.insert(outcome.record().id);
    }
    assert_eq!(created, 1, "exactly one submission creates the row");
    assert_eq!(ids.len(), 1, "everyone sees the same request");
}

#[tokio::test]
async fn group_commit_sheds_load_when_its_queue_is_full() {
    let db = TestDb::new().await.unwrap();
    let store: Arc<dyn RequestStore> = Arc::new(db.store.clone());
    // A queue of one with one worker: flooding it must fail fast, not grow memory.
    let committer = GroupCommitter::spawn(
        store,
        GroupCommitConfig {
            max_batch: 1,
            workers: 1,
            queue_capacity: 1,
        },
    );
    let mut tasks = Vec::new();
    for i in 0..200 {
        let c = committer.clone();
        let r = testsuite::new_request(&format!("shed{i}"));
        tasks.push(tokio::spawn(async move { c.submit(r).await }));
    }
    let mut shed = 0;
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                shed += 1;
            }
        }
    }
    assert!(ok >= 1, "some requests get through");
    assert!(shed >= 1, "some requests are shed");
    assert_eq!(ok + shed, 200);
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
