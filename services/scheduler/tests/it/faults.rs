//! The scheduler when parts fail: every accepted request reaches a batch within a bound,
//! every batch is announced, a batch that can never be anchored hands its requests to a new
//! one, an outage is waited out without spinning, and an older request of a stream that
//! arrives after a newer one was batched is REPLACED, whichever scheduler batched it.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// A queue whose first `fail` sends fail, as when the queue service is down for a while.
struct SendsFail {
    inner: Arc<dyn Queue>,
    fail: AtomicUsize,
}

#[async_trait]
impl Queue for SendsFail {
    async fn send(&self, body: String) -> Result<(), QueueError> {
        self.send_many(vec![body]).await
    }
    async fn send_many(&self, bodies: Vec<String>) -> Result<(), QueueError> {
        let left = self.fail.load(Ordering::SeqCst);
        if left > 0 {
            self.fail.store(left - 1, Ordering::SeqCst);
            return Err(QueueError::Unavailable("simulated outage".into()));
        }
        self.inner.send_many(bodies).await
    }
    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Message>, QueueError> {
        self.inner.receive(max, visibility, wait).await
    }
    async fn ack(&self, receipts: &[Receipt]) -> Result<(), QueueError> {
        self.inner.ack(receipts).await
    }
    async fn set_visibility(
        &self,
        receipt: &Receipt,
        visibility: Duration,
    ) -> Result<(), QueueError> {
        self.inner.set_visibility(receipt, visibility).await
    }
    async fn approximate_depth(&self) -> Result<u64, QueueError> {
        self.inner.approximate_depth().await
    }
}

/// The batch queue's first sends fail when the batch is closed. The batch is durable, so its
/// ingest messages are acknowledged, and it is announced again within seconds (it used to
/// wait 30 minutes for the re-dispatch loop).
#[tokio::test]
async fn a_failed_announcement_is_retried_within_seconds() {
    let rig = Rig::new(Backend::Embedded, 1).await;
    let rs = requests(3);
    rig.insert(&rs).await;
    let batches: Arc<dyn Queue> = Arc::new(SendsFail {
        inner: Arc::clone(&rig.batches),
        fail: AtomicUsize::new(2),
    });
    let scheduler = Scheduler::new(
        Arc::clone(&rig.store) as Arc<dyn RequestStore>,
        Arc::clone(&rig.ingest),
        batches,
        Arc::clone(&rig.blobs),
        config(1 << 20),
    )
    .unwrap();
    publish(rig.ingest.as_ref(), pack(&rs, MAX_MESSAGE_BYTES)).await;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(scheduler.run(shutdown.clone()));
    let started = Instant::now();
    let batch = only_batch_message_within(rig.batches.as_ref(), Duration::from_secs(20)).await;
    assert!(started.elapsed() < Duration::from_secs(20));
    let record = rig.store.get_batch(batch).await.unwrap().expect("batch");
    assert_eq!(record.request_count, 3);
    assert!(
        record.announced_at.is_some(),
        "the announcement is recorded"
    );
    assert_depth_becomes(rig.ingest.as_ref(), 0, "ingest acknowledged").await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// Wait up to `limit` for one batch message, then check that no other one comes.
async fn only_batch_message_within(queue: &dyn Queue, limit: Duration) -> Uuid {
    let deadline = Instant::now() + limit;
    loop {
        let got = queue
            .receive(10, Duration::from_secs(60), Duration::from_millis(500))
            .await
            .expect("receive");
        if let Some(first) = got.first() {
            assert_eq!(got.len(), 1, "{got:?}");
            let more = drain(queue, Duration::from_secs(1)).await;
            assert!(more.is_empty(), "a second batch message: {more:?}");
            return BatchMessage::parse(&first.body).expect("batch message").bid;
        }
        assert!(
            Instant::now() < deadline,
            "no batch message within {limit:?}"
        );
    }
}

/// A scheduler killed between recording a batch and announcing it: the next round of any
/// scheduler announces it once its grace (30 s) has passed, not after 30 minutes.
#[tokio::test]
async fn a_batch_recorded_but_never_announced_is_announced_after_a_short_grace() {
    let rig = Rig::new(Backend::Embedded, 1).await;
    let rs = requests(2);
    rig.insert(&rs).await;
    let (old, fresh) = (Uuid::now_v7(), Uuid::now_v7());
    for (id, member, age) in [(old, rs[0].id, 45), (fresh, rs[1].id, 5)] {
        assert!(
            rig.store
                .create_batch(&NewBatch {
                    id,
                    members: vec![member],
                    created_at: now() - chrono::Duration::seconds(age),
                })
                .await
                .unwrap()
        );
    }
    let mut scheduler = rig.scheduler(config(1 << 20));
    assert_eq!(scheduler.redispatch().await.unwrap(), 1);
    assert_eq!(only_batch_message(rig.batches.as_ref()).await, old);
    assert!(
        rig.store
            .get_batch(old)
            .await
            .unwrap()
            .unwrap()
            .announced_at
            .is_some()
    );
    assert_eq!(scheduler.redispatch().await.unwrap(), 0, "announced once");
}

/// Batches that failed for good (their file missing or corrupt) have their requests moved to
/// new batches, with fresh batch files in the same leaf order, and announced. 150 of them do
/// not keep a newer lost batch from its announcement (they used to be re-announced forever,
/// a hundred at a time, oldest first).
#[tokio::test]
async fn failed_batches_hand_their_requests_to_new_batches_without_starving_others() {
    let rig = Rig::new(Backend::Embedded, 1).await;
    let rs = requests(302);
    rig.insert(&rs).await;
    let mut failed = Vec::new();
    for pair in rs[..300].chunks(2) {
        let id = Uuid::now_v7();
        let mut members = vec![pair[0].id, pair[1].id];
        let mut cids = vec![pair[0].cid.clone(), pair[1].cid.clone()];
        if cids[0] > cids[1] {
            members.swap(0, 1);
            cids.swap(0, 1);
        }
        assert!(
            rig.store
                .create_batch(&NewBatch {
                    id,
                    members,
                    created_at: now() - chrono::Duration::hours(2),
                })
                .await
                .unwrap()
        );
        rig.store
            .mark_batch_announced(id, now() - chrono::Duration::hours(2))
            .await
            .unwrap();
        assert!(
            rig.store
                .fail_batch(id, "batch file is missing")
                .await
                .unwrap()
        );
        failed.push((id, cids));
    }
    // A newer batch whose message was lost.
    let lost = Uuid::now_v7();
    assert!(
        rig.store
            .create_batch(&NewBatch {
                id: lost,
                members: vec![rs[300].id],
                created_at: now() - chrono::Duration::minutes(90),
            })
            .await
            .unwrap()
    );
    rig.store
        .mark_batch_announced(lost, now() - chrono::Duration::minutes(90))
        .await
        .unwrap();

    let mut scheduler = rig.scheduler(config(1 << 20));
    assert_eq!(scheduler.redispatch().await.unwrap(), 151);
    let messages = drain(rig.batches.as_ref(), Duration::from_secs(2)).await;
    let announced: HashSet<Uuid> = messages
        .iter()
        .map(|m| BatchMessage::parse(&m.body).unwrap().bid)
        .collect();
    assert_eq!(announced.len(), 151);
    assert!(
        announced.contains(&lost),
        "the lost batch is announced again"
    );
    for (id, cids) in &failed {
        let record = rig.store.get_batch(*id).await.unwrap().unwrap();
        let new = record.replaced_by.expect("moved to a new batch");
        assert!(announced.contains(&new));
        assert_eq!(
            &batch_file(rig.blobs.as_ref(), new).await,
            cids,
            "leaf order kept"
        );
        assert_eq!(
            rig.store
                .get_batch(new)
                .await
                .unwrap()
                .unwrap()
                .request_count,
            2
        );
    }
    assert!(rig.store.failed_batches(1000).await.unwrap().is_empty());
    assert_eq!(scheduler.redispatch().await.unwrap(), 0, "nothing twice");
}

/// A request whose publish was lost (the API died after its insert, or the queue was down
/// longer than the publisher retries) is re-published by the sweeper and batched, whatever
/// happens around it: later requests committed and batched before it, a sweep that saw it
/// pending in this very scheduler.
#[tokio::test]
async fn the_sweeper_keeps_its_place_at_the_oldest_unbatched_request() {
    let rig = Rig::new(Backend::Embedded, 1).await;
    let old = now() - chrono::Duration::minutes(10);
    let mut lost = requests(2);
    for r in &mut lost {
        r.created_at = old;
    }
    rig.insert(&lost[..1]).await;
    let later = requests(3);
    rig.insert(&later).await;
    rig.insert(&lost[1..]).await;
    // The later ones were published and batched; the two lost ones never were.
    let mut scheduler = rig.scheduler(config(1 << 20));
    publish(rig.ingest.as_ref(), pack(&later, MAX_MESSAGE_BYTES)).await;
    receive_pending(&mut scheduler, 3).await;
    scheduler.close_batch().await.unwrap();
    let _ = drain(rig.batches.as_ref(), Duration::from_millis(300)).await;

    let first = rig.store.cursor(SWEEPER_CURSOR).await.unwrap();
    assert_eq!(first, None);
    let mut found = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while found.len() < 2 {
        assert!(Instant::now() < deadline, "re-published {found:?}");
        scheduler.sweep().await.unwrap();
        for m in drain(rig.ingest.as_ref(), Duration::from_millis(200)).await {
            found.extend(
                parse_ingest(&m.body)
                    .unwrap()
                    .reqs
                    .into_iter()
                    .map(|e| e.id),
            );
            rig.ingest
                .ack(std::slice::from_ref(&m.receipt))
                .await
                .unwrap();
        }
    }
    found.sort();
    let mut expected: Vec<Uuid> = lost.iter().map(|r| r.id).collect();
    expected.sort();
    assert_eq!(found, expected);
    let held = rig
        .store
        .cursor(SWEEPER_CURSOR)
        .await
        .unwrap()
        .expect("cursor");

    // Until the oldest is batched, the cursor stays at it.
    let batch = NewBatch {
        id: Uuid::now_v7(),
        members: vec![lost[1].id],
        created_at: now(),
    };
    rig.store.create_batch(&batch).await.unwrap();
    scheduler.sweep().await.unwrap();
    assert_eq!(rig.store.cursor(SWEEPER_CURSOR).await.unwrap(), Some(held));
    let batch = NewBatch {
        id: Uuid::now_v7(),
        members: vec![lost[0].id],
        created_at: now(),
    };
    rig.store.create_batch(&batch).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        scheduler.sweep().await.unwrap();
        let now_at = rig.store.cursor(SWEEPER_CURSOR).await.unwrap().unwrap();
        if now_at > held {
            break;
        }
        assert!(Instant::now() < deadline, "the cursor never moved on");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An older request for a stream that arrives after a newer one of the same stream and
/// origin was batched is REPLACED at once, as in the reference's queue mode; a request of
/// another origin is not. The newest tip is kept in the store, so it holds across batches
/// and across schedulers.
#[tokio::test]
async fn an_older_request_after_a_newer_one_was_batched_is_replaced() {
    let rig = Rig::new(Backend::Embedded, 1).await;
    let stream = new_stream();
    let newer = request(&stream, "did:key:node-a", 2_000);
    let older = request(&stream, "did:key:node-a", 1_000);
    let other_origin = request(&stream, "did:key:node-b", 500);
    rig.insert(&[newer.clone(), older.clone(), other_origin.clone()])
        .await;

    let mut first = rig.scheduler(config(1 << 20));
    publish(
        rig.ingest.as_ref(),
        pack(std::slice::from_ref(&newer), MAX_MESSAGE_BYTES),
    )
    .await;
    receive_pending(&mut first, 1).await;
    let report = first.close_batch().await.unwrap();
    assert_eq!(report.batched, 1);

    // Another scheduler receives the older request (and one of another origin).
    let mut second = rig.scheduler(config(1 << 20));
    publish(
        rig.ingest.as_ref(),
        pack(&[older.clone(), other_origin.clone()], MAX_MESSAGE_BYTES),
    )
    .await;
    // The older one is REPLACED on arrival; the other origin's waits for its batch.
    receive_pending(&mut second, 1).await;
    assert_eq!(status(&rig.store, &older).await, RequestStatus::Replaced);
    let report = second.close_batch().await.unwrap();
    assert_eq!((report.batched, report.replaced), (1, 0));
    assert_eq!(
        status(&rig.store, &other_origin).await,
        RequestStatus::Pending
    );
    assert_eq!(status(&rig.store, &newer).await, RequestStatus::Pending);
    let batched = leaf_indexes(&rig.db, report.batch_id.unwrap()).await;
    assert!(batched.contains_key(&other_origin.id));
    assert_depth_becomes(rig.ingest.as_ref(), 0, "all resolved").await;
}

/// Several requests of one stream and origin in one round (here one message) claim the
/// tip once, for the newest: the store decides one claim per pair per call (PostgreSQL
/// refuses to upsert one row twice in a statement, which used to fail every claim of the
/// round, again and again, and kept the older requests pending until the close).
#[tokio::test]
async fn requests_of_one_stream_received_together_claim_once() {
    let rig = Rig::new(Backend::Embedded, 1).await;
    let stream = new_stream();
    let older = request(&stream, "did:key:a", 100);
    let newest = request(&stream, "did:key:a", 300);
    let middle = request(&stream, "did:key:a", 200);
    let other = request(&new_stream(), "did:key:a", 100);
    let all = [older.clone(), newest.clone(), middle.clone(), other.clone()];
    rig.insert(&all).await;
    let mut scheduler = rig.scheduler(config(1 << 20));
    publish(rig.ingest.as_ref(), pack(&all, MAX_MESSAGE_BYTES)).await;
    receive_pending(&mut scheduler, 2).await;
    for r in [&older, &middle] {
        assert_eq!(status(&rig.store, r).await, RequestStatus::Replaced);
    }
    let report = scheduler.close_batch().await.unwrap();
    assert_eq!((report.batched, report.replaced), (2, 0), "{report:?}");
    let batched = leaf_indexes(&rig.db, report.batch_id.unwrap()).await;
    assert!(batched.contains_key(&newest.id) && batched.contains_key(&other.id));
    assert_depth_becomes(rig.ingest.as_ref(), 0, "all resolved").await;
}

/// Two schedulers receive requests of one stream at the same time: whatever the order, the
/// newest ends up as the stream's tip, so a request between the two that comes later is
/// REPLACED.
#[tokio::test]
async fn concurrent_schedulers_keep_the_newest_tip() {
    let rig = Rig::new(Backend::Embedded, 1).await;
    let stream = new_stream();
    let (a, b, c) = (
        request(&stream, "o", 100),
        request(&stream, "o", 300),
        request(&stream, "o", 200),
    );
    rig.insert(&[a.clone(), b.clone(), c.clone()]).await;
    let (qa, qb): (Arc<dyn Queue>, Arc<dyn Queue>) =
        (Arc::new(MemoryQueue::new()), Arc::new(MemoryQueue::new()));
    let mut sa = rig.scheduler_with_ingest(Arc::clone(&qa), config(1 << 20));
    let mut sb = rig.scheduler_with_ingest(Arc::clone(&qb), config(1 << 20));
    publish(
        qa.as_ref(),
        pack(std::slice::from_ref(&a), MAX_MESSAGE_BYTES),
    )
    .await;
    publish(
        qb.as_ref(),
        pack(std::slice::from_ref(&b), MAX_MESSAGE_BYTES),
    )
    .await;
    let (ra, rb) = tokio::join!(sa.receive_once(), sb.receive_once());
    assert_eq!((ra.unwrap(), rb.unwrap()), (1, 1));
    let (ra, rb) = tokio::join!(sa.close_batch(), sb.close_batch());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    // b is the newest: always batched. a is older: batched if it claimed first, else
    // REPLACED on arrival.
    assert_eq!(rb.batched, 1);
    let a_status = status(&rig.store, &a).await;
    assert!(
        (ra.batched == 1 && a_status == RequestStatus::Pending)
            || (ra.batched == 0 && a_status == RequestStatus::Replaced),
        "{ra:?} {a_status:?}"
    );

    publish(
        qa.as_ref(),
        pack(std::slice::from_ref(&c), MAX_MESSAGE_BYTES),
    )
    .await;
    receive_until_drained(&mut sa, qa.as_ref()).await;
    assert_eq!(status(&rig.store, &c).await, RequestStatus::Replaced);
    assert_eq!(sa.close_batch().await.unwrap().batched, 0);
}

/// While the store is down and the pending set is full, the loop waits between attempts: it
/// must not spin a core (it used to, at 100 %). Measured as the CPU time of the thread that
/// runs the scheduler alone, over three seconds.
#[test]
fn no_busy_loop_while_the_store_is_down() {
    let thread_cpu = || -> Duration {
        // utime and stime of this thread, in clock ticks (fields 14 and 15).
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("thread stat");
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let used = runtime.block_on(async {
        // Nothing listens on port 1: every store call fails at once.
        let store = PgStore::connect_lazy(
            "postgres://nobody@127.0.0.1:1/nothing",
            2,
            Duration::from_millis(200),
        )
        .unwrap();
        let ingest: Arc<dyn Queue> = Arc::new(MemoryQueue::new());
        let rs = requests(3);
        publish(ingest.as_ref(), pack(&rs, 400)).await;
        let dir = std::env::temp_dir().join(unique("blobs"));
        let _cleanup = TempDir(dir.clone());
        let scheduler = Scheduler::new(
            Arc::new(store),
            ingest,
            Arc::new(MemoryQueue::new()),
            Arc::new(LocalDirBlobStore::new(&dir)),
            SchedulerConfig {
                sweep_interval: Duration::from_secs(60),
                ..config(2) // fewer than the pending entries: the loop stops receiving
            },
        )
        .unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(scheduler.run(shutdown.clone()));
        // Let it receive and fail its first close, then measure.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = thread_cpu();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let used = thread_cpu() - before;
        shutdown.cancel();
        task.await.unwrap().unwrap();
        used
    });
    assert!(
        used < Duration::from_millis(600),
        "the scheduler used {used:?} of CPU in 3 s while the store was down"
    );
}
