//! The scheduler (`cas scheduler`): turns the stream of accepted requests into batches.
//!
//! It consumes the ingest multi-queue, where the API publishes packed request entries,
//! and accumulates entries until a batch closes: at `batch_max` requests, after `linger`
//! since the first pending entry, or at a flush boundary. Closing a batch:
//!
//! 1. drops entries that are already batched, replaced or unknown (redelivered messages);
//! 2. applies REPLACED per (stream id, origin): the newest client timestamp wins, a tie
//!    goes to the entry received later; only unbatched PENDING requests become REPLACED;
//!    Across batches (and schedulers), the store keeps the newest batched request per
//!    (stream id, origin): a winner older than that tip is REPLACED too, as in the
//!    reference's queue mode;
//! 3. sorts the winners by CID string (the leaf order), writes the batch file to blob
//!    storage, records the batch and its members in the store (atomically: a request joins
//!    one batch only), sends the batch id on the batch queue and records that it did;
//! 4. acknowledges the ingest messages whose entries are all resolved. A batch whose
//!    announcement failed is durable already: it is announced again within seconds, and
//!    its messages are acknowledged anyway.
//!
//! A crash or an outage at any point loses nothing, and strands nothing for long:
//! - unacknowledged ingest messages are redelivered and their batched entries filtered out;
//! - the sweeper re-publishes requests that are in no batch a while after they were
//!   accepted (a lost publish, a message that went to its dead-letter queue). It walks the
//!   requests in the order their inserts committed and keeps its place at the oldest one
//!   still unbatched, so a request whose insert committed late is never skipped;
//! - batches recorded but never announced are announced (after 30 s), batches announced
//!   but not anchored in time are announced again (a lost batch message), and batches that
//!   failed for good (their file missing or corrupt) have their requests moved to a new
//!   batch, which is announced in turn.

mod pending;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use cas_blob::BlobStore;
use cas_core::pipeline::{
    BatchMessage, IngestEntry, batch_file_key, encode_batch_file, pack_ingest, parse_ingest,
};
use cas_queue::{MAX_BATCH, MAX_MESSAGE_BYTES, Queue};

/// Most messages one receive asks for: [`MAX_BATCH`] from each of ten ingest queues.
const RECEIVE_MAX: usize = MAX_BATCH * 10;
use cas_core::fault;
use cas_store::{NewBatch, RequestStore, StoreError, SweepPosition, TipClaim};
use chrono::Utc;
use cid::Cid;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use pending::Pending;

/// Name of the sweeper's position (the oldest request it has not seen batched).
pub const SWEEPER_CURSOR: &str = "ingest-sweeper";

/// Batches read per page by the re-dispatch loop.
const REDISPATCH_PAGE: i64 = 100;

/// Requests read per page by the sweeper.
const SWEEP_PAGE: i64 = 10_000;

/// How long a recorded batch may stay unannounced (its scheduler is announcing it) before
/// another round announces it.
const ANNOUNCE_GRACE: Duration = Duration::from_secs(30);

/// Longest a stopping scheduler spends releasing the messages it holds.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long closing waits after a failed close before trying again.
const CLOSE_BACKOFF: Duration = Duration::from_secs(5);

/// Tuning of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Most requests in one batch (one Merkle tree, one transaction).
    pub batch_max: usize,
    /// Longest a pending request waits before its batch closes.
    pub linger: Duration,
    /// If set, pending requests are also flushed whenever wall-clock time crosses a multiple
    /// of this interval (e.g. 1h flushes at the top of every hour, which ceramic-one's
    /// hourly roots expect).
    pub flush_interval: Option<Duration>,
    /// How long received ingest messages stay hidden; extended while they wait.
    pub visibility: Duration,
    /// Long-poll time of one receive.
    pub receive_wait: Duration,
    /// Shortest time between two receives that both bring messages. Each receive asks
    /// every ingest queue once and takes all they hold, so under load one round per
    /// interval keeps up (up to 100 packed messages a round) while the number of queue
    /// calls stays flat instead of growing with the publish rate.
    pub receive_interval: Duration,
    /// Requests unbatched for longer than this are re-published by the sweeper. Must exceed
    /// `linger` (by a minute is enough: a request reaches a batch within about a second of
    /// its linger).
    pub sweep_age: Duration,
    /// How often the sweeper and the re-dispatch loop run.
    pub sweep_interval: Duration,
    /// Recorded batches not anchored after this long are announced again.
    pub redispatch_after: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            batch_max: 1 << 20,
            linger: Duration::from_secs(60),
            flush_interval: None,
            visibility: Duration::from_secs(15 * 60),
            receive_wait: Duration::from_secs(1),
            receive_interval: Duration::from_millis(500),
            sweep_age: Duration::from_secs(120),
            sweep_interval: Duration::from_secs(30),
            redispatch_after: Duration::from_secs(30 * 60),
        }
    }
}

impl SchedulerConfig {
    /// Reject settings that cannot work together.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.batch_max >= 1, "batch max must be at least 1");
        anyhow::ensure!(
            self.batch_max <= 1 << 24,
            "batch max above 2^24 is not supported"
        );
        anyhow::ensure!(
            self.sweep_age > self.linger,
            "sweep age ({:?}) must exceed linger ({:?}), or pending requests get re-published",
            self.sweep_age,
            self.linger
        );
        anyhow::ensure!(
            self.visibility > self.receive_wait * 3,
            "visibility timeout must be well above the receive wait"
        );
        Ok(())
    }
}

/// What one batch close did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloseReport {
    /// The batch recorded, if any request was left to batch.
    pub batch_id: Option<Uuid>,
    /// Requests in it.
    pub batched: usize,
    /// Requests marked REPLACED.
    pub replaced: usize,
    /// Entries dropped as already batched, replaced or unknown.
    pub dropped: usize,
    /// Ingest messages acknowledged.
    pub acked: usize,
    /// Milliseconds spent checking the candidates against the store (already batched,
    /// replaced) and marking losers REPLACED.
    pub filter_ms: u64,
    /// Milliseconds spent writing the batch file and recording the batch and its members.
    pub record_ms: u64,
    /// Milliseconds spent acknowledging the ingest messages.
    pub ack_ms: u64,
}

/// The scheduler role.
pub struct Scheduler {
    store: Arc<dyn RequestStore>,
    ingest: Arc<dyn Queue>,
    batches: Arc<dyn Queue>,
    blobs: Arc<dyn BlobStore>,
    config: SchedulerConfig,
    pending: Pending,
    /// Batches recorded by this scheduler whose announcement failed: sent again first.
    unannounced: Vec<Uuid>,
    /// When the sweeper last re-published a request (not again before `sweep_age`).
    republished: HashMap<Uuid, Instant>,
    /// Entries found batched or replaced already since the last close (redeliveries).
    dropped: usize,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("config", &self.config)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// A scheduler over its boundaries.
    pub fn new(
        store: Arc<dyn RequestStore>,
        ingest: Arc<dyn Queue>,
        batches: Arc<dyn Queue>,
        blobs: Arc<dyn BlobStore>,
        config: SchedulerConfig,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        Ok(Self {
            store,
            ingest,
            batches,
            blobs,
            config,
            pending: Pending::default(),
            unannounced: Vec::new(),
            republished: HashMap::new(),
            dropped: 0,
        })
    }

    /// Requests waiting for a batch.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Run until `shutdown`. A batch being closed is finished first; pending entries whose
    /// messages are not acknowledged are redelivered to the next scheduler.
    ///
    /// Every round of the loop waits for something (a receive, a backoff, the next due
    /// time), so an outage of the store or the queues never turns it into a busy loop.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut next_sweep = Instant::now();
        let mut last_extend = Instant::now();
        let mut close_backoff_until: Option<Instant> = None;
        let mut next_flush = self.config.flush_interval.map(next_boundary);
        tracing::info!(
            batch_max = self.config.batch_max,
            linger_ms = self.config.linger.as_millis() as u64,
            "scheduler running"
        );
        let mut last_delivery: Option<Instant> = None;
        while !shutdown.is_cancelled() {
            let mut waited = false;
            if self.pending.len() < self.config.batch_max {
                if let Some(at) = last_delivery {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep_until((at + self.config.receive_interval).into()) => {}
                    }
                }
                let received = tokio::select! {
                    () = shutdown.cancelled() => break,
                    r = self.receive_once() => r,
                };
                waited = true;
                match received {
                    Ok(0) => last_delivery = None,
                    Ok(_) => last_delivery = Some(Instant::now()),
                    Err(err) => {
                        last_delivery = None;
                        tracing::warn!(error = %err, "receiving ingest messages failed");
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            }

            self.announce_pending().await;
            let now = Instant::now();
            let flush_due = match next_flush {
                Some(at) if chrono::Utc::now() >= at => {
                    next_flush = self.config.flush_interval.map(next_boundary);
                    true
                }
                _ => false,
            };
            let due = !self.pending.is_empty()
                && (self.pending.len() >= self.config.batch_max
                    || self
                        .pending
                        .age()
                        .is_some_and(|age| age >= self.config.linger)
                    || flush_due);
            let backing_off = close_backoff_until.is_some_and(|until| now < until);
            if due && !backing_off {
                match self.close_batch().await {
                    Ok(report) => {
                        close_backoff_until = None;
                        if let Some(id) = report.batch_id {
                            metrics::counter!("cas_batches_closed_total").increment(1);
                            metrics::histogram!("cas_batch_size").record(report.batched as f64);
                            tracing::info!(
                                batch.id = %id,
                                batch.size = report.batched,
                                replaced = report.replaced,
                                dropped = report.dropped,
                                acked = report.acked,
                                filter_ms = report.filter_ms,
                                record_ms = report.record_ms,
                                ack_ms = report.ack_ms,
                                "batch closed"
                            );
                        }
                    }
                    Err(err) => {
                        tracing::warn!(
                            error = format!("{err:#}"),
                            "closing a batch failed, will retry"
                        );
                        close_backoff_until = Some(now + CLOSE_BACKOFF);
                    }
                }
            }

            metrics::gauge!("cas_pending_requests").set(self.pending.len() as f64);
            metrics::gauge!("cas_oldest_pending_seconds")
                .set(self.pending.age().map_or(0.0, |age| age.as_secs_f64()));

            if !self.pending.is_empty() && last_extend.elapsed() >= self.config.visibility / 3 {
                self.extend_visibility().await;
                last_extend = Instant::now();
            }
            if next_sweep <= Instant::now() {
                self.report_queue_depths().await;
                if let Err(err) = self.sweep().await {
                    tracing::warn!(error = format!("{err:#}"), "sweeper failed");
                }
                if let Err(err) = self.redispatch().await {
                    tracing::warn!(error = format!("{err:#}"), "re-dispatch failed");
                }
                next_sweep = Instant::now() + self.config.sweep_interval;
            }
            if !waited {
                // A full pending set does not receive: wait for what comes next instead (the
                // end of a close backoff, the next sweep), at most a second.
                let mut until = Instant::now() + Duration::from_secs(1);
                if let Some(backoff) = close_backoff_until {
                    until = until.min(backoff.max(Instant::now()));
                }
                until = until.min(next_sweep.max(Instant::now()));
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep_until(until.into()) => {}
                }
            }
        }
        self.release_held().await;
        tracing::info!(pending = self.pending.len(), "scheduler stopped");
        Ok(())
    }

    /// On the way out: make the messages still held visible again at once, so the next
    /// scheduler receives them now rather than when their visibility runs out (15 minutes by
    /// default; the sweeper would re-publish their requests before that). Bounded, so a
    /// stop never hangs on an unreachable queue.
    async fn release_held(&self) {
        use futures::StreamExt as _;
        let receipts = self.pending.receipts();
        if receipts.is_empty() {
            return;
        }
        let count = receipts.len();
        let ingest = &self.ingest;
        let releasing = futures::stream::iter(receipts)
            .map(|receipt| async move { ingest.set_visibility(&receipt, Duration::ZERO).await })
            .buffer_unordered(16)
            .filter(|r| std::future::ready(r.is_ok()))
            .count();
        match tokio::time::timeout(RELEASE_TIMEOUT, releasing).await {
            Ok(released) => tracing::info!(released, held = count, "released held ingest messages"),
            Err(_) => tracing::warn!(
                held = count,
                "releasing held ingest messages timed out; they return when their visibility ends"
            ),
        }
    }

    /// Receive one round of ingest messages into the pending set. Returns how many
    /// messages arrived.
    pub async fn receive_once(&mut self) -> anyhow::Result<usize> {
        let messages = self
            .ingest
            .receive(
                RECEIVE_MAX,
                self.config.visibility,
                self.config.receive_wait,
            )
            .await?;
        let count = messages.len();
        let mut garbage = Vec::new();
        for message in messages {
            match parse_ingest(&message.body) {
                Ok(parsed) => {
                    // A message with no entry is acknowledged at once.
                    if let Some(receipt) =
                        self.pending
                            .add_message(message.id, message.receipt, parsed.reqs)
                    {
                        garbage.push(receipt);
                    }
                }
                Err(err) => {
                    // A message we cannot read never will be: drop it (the sweeper re-publishes
                    // any request it stood for).
                    tracing::warn!(message.id = %message.id, error = %err, "dropping unreadable ingest message");
                    garbage.push(message.receipt);
                }
            }
        }
        if !garbage.is_empty() {
            self.ingest.ack(&garbage).await?;
        }
        if let Err(err) = self.claim_received().await {
            // Claimed again before the next close.
            tracing::warn!(
                error = format!("{err:#}"),
                "checking received requests failed; retrying later"
            );
        }
        Ok(count)
    }

    /// For the entries received since the last call: drop those no longer PENDING and
    /// unbatched (a redelivered message), and claim the others' stream tips (REPLACED
    /// across batches, as the reference's queue mode decides it on arrival): a request older
    /// than one of its stream and origin batched or received before is REPLACED at once.
    /// Done as messages arrive, it keeps these 2^20 lookups and writes out of the close.
    async fn claim_received(&mut self) -> anyhow::Result<()> {
        let ids = self.pending.take_unclaimed();
        if ids.is_empty() {
            return Ok(());
        }
        // One claim per pair: among the entries received together, the newest of each pair
        // claims, and the others are outdated already.
        let (winners, mut losers) = self.pending.pick_winners(&ids);
        let claims: Vec<TipClaim> = winners
            .iter()
            .filter_map(|id| self.pending.tip_claim(id))
            .collect();
        drop(winners);
        let mut claimed = match self.store.claim_tips(&claims).await {
            Ok(claimed) => claimed,
            Err(err) => {
                self.pending.unclaim(ids);
                return Err(anyhow::Error::from(err)
                    .context("checking the candidates and claiming their streams' tips"));
            }
        };
        drop(claims);
        drop(ids);
        claimed.outdated.append(&mut losers);
        if !claimed.outdated.is_empty() {
            let mut replaced = 0;
            for chunk in claimed.outdated.chunks(65_536) {
                replaced += self
                    .store
                    .replace_requests(chunk, Utc::now())
                    .await
                    .context("marking replaced requests")?;
            }
            metrics::counter!("cas_requests_replaced_total").increment(replaced);
            fault::point("scheduler::after_replaced");
        }
        self.dropped += claimed.gone.len();
        let resolved: Vec<Uuid> = claimed.gone.into_iter().chain(claimed.outdated).collect();
        if !resolved.is_empty() {
            self.acknowledge(&resolved).await;
        }
        Ok(())
    }

    /// Close a batch from the pending entries now (see the crate docs for the steps).
    pub async fn close_batch(&mut self) -> anyhow::Result<CloseReport> {
        let mut report = CloseReport::default();
        let started = Instant::now();
        // Normally done as the entries arrived; whatever failed then is done now.
        self.claim_received().await?;
        let candidate_ids = self.pending.ids();

        // REPLACED among the pending entries. Entries batched already (a redelivered message)
        // take part too: a request older than one batched already is outdated anyway, and
        // replacing a batched request changes nothing.
        let (winners, losers) = self.pending.pick_winners(&candidate_ids);
        drop(candidate_ids);

        // The oldest winners first, at most batch_max of them.
        let mut chosen: Vec<(u64, Uuid)> = winners
            .iter()
            .filter_map(|id| self.pending.get(id).map(|(_, seq)| (seq, *id)))
            .collect();
        drop(winners);
        chosen.sort_unstable_by_key(|(seq, _)| *seq);
        chosen.truncate(self.config.batch_max);

        if !losers.is_empty() {
            for chunk in losers.chunks(65_536) {
                report.replaced +=
                    self.store
                        .replace_requests(chunk, Utc::now())
                        .await
                        .context("marking replaced requests")? as usize;
            }
            metrics::counter!("cas_requests_replaced_total").increment(report.replaced as u64);
            fault::point("scheduler::after_replaced");
        }
        report.filter_ms = started.elapsed().as_millis() as u64;
        let recording = Instant::now();

        // Leaf order: by CID string (the stored one, canonical). Sorting borrowed strings
        // keeps a 2^20 close from copying them.
        let (members, cids, unparseable) = {
            let mut order: Vec<(&str, Uuid)> = chosen
                .iter()
                .filter_map(|(_, id)| self.pending.get(id).map(|(e, _)| (e.cid.as_str(), *id)))
                .collect();
            order.sort_unstable();
            let mut members = Vec::with_capacity(order.len());
            let mut cids = Vec::with_capacity(order.len());
            let mut unparseable = Vec::new();
            for (text, id) in order {
                match Cid::try_from(text) {
                    Ok(cid) => {
                        members.push(id);
                        cids.push(cid);
                    }
                    Err(_) => unparseable.push(id),
                }
            }
            (members, cids, unparseable)
        };
        drop(chosen);
        if !unparseable.is_empty() {
            // The API stores canonical CIDs only; an unreadable one is a corrupt message.
            tracing::warn!(
                count = unparseable.len(),
                "dropping entries with unreadable cids"
            );
        }

        let batched = members.len();
        if !members.is_empty() {
            let batch_id = Uuid::now_v7();
            let batch = NewBatch {
                id: batch_id,
                members,
                created_at: Utc::now(),
            };
            if let Err(err) = self.record_batch(&batch, &cids).await {
                self.resolve_batched_elsewhere(&batch.members, &err).await;
                return Err(err);
            }
            drop(cids);
            report.batch_id = Some(batch_id);
            report.batched = batched;
            report.record_ms = recording.elapsed().as_millis() as u64;
            let acking = Instant::now();
            let resolved: Vec<Uuid> = losers
                .into_iter()
                .chain(unparseable)
                .chain(batch.members)
                .collect();
            report.acked = self.acknowledge(&resolved).await;
            report.ack_ms = acking.elapsed().as_millis() as u64;
        } else {
            let acking = Instant::now();
            let resolved: Vec<Uuid> = losers.into_iter().chain(unparseable).collect();
            report.acked = self.acknowledge(&resolved).await;
            report.ack_ms = acking.elapsed().as_millis() as u64;
        }
        report.dropped = std::mem::take(&mut self.dropped);
        Ok(report)
    }

    /// After a close failed because a member was put in a batch by someone else meanwhile
    /// (another scheduler that got the same request re-published), drop the members no
    /// longer PENDING and unbatched, so that the next close can succeed.
    async fn resolve_batched_elsewhere(&mut self, members: &[Uuid], err: &anyhow::Error) {
        let conflict = err.chain().any(|c| {
            matches!(
                c.downcast_ref::<StoreError>(),
                Some(StoreError::Conflict(_))
            )
        });
        if !conflict {
            return;
        }
        let mut live = HashSet::with_capacity(members.len());
        for chunk in members.chunks(65_536) {
            match self.store.unbatched_pending(chunk).await {
                Ok(ids) => live.extend(ids),
                Err(e) => {
                    tracing::warn!(error = %e, "checking the members of a conflicting batch failed");
                    return;
                }
            }
        }
        let gone: Vec<Uuid> = members
            .iter()
            .filter(|id| !live.contains(id))
            .copied()
            .collect();
        tracing::warn!(
            requests = gone.len(),
            "requests of the batch being closed were batched elsewhere meanwhile; closing without them"
        );
        self.dropped += gone.len();
        self.acknowledge(&gone).await;
    }

    /// Resolve entries and acknowledge the messages now fully resolved; returns how many.
    async fn acknowledge(&mut self, resolved: &[Uuid]) -> usize {
        let receipts = self.pending.resolve(resolved);
        fault::point("scheduler::before_ack");
        if !receipts.is_empty() {
            // Failing here only means redelivery; the entries will be filtered out then.
            if let Err(err) = self.ingest.ack(&receipts).await {
                tracing::warn!(error = %err, "acknowledging ingest messages failed; they will be redelivered");
            }
        }
        receipts.len()
    }

    /// Write the batch file, record the batch, and announce it. Once recorded, the batch is
    /// durable: a failed announcement is retried in the next rounds, not reported.
    async fn record_batch(&mut self, batch: &NewBatch, leaves: &[Cid]) -> anyhow::Result<()> {
        let file = encode_batch_file(batch.id, leaves);
        self.blobs
            .put(&batch_file_key(batch.id), Bytes::from(file))
            .await
            .context("writing the batch file")?;
        fault::point("scheduler::after_batch_file");
        self.store
            .create_batch(batch)
            .await
            .context("recording the batch")?;
        fault::point("scheduler::after_batch_record");
        if let Err(err) = self.announce(batch.id).await {
            tracing::warn!(batch.id = %batch.id, error = format!("{err:#}"), "announcing a batch failed; it is announced again shortly");
            self.unannounced.push(batch.id);
        }
        Ok(())
    }

    /// Send a batch's message to the workers and record that it was sent.
    async fn announce(&self, batch_id: Uuid) -> anyhow::Result<()> {
        self.batches
            .send(BatchMessage::new(batch_id).to_json())
            .await
            .context("sending the batch message")?;
        fault::point("scheduler::after_announce");
        // If this write fails, the batch is announced once more later: harmless.
        if let Err(err) = self.store.mark_batch_announced(batch_id, Utc::now()).await {
            tracing::warn!(batch.id = %batch_id, error = %err, "recording a batch announcement failed");
        }
        Ok(())
    }

    /// Announce the batches whose announcement failed before.
    async fn announce_pending(&mut self) {
        if self.unannounced.is_empty() {
            return;
        }
        let mut still = Vec::new();
        for batch_id in std::mem::take(&mut self.unannounced) {
            match self.announce(batch_id).await {
                Ok(()) => {
                    tracing::info!(batch.id = %batch_id, "batch announced after a failed attempt")
                }
                Err(_) => still.push(batch_id),
            }
        }
        self.unannounced = still;
    }

    /// Export the approximate depth of the ingest and batch queues.
    async fn report_queue_depths(&self) {
        for (name, queue) in [("ingest", &self.ingest), ("batch", &self.batches)] {
            match queue.approximate_depth().await {
                Ok(depth) => {
                    metrics::gauge!("cas_queue_depth", "queue" => name).set(depth as f64);
                }
                Err(err) => {
                    tracing::debug!(queue = name, error = %err, "reading the queue depth failed");
                }
            }
        }
    }

    async fn extend_visibility(&self) {
        for receipt in self.pending.receipts() {
            if let Err(err) = self
                .ingest
                .set_visibility(&receipt, self.config.visibility)
                .await
            {
                tracing::warn!(error = %err, "extending an ingest message's visibility failed");
            }
        }
    }

    /// Re-publish requests that were accepted but are in no batch `sweep_age` after they
    /// were accepted (a lost publish, an ingest message that went to its dead-letter queue).
    /// Returns how many were re-published.
    pub async fn sweep(&mut self) -> anyhow::Result<usize> {
        let age = chrono::Duration::from_std(self.config.sweep_age)
            .unwrap_or(chrono::Duration::minutes(2));
        self.sweep_older_than(Utc::now() - age).await
    }

    /// Resume after a restart that lost the queues' contents (the embedded mode keeps its
    /// queues in memory): publish every request that is in no batch, whatever its age, and
    /// announce every batch that is neither anchored nor failed, and move the members of
    /// failed batches. Call it before new requests arrive. Returns how many requests and
    /// batches were re-sent.
    pub async fn resume_all(&mut self) -> anyhow::Result<(usize, usize)> {
        let requests = self.sweep_older_than(Utc::now()).await?;
        let batches = self.redispatch_before(Utc::now()).await?;
        Ok((requests, batches))
    }

    /// The sweep: walk the unbatched PENDING requests in commit order from the stored
    /// position, re-publish those created before `cutoff` (each at most once per sweep age),
    /// stop at the first one created after it, and store as the new position the oldest
    /// request still unbatched (or the scan's horizon if none is): the position never passes
    /// a request that is not in a batch yet.
    async fn sweep_older_than(&mut self, cutoff: chrono::DateTime<Utc>) -> anyhow::Result<usize> {
        let start = self.store.cursor(SWEEPER_CURSOR).await?.unwrap_or(0);
        let mut at = SweepPosition::before(start);
        let mut oldest: Option<(i64, chrono::DateTime<Utc>)> = None;
        let mut stranded: Vec<IngestEntry> = Vec::new();
        let mut seen: HashSet<Uuid> = HashSet::new();
        let horizon = 'scan: loop {
            let page = self.store.unbatched_after(at, SWEEP_PAGE).await?;
            let full = page.rows.len() as i64 == SWEEP_PAGE;
            for (position, record) in &page.rows {
                at = *position;
                oldest.get_or_insert((position.position, record.created_at));
                if record.created_at > cutoff {
                    // Younger ones follow (commit order is about creation order): their
                    // batch may still be open.
                    break 'scan None;
                }
                seen.insert(record.id);
                if self.pending.contains(&record.id) {
                    continue; // waiting here for its batch
                }
                let again = self
                    .republished
                    .get(&record.id)
                    .is_none_or(|at| at.elapsed() >= self.config.sweep_age);
                if again {
                    self.republished.insert(record.id, Instant::now());
                    stranded.push(IngestEntry {
                        id: record.id,
                        cid: record.cid.clone(),
                        sid: record.stream_id.clone(),
                        org: record.origin.clone(),
                        ts: record.timestamp.unix_nanos(),
                    });
                }
            }
            if !full {
                break Some(page.horizon);
            }
        };
        // Requests not seen again were batched meanwhile.
        self.republished.retain(|id, _| seen.contains(id));
        let position = match (oldest, horizon) {
            (Some((position, _)), _) => position,
            (None, Some(horizon)) => horizon,
            (None, None) => start,
        };
        let oldest_age = oldest.map_or(0.0, |(_, created)| {
            (Utc::now() - created).num_milliseconds().max(0) as f64 / 1000.0
        });
        metrics::gauge!("cas_oldest_unbatched_seconds").set(oldest_age);
        if !stranded.is_empty() {
            for chunk in stranded.chunks(SWEEP_PAGE as usize) {
                let messages = pack_ingest(chunk, MAX_MESSAGE_BYTES)?;
                self.ingest.send_many(messages).await?;
            }
            metrics::counter!("cas_requests_republished_total").increment(stranded.len() as u64);
            tracing::warn!(
                requests = stranded.len(),
                "re-published requests that were in no batch in time"
            );
        }
        if position != start {
            self.store.set_cursor(SWEEPER_CURSOR, position).await?;
        }
        Ok(stranded.len())
    }

    /// Announce batches that were recorded but never announced (after a short grace),
    /// announce again batches not anchored in time (a lost message), and move the requests
    /// of batches that failed for good into new batches. Returns how many batches were
    /// announced.
    pub async fn redispatch(&mut self) -> anyhow::Result<usize> {
        let stale = Utc::now()
            - chrono::Duration::from_std(self.config.redispatch_after)
                .unwrap_or(chrono::Duration::minutes(30));
        self.redispatch_before(stale).await
    }

    async fn redispatch_before(&mut self, stale: chrono::DateTime<Utc>) -> anyhow::Result<usize> {
        let grace = Utc::now()
            - chrono::Duration::from_std(ANNOUNCE_GRACE).unwrap_or(chrono::Duration::zero());
        let mut announced = 0;
        // Recorded, never announced (a crash between the two, or another scheduler's
        // failed announcement).
        loop {
            let batches = self
                .store
                .unannounced_batches(grace.max(stale), REDISPATCH_PAGE)
                .await?;
            for batch_id in &batches {
                self.announce(*batch_id).await?;
                self.unannounced.retain(|id| id != batch_id);
            }
            announced += batches.len();
            if (batches.len() as i64) < REDISPATCH_PAGE {
                break;
            }
        }
        if announced > 0 {
            metrics::counter!("cas_batches_reannounced_total").increment(announced as u64);
            tracing::warn!(
                batches = announced,
                "announced batches whose announcement was lost"
            );
        }
        // Announced, not anchored in time (the message was lost, or dead-lettered during a
        // chain outage). Each announcement moves a batch's time forward, so the pages end.
        let mut again = 0;
        loop {
            let batches = self
                .store
                .unanchored_batches(stale, REDISPATCH_PAGE)
                .await?;
            let bodies = batches
                .iter()
                .map(|id| BatchMessage::new(*id).to_json())
                .collect();
            self.batches.send_many(bodies).await?;
            for batch_id in &batches {
                self.store
                    .mark_batch_announced(*batch_id, Utc::now())
                    .await?;
            }
            again += batches.len();
            if (batches.len() as i64) < REDISPATCH_PAGE {
                break;
            }
        }
        if again > 0 {
            metrics::counter!("cas_batches_reannounced_total").increment(again as u64);
            tracing::warn!(
                batches = again,
                "re-announced batches that were not anchored in time"
            );
        }
        let moved = self.rebatch_failed().await?;
        Ok(announced + again + moved)
    }

    /// Move the members of every batch that failed for good into a new batch (same members,
    /// same leaf order, a fresh batch file), and announce it.
    async fn rebatch_failed(&mut self) -> anyhow::Result<usize> {
        let mut moved = 0;
        loop {
            let failed = self.store.failed_batches(REDISPATCH_PAGE).await?;
            for from in &failed {
                let members = self.store.batch_members(*from).await?;
                let leaves: Vec<Cid> = members
                    .iter()
                    .map(|(_, cid)| Cid::try_from(cid.as_str()))
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("a member of failed batch {from} has no valid cid"))?;
                let batch = NewBatch {
                    id: Uuid::now_v7(),
                    members: members.iter().map(|(id, _)| *id).collect(),
                    created_at: Utc::now(),
                };
                let file = encode_batch_file(batch.id, &leaves);
                self.blobs
                    .put(&batch_file_key(batch.id), Bytes::from(file))
                    .await
                    .context("writing the batch file")?;
                if !self.store.rebatch(*from, &batch).await? {
                    continue; // another scheduler moved it first
                }
                metrics::counter!("cas_batches_rebatched_total").increment(1);
                tracing::warn!(
                    batch.id = %batch.id,
                    failed = %from,
                    batch.size = batch.members.len(),
                    "moved the requests of a failed batch into a new batch"
                );
                if let Err(err) = self.announce(batch.id).await {
                    tracing::warn!(batch.id = %batch.id, error = format!("{err:#}"), "announcing a batch failed; it is announced again shortly");
                    self.unannounced.push(batch.id);
                }
                moved += 1;
            }
            if (failed.len() as i64) < REDISPATCH_PAGE {
                return Ok(moved);
            }
        }
    }
}

/// The next multiple of `interval` since the Unix epoch, strictly after now.
fn next_boundary(interval: Duration) -> chrono::DateTime<Utc> {
    let step = interval.as_millis().max(1) as i64;
    let now = Utc::now().timestamp_millis();
    let next = (now / step + 1) * step;
    chrono::DateTime::from_timestamp_millis(next).unwrap_or_else(Utc::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation() {
        assert!(SchedulerConfig::default().validate().is_ok());
        let bad = SchedulerConfig {
            sweep_age: Duration::from_secs(30),
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        let zero = SchedulerConfig {
            batch_max: 0,
            ..Default::default()
        };
        assert!(zero.validate().is_err());
    }

    #[test]
    fn flush_boundaries_are_aligned() {
        let next = next_boundary(Duration::from_secs(3600));
        assert_eq!(next.timestamp() % 3600, 0);
        assert!(next > Utc::now());
        assert!(next <= Utc::now() + chrono::Duration::hours(1));
    }
}
