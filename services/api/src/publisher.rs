//! Publishing accepted requests to the ingest multi-queue, many per message.

use std::{sync::Arc, time::Duration};

use cas_core::pipeline::{IngestEntry, pack_ingest};
use cas_queue::{MAX_MESSAGE_BYTES, Queue};
use tokio::{sync::mpsc, task::JoinHandle};

/// Tuning of the publisher.
#[derive(Debug, Clone, Copy)]
pub struct PublisherConfig {
    /// Most entries gathered before a send.
    pub max_entries: usize,
    /// Longest an entry waits for others before a send.
    pub linger: Duration,
    /// Entries that may wait; beyond this new entries are not published (the scheduler's
    /// sweeper re-publishes them later, so nothing is lost).
    pub capacity: usize,
}

/// About one full queue message (~215 bytes an entry) per send, and at most 10 sends a
/// second: every queue call costs the queue service far more per call than per byte (the
/// SQS emulator spent half a core on 50 small sends a second, and the receives and
/// deletes that follow them). A request waits at most 100 ms more before its batch sees it.
impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            max_entries: 1000,
            linger: Duration::from_millis(100),
            capacity: 200_000,
        }
    }
}

/// Handle to the publisher task. Requests are published after their row is durable; if a
/// publish fails for good, the row stays PENDING and the sweeper re-publishes it.
#[derive(Clone, Debug)]
pub struct IngestPublisher {
    sender: mpsc::Sender<IngestEntry>,
}

impl IngestPublisher {
    /// Start the publisher task. It ends after every handle is dropped and the last entries
    /// are sent; await the returned handle to flush on shutdown.
    pub fn spawn(queue: Arc<dyn Queue>, config: PublisherConfig) -> (Self, JoinHandle<()>) {
        let (sender, receiver) = mpsc::channel(config.capacity.max(1));
        let task = tokio::spawn(run(queue, receiver, config));
        (Self { sender }, task)
    }

    /// Queue an entry for publishing; never waits.
    pub fn publish(&self, entry: IngestEntry) {
        if let Err(err) = self.sender.try_send(entry) {
            tracing::warn!(error = %err, "publish backlog full; the sweeper will re-publish this request");
        }
    }
}

async fn run(
    queue: Arc<dyn Queue>,
    mut receiver: mpsc::Receiver<IngestEntry>,
    config: PublisherConfig,
) {
    let mut entries: Vec<IngestEntry> = Vec::with_capacity(config.max_entries);
    loop {
        let Some(first) = receiver.recv().await else {
            return;
        };
        entries.push(first);
        let deadline = tokio::time::Instant::now() + config.linger;
        while entries.len() < config.max_entries {
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(entry)) => entries.push(entry),
                Ok(None) | Err(_) => break,
            }
        }
        send_with_retries(queue.as_ref(), &entries).await;
        entries.clear();
    }
}

async fn send_with_retries(queue: &dyn Queue, entries: &[IngestEntry]) {
    let messages = match pack_ingest(entries, MAX_MESSAGE_BYTES) {
        Ok(m) => m,
        Err(err) => {
            tracing::error!(error = %err, requests = entries.len(), "cannot pack requests for publishing");
            return;
        }
    };
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=4 {
        match queue.send_many(messages.clone()).await {
            Ok(()) => return,
            Err(err) if attempt < 4 => {
                tracing::warn!(error = %err, attempt, "publishing requests failed, retrying");
                tokio::time::sleep(delay).await;
                delay *= 4;
            }
            Err(err) => {
                tracing::error!(
                    error = %err,
                    requests = entries.len(),
                    "publishing requests failed; the sweeper will re-publish them"
                );
            }
        }
    }
}
