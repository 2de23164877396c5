//! The scheduler (`cas scheduler`): turns the stream of accepted requests into batches.
//!
//! It consumes the ingest multi-queue, where the API publishes packed request entries,
//! and accumulates entries until a batch closes: at `batch_max` requests, after `linger`
//! since the first pending entry, or at a flush boundary. Closing a batch:
//!
//! 1. drops entries that are already batched, replaced or unknown (redelivered messages);
//! 2. applies REPLACED per (stream id, origin): the newest client timestamp wins, a tie
//!    goes to the entry received later; only unbatched PENDING requests become REPLACED;
//! 3. sorts the winners by CID string (the leaf order), writes the batch file to blob
//!    storage, records the batch and its members in the store (atomically: a request joins
//!    one batch only), sends the batch id on the batch queue;
//! 4. only then acknowledges the ingest messages whose entries are all resolved.
//!
//! A crash at any point loses nothing: unacknowledged messages are redelivered and their
//! batched entries filtered out; a batch recorded but never announced is re-sent by the
//! re-dispatch loop; a request whose publish was lost is re-published by the sweeper.

mod pending;

use std::{
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
use cas_store::{NewBatch, RequestStore};
use chrono::Utc;
use cid::Cid;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use pending::Pending;

/// Name of the sweeper's checkpoint.
pub const SWEEPER_CHECKPOINT: &str = "ingest-sweeper";

/// Most stale batches re-announced per round.
const REDISPATCH_PAGE: i64 = 100;

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
    /// `linger`.
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
            sweep_age: Duration::from_secs(10 * 60),
            sweep_interval: Duration::from_secs(60),
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
        })
    }

    /// Requests waiting for a batch.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Run until `shutdown`. A batch being closed is finished first; pending entries whose
    /// messages are not acknowledged are redelivered to the next scheduler.
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
                        close_backoff_until = Some(now + Duration::from_secs(5));
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
        }
        tracing::info!(pending = self.pending.len(), "scheduler stopped");
        Ok(())
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
                Ok(parsed) => self
                    .pending
                    .add_message(message.id, message.receipt, parsed.reqs),
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
        Ok(count)
    }

    /// Close a batch from the pending entries now (see the crate docs for the steps).
    pub async fn close_batch(&mut self) -> anyhow::Result<CloseReport> {
        let mut report = CloseReport::default();
        let started = Instant::now();
        let candidate_ids = self.pending.ids();
        let mut unbatched = Vec::with_capacity(candidate_ids.len());
        for chunk in candidate_ids.chunks(65_536) {
            unbatched.extend(
                self.store
                    .unbatched_pending(chunk)
                    .await
                    .context("filtering batched requests")?,
            );
        }
        let unbatched_set: std::collections::HashSet<Uuid> = unbatched.iter().copied().collect();
        let dropped: Vec<Uuid> = candidate_ids
            .iter()
            .copied()
            .filter(|id| !unbatched_set.contains(id))
            .collect();
        report.dropped = dropped.len();

        let (winners, losers) = self.pending.pick_winners(&unbatched);
        if !losers.is_empty() {
            for chunk in losers.chunks(65_536) {
                self.store
                    .replace_requests(chunk, Utc::now())
                    .await
                    .context("marking replaced requests")?;
            }
        }
        report.replaced = losers.len();
        report.filter_ms = started.elapsed().as_millis() as u64;
        let recording = Instant::now();

        // The oldest winners first, at most batch_max of them; then leaf order by CID string.
        let mut chosen: Vec<(u64, IngestEntry)> = winners
            .iter()
            .filter_map(|id| {
                self.pending
                    .get(id)
                    .map(|(entry, seq)| (seq, entry.clone()))
            })
            .collect();
        chosen.sort_by_key(|(seq, _)| *seq);
        chosen.truncate(self.config.batch_max);
        let mut leaves: Vec<(String, Uuid, Cid)> = Vec::with_capacity(chosen.len());
        let mut unparseable = Vec::new();
        for (_, entry) in &chosen {
            match Cid::try_from(entry.cid.as_str()) {
                Ok(cid) => leaves.push((cid.to_string(), entry.id, cid)),
                Err(_) => unparseable.push(entry.id),
            }
        }
        if !unparseable.is_empty() {
            // The API stores canonical CIDs only; an unreadable one is a corrupt message.
            tracing::warn!(
                count = unparseable.len(),
                "dropping entries with unreadable cids"
            );
        }
        leaves.sort_by(|a, b| a.0.cmp(&b.0));

        if !leaves.is_empty() {
            let batch_id = Uuid::now_v7();
            let cids: Vec<Cid> = leaves.iter().map(|(_, _, cid)| *cid).collect();
            let file = encode_batch_file(batch_id, &cids);
            self.blobs
                .put(&batch_file_key(batch_id), Bytes::from(file))
                .await
                .context("writing the batch file")?;
            let batch = NewBatch {
                id: batch_id,
                members: leaves.iter().map(|(_, id, _)| *id).collect(),
                created_at: Utc::now(),
            };
            self.store
                .create_batch(&batch)
                .await
                .context("recording the batch")?;
            self.batches
                .send(BatchMessage::new(batch_id).to_json())
                .await
                .context("announcing the batch")?;
            report.batch_id = Some(batch_id);
            report.batched = leaves.len();
        }

        report.record_ms = recording.elapsed().as_millis() as u64;
        let acking = Instant::now();
        let resolved: Vec<Uuid> = dropped
            .into_iter()
            .chain(losers)
            .chain(unparseable)
            .chain(leaves.iter().map(|(_, id, _)| *id))
            .collect();
        let receipts = self.pending.resolve(&resolved);
        report.acked = receipts.len();
        if !receipts.is_empty() {
            // Failing here only means redelivery; the entries will be filtered out then.
            if let Err(err) = self.ingest.ack(&receipts).await {
                tracing::warn!(error = %err, "acknowledging ingest messages failed; they will be redelivered");
            }
        }
        report.ack_ms = acking.elapsed().as_millis() as u64;
        Ok(report)
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

    /// Re-publish requests that were accepted but never reached a batch (a crash between the
    /// API's insert and its publish). Returns how many were re-published.
    pub async fn sweep(&self) -> anyhow::Result<usize> {
        let until = Utc::now()
            - chrono::Duration::from_std(self.config.sweep_age)
                .unwrap_or(chrono::Duration::minutes(10));
        let after = match self.store.checkpoint(SWEEPER_CHECKPOINT).await? {
            Some(at) => at,
            None => until - chrono::Duration::hours(48),
        };
        self.sweep_between(after, until).await
    }

    /// Resume after a restart that lost the queues' contents (the embedded mode keeps its
    /// queues in memory): publish every request that is in no batch, whatever its age, and
    /// announce every batch that is not anchored. Call it before new requests arrive.
    /// Returns how many requests and batches were re-sent.
    pub async fn resume_all(&self) -> anyhow::Result<(usize, usize)> {
        let requests = self
            .sweep_between(chrono::DateTime::UNIX_EPOCH, Utc::now())
            .await?;
        let mut batches = 0;
        loop {
            let sent = self.redispatch_before(Utc::now()).await?;
            batches += sent;
            if sent < REDISPATCH_PAGE as usize {
                break;
            }
        }
        Ok((requests, batches))
    }

    async fn sweep_between(
        &self,
        mut after: chrono::DateTime<Utc>,
        until: chrono::DateTime<Utc>,
    ) -> anyhow::Result<usize> {
        const LIMIT: i64 = 10_000;
        let mut total = 0;
        let mut limit = LIMIT;
        loop {
            let mut stranded = self
                .store
                .unbatched_created_between(after, until, limit)
                .await?;
            let full = stranded.len() as i64 == limit;
            if full {
                // The next page starts strictly after the last `created_at` of this one, so
                // rows sharing that timestamp beyond this page would be skipped: hold them
                // back and read them whole with the next page. If the whole page shares one
                // timestamp, read a bigger page instead.
                let last_at = stranded[stranded.len() - 1].created_at;
                let keep = stranded.partition_point(|r| r.created_at < last_at);
                if keep == 0 {
                    limit = limit.saturating_mul(2);
                    continue;
                }
                stranded.truncate(keep);
                limit = LIMIT;
            }
            if !stranded.is_empty() {
                let entries: Vec<IngestEntry> = stranded
                    .iter()
                    .filter(|r| !self.pending.contains(&r.id))
                    .map(|r| IngestEntry {
                        id: r.id,
                        cid: r.cid.clone(),
                        sid: r.stream_id.clone(),
                        org: r.origin.clone(),
                        ts: r.timestamp.unix_nanos(),
                    })
                    .collect();
                if !entries.is_empty() {
                    let messages = pack_ingest(&entries, MAX_MESSAGE_BYTES)?;
                    self.ingest.send_many(messages).await?;
                    total += entries.len();
                }
                after = stranded.last().map_or(after, |r| r.created_at);
            }
            if !full {
                after = until;
                self.store.set_checkpoint(SWEEPER_CHECKPOINT, after).await?;
                break;
            }
            self.store.set_checkpoint(SWEEPER_CHECKPOINT, after).await?;
        }
        if total > 0 {
            tracing::warn!(
                requests = total,
                "re-published requests that never reached a batch"
            );
        }
        Ok(total)
    }

    /// Announce again batches that were recorded but not anchored in time (a crash between
    /// recording and announcing, or a lost message). Returns how many were announced.
    pub async fn redispatch(&self) -> anyhow::Result<usize> {
        let before = Utc::now()
            - chrono::Duration::from_std(self.config.redispatch_after)
                .unwrap_or(chrono::Duration::minutes(30));
        self.redispatch_before(before).await
    }

    async fn redispatch_before(&self, before: chrono::DateTime<Utc>) -> anyhow::Result<usize> {
        let stale = self
            .store
            .unanchored_batches(before, REDISPATCH_PAGE)
            .await?;
        if stale.is_empty() {
            return Ok(0);
        }
        let bodies = stale
            .iter()
            .map(|id| BatchMessage::new(*id).to_json())
            .collect();
        self.batches.send_many(bodies).await?;
        tracing::warn!(
            batches = stale.len(),
            "re-announced batches that were not anchored in time"
        );
        Ok(stale.len())
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
