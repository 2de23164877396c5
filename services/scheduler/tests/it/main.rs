//! Integration tests of the scheduler against the real servers that `scripts/test` starts:
//! PostgreSQL (`DATABASE_URL`) and moto for SQS + S3 (`AWS_ENDPOINT_URL`). Tests of pure
//! scheduling logic also run over the embedded boundaries (`MemoryQueue`,
//! `LocalDirBlobStore`). Every test uses its own database, queues and bucket.
//!
//! [`faults`] covers what must hold when parts fail: lost announcements and publishes,
//! failed batches, outages, stale requests of a stream, several schedulers.

mod faults;

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use cas_blob::{BlobStore, LocalDirBlobStore, S3BlobStore};
use cas_core::{
    ClientTimestamp, RequestStatus, StreamId,
    pipeline::{
        BatchMessage, IngestEntry, batch_file_key, decode_batch_file, pack_ingest, parse_ingest,
    },
};
use cas_merkle::dag_cbor_cid;
use cas_queue::{
    MAX_MESSAGE_BYTES, MemoryQueue, Message, MultiQueue, Queue, QueueError, Receipt, SqsQueue,
    create_queue,
};
use cas_scheduler::{SWEEPER_CURSOR, Scheduler, SchedulerConfig};
use cas_store::{AnchoredBatch, NewBatch, NewRequest, PgStore, RequestStore, test_support::TestDb};
use chrono::{DateTime, SubsecRound, Utc};
use cid::Cid;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Poll `predicate` every `interval` until it holds or `timeout` passes; true if it held.
async fn wait_until<F, Fut>(timeout: Duration, interval: Duration, mut predicate: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if predicate().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(interval).await;
    }
}

fn endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").expect(
        "AWS_ENDPOINT_URL is not set: run the tests through scripts/test, which starts moto",
    )
}

fn unique(what: &str) -> String {
    format!("cas-sched-it-{what}-{}", Uuid::new_v4().simple())
}

async fn sqs_queue(what: &str) -> SqsQueue {
    let client = SqsQueue::client_from_env(Some(endpoint())).await;
    let url = create_queue(&client, &unique(what), Duration::from_secs(30))
        .await
        .expect("create queue");
    SqsQueue::new(client, url)
}

async fn s3_blobs() -> Arc<S3BlobStore> {
    let store = S3BlobStore::from_env(unique("bucket"), None, Some(endpoint())).await;
    store.ensure_bucket().await.expect("create bucket");
    Arc::new(store)
}

fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// A request for `stream` from `origin` with client timestamp `ts` (ns), with a real CID.
fn request(stream: &StreamId, origin: &str, ts: i64) -> NewRequest {
    let id = Uuid::now_v7();
    NewRequest {
        id,
        cid: dag_cbor_cid(id.as_bytes()).to_string(),
        stream_id: stream.to_string(),
        origin: origin.to_owned(),
        timestamp: ClientTimestamp::from_unix_nanos(ts),
        created_at: now(),
    }
}

fn new_stream() -> StreamId {
    StreamId::new(3, dag_cbor_cid(Uuid::new_v4().as_bytes()))
}

fn requests(n: usize) -> Vec<NewRequest> {
    (0..n)
        .map(|i| {
            request(
                &new_stream(),
                "127.0.0.1",
                1_700_000_000_000_000_000 + i as i64,
            )
        })
        .collect()
}

fn entry(r: &NewRequest) -> IngestEntry {
    IngestEntry {
        id: r.id,
        cid: r.cid.clone(),
        sid: r.stream_id.clone(),
        org: r.origin.clone(),
        ts: r.timestamp.unix_nanos(),
    }
}

/// Pack requests as the API does (many per message, at most `max_bytes` each).
fn pack(rs: &[NewRequest], max_bytes: usize) -> Vec<String> {
    let entries: Vec<IngestEntry> = rs.iter().map(entry).collect();
    pack_ingest(&entries, max_bytes).expect("pack")
}

/// Publish each packed message with its own `send` (a MultiQueue spreads them round-robin).
async fn publish(queue: &dyn Queue, messages: Vec<String>) {
    for m in messages {
        queue.send(m).await.expect("publish");
    }
}

async fn depth(queue: &dyn Queue) -> u64 {
    queue.approximate_depth().await.expect("depth")
}

/// Wait (bounded) until the queue reports `expected` messages.
async fn assert_depth_becomes(queue: &dyn Queue, expected: u64, what: &str) {
    let ok = wait_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async { depth(queue).await == expected },
    )
    .await;
    assert!(
        ok,
        "{what}: depth is {}, expected {expected}",
        depth(queue).await
    );
}

/// Receive until the scheduler holds `n` pending entries (bounded).
async fn receive_pending(scheduler: &mut Scheduler, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while scheduler.pending_len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} entries arrived",
            scheduler.pending_len()
        );
        scheduler.receive_once().await.expect("receive");
    }
    assert_eq!(scheduler.pending_len(), n);
}

/// Receive until the queue holds nothing (every message received was resolved and acked on
/// arrival: entries batched or replaced already).
async fn receive_until_drained(scheduler: &mut Scheduler, queue: &dyn Queue) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while depth(queue).await > 0 {
        assert!(Instant::now() < deadline, "messages still queued");
        scheduler.receive_once().await.expect("receive");
    }
}

/// Receive every message the queue delivers within `wait` (hidden for a minute).
async fn drain(queue: &dyn Queue, wait: Duration) -> Vec<Message> {
    let mut all = Vec::new();
    let deadline = Instant::now() + wait;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return all;
        }
        let got = queue
            .receive(
                10,
                Duration::from_secs(60),
                remaining.min(Duration::from_secs(1)),
            )
            .await
            .expect("receive");
        all.extend(got);
    }
}

/// Receive exactly one batch message (bounded), then check no other one is queued.
async fn only_batch_message(queue: &dyn Queue) -> Uuid {
    let got = drain(queue, Duration::from_secs(3)).await;
    assert_eq!(got.len(), 1, "batch messages: {got:?}");
    BatchMessage::parse(&got[0].body)
        .expect("batch message")
        .bid
}

fn config(batch_max: usize) -> SchedulerConfig {
    SchedulerConfig {
        batch_max,
        linger: Duration::from_millis(300),
        flush_interval: None,
        visibility: Duration::from_secs(30),
        receive_wait: Duration::from_secs(1),
        receive_interval: Duration::from_millis(100),
        sweep_age: Duration::from_secs(60),
        sweep_interval: Duration::from_secs(1),
        redispatch_after: Duration::from_secs(60),
    }
}

async fn batch_count(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM batch")
        .fetch_one(db.store.pool())
        .await
        .expect("count batches")
}

async fn leaf_indexes(db: &TestDb, batch: Uuid) -> HashMap<Uuid, i32> {
    let rows: Vec<(Uuid, i32)> =
        sqlx::query_as("SELECT request_id, leaf_index FROM batch_member WHERE batch_id = $1")
            .bind(batch)
            .fetch_all(db.store.pool())
            .await
            .expect("members");
    rows.into_iter().collect()
}

async fn status(store: &PgStore, r: &NewRequest) -> RequestStatus {
    store
        .get_request(&r.cid)
        .await
        .expect("get")
        .expect("stored")
        .status()
}

/// The batch file of `batch`: its leaves, as CID strings.
async fn batch_file(blobs: &dyn BlobStore, batch: Uuid) -> Vec<String> {
    let bytes = blobs
        .get(&batch_file_key(batch))
        .await
        .expect("get batch file")
        .expect("batch file exists");
    let (id, leaves) = decode_batch_file(&bytes).expect("decode batch file");
    assert_eq!(id, batch);
    leaves.iter().map(Cid::to_string).collect()
}

/// Ingest queue, batch queue, blob store, and the directory to remove afterwards.
type Boundaries = (
    Arc<dyn Queue>,
    Arc<dyn Queue>,
    Arc<dyn BlobStore>,
    Option<TempDir>,
);

/// The boundaries a scheduler test runs on.
struct Rig {
    db: TestDb,
    store: Arc<PgStore>,
    ingest: Arc<dyn Queue>,
    batches: Arc<dyn Queue>,
    blobs: Arc<dyn BlobStore>,
    _dir: Option<TempDir>,
}

#[derive(Debug, Clone, Copy)]
enum Backend {
    /// SQS + S3 on moto (production path).
    Aws,
    /// MemoryQueue + LocalDirBlobStore (the embedded boundaries).
    Embedded,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Rig {
    /// `ingest_queues` SQS queues behind a MultiQueue (or memory queues for Embedded).
    async fn new(backend: Backend, ingest_queues: usize) -> Self {
        let db = TestDb::new().await.expect("test database");
        let store = Arc::new(db.store.clone());
        let (ingest, batches, blobs, dir): Boundaries = match backend {
            Backend::Aws => {
                let mut inner: Vec<Arc<dyn Queue>> = Vec::new();
                for i in 0..ingest_queues {
                    inner.push(Arc::new(sqs_queue(&format!("ingest{i}")).await));
                }
                (
                    Arc::new(MultiQueue::new(inner)),
                    Arc::new(sqs_queue("batches").await),
                    s3_blobs().await,
                    None,
                )
            }
            Backend::Embedded => {
                let inner: Vec<Arc<dyn Queue>> = (0..ingest_queues)
                    .map(|_| Arc::new(MemoryQueue::new()) as Arc<dyn Queue>)
                    .collect();
                let path = std::env::temp_dir().join(unique("blobs"));
                (
                    Arc::new(MultiQueue::new(inner).with_poll_slice(Duration::from_millis(50))),
                    Arc::new(MemoryQueue::new()),
                    Arc::new(LocalDirBlobStore::new(&path)),
                    Some(TempDir(path)),
                )
            }
        };
        Self {
            db,
            store,
            ingest,
            batches,
            blobs,
            _dir: dir,
        }
    }

    fn scheduler(&self, config: SchedulerConfig) -> Scheduler {
        self.scheduler_with_ingest(Arc::clone(&self.ingest), config)
    }

    fn scheduler_with_ingest(&self, ingest: Arc<dyn Queue>, config: SchedulerConfig) -> Scheduler {
        Scheduler::new(
            Arc::clone(&self.store) as Arc<dyn RequestStore>,
            ingest,
            Arc::clone(&self.batches),
            Arc::clone(&self.blobs),
            config,
        )
        .expect("scheduler")
    }

    async fn insert(&self, rs: &[NewRequest]) {
        self.store.insert_requests(rs).await.expect("insert");
    }
}

/// A queue whose acknowledgements always fail: a scheduler that "crashes" between recording
/// a batch and acknowledging its messages.
struct AckFails(Arc<dyn Queue>);

#[async_trait]
impl Queue for AckFails {
    async fn send(&self, body: String) -> Result<(), QueueError> {
        self.0.send(body).await
    }
    async fn send_many(&self, bodies: Vec<String>) -> Result<(), QueueError> {
        self.0.send_many(bodies).await
    }
    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Message>, QueueError> {
        self.0.receive(max, visibility, wait).await
    }
    async fn ack(&self, _receipts: &[Receipt]) -> Result<(), QueueError> {
        Err(QueueError::Unavailable(
            "simulated crash before the ack".into(),
        ))
    }
    async fn set_visibility(
        &self,
        receipt: &Receipt,
        visibility: Duration,
    ) -> Result<(), QueueError> {
        self.0.set_visibility(receipt, visibility).await
    }
    async fn approximate_depth(&self) -> Result<u64, QueueError> {
        self.0.approximate_depth().await
    }
}

// ---------------------------------------------------------------------------------------
// 1. One batch from a multi-queue of three SQS queues
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn requests_from_three_sqs_queues_close_into_one_batch() {
    let db_rig = Rig::new(Backend::Aws, 1).await;
    // Build the multi-queue by hand too, to see each inner queue's depth.
    let inner: Vec<Arc<SqsQueue>> = vec![
        Arc::new(sqs_queue("multi0").await),
        Arc::new(sqs_queue("multi1").await),
        Arc::new(sqs_queue("multi2").await),
    ];
    let multi: Arc<dyn Queue> = Arc::new(MultiQueue::new(
        inner
            .iter()
            .map(|q| Arc::clone(q) as Arc<dyn Queue>)
            .collect(),
    ));
    let rig = Rig {
        ingest: Arc::clone(&multi),
        ..db_rig
    };

    let rs = requests(30);
    rig.insert(&rs).await;
    // Small messages, so that there are several and they land on all three queues.
    let messages = pack(&rs, 900);
    assert!(messages.len() >= 6, "{} messages", messages.len());
    let message_count = messages.len();
    publish(rig.ingest.as_ref(), messages).await;
    for (i, q) in inner.iter().enumerate() {
        assert!(depth(q.as_ref()).await > 0, "queue {i} got no message");
    }

    let mut scheduler = rig.scheduler(config(1 << 20));
    receive_pending(&mut scheduler, rs.len()).await;
    let report = scheduler.close_batch().await.expect("close");
    let batch_id = report.batch_id.expect("a batch");
    assert_eq!(report.batched, 30);
    assert_eq!(report.replaced, 0);
    assert_eq!(report.dropped, 0);
    assert_eq!(report.acked, message_count);
    assert_eq!(scheduler.pending_len(), 0);

    let record = rig.store.get_batch(batch_id).await.unwrap().expect("batch");
    assert_eq!(record.request_count, 30);
    assert_eq!(record.anchored, None);
    assert_eq!(batch_count(&rig.db).await, 1);

    // The batch file lists exactly their CIDs, sorted by CID string.
    let leaves = batch_file(rig.blobs.as_ref(), batch_id).await;
    let mut expected: Vec<String> = rs.iter().map(|r| r.cid.clone()).collect();
    expected.sort();
    assert_eq!(leaves, expected);

    // Members' leaf_index = their position in the file.
    let by_cid: HashMap<&str, Uuid> = rs.iter().map(|r| (r.cid.as_str(), r.id)).collect();
    let indexes = leaf_indexes(&rig.db, batch_id).await;
    assert_eq!(indexes.len(), 30);
    for (position, cid) in leaves.iter().enumerate() {
        assert_eq!(indexes[&by_cid[cid.as_str()]], position as i32, "{cid}");
    }
    for r in &rs {
        assert_eq!(status(&rig.store, r).await, RequestStatus::Pending);
    }

    // One batch message; the ingest queues are empty.
    assert_eq!(only_batch_message(rig.batches.as_ref()).await, batch_id);
    assert_depth_becomes(rig.ingest.as_ref(), 0, "ingest after close").await;
    for q in &inner {
        assert_eq!(depth(q.as_ref()).await, 0);
    }
}

// ---------------------------------------------------------------------------------------
// 2. Redelivery never makes a second batch
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn redelivered_entries_do_not_make_a_second_batch() {
    let rig = Rig::new(Backend::Aws, 2).await;
    let rs = requests(7);
    rig.insert(&rs).await;
    let messages = pack(&rs, 800);
    publish(rig.ingest.as_ref(), messages.clone()).await;

    let mut scheduler = rig.scheduler(config(1 << 20));
    receive_pending(&mut scheduler, 7).await;
    let first = scheduler.close_batch().await.expect("close");
    let batch_id = first.batch_id.expect("batch");
    assert_eq!(first.batched, 7);
    assert_depth_becomes(rig.ingest.as_ref(), 0, "after the first close").await;
    let before: Vec<_> = {
        let mut v = Vec::new();
        for r in &rs {
            v.push(rig.store.get_request(&r.cid).await.unwrap());
        }
        v
    };

    // The same entries again, as a redelivered message carries them: found batched on
    // arrival, they are dropped and their messages acknowledged at once.
    publish(rig.ingest.as_ref(), messages.clone()).await;
    receive_until_drained(&mut scheduler, rig.ingest.as_ref()).await;
    assert_eq!(scheduler.pending_len(), 0);
    let second = scheduler.close_batch().await.expect("close again");
    assert_eq!(second.batch_id, None, "{second:?}");
    assert_eq!(second.batched, 0);
    assert_eq!(second.dropped, 7);
    assert_eq!(second.replaced, 0);
    assert_eq!(second.acked, 0, "acknowledged on arrival");
    assert_eq!(batch_count(&rig.db).await, 1);
    for (r, old) in rs.iter().zip(&before) {
        assert_eq!(&rig.store.get_request(&r.cid).await.unwrap(), old);
    }
    assert_eq!(leaf_indexes(&rig.db, batch_id).await.len(), 7);
    assert_eq!(only_batch_message(rig.batches.as_ref()).await, batch_id);
}

#[tokio::test]
async fn a_crash_between_recording_and_acking_does_not_make_a_second_batch() {
    let rig = Rig::new(Backend::Aws, 2).await;
    let rs = requests(5);
    rig.insert(&rs).await;
    let messages = pack(&rs, 700);
    let message_count = messages.len();
    publish(rig.ingest.as_ref(), messages).await;

    // A scheduler whose acks fail, with a short visibility so the messages come back soon.
    let short = SchedulerConfig {
        visibility: Duration::from_secs(2),
        receive_wait: Duration::from_millis(500),
        ..config(1 << 20)
    };
    let mut crashing =
        rig.scheduler_with_ingest(Arc::new(AckFails(Arc::clone(&rig.ingest))), short.clone());
    receive_pending(&mut crashing, 5).await;
    let report = crashing.close_batch().await.expect("close");
    let batch_id = report.batch_id.expect("batch");
    assert_eq!(report.batched, 5);
    drop(crashing);
    assert_eq!(depth(rig.ingest.as_ref()).await, message_count as u64);

    // A fresh scheduler gets the messages again once their visibility expires.
    let mut fresh = rig.scheduler(short);
    receive_until_drained(&mut fresh, rig.ingest.as_ref()).await;
    let again = fresh.close_batch().await.expect("close after redelivery");
    assert_eq!(again.batch_id, None, "{again:?}");
    assert_eq!(again.dropped, 5);
    assert_eq!(again.acked, 0, "acknowledged on arrival");
    assert_eq!(batch_count(&rig.db).await, 1);
    assert_eq!(only_batch_message(rig.batches.as_ref()).await, batch_id);
}

// ---------------------------------------------------------------------------------------
// 3. REPLACED per (stream, origin)
// ---------------------------------------------------------------------------------------

async fn replaced_per_stream_and_origin(backend: Backend) {
    let rig = Rig::new(backend, 2).await;
    let stream = new_stream();
    let tie_stream = new_stream();
    let old = request(&stream, "did:key:a", 100);
    let mid = request(&stream, "did:key:a", 200);
    let new = request(&stream, "did:key:a", 300);
    let other_origin = request(&stream, "did:key:b", 50);
    let tie_first = request(&tie_stream, "did:key:a", 500);
    let tie_later = request(&tie_stream, "did:key:a", 500);
    let all = [
        old.clone(),
        mid.clone(),
        new.clone(),
        other_origin.clone(),
        tie_first.clone(),
        tie_later.clone(),
    ];
    rig.insert(&all).await;

    let mut scheduler = rig.scheduler(config(1 << 20));
    // Out of order: mid, new, old (and the other origin), each in its own message and
    // round. Old arrives after newer ones of its stream and origin: REPLACED on arrival.
    for (n, r) in [&mid, &new].into_iter().enumerate() {
        publish(
            rig.ingest.as_ref(),
            pack(std::slice::from_ref(r), MAX_MESSAGE_BYTES),
        )
        .await;
        receive_pending(&mut scheduler, n + 1).await;
    }
    for r in [&old, &other_origin] {
        publish(
            rig.ingest.as_ref(),
            pack(std::slice::from_ref(r), MAX_MESSAGE_BYTES),
        )
        .await;
    }
    receive_pending(&mut scheduler, 3).await;
    assert_eq!(status(&rig.store, &old).await, RequestStatus::Replaced);
    // The tie: tie_first is received strictly before tie_later.
    publish(
        rig.ingest.as_ref(),
        pack(std::slice::from_ref(&tie_first), MAX_MESSAGE_BYTES),
    )
    .await;
    receive_pending(&mut scheduler, 4).await;
    publish(
        rig.ingest.as_ref(),
        pack(std::slice::from_ref(&tie_later), MAX_MESSAGE_BYTES),
    )
    .await;
    receive_pending(&mut scheduler, 5).await;

    let report = scheduler.close_batch().await.expect("close");
    let batch_id = report.batch_id.expect("batch");
    assert_eq!(report.batched, 3, "{report:?}");
    assert_eq!(
        report.replaced, 2,
        "mid and tie_first, at the close: {report:?}"
    );
    assert_eq!(report.acked, 5);

    let mut winners = vec![
        new.cid.clone(),
        other_origin.cid.clone(),
        tie_later.cid.clone(),
    ];
    winners.sort();
    assert_eq!(batch_file(rig.blobs.as_ref(), batch_id).await, winners);
    for r in [&old, &mid, &tie_first] {
        assert_eq!(
            status(&rig.store, r).await,
            RequestStatus::Replaced,
            "{}",
            r.cid
        );
    }
    for r in [&new, &other_origin, &tie_later] {
        assert_eq!(
            status(&rig.store, r).await,
            RequestStatus::Pending,
            "{}",
            r.cid
        );
    }
    let members = leaf_indexes(&rig.db, batch_id).await;
    let member_ids: HashSet<Uuid> = members.keys().copied().collect();
    assert_eq!(
        member_ids,
        HashSet::from([new.id, other_origin.id, tie_later.id])
    );
    assert_depth_becomes(rig.ingest.as_ref(), 0, "all messages resolved").await;
}

#[tokio::test]
async fn newest_timestamp_wins_per_stream_and_origin_on_sqs() {
    replaced_per_stream_and_origin(Backend::Aws).await;
}

#[tokio::test]
async fn newest_timestamp_wins_per_stream_and_origin_embedded() {
    replaced_per_stream_and_origin(Backend::Embedded).await;
}

// ---------------------------------------------------------------------------------------
// 4. batch_max splits the pending set; messages are acked when fully resolved
// ---------------------------------------------------------------------------------------

async fn batch_max_splits(backend: Backend) {
    let rig = Rig::new(backend, 1).await;
    let rs = requests(12);
    rig.insert(&rs).await;
    // Four messages of three entries each.
    let groups: Vec<&[NewRequest]> = rs.chunks(3).collect();
    for g in &groups {
        publish(rig.ingest.as_ref(), pack(g, MAX_MESSAGE_BYTES)).await;
    }
    let message_ids: Vec<HashSet<Uuid>> = groups
        .iter()
        .map(|g| g.iter().map(|r| r.id).collect())
        .collect();
    assert_eq!(depth(rig.ingest.as_ref()).await, 4);

    let mut scheduler = rig.scheduler(config(5));
    receive_pending(&mut scheduler, 12).await;

    let mut batched: HashSet<Uuid> = HashSet::new();
    let mut sizes = Vec::new();
    for round in 0..3 {
        let report = scheduler.close_batch().await.expect("close");
        let batch_id = report.batch_id.expect("batch");
        sizes.push(report.batched);
        let members = leaf_indexes(&rig.db, batch_id).await;
        assert_eq!(members.len(), report.batched);
        for id in members.keys() {
            assert!(batched.insert(*id), "request {id} in two batches");
        }
        let expected_open = message_ids
            .iter()
            .filter(|m| !m.is_subset(&batched))
            .count() as u64;
        assert_depth_becomes(
            rig.ingest.as_ref(),
            expected_open,
            &format!("after close {round}"),
        )
        .await;
        assert_eq!(scheduler.pending_len(), 12 - batched.len());
    }
    assert_eq!(sizes, vec![5, 5, 2]);
    assert_eq!(batched, rs.iter().map(|r| r.id).collect::<HashSet<_>>());
    assert_eq!(batch_count(&rig.db).await, 3);
    let announced = drain(rig.batches.as_ref(), Duration::from_secs(3)).await;
    assert_eq!(announced.len(), 3);
    // Nothing left: another close makes no batch.
    let report = scheduler.close_batch().await.expect("close");
    assert_eq!(report.batch_id, None);
}

#[tokio::test]
async fn batch_max_gives_five_five_two_on_sqs() {
    batch_max_splits(Backend::Aws).await;
}

#[tokio::test]
async fn batch_max_gives_five_five_two_embedded() {
    batch_max_splits(Backend::Embedded).await;
}

// ---------------------------------------------------------------------------------------
// 5. The sweeper
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn sweeper_republishes_stranded_requests_once() {
    let rig = Rig::new(Backend::Aws, 2).await;
    let an_hour_ago = now() - chrono::Duration::hours(1);
    let mut stranded = requests(1).remove(0);
    stranded.created_at = an_hour_ago;
    let mut batched = requests(1).remove(0);
    batched.created_at = an_hour_ago;
    let recent = requests(1).remove(0);
    rig.insert(&[stranded.clone(), batched.clone(), recent.clone()])
        .await;
    assert!(
        rig.store
            .create_batch(&NewBatch {
                id: Uuid::now_v7(),
                members: vec![batched.id],
                created_at: an_hour_ago,
            })
            .await
            .unwrap()
    );

    let mut scheduler = rig.scheduler(config(1 << 20));
    assert_eq!(rig.store.cursor(SWEEPER_CURSOR).await.unwrap(), None);
    assert_eq!(sweep_until(&mut scheduler, 1).await, 1);
    let cursor = rig
        .store
        .cursor(SWEEPER_CURSOR)
        .await
        .unwrap()
        .expect("cursor set");

    let got = drain(rig.ingest.as_ref(), Duration::from_secs(3)).await;
    let entries: Vec<IngestEntry> = got
        .iter()
        .flat_map(|m| parse_ingest(&m.body).expect("ingest message").reqs)
        .collect();
    assert_eq!(entries, vec![entry(&stranded)]);

    // Again: not re-published before another sweep age, and the cursor stays at the oldest
    // request that is in no batch yet.
    assert_eq!(scheduler.sweep().await.expect("sweep again"), 0);
    assert_eq!(
        rig.store.cursor(SWEEPER_CURSOR).await.unwrap(),
        Some(cursor)
    );
    let receipts: Vec<Receipt> = got.iter().map(|m| m.receipt.clone()).collect();
    rig.ingest.ack(&receipts).await.expect("ack");
    assert_depth_becomes(rig.ingest.as_ref(), 0, "nothing re-published twice").await;
}

/// Sweep until `n` requests were re-published in all (other tests' transactions on the same
/// server can hold the scan's horizon back for a moment); returns how many were.
async fn sweep_until(scheduler: &mut Scheduler, n: usize) -> usize {
    let mut published = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while published < n && Instant::now() < deadline {
        published += scheduler.sweep().await.expect("sweep");
        if published < n {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    published
}

/// Sweep stranded requests created at the given times, inserted `per_insert` at a time (one
/// insert commits many requests at one position); every one must be re-published exactly
/// once.
async fn sweep_all(backend: Backend, created: Vec<DateTime<Utc>>, per_insert: usize) {
    let rig = Rig::new(backend, 1).await;
    let rs: Vec<NewRequest> = requests(created.len())
        .into_iter()
        .zip(created)
        .map(|(mut r, at)| {
            r.created_at = at;
            r
        })
        .collect();
    for chunk in rs.chunks(per_insert) {
        rig.insert(chunk).await;
    }
    let mut scheduler = rig.scheduler(config(1 << 20));
    let published = sweep_until(&mut scheduler, rs.len()).await;
    let got = drain(rig.ingest.as_ref(), Duration::from_millis(500)).await;
    let entries: Vec<Uuid> = got
        .iter()
        .flat_map(|m| parse_ingest(&m.body).expect("ingest").reqs)
        .map(|e| e.id)
        .collect();
    let ids: HashSet<Uuid> = entries.iter().copied().collect();
    assert_eq!(ids.len(), rs.len(), "re-published {published}");
    assert_eq!(entries.len(), rs.len(), "each request published once");
    assert_eq!(published, rs.len());
    assert_eq!(ids, rs.iter().map(|r| r.id).collect::<HashSet<_>>());
}

/// More stranded requests than one page of the sweeper (10,000), many committed at one
/// position (one insert), and with page boundaries inside such a group.
#[tokio::test]
async fn sweeper_pages_through_requests_committed_together() {
    let at = now() - chrono::Duration::hours(1);
    sweep_all(Backend::Embedded, vec![at; 10_005], 10_005).await;
    sweep_all(Backend::Embedded, vec![at; 10_008], 3_333).await;
}

// ---------------------------------------------------------------------------------------
// 6. Re-dispatch
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn redispatch_reannounces_only_stale_unanchored_batches() {
    let rig = Rig::new(Backend::Aws, 1).await;
    let rs = requests(3);
    rig.insert(&rs).await;
    let two_hours_ago = now() - chrono::Duration::hours(2);
    let stale = Uuid::now_v7();
    let anchored = Uuid::now_v7();
    let recent = Uuid::now_v7();
    for (id, member, created_at) in [
        (stale, rs[0].id, two_hours_ago),
        (anchored, rs[1].id, two_hours_ago),
        (recent, rs[2].id, now()),
    ] {
        assert!(
            rig.store
                .create_batch(&NewBatch {
                    id,
                    members: vec![member],
                    created_at,
                })
                .await
                .unwrap()
        );
    }
    assert!(
        rig.store
            .mark_batch_anchored(
                anchored,
                &AnchoredBatch {
                    root_cid: "bafyroot".into(),
                    proof_cid: "bafyproof".into(),
                    tx_hash: format!("0x{}", "ab".repeat(32)),
                    chain_id: "eip155:1337".into(),
                    anchored_at: now(),
                },
            )
            .await
            .unwrap()
    );

    let mut scheduler = rig.scheduler(config(1 << 20));
    assert_eq!(scheduler.redispatch().await.expect("redispatch"), 1);
    assert_eq!(only_batch_message(rig.batches.as_ref()).await, stale);
}

// ---------------------------------------------------------------------------------------
// 7. Unreadable messages
// ---------------------------------------------------------------------------------------

async fn unreadable_messages_are_dropped(backend: Backend) {
    let rig = Rig::new(backend, 1).await;
    let rs = requests(2);
    rig.insert(&rs).await;
    rig.ingest.send("not json at all".into()).await.unwrap();
    rig.ingest
        .send(r#"{"v":2,"reqs":[]}"#.into())
        .await
        .unwrap();
    publish(rig.ingest.as_ref(), pack(&rs, MAX_MESSAGE_BYTES)).await;
    rig.ingest
        .send(r#"{"v":1,"reqs":[{"id":1}]}"#.into())
        .await
        .unwrap();
    assert_eq!(depth(rig.ingest.as_ref()).await, 4);

    let mut scheduler = rig.scheduler(config(1 << 20));
    receive_pending(&mut scheduler, 2).await;
    // The unreadable ones are acknowledged on receipt; receive until all were seen.
    let deadline = Instant::now() + Duration::from_secs(15);
    while depth(rig.ingest.as_ref()).await > 1 && Instant::now() < deadline {
        scheduler.receive_once().await.expect("receive");
    }
    assert_depth_becomes(rig.ingest.as_ref(), 1, "garbage acked, good one held").await;
    let report = scheduler.close_batch().await.expect("close");
    assert_eq!(report.batched, 2);
    assert_eq!(report.acked, 1);
    assert_depth_becomes(rig.ingest.as_ref(), 0, "all resolved").await;
}

#[tokio::test]
async fn unreadable_ingest_messages_are_dropped_on_sqs() {
    unreadable_messages_are_dropped(Backend::Aws).await;
}

#[tokio::test]
async fn unreadable_ingest_messages_are_dropped_embedded() {
    unreadable_messages_are_dropped(Backend::Embedded).await;
}

// ---------------------------------------------------------------------------------------
// 8. run() end to end
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn run_closes_a_batch_after_linger_and_stops_on_cancel() {
    let rig = Rig::new(Backend::Aws, 3).await;
    let rs = requests(4);
    rig.insert(&rs).await;
    let scheduler = rig.scheduler(config(1 << 20));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(scheduler.run(shutdown.clone()));
    publish(rig.ingest.as_ref(), pack(&rs, 600)).await;

    // Wait until batch messages announce every request (a late message may make a second
    // batch).
    let all: HashSet<Uuid> = rs.iter().map(|r| r.id).collect();
    let mut batched = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while batched != all {
        assert!(Instant::now() < deadline, "batched {batched:?} within 30 s");
        let got = rig
            .batches
            .receive(10, Duration::from_secs(60), Duration::from_millis(200))
            .await
            .expect("receive batch messages");
        for m in &got {
            let bid = BatchMessage::parse(&m.body).unwrap().bid;
            batched.extend(leaf_indexes(&rig.db, bid).await.into_keys());
        }
    }
    shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("run() returns after cancel")
        .expect("run() did not panic");
    assert!(result.is_ok(), "{result:?}");
    assert_depth_becomes(rig.ingest.as_ref(), 0, "ingest after run").await;
}

/// A scheduler told to stop hands the messages it holds back at once: the next scheduler
/// receives them now, not when their visibility (30 s here, 15 minutes by default) ends.
#[tokio::test]
async fn a_stopping_scheduler_releases_the_messages_it_holds() {
    let rig = Rig::new(Backend::Aws, 2).await;
    let rs = requests(6);
    rig.insert(&rs).await;
    let mut long_linger = config(1 << 20);
    long_linger.linger = Duration::from_secs(3600);
    long_linger.sweep_age = Duration::from_secs(7200);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(rig.scheduler(long_linger).run(shutdown.clone()));
    let messages = pack(&rs, 600);
    let published = messages.len();
    assert!(published > 1, "several messages: {published}");
    publish(rig.ingest.as_ref(), messages).await;

    // Received: each request's stream tip is claimed as it arrives.
    let ids: Vec<Uuid> = rs.iter().map(|r| r.id).collect();
    let claimed = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM stream_tip WHERE request_id = ANY($1)")
            .bind(&ids)
            .fetch_one(rig.db.store.pool())
            .await
            .expect("count tips")
    };
    let all_in = wait_until(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async { claimed().await == rs.len() as i64 },
    )
    .await;
    assert!(all_in, "received {} of {}", claimed().await, rs.len());
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("run() returns after cancel")
        .expect("run() did not panic")
        .expect("run() succeeded");

    let again = drain(rig.ingest.as_ref(), Duration::from_secs(5)).await;
    assert_eq!(
        again.len(),
        published,
        "every held message is visible again"
    );
}
