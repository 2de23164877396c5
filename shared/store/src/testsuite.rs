//! The conformance suite every [`RequestStore`] implementation must pass.
//!
//! Each function takes a store with an empty, migrated schema and panics on a violation.

use cas_core::{ClientTimestamp, RequestStatus};
use chrono::{DateTime, Duration, SubsecRound, Utc};
use uuid::Uuid;

use crate::{AnchorRecord, InsertOutcome, NewRequest, RequestStore, messages};

fn now() -> DateTime<Utc> {
    // Stores keep microseconds.
    Utc::now().trunc_subsecs(6)
}

/// A request with a unique CID-like key (stores treat the CID as an opaque string).
pub fn new_request(tag: &str) -> NewRequest {
    NewRequest {
        id: Uuid::now_v7(),
        cid: format!("bafy-test-{tag}-{}", Uuid::new_v4().simple()),
        stream_id: format!("k-test-stream-{tag}"),
        origin: "127.0.0.1".to_owned(),
        timestamp: ClientTimestamp::from_unix_nanos(1_700_000_000_123_456_789),
        created_at: now(),
    }
}

/// Run every check.
pub async fn run_all(store: &dyn RequestStore) {
    insert_then_get(store).await;
    insert_is_idempotent(store).await;
    duplicates_in_one_call(store).await;
    missing_request_is_none(store).await;
    anchors_complete_requests_and_first_wins(store).await;
    store.ping().await.expect("ping");
}

/// A created request reads back exactly, as PENDING.
pub async fn insert_then_get(store: &dyn RequestStore) {
    let req = new_request("get");
    let outcomes = store
        .insert_requests(std::slice::from_ref(&req))
        .await
        .unwrap();
    assert!(
        matches!(&outcomes[..], [InsertOutcome::Created(_)]),
        "{outcomes:?}"
    );
    let got = store.get_request(&req.cid).await.unwrap().expect("stored");
    assert_eq!(got.id, req.id);
    assert_eq!(got.cid, req.cid);
    assert_eq!(got.stream_id, req.stream_id);
    assert_eq!(got.origin, req.origin);
    assert_eq!(
        got.timestamp, req.timestamp,
        "client timestamp keeps nanoseconds"
    );
    assert_eq!(got.status(), RequestStatus::Pending);
    assert_eq!(got.message(), messages::PENDING);
    assert_eq!(got.created_at, req.created_at);
    assert_eq!(got.anchor, None);
    assert_eq!(&got, outcomes[0].record());
}

/// A second insert of the same CID changes nothing and returns the stored row.
pub async fn insert_is_idempotent(store: &dyn RequestStore) {
    let first = new_request("idem");
    store
        .insert_requests(std::slice::from_ref(&first))
        .await
        .unwrap();
    let mut again = new_request("idem-again");
    again.cid = first.cid.clone();
    again.stream_id = "k-some-other-stream".to_owned();
    let outcomes = store.insert_requests(&[again]).await.unwrap();
    match &outcomes[..] {
        [InsertOutcome::Existing(record)] => {
            assert_eq!(record.id, first.id);
            assert_eq!(record.stream_id, first.stream_id);
        }
        other => panic!("expected Existing, got {other:?}"),
    }
}

/// Several requests for one CID in one call: the first is created, the rest see it.
pub async fn duplicates_in_one_call(store: &dyn RequestStore) {
    let a = new_request("dup");
    let mut b = new_request("dup-b");
    b.cid = a.cid.clone();
    let c = new_request("dup-c");
    let outcomes = store
        .insert_requests(&[a.clone(), b, c.clone()])
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 3);
    assert!(matches!(&outcomes[0], InsertOutcome::Created(r) if r.id == a.id));
    assert!(matches!(&outcomes[1], InsertOutcome::Existing(r) if r.id == a.id));
    assert!(matches!(&outcomes[2], InsertOutcome::Created(r) if r.id == c.id));
}

/// An unknown CID is not an error.
pub async fn missing_request_is_none(store: &dyn RequestStore) {
    assert_eq!(store.get_request("bafy-never-stored").await.unwrap(), None);
}

/// An anchor row makes a request COMPLETED; a second anchor for it is ignored.
pub async fn anchors_complete_requests_and_first_wins(store: &dyn RequestStore) {
    let req = new_request("anchor");
    store
        .insert_requests(std::slice::from_ref(&req))
        .await
        .unwrap();
    let anchored_at = now() + Duration::seconds(5);
    let anchor = AnchorRecord {
        request_id: req.id,
        batch_id: Uuid::now_v7(),
        leaf_index: 3,
        path: "0/1".to_owned(),
        commit_cid: "bafy-commit-1".to_owned(),
        proof_cid: "bafy-proof-1".to_owned(),
        created_at: anchored_at,
    };
    assert_eq!(
        store
            .insert_anchors(std::slice::from_ref(&anchor))
            .await
            .unwrap(),
        1
    );
    let second = AnchorRecord {
        commit_cid: "bafy-commit-2".to_owned(),
        ..anchor.clone()
    };
    assert_eq!(store.insert_anchors(&[second]).await.unwrap(), 0);

    let got = store.get_request(&req.cid).await.unwrap().unwrap();
    assert_eq!(got.status(), RequestStatus::Completed);
    assert_eq!(got.message(), messages::COMPLETED);
    assert_eq!(got.anchor.as_ref(), Some(&anchor));
    assert_eq!(got.effective_updated_at(), anchored_at);

    // A re-insert of an anchored CID reports it as completed.
    let mut again = new_request("anchor-again");
    again.cid = req.cid.clone();
    let outcomes = store.insert_requests(&[again]).await.unwrap();
    assert_eq!(outcomes[0].record().status(), RequestStatus::Completed);
}
