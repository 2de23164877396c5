//! The worker (`cas worker`): anchors closed batches.
//!
//! For each batch message: load the batch record (an anchored batch is acknowledged and
//! skipped), read the batch file (the sorted leaves), build the Merkle tree off the async
//! executor, put the root on chain with `anchorDagCbor(bytes32)`, write the tree artifact
//! from which the API builds every witness, record the anchor on the batch row (one row,
//! whatever the batch size), then acknowledge the message. The message's visibility is
//! extended while the work runs; a failure makes the message visible again after a backoff.
//!
//! Transactions go through [`TxManager`] (see [`txmanager`]): one sender per wallet across
//! the cluster, every attempt journaled before it is broadcast, so a batch is never anchored
//! twice and a restarted worker resumes the transactions it already sent.

pub mod txmanager;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bytes::Bytes;
use cas_blob::BlobStore;
use cas_core::{
    fault,
    pipeline::{BatchMessage, batch_file_key, decode_batch_file, tree_artifact_key},
};
use cas_merkle::{AnchorProof, MerkleTree, encode_artifact};
use cas_queue::{Message, Queue};
use cas_store::{AnchoredBatch, RequestStore};
use chrono::Utc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use txmanager::{Recovery, TxError, TxManager, TxManagerConfig};

/// Puts a Merkle root on chain.
#[async_trait]
pub trait RootAnchorer: Send + Sync + 'static {
    /// CAIP-2 id of the chain (`eip155:<id>`), written into proofs.
    fn chain_id(&self) -> String;
    /// Anchor the root digest (the sha256 of the root node) of a batch; returns the
    /// transaction hash once the transaction is confirmed. Asking again for the same batch
    /// must not send a second transaction once one was mined.
    async fn anchor_root(
        &self,
        batch_id: Uuid,
        root_digest: [u8; 32],
    ) -> Result<[u8; 32], AnchorFailure>;
    /// The batch's transaction if it is confirmed on the canonical chain right now: checked
    /// once more before the batch is recorded as anchored, so that an anchor a
    /// reorganisation removed in the meantime is sent again instead.
    async fn confirmed(&self, batch_id: Uuid) -> Result<Option<[u8; 32]>, AnchorFailure>;
    /// Batches whose recorded anchor the chain lost (called when the worker starts, and
    /// now and then): they must be reopened and anchored again.
    async fn lost_anchors(&self) -> Result<Vec<Uuid>, AnchorFailure> {
        Ok(Vec::new())
    }
    /// Resume work left unfinished by an earlier run (called when the worker starts, and
    /// now and then).
    async fn recover(&self) -> Result<(), AnchorFailure> {
        Ok(())
    }
}

/// A failed anchor attempt.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AnchorFailure {
    /// What went wrong.
    pub message: String,
    /// Whether trying again later may work.
    pub retryable: bool,
}

impl From<TxError> for AnchorFailure {
    fn from(e: TxError) -> Self {
        Self {
            retryable: e.is_retryable(),
            message: e.to_string(),
        }
    }
}

#[async_trait]
impl RootAnchorer for TxManager {
    fn chain_id(&self) -> String {
        self.chain().chain_id().to_string()
    }

    async fn anchor_root(
        &self,
        batch_id: Uuid,
        root_digest: [u8; 32],
    ) -> Result<[u8; 32], AnchorFailure> {
        Ok(self.anchor(batch_id, root_digest).await?.tx_hash)
    }

    async fn confirmed(&self, batch_id: Uuid) -> Result<Option<[u8; 32]>, AnchorFailure> {
        Ok(TxManager::confirmed(self, batch_id)
            .await?
            .map(|tx| tx.tx_hash))
    }

    async fn lost_anchors(&self) -> Result<Vec<Uuid>, AnchorFailure> {
        Ok(self.reopen_lost().await?)
    }

    async fn recover(&self) -> Result<(), AnchorFailure> {
        let settled = self.settle().await?;
        if settled > 0 {
            tracing::info!(nonces = settled, "resumed journaled transactions");
        }
        Ok(())
    }
}

/// Tuning of the worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// How long a received batch message stays hidden; extended while the batch is worked on.
    pub visibility: Duration,
    /// Long-poll time of one receive.
    pub receive_wait: Duration,
    /// After a failure, how long until the batch message is visible again.
    pub retry_backoff: Duration,
    /// Leaves per chunk of the tree artifact.
    pub chunk_leaves: u32,
    /// Threads for building a tree (0 = all cores).
    pub build_threads: usize,
    /// How often to look for anchors the chain lost after they were recorded (a
    /// reorganisation deeper than the confirmations): such batches are reopened and
    /// anchored again with the same transaction.
    pub reorg_check_interval: Duration,
    /// Deliveries after which the batch queue moves a message to its dead-letter queue, if
    /// known. A batch that keeps failing for a passing reason (the chain or the database
    /// down for minutes) is then announced afresh before its message gets there, rather
    /// than waiting in the dead-letter queue for the scheduler's re-dispatch.
    pub max_receives: Option<u32>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            // Extended every 30 s while the batch is worked on; after a crash the batch is
            // picked up again within 90 s.
            visibility: Duration::from_secs(90),
            receive_wait: Duration::from_secs(5),
            retry_backoff: Duration::from_secs(30),
            chunk_leaves: cas_merkle::DEFAULT_CHUNK_LEAVES,
            build_threads: 0,
            reorg_check_interval: Duration::from_secs(60),
            max_receives: None,
        }
    }
}

/// Why a batch could not be anchored.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Trying again later may work (a dependency is down, the chain is slow).
    #[error("{0}")]
    Retryable(String),
    /// The batch can never be anchored (its file is missing or corrupt): it is marked failed
    /// for good, and the scheduler moves its requests into a new batch.
    #[error("{reason}")]
    Permanent {
        /// The batch.
        batch_id: Uuid,
        /// Why.
        reason: String,
    },
    /// The message names no batch this service knows, or cannot be read at all.
    #[error("{0}")]
    Unreadable(String),
    /// The worker is stopping; the batch is left for the next one.
    #[error("{0}")]
    Interrupted(String),
}

/// What processing one batch message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOutcome {
    /// The batch was anchored now.
    Anchored {
        /// Batch id.
        batch_id: Uuid,
        /// Number of requests.
        size: usize,
        /// Transaction hash, `0x` + hex.
        tx_hash: String,
    },
    /// The batch had been anchored before (a redelivered message); nothing was sent.
    AlreadyAnchored(Uuid),
    /// The batch had failed for good before; its requests are in a new batch.
    Failed(Uuid),
}

/// The worker role.
pub struct Worker {
    store: Arc<dyn RequestStore>,
    batches: Arc<dyn Queue>,
    blobs: Arc<dyn BlobStore>,
    anchorer: Arc<dyn RootAnchorer>,
    config: WorkerConfig,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn retryable(context: &str) -> impl Fn(&dyn std::fmt::Display) -> BatchError + '_ {
    move |e| BatchError::Retryable(format!("{context}: {e}"))
}

impl Worker {
    /// A worker over its boundaries.
    pub fn new(
        store: Arc<dyn RequestStore>,
        batches: Arc<dyn Queue>,
        blobs: Arc<dyn BlobStore>,
        anchorer: Arc<dyn RootAnchorer>,
        config: WorkerConfig,
    ) -> Self {
        Self {
            store,
            batches,
            blobs,
            anchorer,
            config,
        }
    }

    /// Run until `shutdown`. An anchor in progress is dropped at once (what it sent is
    /// journaled, and the next worker resumes it) and its batch message is made visible
    /// again, so a stop takes about as long as the step in progress, never a whole anchor.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(chain.id = %self.anchorer.chain_id(), "worker running");
        // Transactions a previous run left pending are settled before new work; a failure
        // here is not fatal (every anchor settles them first anyway). The same check runs
        // now and then between batches, for anchors a reorganisation removed.
        let mut next_check = Instant::now();
        while !shutdown.is_cancelled() {
            if Instant::now() >= next_check {
                // First the batches whose anchor was lost are reopened (so that no one is
                // told they are COMPLETED meanwhile), then the open nonces are settled.
                let lost = tokio::select! {
                    () = shutdown.cancelled() => break,
                    lost = self.anchorer.lost_anchors() => lost,
                };
                match lost {
                    Ok(lost) => {
                        for batch_id in lost {
                            self.reanchor(batch_id).await;
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "looking for anchors the chain lost failed")
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    recovered = self.anchorer.recover() => {
                        if let Err(err) = recovered {
                            tracing::warn!(error = %err, "resuming journaled transactions failed; they are resumed with the next batch");
                        }
                    }
                }
                next_check = Instant::now() + self.config.reorg_check_interval;
            }
            let received = tokio::select! {
                () = shutdown.cancelled() => break,
                r = self.batches.receive(1, self.config.visibility, self.config.receive_wait) => r,
            };
            match received {
                Ok(messages) => {
                    for message in messages {
                        self.handle_until(message, &shutdown).await;
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "receiving batch messages failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        tracing::info!("worker stopped");
        Ok(())
    }

    /// A batch recorded as anchored whose transaction the chain lost (a reorganisation, or a
    /// dev chain restarted from an older state): it is no longer anchored, and is announced
    /// again. Its transaction was reopened by the transaction manager, so the same signed
    /// transaction is sent first and the witnesses built from it stay valid.
    async fn reanchor(&self, batch_id: Uuid) {
        match self.store.reopen_batch(batch_id).await {
            Ok(true) => {
                tracing::error!(batch.id = %batch_id, "the chain lost the anchor of a batch recorded as anchored; anchoring it again")
            }
            Ok(false) => {}
            Err(err) => {
                tracing::warn!(batch.id = %batch_id, error = %err, "reopening a batch whose anchor the chain lost failed");
                return;
            }
        }
        if let Err(err) = self
            .batches
            .send(BatchMessage::new(batch_id).to_json())
            .await
        {
            tracing::warn!(batch.id = %batch_id, error = %err, "announcing a batch to anchor again failed; the scheduler re-announces it");
        }
    }

    /// Process one delivery of a batch message and acknowledge or release it.
    pub async fn handle(&self, message: Message) {
        self.handle_until(message, &CancellationToken::new()).await;
    }

    /// Like [`Worker::handle`], giving up (and releasing the message at once) when `stop` is
    /// cancelled.
    pub async fn handle_until(&self, message: Message, stop: &CancellationToken) {
        let keep_hidden = self.keep_hidden(&message);
        let result = match BatchMessage::parse(&message.body) {
            Ok(parsed) => self.process_batch_until(parsed.bid, stop).await,
            Err(err) => Err(BatchError::Unreadable(format!(
                "unreadable batch message: {err}"
            ))),
        };
        keep_hidden.stop().await;
        match result {
            Ok(outcome) => {
                match &outcome {
                    BatchOutcome::Anchored {
                        batch_id,
                        size,
                        tx_hash,
                    } => {
                        tracing::info!(batch.id = %batch_id, batch.size = size, tx.hash = %tx_hash, "batch anchored");
                    }
                    BatchOutcome::AlreadyAnchored(id) => {
                        tracing::info!(batch.id = %id, "batch was already anchored; message dropped");
                    }
                    BatchOutcome::Failed(id) => {
                        tracing::info!(batch.id = %id, "batch had failed for good; message dropped");
                    }
                }
                self.ack(&message).await;
            }
            Err(BatchError::Unreadable(reason)) => {
                metrics::counter!("cas_batch_messages_dropped_total").increment(1);
                tracing::error!(message.id = %message.id, error = %reason, "dropping a batch message that cannot be processed");
                self.ack(&message).await;
            }
            Err(BatchError::Permanent { batch_id, reason }) => {
                // Terminal: the scheduler moves its requests into a new batch.
                match self.store.fail_batch(batch_id, &reason).await {
                    Ok(_) => {
                        metrics::counter!("cas_batches_failed_total").increment(1);
                        tracing::error!(batch.id = %batch_id, error = %reason, "the batch can never be anchored; it is marked failed and its requests go into a new batch");
                        self.ack(&message).await;
                    }
                    Err(err) => {
                        tracing::warn!(batch.id = %batch_id, error = %err, "recording a failed batch failed, will retry");
                        self.release(&message, self.config.retry_backoff).await;
                    }
                }
            }
            Err(BatchError::Interrupted(reason)) => {
                tracing::info!(message.id = %message.id, reason = %reason, "stopping; the batch is left to the next worker");
                self.release(&message, Duration::ZERO).await;
            }
            Err(BatchError::Retryable(reason)) => {
                tracing::warn!(
                    message.id = %message.id,
                    receive_count = message.receive_count,
                    error = %reason,
                    "batch failed, will retry"
                );
                let last_deliveries = self
                    .config
                    .max_receives
                    .is_some_and(|max| message.receive_count.saturating_add(1) >= max);
                if last_deliveries && self.announce_afresh(&message, stop).await {
                    return;
                }
                self.release(&message, self.config.retry_backoff).await;
            }
        }
    }

    /// Replace a batch message that is about to run out of deliveries with a new one (its
    /// receive count starts over), after the retry backoff. Returns whether it did; if not,
    /// the old message is still held. A passing failure (an outage of minutes) thus never
    /// sends a batch to the dead-letter queue; a batch that kills its worker still gets
    /// there, as it never reaches this point.
    async fn announce_afresh(&self, message: &Message, stop: &CancellationToken) -> bool {
        let Ok(parsed) = BatchMessage::parse(&message.body) else {
            return false;
        };
        // Held meanwhile: the backoff is shorter than the visibility a delivery starts with.
        let backoff = self.config.retry_backoff.min(self.config.visibility / 2);
        tokio::select! {
            () = stop.cancelled() => {
                self.release(message, Duration::ZERO).await;
                return true;
            }
            () = tokio::time::sleep(backoff) => {}
        }
        if let Err(err) = self.batches.send(parsed.to_json()).await {
            tracing::warn!(batch.id = %parsed.bid, error = %err, "announcing a batch afresh failed");
            return false;
        }
        metrics::counter!("cas_batches_reannounced_total").increment(1);
        tracing::info!(batch.id = %parsed.bid, receive_count = message.receive_count, "batch announced afresh before its message runs out of deliveries");
        self.ack(message).await;
        true
    }

    async fn ack(&self, message: &Message) {
        if let Err(err) = self
            .batches
            .ack(std::slice::from_ref(&message.receipt))
            .await
        {
            tracing::warn!(error = %err, "acknowledging a batch message failed; it will be redelivered and skipped");
        }
    }

    async fn release(&self, message: &Message, after: Duration) {
        if let Err(err) = self.batches.set_visibility(&message.receipt, after).await {
            tracing::warn!(error = %err, "releasing a batch message failed; it comes back after its visibility timeout");
        }
    }

    /// Extend the message's visibility in the background until the returned guard is stopped.
    fn keep_hidden(&self, message: &Message) -> KeepHidden {
        let token = CancellationToken::new();
        let stop = token.clone();
        let queue = Arc::clone(&self.batches);
        let receipt = message.receipt.clone();
        let visibility = self.config.visibility;
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(visibility / 3) => {}
                }
                if let Err(err) = queue.set_visibility(&receipt, visibility).await {
                    tracing::warn!(error = %err, "extending a batch message's visibility failed");
                }
            }
        });
        KeepHidden { token, task }
    }

    /// Anchor one batch (idempotent: an anchored batch is not anchored again).
    pub async fn process_batch(&self, batch_id: Uuid) -> Result<BatchOutcome, BatchError> {
        self.process_batch_until(batch_id, &CancellationToken::new())
            .await
    }

    /// Like [`Worker::process_batch`], giving up with [`BatchError::Interrupted`] when `stop`
    /// is cancelled while the anchor is under way.
    pub async fn process_batch_until(
        &self,
        batch_id: Uuid,
        stop: &CancellationToken,
    ) -> Result<BatchOutcome, BatchError> {
        let started = Instant::now();
        let batch = self
            .store
            .get_batch(batch_id)
            .await
            .map_err(|e| retryable("loading the batch")(&e))?
            .ok_or_else(|| BatchError::Unreadable(format!("unknown batch {batch_id}")))?;
        if batch.anchored.is_some() {
            return Ok(BatchOutcome::AlreadyAnchored(batch_id));
        }
        if batch.failed.is_some() {
            return Ok(BatchOutcome::Failed(batch_id));
        }
        // One worker at a time per batch, across processes: a re-announced or duplicated
        // batch message should not run a second anchor alongside the first. (This lock only
        // saves work: were it lost, the transaction manager would still send nothing twice,
        // since it settles the batch's journaled transactions under the wallet lock.)
        let _lock = self
            .store
            .try_lock_batch(batch_id)
            .await
            .map_err(|e| retryable("locking the batch")(&e))?
            .ok_or_else(|| {
                BatchError::Retryable(format!(
                    "batch {batch_id} is being anchored by another worker"
                ))
            })?;
        // Whoever held the lock before may have finished the batch.
        let anchored_meanwhile = self
            .store
            .get_batch(batch_id)
            .await
            .map_err(|e| retryable("loading the batch")(&e))?
            .is_some_and(|b| b.anchored.is_some());
        if anchored_meanwhile {
            return Ok(BatchOutcome::AlreadyAnchored(batch_id));
        }
        let permanent = |reason: String| BatchError::Permanent { batch_id, reason };
        let file = self
            .blobs
            .get(&batch_file_key(batch_id))
            .await
            .map_err(|e| retryable("reading the batch file")(&e))?
            .ok_or_else(|| permanent(format!("batch file of {batch_id} is missing")))?;
        let (file_id, leaves) = decode_batch_file(&file)
            .map_err(|e| permanent(format!("batch file of {batch_id}: {e}")))?;
        if file_id != batch_id || leaves.len() != batch.request_count as usize {
            return Err(permanent(format!(
                "batch file of {batch_id} does not match its record ({} leaves, {} members)",
                leaves.len(),
                batch.request_count
            )));
        }
        let size = leaves.len();
        let threads = self.config.build_threads;
        let build_started = Instant::now();
        let tree = tokio::task::spawn_blocking(move || MerkleTree::build_parallel(leaves, threads))
            .await
            .map_err(|e| retryable("tree build task")(&e))?
            .map_err(|e| permanent(format!("batch {batch_id}: {e}")))?;
        let tree = Arc::new(tree);
        let build_ms = build_started.elapsed().as_millis() as u64;

        let anchor_started = Instant::now();
        let chain_id = self.anchorer.chain_id();
        let mut written: Option<([u8; 32], String, String)> = None;
        let mut artifact_ms = 0;
        for round in 1.. {
            // Every anchoring failure leaves the batch retryable: the batch itself is fine,
            // and what failed (the chain, the wallet's funds or permission) can be fixed.
            let tx_hash = tokio::select! {
                anchored = self.anchorer.anchor_root(batch_id, tree.root_digest()) => anchored.map_err(|e| {
                    if !e.retryable {
                        tracing::error!(batch.id = %batch_id, error = %e, "anchoring needs an operator; the batch stays queued");
                    }
                    BatchError::Retryable(format!("anchoring: {e}"))
                })?,
                () = stop.cancelled() => return Err(BatchError::Interrupted(
                    "stopping during the anchor; what was sent is journaled and resumed by the next worker".into(),
                )),
            };
            if written.as_ref().is_none_or(|(hash, _, _)| *hash != tx_hash) {
                let artifact_started = Instant::now();
                let proof = AnchorProof::contract(tree.root(), tx_hash, chain_id.clone());
                let chunk = self.config.chunk_leaves;
                let for_artifact = Arc::clone(&tree);
                let (artifact, root_cid, proof_cid) = tokio::task::spawn_blocking(move || {
                    let artifact = encode_artifact(&for_artifact, &proof, chunk);
                    (
                        artifact,
                        for_artifact.root().to_string(),
                        proof.cid().to_string(),
                    )
                })
                .await
                .map_err(|e| retryable("artifact task")(&e))?;
                self.blobs
                    .put(&tree_artifact_key(batch_id), Bytes::from(artifact))
                    .await
                    .map_err(|e| retryable("writing the tree artifact")(&e))?;
                fault::point("worker::after_artifact");
                artifact_ms += artifact_started.elapsed().as_millis() as u64;
                written = Some((tx_hash, root_cid, proof_cid));
            }
            // The batch is reported COMPLETED only if its transaction is still where it was
            // confirmed: a reorganisation in between sends it again instead.
            let still = self
                .anchorer
                .confirmed(batch_id)
                .await
                .map_err(|e| retryable("checking the anchor")(&e))?;
            if still == Some(tx_hash) {
                break;
            }
            if round >= 3 {
                return Err(BatchError::Retryable(format!(
                    "the anchor of batch {batch_id} keeps leaving the canonical chain"
                )));
            }
            tracing::warn!(batch.id = %batch_id, tx.hash = %format!("0x{}", hex_lower(&tx_hash)), "the anchor transaction left the canonical chain before the batch was recorded; anchoring again");
        }
        let anchor_ms = anchor_started.elapsed().as_millis() as u64 - artifact_ms;
        let (tx_hash, root_cid, proof_cid) = written.expect("set by the loop");

        let tx_hex = format!("0x{}", hex_lower(&tx_hash));
        fault::point("worker::before_mark_anchored");
        self.store
            .mark_batch_anchored(
                batch_id,
                &AnchoredBatch {
                    root_cid,
                    proof_cid,
                    tx_hash: tx_hex.clone(),
                    chain_id,
                    anchored_at: Utc::now(),
                },
            )
            .await
            .map_err(|e| retryable("recording the anchor")(&e))?;
        fault::point("worker::after_mark_anchored");
        tracing::info!(
            batch.id = %batch_id,
            batch.size = size,
            tree_ms = build_ms,
            anchor_ms,
            artifact_ms,
            total_ms = started.elapsed().as_millis() as u64,
            "batch timings"
        );
        metrics::counter!("cas_batches_anchored_total").increment(1);
        metrics::histogram!("cas_tree_build_seconds").record(build_ms as f64 / 1000.0);
        metrics::histogram!("cas_batch_processing_seconds").record(started.elapsed().as_secs_f64());
        Ok(BatchOutcome::Anchored {
            batch_id,
            size,
            tx_hash: tx_hex,
        })
    }
}

/// The background visibility extension of one message.
struct KeepHidden {
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl KeepHidden {
    /// Stop extending, and wait for an extension already under way to land. Otherwise that
    /// extension could reach the queue after the caller's own `set_visibility` and replace the
    /// retry backoff with the full visibility timeout.
    async fn stop(self) {
        self.token.cancel();
        let _ = self.task.await;
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
