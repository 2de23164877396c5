//! The nonce store conformance suite, against PostgreSQL and in memory.

use std::sync::Arc;

use cas_store::{MemoryNonceStore, NonceStore, nonce_testsuite, test_support::TestDb};

#[tokio::test]
async fn pg_nonce_store_passes_the_conformance_suite() {
    let db = TestDb::new().await.unwrap();
    nonce_testsuite::run_all(Arc::new(db.store) as Arc<dyn NonceStore>).await;
}

#[tokio::test]
async fn memory_nonce_store_passes_the_conformance_suite() {
    nonce_testsuite::run_all(Arc::new(MemoryNonceStore::default())).await;
}

/// Two API instances are two pools on one database: a nonce claimed through one is a replay
/// through the other.
#[tokio::test]
async fn a_nonce_is_a_replay_on_every_instance() {
    let db = TestDb::new().await.unwrap();
    let other =
        cas_store::PgStore::connect_lazy(&db.url, 2, std::time::Duration::from_secs(5)).unwrap();
    let nonce = uuid::Uuid::new_v4();
    let until = chrono::Utc::now() + chrono::Duration::minutes(5);
    assert!(db.store.claim(nonce, until).await.unwrap());
    assert!(!other.claim(nonce, until).await.unwrap());
}
