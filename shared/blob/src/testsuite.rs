//! The conformance suite every [`BlobStore`] must pass.
//!
//! Each check uses fresh keys under a random prefix, so checks can share a store (and a
//! bucket) with other tests. Checks panic on failure, like assertions in a test.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;

use crate::{BlobError, BlobStore};

/// Run every check of the suite, one after the other.
pub async fn run_all(store: &dyn BlobStore) {
    put_get_round_trip(store).await;
    large_object(store).await;
    overwrite(store).await;
    missing_key(store).await;
    ranges(store).await;
    invalid_keys(store).await;
    nested_keys(store).await;
    concurrent_puts(store).await;
}

/// A key prefix no other check (or run) uses.
fn unique(name: &str) -> String {
    format!("suite-{}/{name}", uuid::Uuid::new_v4().simple())
}

/// `len` bytes that differ from position to position (so offset mistakes show).
fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| ((i * 31 + i / 251) as u8).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

/// `put` then `get` returns the same bytes, including an empty object.
pub async fn put_get_round_trip(store: &dyn BlobStore) {
    let key = unique("object.bin");
    let bytes = pattern(1000, 1);
    store.put(&key, bytes.clone()).await.expect("put");
    assert_eq!(
        store.get(&key).await.expect("get"),
        Some(bytes),
        "get returns what was put"
    );

    let empty = unique("empty");
    store
        .put(&empty, Bytes::new())
        .await
        .expect("put empty object");
    assert_eq!(
        store.get(&empty).await.expect("get empty object"),
        Some(Bytes::new())
    );
}

/// A 5 MiB object survives the round trip byte for byte.
pub async fn large_object(store: &dyn BlobStore) {
    let key = unique("large");
    let bytes = pattern(5 * 1024 * 1024 + 7, 3);
    store.put(&key, bytes.clone()).await.expect("put 5 MiB");
    let got = store
        .get(&key)
        .await
        .expect("get 5 MiB")
        .expect("5 MiB object exists");
    assert_eq!(got.len(), bytes.len(), "length of the 5 MiB object");
    assert!(got == bytes, "content of the 5 MiB object differs");
    let tail = store
        .get_range(&key, bytes.len() as u64 - 10..bytes.len() as u64 + 10)
        .await
        .expect("range of 5 MiB")
        .expect("5 MiB object exists");
    assert_eq!(tail, bytes.slice(bytes.len() - 10..));
}

/// Putting a key again replaces the whole object (also with a shorter one).
pub async fn overwrite(store: &dyn BlobStore) {
    let key = unique("overwritten");
    store.put(&key, pattern(500, 5)).await.expect("first put");
    let second = pattern(20, 9);
    store.put(&key, second.clone()).await.expect("second put");
    assert_eq!(store.get(&key).await.expect("get"), Some(second.clone()));
    assert_eq!(
        store.get_range(&key, 0..500).await.expect("range"),
        Some(second)
    );
}

/// A key that was never put reads as `None`.
pub async fn missing_key(store: &dyn BlobStore) {
    let key = unique("never-put");
    assert_eq!(store.get(&key).await.expect("get missing"), None);
    assert_eq!(
        store
            .get_range(&key, 0..10)
            .await
            .expect("get_range missing"),
        None
    );
    assert_eq!(
        store
            .get_range(&key, 5..5)
            .await
            .expect("empty range of missing"),
        None
    );
    assert_eq!(
        store
            .get_range(&key, 100..200)
            .await
            .expect("far range of missing"),
        None
    );
}

/// Ranges are clipped to the object; empty or past-the-end ranges give empty bytes.
pub async fn ranges(store: &dyn BlobStore) {
    let key = unique("ranged");
    let bytes = pattern(100, 7);
    store.put(&key, bytes.clone()).await.expect("put");
    let cases: &[(std::ops::Range<u64>, std::ops::Range<usize>, &str)] = &[
        (0..10, 0..10, "start"),
        (40..60, 40..60, "middle"),
        (90..100, 90..100, "end"),
        (99..100, 99..100, "last byte"),
        (0..100, 0..100, "whole"),
        (95..1000, 95..100, "clipped past the end"),
        (0..u64::MAX, 0..100, "clipped to u64::MAX"),
        (30..30, 0..0, "empty"),
        (std::ops::Range { start: 60, end: 40 }, 0..0, "reversed"),
        (100..110, 0..0, "starting at the end"),
        (500..600, 0..0, "starting past the end"),
    ];
    for (range, expected, what) in cases {
        let got = store.get_range(&key, range.clone()).await;
        match got {
            Ok(Some(got)) => assert_eq!(got, bytes.slice(expected.clone()), "range {what}"),
            other => panic!("range {what} ({range:?}): expected bytes, got {other:?}"),
        }
    }

    let empty = unique("empty-ranged");
    store
        .put(&empty, Bytes::new())
        .await
        .expect("put empty object");
    assert_eq!(
        store
            .get_range(&empty, 0..10)
            .await
            .expect("range of empty"),
        Some(Bytes::new())
    );
    assert_eq!(
        store.get_range(&empty, 0..0).await.expect("empty range"),
        Some(Bytes::new())
    );
}

/// Keys outside the contract are rejected by every operation.
pub async fn invalid_keys(store: &dyn BlobStore) {
    let bad = [
        "",
        "/abs",
        "a/../b",
        "a//b",
        "a b",
        ".",
        "..",
        "a/",
        "a/./b",
        "back\\slash",
        "ü",
        "a?b",
    ];
    for key in bad {
        let put = store.put(key, Bytes::from_static(b"x")).await;
        assert!(
            matches!(put, Err(BlobError::InvalidKey(_))),
            "put {key:?}: {put:?}"
        );
        let get = store.get(key).await;
        assert!(
            matches!(get, Err(BlobError::InvalidKey(_))),
            "get {key:?}: {get:?}"
        );
        let range = store.get_range(key, 0..1).await;
        assert!(
            matches!(range, Err(BlobError::InvalidKey(_))),
            "get_range {key:?}: {range:?}"
        );
        assert!(!BlobError::InvalidKey(key.to_owned()).is_retryable());
    }
}

/// Keys with several `/` segments work, and neighbours do not mix.
pub async fn nested_keys(store: &dyn BlobStore) {
    let base = unique("nested");
    let deep = format!("{base}/a/b/c/d.car");
    let sibling = format!("{base}/a/b/e");
    let dotted = format!("{base}/.hidden/..x/x..");
    store
        .put(&deep, Bytes::from_static(b"deep"))
        .await
        .expect("put deep");
    store
        .put(&sibling, Bytes::from_static(b"sibling"))
        .await
        .expect("put sibling");
    store
        .put(&dotted, Bytes::from_static(b"dots"))
        .await
        .expect("put dotted");
    assert_eq!(
        store.get(&deep).await.expect("get deep"),
        Some(Bytes::from_static(b"deep"))
    );
    assert_eq!(
        store.get(&sibling).await.expect("get sibling"),
        Some(Bytes::from_static(b"sibling"))
    );
    assert_eq!(
        store.get(&dotted).await.expect("get dotted"),
        Some(Bytes::from_static(b"dots"))
    );
    assert_eq!(
        store
            .get(&format!("{base}/a/b/c"))
            .await
            .expect("get prefix"),
        None
    );
    assert_eq!(
        store
            .get(&format!("{base}/a/b/c/d"))
            .await
            .expect("get near miss"),
        None
    );
}

/// Puts of different keys may run at the same time.
pub async fn concurrent_puts(store: &dyn BlobStore) {
    let base = unique("concurrent");
    let objects: Vec<(String, Bytes)> = (0..16u8)
        .map(|i| (format!("{base}/{i}"), pattern(10_000 + usize::from(i), i)))
        .collect();
    let puts = objects
        .iter()
        .map(|(key, bytes)| {
            Box::pin(store.put(key, bytes.clone()))
                as Pin<Box<dyn Future<Output = Result<(), BlobError>> + Send + '_>>
        })
        .collect();
    for (result, (key, _)) in join_all(puts).await.into_iter().zip(&objects) {
        result.unwrap_or_else(|err| panic!("concurrent put {key}: {err}"));
    }
    for (key, bytes) in &objects {
        assert_eq!(
            store.get(key).await.expect("get"),
            Some(bytes.clone()),
            "object {key}"
        );
    }
}

/// Poll all futures concurrently on the current task; results in input order.
async fn join_all<'a, T>(mut futures: Vec<Pin<Box<dyn Future<Output = T> + Send + 'a>>>) -> Vec<T> {
    let mut results: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx: &mut Context<'_>| {
        let mut pending = false;
        for (future, result) in futures.iter_mut().zip(results.iter_mut()) {
            if result.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *result = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    results.into_iter().flatten().collect()
}
