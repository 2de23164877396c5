//! The conformance suite every [`NonceStore`] implementation must pass.

use std::sync::Arc;

use chrono::{Duration, Utc};
use uuid::Uuid;

use crate::NonceStore;

/// Run every check against a store holding no nonces.
pub async fn run_all(store: Arc<dyn NonceStore>) {
    a_nonce_is_claimed_once(store.as_ref()).await;
    an_expired_claim_can_be_taken_over(store.as_ref()).await;
    purge_removes_only_expired_nonces(store.as_ref()).await;
    concurrent_claims_have_one_winner(store).await;
}

/// The first claim wins; every later one is a replay.
pub async fn a_nonce_is_claimed_once(store: &dyn NonceStore) {
    let nonce = Uuid::new_v4();
    let until = Utc::now() + Duration::hours(1);
    assert!(store.claim(nonce, until).await.unwrap(), "first claim");
    assert!(!store.claim(nonce, until).await.unwrap(), "replay");
    assert!(
        !store
            .claim(nonce, until + Duration::hours(1))
            .await
            .unwrap(),
        "a replay cannot extend the claim"
    );
    assert!(
        store.claim(Uuid::new_v4(), until).await.unwrap(),
        "another nonce"
    );
}

/// A claim that has expired no longer blocks the nonce, purged or not.
pub async fn an_expired_claim_can_be_taken_over(store: &dyn NonceStore) {
    let nonce = Uuid::new_v4();
    let past = Utc::now() - Duration::seconds(5);
    let future = Utc::now() + Duration::hours(1);
    assert!(store.claim(nonce, past).await.unwrap());
    assert!(store.claim(nonce, future).await.unwrap(), "expired claim");
    assert!(!store.claim(nonce, future).await.unwrap(), "live again");
}

/// Purging forgets expired nonces and keeps live ones.
pub async fn purge_removes_only_expired_nonces(store: &dyn NonceStore) {
    let now = Utc::now();
    // Whatever earlier checks left behind.
    store.purge_expired(now + Duration::days(1)).await.unwrap();
    let expired: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    for nonce in &expired {
        assert!(
            store
                .claim(*nonce, now - Duration::seconds(1))
                .await
                .unwrap()
        );
    }
    let live = Uuid::new_v4();
    assert!(store.claim(live, now + Duration::hours(1)).await.unwrap());
    assert_eq!(store.purge_expired(now).await.unwrap(), 3);
    assert_eq!(store.purge_expired(now).await.unwrap(), 0);
    assert!(
        !store.claim(live, now + Duration::hours(1)).await.unwrap(),
        "kept"
    );
}

/// Of many simultaneous claims of one nonce, exactly one succeeds.
pub async fn concurrent_claims_have_one_winner(store: Arc<dyn NonceStore>) {
    let nonce = Uuid::new_v4();
    let until = Utc::now() + Duration::hours(1);
    let mut claims = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let store = Arc::clone(&store);
        claims.spawn(async move { store.claim(nonce, until).await.unwrap() });
    }
    let winners = claims
        .join_all()
        .await
        .into_iter()
        .filter(|won| *won)
        .count();
    assert_eq!(winners, 1);
}
