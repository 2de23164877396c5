//! The conformance suite every [`RequestStore`] implementation must pass.
//!
//! Each function takes a store with an empty, migrated schema and panics on a violation.

use cas_core::{ClientTimestamp, RequestStatus};
use chrono::{DateTime, Duration, SubsecRound, Utc};
use uuid::Uuid;

use crate::{
    AnchorRecord, AnchoredBatch, InsertOutcome, NewBatch, NewRequest, RequestStore, StoreError,
    SweepPosition, TipClaim, TipClaims, messages,
};

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
    many_reads_in_one_call(store).await;
    batches_complete_their_members(store).await;
    a_request_joins_one_batch_only(store).await;
    replacement_touches_only_unbatched_pending(store).await;
    unanchored_batches_are_listed(store).await;
    sweeper_scan_follows_commit_order(store).await;
    the_batch_lifecycle(store).await;
    tips_keep_the_newest_request(store).await;
    batch_locks_are_exclusive(store).await;
    store.ping().await.expect("ping");
}

/// `get_requests` answers the stored requests among the CIDs asked for, as `get_request`
/// does, and leaves the unknown ones out.
pub async fn many_reads_in_one_call(store: &dyn RequestStore) {
    assert!(store.get_requests(&[]).await.unwrap().is_empty());
    let requests: Vec<_> = (0..3).map(|i| new_request(&format!("many{i}"))).collect();
    store.insert_requests(&requests).await.unwrap();
    let mut asked: Vec<String> = requests.iter().map(|r| r.cid.clone()).collect();
    asked.push("bafy-never-stored".to_owned());
    let mut found = store.get_requests(&asked).await.unwrap();
    found.sort_by(|a, b| a.cid.cmp(&b.cid));
    let mut expected = Vec::new();
    for r in &requests {
        expected.push(store.get_request(&r.cid).await.unwrap().expect("stored"));
    }
    expected.sort_by(|a, b| a.cid.cmp(&b.cid));
    assert_eq!(found, expected);
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

async fn insert_all(store: &dyn RequestStore, tag: &str, n: usize) -> Vec<NewRequest> {
    let requests: Vec<NewRequest> = (0..n).map(|i| new_request(&format!("{tag}{i}"))).collect();
    store.insert_requests(&requests).await.unwrap();
    requests
}

fn anchored_now() -> AnchoredBatch {
    AnchoredBatch {
        root_cid: "bafy-root".to_owned(),
        proof_cid: "bafy-proof".to_owned(),
        tx_hash: format!("0x{}", "ab".repeat(32)),
        chain_id: "eip155:1337".to_owned(),
        anchored_at: now() + Duration::seconds(5),
    }
}

/// A batch's members become COMPLETED only once the batch is anchored; the first anchor
/// record is kept; a batch id is created once.
pub async fn batches_complete_their_members(store: &dyn RequestStore) {
    let requests = insert_all(store, "batch", 3).await;
    let ids: Vec<Uuid> = requests.iter().map(|r| r.id).collect();
    let mut unbatched = store.unbatched_pending(&ids).await.unwrap();
    unbatched.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(unbatched, expected);

    let batch = NewBatch {
        id: Uuid::now_v7(),
        members: ids.clone(),
        created_at: now(),
    };
    assert!(store.create_batch(&batch).await.unwrap());
    assert!(
        !store.create_batch(&batch).await.unwrap(),
        "a batch id is created once"
    );
    assert!(store.unbatched_pending(&ids).await.unwrap().is_empty());
    let record = store.get_request(&requests[1].cid).await.unwrap().unwrap();
    assert_eq!(
        record.status(),
        RequestStatus::Pending,
        "batched but not anchored"
    );

    let stored = store.get_batch(batch.id).await.unwrap().unwrap();
    assert_eq!(stored.request_count, 3);
    assert_eq!(stored.anchored, None);

    let anchored = anchored_now();
    assert!(
        store
            .mark_batch_anchored(batch.id, &anchored)
            .await
            .unwrap()
    );
    let later = AnchoredBatch {
        tx_hash: "0xother".to_owned(),
        ..anchored.clone()
    };
    assert!(!store.mark_batch_anchored(batch.id, &later).await.unwrap());
    assert_eq!(
        store.get_batch(batch.id).await.unwrap().unwrap().anchored,
        Some(anchored.clone())
    );

    for (leaf_index, request) in requests.iter().enumerate() {
        let record = store.get_request(&request.cid).await.unwrap().unwrap();
        assert_eq!(record.status(), RequestStatus::Completed);
        assert_eq!(record.message(), messages::COMPLETED);
        assert_eq!(
            record.anchor,
            Some(AnchorRecord {
                batch_id: batch.id,
                leaf_index: leaf_index as i32,
                anchored_at: anchored.anchored_at,
            })
        );
        assert_eq!(record.effective_updated_at(), anchored.anchored_at);
    }
    // A re-insert of an anchored CID reports it as completed.
    let mut again = new_request("batch-again");
    again.cid = requests[0].cid.clone();
    let outcomes = store.insert_requests(&[again]).await.unwrap();
    assert_eq!(outcomes[0].record().status(), RequestStatus::Completed);
    assert_eq!(store.get_batch(Uuid::now_v7()).await.unwrap(), None);
}

/// A request can be in one batch only; a conflicting batch changes nothing.
pub async fn a_request_joins_one_batch_only(store: &dyn RequestStore) {
    let requests = insert_all(store, "conflict", 2).await;
    let first = NewBatch {
        id: Uuid::now_v7(),
        members: vec![requests[0].id],
        created_at: now(),
    };
    assert!(store.create_batch(&first).await.unwrap());
    let second = NewBatch {
        id: Uuid::now_v7(),
        members: vec![requests[1].id, requests[0].id],
        created_at: now(),
    };
    let err = store.create_batch(&second).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert_eq!(
        store.get_batch(second.id).await.unwrap(),
        None,
        "rolled back"
    );
    assert_eq!(
        store.unbatched_pending(&[requests[1].id]).await.unwrap(),
        vec![requests[1].id]
    );
}

/// Only PENDING requests outside any batch become REPLACED.
pub async fn replacement_touches_only_unbatched_pending(store: &dyn RequestStore) {
    let requests = insert_all(store, "replace", 3).await;
    let batch = NewBatch {
        id: Uuid::now_v7(),
        members: vec![requests[2].id],
        created_at: now(),
    };
    store.create_batch(&batch).await.unwrap();
    let ids: Vec<Uuid> = requests.iter().map(|r| r.id).collect();
    assert_eq!(store.replace_requests(&ids[..2], now()).await.unwrap(), 2);
    assert_eq!(
        store.replace_requests(&ids, now()).await.unwrap(),
        0,
        "already replaced or batched"
    );
    let replaced = store.get_request(&requests[0].cid).await.unwrap().unwrap();
    assert_eq!(replaced.status(), RequestStatus::Replaced);
    assert!(replaced.status().is_terminal());
    let batched = store.get_request(&requests[2].cid).await.unwrap().unwrap();
    assert_eq!(batched.status(), RequestStatus::Pending);
    assert!(store.unbatched_pending(&ids).await.unwrap().is_empty());
}

/// Unanchored batches are listed by age; anchored ones are not.
pub async fn unanchored_batches_are_listed(store: &dyn RequestStore) {
    let requests = insert_all(store, "unanchored", 2).await;
    let old = NewBatch {
        id: Uuid::now_v7(),
        members: vec![requests[0].id],
        created_at: now() - Duration::minutes(30),
    };
    let done = NewBatch {
        id: Uuid::now_v7(),
        members: vec![requests[1].id],
        created_at: now() - Duration::minutes(40),
    };
    store.create_batch(&old).await.unwrap();
    store.create_batch(&done).await.unwrap();
    store
        .mark_batch_anchored(done.id, &anchored_now())
        .await
        .unwrap();
    let listed = store
        .unanchored_batches(now() - Duration::minutes(10), 100)
        .await
        .unwrap();
    assert!(listed.contains(&old.id));
    assert!(!listed.contains(&done.id));
    let recent = store
        .unanchored_batches(now() - Duration::hours(1), 100)
        .await
        .unwrap();
    assert!(!recent.contains(&old.id));
}

/// Every page of the sweeper's scan from `after`, at `limit` rows a page.
async fn scan_all(
    store: &dyn RequestStore,
    after: SweepPosition,
    limit: i64,
) -> (Vec<(SweepPosition, Uuid)>, i64) {
    let mut rows = Vec::new();
    let mut at = after;
    loop {
        let page = store.unbatched_after(at, limit).await.unwrap();
        for (position, record) in &page.rows {
            assert!(*position > at, "pages move forward");
            assert!(
                position.position < page.horizon,
                "rows are below the horizon"
            );
            assert_eq!(position.id, record.id);
            assert_eq!(record.status(), RequestStatus::Pending);
            assert!(record.anchor.is_none());
            at = *position;
            rows.push((*position, record.id));
        }
        if (page.rows.len() as i64) < limit {
            return (rows, page.horizon);
        }
    }
}

/// Scan until `done` holds for the rows found. Transactions still running anywhere on the
/// database server (other tests) hold the horizon back, so rows committed a moment ago may
/// show only in a later scan.
async fn scan_until(
    store: &dyn RequestStore,
    after: SweepPosition,
    limit: i64,
    done: impl Fn(&[(SweepPosition, Uuid)]) -> bool,
) -> Vec<(SweepPosition, Uuid)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (rows, _) = scan_all(store, after, limit).await;
        if done(&rows) || std::time::Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The sweeper's scan: PENDING requests in no batch, in commit order, paged by position;
/// requests committed after a scan are at or above its horizon; job cursors.
pub async fn sweeper_scan_follows_commit_order(store: &dyn RequestStore) {
    let first: Vec<NewRequest> = (0..2).map(|i| new_request(&format!("sweep{i}"))).collect();
    let second: Vec<NewRequest> = (2..4).map(|i| new_request(&format!("sweep{i}"))).collect();
    store.insert_requests(&first).await.unwrap();
    store.insert_requests(&second).await.unwrap();
    let batch = NewBatch {
        id: Uuid::now_v7(),
        members: vec![first[1].id],
        created_at: now(),
    };
    store.create_batch(&batch).await.unwrap();
    store
        .replace_requests(&[second[0].id], now())
        .await
        .unwrap();

    let ours = [first[0].id, first[1].id, second[0].id, second[1].id];
    for limit in [1, 2, 1000] {
        let rows = scan_until(store, SweepPosition::before(0), limit, |rows| {
            rows.iter().filter(|(_, id)| ours.contains(id)).count() >= 2
        })
        .await;
        let found: Vec<Uuid> = rows
            .iter()
            .map(|(_, id)| *id)
            .filter(|id| ours.contains(id))
            .collect();
        assert_eq!(
            found,
            vec![first[0].id, second[1].id],
            "unbatched PENDING only, in commit order (limit {limit})"
        );
        let positions: Vec<SweepPosition> = rows.iter().map(|(p, _)| *p).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    }
    let (_, horizon) = scan_all(store, SweepPosition::before(0), 1000).await;
    let late = new_request("sweep-late");
    store
        .insert_requests(std::slice::from_ref(&late))
        .await
        .unwrap();
    let rows = scan_until(store, SweepPosition::before(horizon), 1000, |rows| {
        rows.iter().any(|(_, id)| *id == late.id)
    })
    .await;
    assert!(
        rows.iter()
            .any(|(p, id)| *id == late.id && p.position >= horizon),
        "a request committed after a scan is at or above its horizon"
    );

    let name = format!("job-{}", Uuid::new_v4());
    assert_eq!(store.cursor(&name).await.unwrap(), None);
    store.set_cursor(&name, 42).await.unwrap();
    assert_eq!(store.cursor(&name).await.unwrap(), Some(42));
    store.set_cursor(&name, i64::MAX - 1).await.unwrap();
    assert_eq!(store.cursor(&name).await.unwrap(), Some(i64::MAX - 1));
}

/// Announcing, failing for good, moving the members of a failed batch to a new one (their
/// leaf order kept), and reopening a batch whose anchor the chain lost.
pub async fn the_batch_lifecycle(store: &dyn RequestStore) {
    let requests = insert_all(store, "lifecycle", 3).await;
    let failed = NewBatch {
        id: Uuid::now_v7(),
        // Leaf order differs from insertion order.
        members: vec![requests[2].id, requests[0].id, requests[1].id],
        created_at: now() - Duration::minutes(5),
    };
    assert!(store.create_batch(&failed).await.unwrap());
    let fresh = store.get_batch(failed.id).await.unwrap().unwrap();
    assert_eq!(fresh.announced_at, None);
    assert_eq!((fresh.failed.clone(), fresh.replaced_by), (None, None));
    let soon = now() + Duration::seconds(1);
    assert!(
        store
            .unannounced_batches(soon, 1000)
            .await
            .unwrap()
            .contains(&failed.id)
    );
    let announced_at = now() - Duration::minutes(4);
    store
        .mark_batch_announced(failed.id, announced_at)
        .await
        .unwrap();
    assert!(
        !store
            .unannounced_batches(soon, 1000)
            .await
            .unwrap()
            .contains(&failed.id)
    );
    assert_eq!(
        store
            .get_batch(failed.id)
            .await
            .unwrap()
            .unwrap()
            .announced_at,
        Some(announced_at)
    );
    // Re-announcement goes by the last announcement.
    let stale = store
        .unanchored_batches(now() - Duration::minutes(3), 1000)
        .await
        .unwrap();
    assert!(stale.contains(&failed.id));
    let not_yet = store
        .unanchored_batches(now() - Duration::minutes(4) - Duration::seconds(30), 1000)
        .await
        .unwrap();
    assert!(!not_yet.contains(&failed.id), "announced after that");

    assert!(
        store
            .fail_batch(failed.id, "batch file is missing")
            .await
            .unwrap()
    );
    assert!(!store.fail_batch(failed.id, "again").await.unwrap(), "once");
    assert!(!store.fail_batch(Uuid::now_v7(), "unknown").await.unwrap());
    let record = store.get_batch(failed.id).await.unwrap().unwrap();
    assert_eq!(record.failed.as_deref(), Some("batch file is missing"));
    assert!(
        !store
            .unanchored_batches(soon, 1000)
            .await
            .unwrap()
            .contains(&failed.id)
    );
    assert!(
        store
            .failed_batches(1000)
            .await
            .unwrap()
            .contains(&failed.id)
    );

    let members = store.batch_members(failed.id).await.unwrap();
    let expected: Vec<(Uuid, String)> = [2, 0, 1]
        .iter()
        .map(|&i| (requests[i].id, requests[i].cid.clone()))
        .collect();
    assert_eq!(members, expected, "members in leaf order");
    let new = NewBatch {
        id: Uuid::now_v7(),
        members: members.iter().map(|(id, _)| *id).collect(),
        created_at: now(),
    };
    let wrong = NewBatch {
        id: Uuid::now_v7(),
        members: vec![requests[0].id],
        created_at: now(),
    };
    assert!(matches!(
        store.rebatch(failed.id, &wrong).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(
        store.get_batch(wrong.id).await.unwrap().is_none(),
        "nothing changed"
    );
    assert!(store.rebatch(failed.id, &new).await.unwrap());
    assert!(!store.rebatch(failed.id, &new).await.unwrap(), "once");
    assert!(
        !store
            .failed_batches(1000)
            .await
            .unwrap()
            .contains(&failed.id)
    );
    assert_eq!(
        store
            .get_batch(failed.id)
            .await
            .unwrap()
            .unwrap()
            .replaced_by,
        Some(new.id)
    );
    let moved = store.get_batch(new.id).await.unwrap().unwrap();
    assert_eq!((moved.request_count, moved.announced_at), (3, None));
    assert!(
        store
            .unannounced_batches(soon, 1000)
            .await
            .unwrap()
            .contains(&new.id)
    );
    assert_eq!(store.batch_members(new.id).await.unwrap(), members);
    assert!(store.batch_members(failed.id).await.unwrap().is_empty());

    store
        .mark_batch_anchored(new.id, &anchored_now())
        .await
        .unwrap();
    let done = store.get_request(&requests[0].cid).await.unwrap().unwrap();
    assert_eq!(done.status(), RequestStatus::Completed);
    assert_eq!(
        done.anchor.as_ref().map(|a| (a.batch_id, a.leaf_index)),
        Some((new.id, 1))
    );
    assert!(!store.fail_batch(new.id, "anchored").await.unwrap());

    // The chain lost the anchor: the batch is not anchored any more, its requests pending.
    assert!(store.reopen_batch(new.id).await.unwrap());
    assert!(!store.reopen_batch(new.id).await.unwrap());
    let reopened = store.get_batch(new.id).await.unwrap().unwrap();
    assert!(reopened.anchored.is_none());
    let pending = store.get_request(&requests[0].cid).await.unwrap().unwrap();
    assert_eq!(pending.status(), RequestStatus::Pending);
    assert!(
        store
            .mark_batch_anchored(new.id, &anchored_now())
            .await
            .unwrap()
    );
}

/// The newest tip per (stream id, origin): older requests lose, ties and the same request
/// win, other streams and origins are independent, concurrent claims keep the newest;
/// requests no longer PENDING and unbatched are reported gone and claim nothing.
pub async fn tips_keep_the_newest_request(store: &dyn RequestStore) {
    let stream = format!("k-tip-{}", Uuid::new_v4().simple());
    let requests = insert_all(store, "tips", 10).await;
    let ids: Vec<Uuid> = requests.iter().map(|r| r.id).collect();
    let claim = |stream: &str, origin: &str, i: usize, ts: i64| {
        TipClaim::new(stream, origin, ids[i], ClientTimestamp::from_unix_nanos(ts))
    };
    let none = TipClaims::default();
    assert_eq!(store.claim_tips(&[]).await.unwrap(), none);
    let won = store
        .claim_tips(&[claim(&stream, "a", 0, 10), claim(&stream, "b", 1, 1)])
        .await
        .unwrap();
    assert_eq!(won, none, "first claims win");
    let older = store
        .claim_tips(&[claim(&stream, "a", 2, 5)])
        .await
        .unwrap();
    assert_eq!(older.outdated, vec![ids[2]]);
    assert!(older.gone.is_empty());
    assert_eq!(
        store
            .claim_tips(&[claim(&stream, "a", 0, 10)])
            .await
            .unwrap(),
        none,
        "the same request again (a redelivered message)"
    );
    assert_eq!(
        store
            .claim_tips(&[claim(&stream, "a", 3, 10)])
            .await
            .unwrap(),
        none,
        "a tie goes to the later claim"
    );
    assert_eq!(
        store
            .claim_tips(&[claim(&stream, "c", 4, 1), claim("k-other", "a", 5, 1)])
            .await
            .unwrap(),
        none,
        "other origins and streams are independent"
    );
    // Two schedulers at once: whatever the order, the newest ends up as the tip.
    let (older, newer) = ([claim(&stream, "b", 6, 100)], [claim(&stream, "b", 7, 200)]);
    let (x, y) = tokio::join!(store.claim_tips(&older), store.claim_tips(&newer));
    let lost: Vec<Uuid> = x
        .unwrap()
        .outdated
        .into_iter()
        .chain(y.unwrap().outdated)
        .collect();
    assert!(lost.is_empty() || lost == vec![ids[6]], "{lost:?}");
    let late = store
        .claim_tips(&[claim(&stream, "b", 8, 150)])
        .await
        .unwrap();
    assert_eq!(
        late.outdated,
        vec![ids[8]],
        "the tip is the newest of the concurrent claims"
    );

    // Requests that are no longer PENDING and unbatched: gone, and they claim nothing.
    let batch = NewBatch {
        id: Uuid::now_v7(),
        members: vec![ids[9]],
        created_at: now(),
    };
    store.create_batch(&batch).await.unwrap();
    store.replace_requests(&[ids[8]], now()).await.unwrap();
    let unknown = Uuid::now_v7();
    let other = format!("k-tip-gone-{}", Uuid::new_v4().simple());
    let gone = store
        .claim_tips(&[
            claim(&other, "a", 9, 1000),
            claim(&other, "b", 8, 1000),
            TipClaim::new(&other, "c", unknown, ClientTimestamp::from_unix_nanos(1000)),
        ])
        .await
        .unwrap();
    let mut expected = vec![ids[9], ids[8], unknown];
    let mut found = gone.gone.clone();
    expected.sort();
    found.sort();
    assert_eq!(found, expected);
    assert!(gone.outdated.is_empty());
    let after = store.claim_tips(&[claim(&other, "a", 5, 1)]).await.unwrap();
    assert_eq!(after, none, "the gone request claimed no tip");
}

/// A batch lock is exclusive while held and free again once dropped; locks of different
/// batches are independent.
pub async fn batch_locks_are_exclusive(store: &dyn RequestStore) {
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let held = store.try_lock_batch(a).await.unwrap().expect("free lock");
    assert!(
        store.try_lock_batch(a).await.unwrap().is_none(),
        "held elsewhere"
    );
    let other = store
        .try_lock_batch(b)
        .await
        .unwrap()
        .expect("another batch's lock");
    drop(held);
    // Dropping rolls back asynchronously on its connection; the lock frees promptly.
    let mut again = None;
    for _ in 0..50 {
        again = store.try_lock_batch(a).await.unwrap();
        if again.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "released when dropped");
    drop(other);
}

/// Group commit over `store` (empty): 500 concurrent submissions are all created and
/// readable. Returns them, so the caller can also count the rows it holds.
pub async fn group_commit_coalesces_concurrent_inserts(
    store: std::sync::Arc<dyn RequestStore>,
) -> Vec<NewRequest> {
    let committer = crate::GroupCommitter::spawn(
        std::sync::Arc::clone(&store),
        crate::GroupCommitConfig {
            max_batch: 64,
            workers: 2,
            queue_capacity: 4096,
        },
    );
    let requests: Vec<_> = (0..500).map(|i| new_request(&format!("gc{i}"))).collect();
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
    for r in requests.iter().step_by(50) {
        assert_eq!(store.get_request(&r.cid).await.unwrap().unwrap().id, r.id);
    }
    requests
}

/// Group commit: 100 concurrent submissions of one CID create exactly one row, and every
/// submitter sees that row.
pub async fn group_commit_creates_a_cid_once(store: std::sync::Arc<dyn RequestStore>) {
    let committer = crate::GroupCommitter::spawn(store, crate::GroupCommitConfig::default());
    let base = new_request("same");
    let mut tasks = Vec::new();
    for i in 0..100 {
        let mut r = new_request(&format!("same{i}"));
        r.cid = base.cid.clone();
        let c = committer.clone();
        tasks.push(tokio::spawn(async move { c.submit(r).await }));
    }
    let mut created = 0;
    let mut ids = std::collections::HashSet::new();
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

/// Group commit with a queue of one: a flood is shed with retryable errors, not queued.
pub async fn group_commit_sheds_load_when_its_queue_is_full(
    store: std::sync::Arc<dyn RequestStore>,
) {
    let committer = crate::GroupCommitter::spawn(
        store,
        crate::GroupCommitConfig {
            max_batch: 1,
            workers: 1,
            queue_capacity: 1,
        },
    );
    let mut tasks = Vec::new();
    for i in 0..200 {
        let c = committer.clone();
        let r = new_request(&format!("shed{i}"));
        tasks.push(tokio::spawn(async move { c.submit(r).await }));
    }
    let (mut ok, mut shed) = (0, 0);
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

/// Grouped reads: 300 concurrent lookups (stored CIDs, a CID asked for many times, unknown
/// CIDs) each get the answer `get_request` gives.
pub async fn group_reads_answer_every_caller(store: std::sync::Arc<dyn RequestStore>) {
    let reader = crate::GroupReader::spawn(
        std::sync::Arc::clone(&store),
        crate::GroupCommitConfig {
            max_batch: 32,
            workers: 2,
            queue_capacity: 4096,
        },
    );
    let requests: Vec<_> = (0..100).map(|i| new_request(&format!("gr{i}"))).collect();
    store.insert_requests(&requests).await.unwrap();
    let mut asked: Vec<String> = requests.iter().map(|r| r.cid.clone()).collect();
    asked.extend(std::iter::repeat_n(requests[7].cid.clone(), 100));
    asked.extend((0..100).map(|i| format!("bafy-unknown-{i}")));
    let mut tasks = Vec::new();
    for cid in asked {
        let reader = reader.clone();
        tasks.push(tokio::spawn(async move {
            let got = reader.get(cid.clone()).await;
            (cid, got)
        }));
    }
    for t in tasks {
        let (cid, got) = t.await.unwrap();
        let got = got.unwrap();
        let expected = store.get_request(&cid).await.unwrap();
        assert_eq!(got, expected, "{cid}");
        assert_eq!(got.is_some(), !cid.starts_with("bafy-unknown"), "{cid}");
    }
}
