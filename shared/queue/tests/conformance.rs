//! The conformance suite against every queue: in memory, SQS on the moto emulator that
//! `scripts/test` starts (it exports `AWS_ENDPOINT_URL` and credentials), and multi-queues
//! of both.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use aws_sdk_sqs::config::{
    BehaviorVersion, Credentials, Region, retry::RetryConfig, timeout::TimeoutConfig,
};
use cas_queue::{
    MemoryQueue, MultiQueue, Queue, QueueError, SqsQueue, create_queue, create_queue_with_dlq,
    testsuite,
};

/// The emulator's endpoint; a missing one is a failure, not a skip.
fn endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| {
        panic!(
            "AWS_ENDPOINT_URL is not set: the SQS tests need the moto emulator. \
             Run them through scripts/test, which starts it and exports AWS_ENDPOINT_URL, \
             AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION."
        )
    })
}

fn unique_name(what: &str) -> String {
    format!("cas-queue-test-{what}-{}", uuid::Uuid::new_v4().simple())
}

async fn sqs_client() -> aws_sdk_sqs::Client {
    SqsQueue::client_from_env(Some(endpoint())).await
}

async fn new_sqs_queue(client: &aws_sdk_sqs::Client) -> SqsQueue {
    let url = create_queue(client, &unique_name("q"), Duration::from_secs(30))
        .await
        .expect("create queue");
    SqsQueue::new(client.clone(), url)
}

#[tokio::test]
async fn memory_queue_passes_suite() {
    testsuite::run_all(|| async { Arc::new(MemoryQueue::new()) as Arc<dyn Queue> }).await;
}

#[tokio::test]
async fn sqs_queue_passes_suite() {
    let client = sqs_client().await;
    testsuite::run_all(|| async { Arc::new(new_sqs_queue(&client).await) as Arc<dyn Queue> }).await;
}

#[tokio::test]
async fn multi_queue_of_memory_queues_passes_suite() {
    testsuite::run_all(|| async {
        let queues: Vec<Arc<dyn Queue>> = (0..3)
            .map(|_| Arc::new(MemoryQueue::new()) as Arc<dyn Queue>)
            .collect();
        Arc::new(MultiQueue::new(queues)) as Arc<dyn Queue>
    })
    .await;
}

#[tokio::test]
async fn multi_queue_of_sqs_queues_passes_suite() {
    let client = sqs_client().await;
    testsuite::run_all(|| async {
        let mut queues: Vec<Arc<dyn Queue>> = Vec::new();
        for _ in 0..3 {
            queues.push(Arc::new(new_sqs_queue(&client).await));
        }
        Arc::new(MultiQueue::new(queues)) as Arc<dyn Queue>
    })
    .await;
}

/// Three memory queues, and a multi-queue over them.
fn three_memory_queues() -> (Vec<Arc<MemoryQueue>>, MultiQueue) {
    let inner: Vec<Arc<MemoryQueue>> = (0..3).map(|_| Arc::new(MemoryQueue::new())).collect();
    let multi = MultiQueue::new(
        inner
            .iter()
            .map(|q| Arc::clone(q) as Arc<dyn Queue>)
            .collect(),
    );
    (inner, multi)
}

#[tokio::test]
async fn multi_queue_spreads_messages_round_robin() {
    let (inner, multi) = three_memory_queues();
    for i in 0..6 {
        multi.send(format!("single {i}")).await.expect("send");
    }
    // 25 messages: chunks of 10, 10 and 5 to the next three queues.
    multi
        .send_many((0..25).map(|i| format!("many {i}")).collect())
        .await
        .expect("send_many");
    let mut depths = Vec::new();
    for q in &inner {
        depths.push(q.approximate_depth().await.expect("depth"));
    }
    assert_eq!(depths, vec![12, 12, 7]);
    assert_eq!(multi.approximate_depth().await.expect("depth"), 31);

    // Receipts route back to the queue that delivered the message.
    let got = multi
        .receive(10, Duration::from_secs(60), Duration::ZERO)
        .await
        .expect("receive");
    assert!(!got.is_empty());
    let receipts: Vec<_> = got.iter().map(|m| m.receipt.clone()).collect();
    multi.ack(&receipts).await.expect("ack");
    assert_eq!(
        multi.approximate_depth().await.expect("depth"),
        31 - got.len() as u64
    );
    let bogus = cas_queue::Receipt("7/whatever".to_owned());
    assert!(matches!(
        multi.ack(&[bogus]).await,
        Err(QueueError::InvalidReceipt)
    ));
}

#[tokio::test]
async fn multi_queue_receive_drains_every_queue_in_one_round() {
    let (inner, multi) = three_memory_queues();
    for (i, q) in inner.iter().enumerate() {
        for j in 0..4 {
            q.send(format!("queue {i} message {j}"))
                .await
                .expect("send");
        }
    }
    // A share of 3 per queue: three from each, in one call.
    let got = multi
        .receive(9, Duration::from_secs(60), Duration::ZERO)
        .await
        .expect("receive");
    assert_eq!(got.len(), 9);
    for i in 0..3 {
        let from_queue = got
            .iter()
            .filter(|m| m.receipt.0.starts_with(&format!("{i}/")))
            .count();
        assert_eq!(from_queue, 3, "queue {i}");
        assert!(
            got.iter()
                .filter(|m| m.body.starts_with(&format!("queue {i} ")))
                .count()
                == 3
        );
    }
    // What is left comes with the next round; a small `max` asks only some queues.
    let rest = multi
        .receive(2, Duration::from_secs(60), Duration::ZERO)
        .await
        .expect("receive");
    assert_eq!(rest.len(), 2);
    assert_eq!(multi.approximate_depth().await.expect("depth"), 12);
}

#[tokio::test]
async fn multi_queue_receives_from_every_queue() {
    let (inner, multi) = three_memory_queues();
    let multi = multi.with_poll_slice(Duration::from_millis(100));
    // Only the last queue has a message: a waiting receive still finds it.
    let last = Arc::clone(&inner[2]);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        last.send("in the last queue".to_owned()).await
    });
    let started = Instant::now();
    let got = multi
        .receive(10, Duration::from_secs(60), Duration::from_secs(10))
        .await
        .expect("receive");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, "in the last queue");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        got[0].receipt.0.starts_with("2/"),
        "receipt {:?}",
        got[0].receipt
    );
}

#[tokio::test]
async fn sqs_messages_land_in_the_dead_letter_queue() {
    let client = sqs_client().await;
    let name = unique_name("dlq");
    let max_receives = 2;
    let (url, dlq_url) =
        create_queue_with_dlq(&client, &name, Duration::from_secs(30), max_receives)
            .await
            .expect("create queue with dlq");
    // Idempotent.
    let again = create_queue_with_dlq(&client, &name, Duration::from_secs(30), max_receives)
        .await
        .expect("create queue with dlq again");
    assert_eq!(again, (url.clone(), dlq_url.clone()));
    assert!(dlq_url.ends_with(&format!("{name}-dlq")), "{dlq_url}");

    let queue = SqsQueue::new(client.clone(), url);
    let dlq = SqsQueue::new(client.clone(), dlq_url);
    queue.send("poison".to_owned()).await.expect("send");
    for n in 1..=max_receives {
        let got = queue
            .receive(1, Duration::ZERO, Duration::from_secs(2))
            .await
            .expect("receive");
        assert_eq!(got.len(), 1, "receive {n}");
        assert_eq!(got[0].receive_count, n);
    }
    let got = queue
        .receive(1, Duration::ZERO, Duration::from_secs(1))
        .await
        .expect("receive");
    assert!(
        got.is_empty(),
        "received more than max_receives times: {got:?}"
    );
    let dead = dlq
        .receive(1, Duration::from_secs(30), Duration::from_secs(2))
        .await
        .expect("dlq");
    assert_eq!(dead.len(), 1, "message moved to the dead-letter queue");
    assert_eq!(dead[0].body, "poison");
    assert_eq!(queue.approximate_depth().await.expect("depth"), 0);
    // SQS (and moto) keep counting: the move itself was a receive of the source queue.
    assert!(dead[0].receive_count > max_receives, "{:?}", dead[0]);
}

#[tokio::test]
async fn sqs_missing_queue_is_an_error() {
    let client = sqs_client().await;
    let url = format!("{}/123456789012/{}", endpoint(), unique_name("missing"));
    let queue = SqsQueue::new(client, url);
    let err = queue
        .send("x".to_owned())
        .await
        .expect_err("send to a missing queue");
    assert!(matches!(err, QueueError::Internal(_)), "{err:?}");
}

#[tokio::test]
async fn unreachable_endpoint_is_retryable() {
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "static"))
        .endpoint_url("http://127.0.0.1:1")
        .retry_config(RetryConfig::standard().with_max_attempts(2))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(1))
                .operation_timeout(Duration::from_secs(5))
                .build(),
        )
        .build();
    let queue = SqsQueue::new(
        aws_sdk_sqs::Client::from_conf(config),
        "http://127.0.0.1:1/123456789012/nowhere",
    );
    let started = Instant::now();
    for result in [
        queue.send("x".to_owned()).await.map(|_| 0),
        queue
            .receive(1, Duration::from_secs(1), Duration::ZERO)
            .await
            .map(|m| m.len() as u64),
        queue.approximate_depth().await,
    ] {
        let err = result.expect_err("unreachable endpoint");
        assert!(matches!(err, QueueError::Unavailable(_)), "{err:?}");
        assert!(err.is_retryable());
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}
