//! The conformance suite every [`Queue`] must pass.
//!
//! Each check takes a fresh, empty queue and panics on failure, like assertions in a
//! test. Visibility timeouts are 1–2 s, so a check takes at most a few seconds;
//! [`run_all`] runs the checks concurrently, each on its own queue.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{MAX_MESSAGE_BYTES, Message, Queue, QueueError, Receipt};

/// Long enough that a message is not redelivered during a check.
const LONG: Duration = Duration::from_secs(60);
/// Short visibility timeout for redelivery checks.
const SHORT: Duration = Duration::from_secs(2);

type Check = fn(Arc<dyn Queue>) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Every check, by name.
pub fn checks() -> Vec<(&'static str, Check)> {
    vec![
        ("send_receive_ack", |q| Box::pin(send_receive_ack(q))),
        ("body_round_trip", |q| Box::pin(body_round_trip(q))),
        ("too_large_rejected", |q| Box::pin(too_large_rejected(q))),
        ("visibility_and_redelivery", |q| {
            Box::pin(visibility_and_redelivery(q))
        }),
        ("set_visibility", |q| Box::pin(set_visibility(q))),
        ("ack_removes_for_good", |q| {
            Box::pin(ack_removes_for_good(q))
        }),
        ("send_many_exactly_once", |q| {
            Box::pin(send_many_exactly_once(q))
        }),
        ("wait_returns_on_arrival", |q| {
            Box::pin(wait_returns_on_arrival(q))
        }),
        ("empty_receive_waits", |q| Box::pin(empty_receive_waits(q))),
        ("approximate_depth", |q| Box::pin(approximate_depth(q))),
        ("stale_and_invalid_receipts", |q| {
            Box::pin(stale_and_invalid_receipts(q))
        }),
    ]
}

/// Run every check concurrently, each on a fresh queue from `make`; panics with the
/// names of the checks that failed.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Queue>>,
{
    let mut tasks = Vec::new();
    for (name, check) in checks() {
        let queue = make().await;
        tasks.push((name, tokio::spawn(check(queue))));
    }
    let mut failed = Vec::new();
    for (name, task) in tasks {
        if let Err(err) = task.await {
            eprintln!("queue check {name} failed: {err}");
            failed.push(name);
        }
    }
    assert!(failed.is_empty(), "failed queue checks: {failed:?}");
}

/// Receive until `n` messages have arrived or `within` is over.
async fn receive_n(queue: &dyn Queue, n: usize, within: Duration) -> Vec<Message> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        got.extend(
            queue
                .receive(10, LONG, Duration::from_secs(1))
                .await
                .expect("receive"),
        );
    }
    got
}

async fn assert_empty_for(queue: &dyn Queue, wait: Duration, what: &str) {
    let got = queue.receive(10, LONG, wait).await.expect("receive");
    assert!(got.is_empty(), "{what}: expected no message, got {got:?}");
}

async fn assert_depth(queue: &dyn Queue, expected: u64, what: &str) {
    let depth = queue.approximate_depth().await.expect("approximate_depth");
    assert_eq!(depth, expected, "approximate depth {what}");
}

/// A message is received once with its body, then acknowledged and gone.
pub async fn send_receive_ack(queue: Arc<dyn Queue>) {
    queue.send("hello".to_owned()).await.expect("send");
    let got = queue
        .receive(10, LONG, Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].body, "hello");
    assert_eq!(got[0].receive_count, 1);
    assert!(!got[0].id.is_empty() && !got[0].receipt.0.is_empty());
    queue.ack(&[got[0].receipt.clone()]).await.expect("ack");
    assert_depth(&*queue, 0, "after ack").await;
    assert_empty_for(&*queue, Duration::ZERO, "after ack").await;
    queue.ack(&[]).await.expect("ack of nothing");
    assert!(
        queue
            .receive(0, LONG, Duration::ZERO)
            .await
            .expect("receive 0")
            .is_empty()
    );
}

/// Bodies come back exactly as sent: unicode, JSON-ish text, ~200 KiB, and the maximum.
pub async fn body_round_trip(queue: Arc<dyn Queue>) {
    let big: String = "0123456789abcdef→ü\"{}\n"
        .chars()
        .cycle()
        .take(200 * 1024 / 2)
        .collect();
    let max = "m".repeat(MAX_MESSAGE_BYTES);
    let bodies = vec![
        "héllo wörld ✓ 日本語 🚀".to_owned(),
        "{\"a\": [1, 2, \"x\"], \"b\": null}\n\ttabbed\r\nline".to_owned(),
        " leading and trailing spaces ".to_owned(),
        "<xml attr='&amp;'>&lt;</xml>".to_owned(),
        big,
    ];
    queue.send(bodies[0].clone()).await.expect("send one");
    queue
        .send_many(bodies[1..].to_vec())
        .await
        .expect("send_many");
    queue
        .send(max.clone())
        .await
        .expect("send a body of exactly MAX_MESSAGE_BYTES");
    let mut expected = bodies;
    expected.push(max);
    let got = receive_n(&*queue, expected.len(), Duration::from_secs(15)).await;
    let mut got: Vec<String> = got.into_iter().map(|m| m.body).collect();
    got.sort();
    expected.sort();
    assert_eq!(got.len(), expected.len());
    for (got, expected) in got.iter().zip(&expected) {
        assert!(
            got == expected,
            "body of {} bytes differs from the one sent",
            expected.len()
        );
    }
}

/// Bodies over [`MAX_MESSAGE_BYTES`] (counted in UTF-8 bytes) are rejected before sending.
pub async fn too_large_rejected(queue: Arc<dyn Queue>) {
    let over = "x".repeat(MAX_MESSAGE_BYTES + 1);
    match queue.send(over.clone()).await {
        Err(QueueError::TooLarge(n)) => assert_eq!(n, MAX_MESSAGE_BYTES + 1),
        other => panic!("send of a too large body: {other:?}"),
    }
    // Fewer characters than the limit, but more bytes.
    let wide = "é".repeat(MAX_MESSAGE_BYTES / 2 + 1);
    assert!(matches!(
        queue.send(wide).await,
        Err(QueueError::TooLarge(_))
    ));
    // One bad body fails the whole call and nothing is sent.
    let result = queue.send_many(vec!["fine".to_owned(), over]).await;
    assert!(matches!(result, Err(QueueError::TooLarge(_))), "{result:?}");
    assert!(!QueueError::TooLarge(1).is_retryable());
    assert_depth(&*queue, 0, "after rejected sends").await;
    assert_empty_for(&*queue, Duration::ZERO, "after rejected sends").await;
}

/// A received message stays hidden until its visibility timeout, then comes back with
/// the same id, a new receipt and receive count 2.
pub async fn visibility_and_redelivery(queue: Arc<dyn Queue>) {
    queue.send("again".to_owned()).await.expect("send");
    let first = queue
        .receive(1, SHORT, Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(first.len(), 1);
    let received_at = Instant::now();
    tokio::time::sleep(SHORT / 2).await;
    let early = queue
        .receive(10, LONG, Duration::ZERO)
        .await
        .expect("receive");
    // On a very slow machine the timeout may be over already: then this proves nothing.
    if received_at.elapsed() < SHORT {
        assert!(
            early.is_empty(),
            "redelivered during the visibility timeout: {early:?}"
        );
    }

    let second = receive_n(&*queue, 1, Duration::from_secs(8)).await;
    assert_eq!(
        second.len(),
        1,
        "message redelivered after its visibility timeout"
    );
    assert!(
        received_at.elapsed() >= SHORT - Duration::from_millis(100),
        "redelivered early"
    );
    assert_eq!(second[0].id, first[0].id, "same id on redelivery");
    assert_eq!(second[0].body, "again");
    assert_eq!(second[0].receive_count, 2);
    assert_ne!(
        second[0].receipt, first[0].receipt,
        "new receipt per delivery"
    );
    queue.ack(&[second[0].receipt.clone()]).await.expect("ack");
    assert_depth(&*queue, 0, "after ack").await;
}

/// `set_visibility` extends a delivery, and 0 makes the message visible at once.
pub async fn set_visibility(queue: Arc<dyn Queue>) {
    queue.send("vis".to_owned()).await.expect("send");
    let got = queue
        .receive(1, SHORT, Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(got.len(), 1);
    queue
        .set_visibility(&got[0].receipt, LONG)
        .await
        .expect("extend visibility");
    assert_empty_for(
        &*queue,
        Duration::from_secs(2),
        "after extending the visibility",
    )
    .await;

    queue
        .set_visibility(&got[0].receipt, Duration::ZERO)
        .await
        .expect("visibility 0");
    let started = Instant::now();
    let again = queue
        .receive(1, LONG, Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(again.len(), 1, "visible again after set_visibility(0)");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(again[0].id, got[0].id);
    assert_eq!(again[0].receive_count, 2);
    queue.ack(&[again[0].receipt.clone()]).await.expect("ack");
}

/// An acknowledged message never comes back, even after its visibility timeout; acking
/// it again is not an error.
pub async fn ack_removes_for_good(queue: Arc<dyn Queue>) {
    queue
        .send_many(vec!["gone".to_owned(), "kept".to_owned()])
        .await
        .expect("send_many");
    let got = receive_n(&*queue, 2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2);
    let gone = got
        .iter()
        .find(|m| m.body == "gone")
        .expect("message 'gone'");
    let kept = got
        .iter()
        .find(|m| m.body == "kept")
        .expect("message 'kept'");
    queue
        .set_visibility(&kept.receipt, Duration::from_secs(1))
        .await
        .expect("shorten");
    queue
        .ack(std::slice::from_ref(&gone.receipt))
        .await
        .expect("ack");
    queue
        .ack(std::slice::from_ref(&gone.receipt))
        .await
        .expect("ack of an acked message");

    let later = receive_n(&*queue, 1, Duration::from_secs(8)).await;
    assert_eq!(later.len(), 1);
    assert_eq!(
        later[0].body, "kept",
        "only the unacknowledged message returns"
    );
    assert_empty_for(
        &*queue,
        Duration::from_secs(2),
        "acked message must stay deleted",
    )
    .await;
    assert_depth(&*queue, 1, "with one message in flight").await;
}

/// 25 messages sent at once all arrive, each exactly once.
pub async fn send_many_exactly_once(queue: Arc<dyn Queue>) {
    queue
        .send_many(Vec::new())
        .await
        .expect("send_many of nothing");
    let bodies: Vec<String> = (0..25).map(|i| format!("message {i}")).collect();
    queue.send_many(bodies.clone()).await.expect("send_many");
    let got = receive_n(&*queue, 25, Duration::from_secs(15)).await;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for m in &got {
        assert!(m.receive_count == 1, "redelivered during the check: {m:?}");
        *counts.entry(m.body.as_str()).or_default() += 1;
    }
    for body in &bodies {
        assert_eq!(
            counts.get(body.as_str()),
            Some(&1),
            "{body:?} received once"
        );
    }
    assert_eq!(got.len(), 25, "no other messages");
    let receipts: Vec<Receipt> = got.iter().map(|m| m.receipt.clone()).collect();
    queue.ack(&receipts).await.expect("ack 25 at once");
    assert_depth(&*queue, 0, "after acking all").await;
    assert_empty_for(&*queue, Duration::ZERO, "after acking all").await;
}

/// A receive that is waiting returns soon after a message arrives, not at the end of
/// its wait.
pub async fn wait_returns_on_arrival(queue: Arc<dyn Queue>) {
    let sender = Arc::clone(&queue);
    let send = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        sender.send("late".to_owned()).await
    });
    let started = Instant::now();
    let got = queue
        .receive(1, LONG, Duration::from_secs(15))
        .await
        .expect("receive");
    let elapsed = started.elapsed();
    send.await.expect("sender task").expect("send");
    assert_eq!(got.len(), 1, "message that arrived during the wait");
    assert_eq!(got[0].body, "late");
    assert!(
        elapsed < Duration::from_secs(8),
        "receive returned only after {elapsed:?}"
    );
}

/// With nothing queued, `receive` returns an empty list after its wait.
pub async fn empty_receive_waits(queue: Arc<dyn Queue>) {
    let started = Instant::now();
    assert_empty_for(&*queue, Duration::ZERO, "empty queue").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no wait took {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    assert_empty_for(&*queue, Duration::from_secs(1), "empty queue").await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "returned before the wait: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(4),
        "waited too long: {elapsed:?}"
    );
}

/// The depth counts visible and in-flight messages, and not deleted ones.
pub async fn approximate_depth(queue: Arc<dyn Queue>) {
    assert_depth(&*queue, 0, "of an empty queue").await;
    queue
        .send_many((0..3).map(|i| i.to_string()).collect())
        .await
        .expect("send_many");
    assert_depth(&*queue, 3, "after sending 3").await;
    let got = queue
        .receive(1, LONG, Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(got.len(), 1, "receive(max = 1) returns one message");
    assert_depth(&*queue, 3, "with 2 visible and 1 in flight").await;
    queue.ack(&[got[0].receipt.clone()]).await.expect("ack");
    assert_depth(&*queue, 2, "after acking 1").await;
}

/// A receipt of an earlier delivery may not disturb the current one beyond what SQS
/// allows (`ack` succeeds or says the receipt is invalid); receipts the queue never
/// issued are [`QueueError::InvalidReceipt`] for `set_visibility`.
pub async fn stale_and_invalid_receipts(queue: Arc<dyn Queue>) {
    queue.send("stale".to_owned()).await.expect("send");
    let first = queue
        .receive(1, Duration::from_secs(1), Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(first.len(), 1);
    let second = receive_n(&*queue, 1, Duration::from_secs(8)).await;
    assert_eq!(second.len(), 1, "redelivered");
    match queue.ack(&[first[0].receipt.clone()]).await {
        Ok(()) | Err(QueueError::InvalidReceipt) => {}
        Err(err) => panic!("ack with a stale receipt: {err:?}"),
    }
    queue
        .ack(&[second[0].receipt.clone()])
        .await
        .expect("ack with the current receipt");
    assert_depth(&*queue, 0, "after acking the current delivery").await;

    let bogus = Receipt("not-a-receipt".to_owned());
    let result = queue.set_visibility(&bogus, Duration::ZERO).await;
    assert!(
        matches!(result, Err(QueueError::InvalidReceipt)),
        "{result:?}"
    );
    assert!(!QueueError::InvalidReceipt.is_retryable());
}
