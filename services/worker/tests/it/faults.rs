//! The worker when parts fail, on the fake chain (paused mining, reorganisations at a chosen
//! moment) with a real PostgreSQL store: a batch that can never be anchored gets a terminal
//! state instead of being retried forever; an anchor that a reorganisation removes before
//! the batch is recorded is sent again; a stop in the middle of an anchor is quick and
//! loses nothing.

use async_trait::async_trait;
use cas_blob::LocalDirBlobStore;
use cas_chain::fake::{FakeChain, FakeChainConfig, ReorgTxs};
use cas_queue::MemoryQueue;
use cas_store::MemoryTxJournal;
use cas_worker::AnchorFailure;

use super::*;

/// A store, a memory batch queue, a blob directory and a transaction manager on a fake chain.
struct FakeRig {
    _db: TestDb,
    store: Arc<PgStore>,
    batches: Arc<MemoryQueue>,
    blobs: Arc<LocalDirBlobStore>,
    dir: std::path::PathBuf,
    chain: FakeChain,
    manager: Arc<TxManager>,
}

impl FakeRig {
    async fn new(chain: FakeChain) -> Self {
        let db = TestDb::new().await.expect("test database");
        let dir = std::env::temp_dir().join(unique("blobs"));
        let manager = Arc::new(TxManager::new(
            Arc::new(chain.clone()),
            Arc::new(MemoryTxJournal::new()),
            TxManagerConfig {
                attempt_timeout: Duration::from_secs(30),
                ..TxManagerConfig::default()
            },
        ));
        Self {
            store: Arc::new(db.store.clone()),
            _db: db,
            batches: Arc::new(MemoryQueue::new()),
            blobs: Arc::new(LocalDirBlobStore::new(&dir)),
            dir,
            chain,
            manager,
        }
    }

    fn worker_with(&self, anchorer: Arc<dyn RootAnchorer>) -> Worker {
        Worker::new(
            Arc::clone(&self.store) as Arc<dyn RequestStore>,
            Arc::clone(&self.batches) as Arc<dyn Queue>,
            Arc::clone(&self.blobs) as Arc<dyn BlobStore>,
            anchorer,
            WorkerConfig {
                visibility: Duration::from_secs(30),
                receive_wait: Duration::from_millis(100),
                retry_backoff: Duration::from_secs(2),
                ..WorkerConfig::default()
            },
        )
    }

    fn worker(&self) -> Worker {
        self.worker_with(Arc::clone(&self.manager) as Arc<dyn RootAnchorer>)
    }
}

impl Drop for FakeRig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A batch whose file is missing or corrupt can never be anchored: the worker marks it
/// failed for good (the scheduler then moves its requests into a new batch), counts it,
/// drops its message and sends nothing. It used to be dropped and re-announced every
/// 30 minutes, forever.
#[tokio::test]
async fn a_batch_whose_file_is_missing_or_corrupt_fails_for_good() {
    let rig = FakeRig::new(FakeChain::default()).await;
    let worker = rig.worker();
    for corrupt in [false, true] {
        let (batch_id, _members) = closed_batch(&rig.store, rig.blobs.as_ref(), 3).await;
        let key = cas_core::pipeline::batch_file_key(batch_id);
        if corrupt {
            rig.blobs
                .put(&key, Bytes::from_static(b"not a batch file"))
                .await
                .unwrap();
        } else {
            std::fs::remove_file(rig.dir.join(&key)).expect("remove the batch file");
        }
        rig.batches
            .send(BatchMessage::new(batch_id).to_json())
            .await
            .unwrap();
        let got = rig
            .batches
            .receive(1, Duration::from_secs(30), Duration::from_secs(1))
            .await
            .unwrap();
        worker.handle(got[0].clone()).await;
        let record = rig.store.get_batch(batch_id).await.unwrap().unwrap();
        let reason = record.failed.expect("failed for good");
        assert!(
            reason.contains(if corrupt {
                "batch file of"
            } else {
                "is missing"
            }),
            "{reason}"
        );
        assert!(record.anchored.is_none());
        assert!(
            rig.store
                .failed_batches(100)
                .await
                .unwrap()
                .contains(&batch_id)
        );
        assert_eq!(rig.batches.approximate_depth().await.unwrap(), 0, "dropped");
        // A later copy of its message changes nothing.
        assert_eq!(
            worker.process_batch(batch_id).await.unwrap(),
            BatchOutcome::Failed(batch_id)
        );
    }
    assert_eq!(rig.chain.signed(), 0, "nothing sent");
}

/// Anchors through the real manager, and lets a test reorganise the chain right after the
/// first anchor returns: before the worker records the batch.
struct ReorgAfterFirst {
    manager: Arc<TxManager>,
    chain: FakeChain,
    done: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl RootAnchorer for ReorgAfterFirst {
    fn chain_id(&self) -> String {
        RootAnchorer::chain_id(self.manager.as_ref())
    }
    async fn anchor_root(&self, batch_id: Uuid, root: [u8; 32]) -> Result<[u8; 32], AnchorFailure> {
        let tx = self.manager.anchor_root(batch_id, root).await?;
        if !self.done.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.chain.reorg(1, ReorgTxs::Lost);
        }
        Ok(tx)
    }
    async fn confirmed(&self, batch_id: Uuid) -> Result<Option<[u8; 32]>, AnchorFailure> {
        RootAnchorer::confirmed(self.manager.as_ref(), batch_id).await
    }
}

/// A reorganisation removes the anchor after it was confirmed and before the batch is
/// recorded: the worker notices (it checks once more), sends the same transaction again,
/// and records the batch only once it is back in the chain. One anchor, the same hash, and
/// the tree artifact's proof points at it.
#[tokio::test]
async fn an_anchor_reorganised_away_before_recording_is_sent_again() {
    let rig = FakeRig::new(FakeChain::default()).await;
    let (batch_id, _members) = closed_batch(&rig.store, rig.blobs.as_ref(), 4).await;
    let anchorer = Arc::new(ReorgAfterFirst {
        manager: Arc::clone(&rig.manager),
        chain: rig.chain.clone(),
        done: Default::default(),
    });
    let outcome = rig
        .worker_with(anchorer)
        .process_batch(batch_id)
        .await
        .expect("anchored");
    let BatchOutcome::Anchored { tx_hash, .. } = outcome else {
        panic!("{outcome:?}");
    };
    let record = rig.store.get_batch(batch_id).await.unwrap().unwrap();
    let anchored = record.anchored.expect("recorded");
    assert_eq!(anchored.tx_hash, tx_hash);
    let root: Cid = anchored.root_cid.parse().unwrap();
    let digest: [u8; 32] = root.hash().digest().try_into().unwrap();
    let on_chain = rig.chain.anchors_of(digest);
    assert_eq!(on_chain.len(), 1);
    assert_eq!(format!("{:#x}", on_chain[0]), tx_hash);
    assert_eq!(rig.chain.signed(), 1, "the same transaction, sent again");
}

/// SIGTERM while the worker waits for its transaction to be mined: it stops at once instead
/// of finishing the anchor (up to ~24 minutes), releases the batch message, and the next
/// worker resumes the journaled transaction: one transaction in all.
#[tokio::test]
async fn a_stop_during_an_anchor_is_quick_and_loses_nothing() {
    let chain = FakeChain::new(FakeChainConfig {
        automine: false,
        poll_interval: Duration::from_millis(50),
        ..FakeChainConfig::default()
    });
    let rig = FakeRig::new(chain).await;
    let (batch_id, _members) = closed_batch(&rig.store, rig.blobs.as_ref(), 2).await;
    rig.batches
        .send(BatchMessage::new(batch_id).to_json())
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(rig.worker().run(shutdown.clone()));
    let sent = wait_until(
        Duration::from_secs(30),
        Duration::from_millis(20),
        || async { rig.chain.pool_len() == 1 },
    )
    .await;
    assert!(sent, "the transaction is waiting for a block");
    let stopping = Instant::now();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stopped within 5 s")
        .unwrap()
        .unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(5));
    assert!(
        rig.store
            .get_batch(batch_id)
            .await
            .unwrap()
            .unwrap()
            .anchored
            .is_none()
    );

    // The message is visible again at once; the next worker finishes with the same
    // transaction.
    rig.chain.set_automine(true);
    let next = CancellationToken::new();
    let task = tokio::spawn(rig.worker().run(next.clone()));
    let done = wait_until(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            rig.store
                .get_batch(batch_id)
                .await
                .unwrap()
                .is_some_and(|b| b.anchored.is_some())
        },
    )
    .await;
    assert!(done, "the next worker anchors the batch");
    next.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(rig.chain.signed(), 1);
    assert_eq!(rig.chain.account_nonce(), 1);
}

/// A dev chain restarted from an older state lost an anchored batch's transaction: the
/// worker finds it at start, reopens the batch (its requests are PENDING again rather than
/// COMPLETED with a witness that points nowhere), and anchors it again with the same
/// transaction.
#[tokio::test]
async fn a_completed_batch_whose_anchor_the_chain_lost_is_reanchored_at_start() {
    let rig = FakeRig::new(FakeChain::default()).await;
    let (batch_id, members) = closed_batch(&rig.store, rig.blobs.as_ref(), 3).await;
    let BatchOutcome::Anchored { tx_hash, .. } =
        rig.worker().process_batch(batch_id).await.unwrap()
    else {
        panic!("not anchored");
    };
    rig.chain.reorg(1, ReorgTxs::Lost);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(rig.worker().run(shutdown.clone()));
    let reopened = wait_until(
        Duration::from_secs(30),
        Duration::from_millis(20),
        || async { rig.chain.anchors().values().sum::<usize>() == 1 },
    )
    .await;
    assert!(reopened, "sent again at start");
    let done = wait_until(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            rig.store
                .get_batch(batch_id)
                .await
                .unwrap()
                .and_then(|b| b.anchored)
                .is_some_and(|a| a.tx_hash == tx_hash)
        },
    )
    .await;
    assert!(done, "recorded again, with the same transaction");
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let status = rig
        .store
        .get_request(&members[0].request.cid)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.status(), RequestStatus::Completed);
    assert_eq!(rig.chain.signed(), 1);
}

/// The chain is down for longer than a batch message's deliveries last (three here, with a
/// short backoff): the worker announces the batch afresh before its message would move to
/// the dead-letter queue, so the batch is anchored as soon as the chain is back, not when
/// the scheduler's re-dispatch (30 minutes) finds it. It used to sit in the dead-letter
/// queue.
#[tokio::test]
async fn an_outage_longer_than_the_deliveries_does_not_dead_letter_the_batch() {
    let rig = FakeRig::new(FakeChain::default()).await;
    let (batch_id, _members) = closed_batch(&rig.store, rig.blobs.as_ref(), 3).await;
    let dead = MemoryQueue::new();
    let queue = Arc::new(MemoryQueue::with_dead_letter(3, dead.clone()));
    let worker = Worker::new(
        Arc::clone(&rig.store) as Arc<dyn RequestStore>,
        Arc::clone(&queue) as Arc<dyn Queue>,
        Arc::clone(&rig.blobs) as Arc<dyn BlobStore>,
        Arc::clone(&rig.manager) as Arc<dyn RootAnchorer>,
        WorkerConfig {
            visibility: Duration::from_secs(30),
            receive_wait: Duration::from_millis(100),
            retry_backoff: Duration::from_millis(200),
            max_receives: Some(3),
            ..WorkerConfig::default()
        },
    );
    queue
        .send(BatchMessage::new(batch_id).to_json())
        .await
        .unwrap();

    rig.chain.set_down(true);
    for delivery in 1..=8 {
        let got = queue
            .receive(1, Duration::from_secs(30), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            got.len(),
            1,
            "delivery {delivery}: the batch message is gone"
        );
        worker.handle(got[0].clone()).await;
        assert_eq!(dead.approximate_depth().await.unwrap(), 0, "dead-lettered");
    }
    assert!(
        rig.store
            .get_batch(batch_id)
            .await
            .unwrap()
            .unwrap()
            .anchored
            .is_none()
    );

    rig.chain.set_down(false);
    let got = queue
        .receive(1, Duration::from_secs(30), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    worker.handle(got[0].clone()).await;
    let record = rig.store.get_batch(batch_id).await.unwrap().unwrap();
    let anchored = record.anchored.expect("anchored once the chain is back");
    let root: Cid = anchored.root_cid.parse().unwrap();
    let digest: [u8; 32] = root.hash().digest().try_into().unwrap();
    assert_eq!(rig.chain.anchors_of(digest).len(), 1);
    assert_eq!(
        queue.approximate_depth().await.unwrap(),
        0,
        "nothing left queued"
    );
}
