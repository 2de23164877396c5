//! Group commit: many concurrent inserts become one multi-row statement.
//!
//! Callers submit one request each and wait. A few worker tasks take whatever has queued up
//! (up to `max_batch`), insert it with one statement, and answer every caller once that
//! statement has committed. Under load batches grow, so commits per second stay bounded by
//! the disk while rows per second scale; when idle, a request waits for one commit only.

use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

use crate::{InsertOutcome, NewRequest, RequestStore, StoreError};

/// Tuning of the group committer.
#[derive(Debug, Clone, Copy)]
pub struct GroupCommitConfig {
    /// Most rows in one statement.
    pub max_batch: usize,
    /// Statements in flight at once.
    pub workers: usize,
    /// Requests that may wait for a statement; beyond this, submissions fail fast with
    /// [`StoreError::Unavailable`] (the API sheds load with 503).
    pub queue_capacity: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        Self {
            max_batch: 1024,
            workers: 4,
            queue_capacity: 65_536,
        }
    }
}

struct Job {
    request: NewRequest,
    reply: oneshot::Sender<Result<InsertOutcome, StoreError>>,
}

/// Handle to the group-commit workers. Cloning it is cheap; the workers stop once every
/// handle is dropped and the queue is drained.
#[derive(Clone)]
pub struct GroupCommitter {
    sender: mpsc::Sender<Job>,
}

impl std::fmt::Debug for GroupCommitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommitter").finish_non_exhaustive()
    }
}

impl GroupCommitter {
    /// Start the workers on the current Tokio runtime.
    pub fn spawn(store: Arc<dyn RequestStore>, config: GroupCommitConfig) -> Self {
        let (sender, receiver) = mpsc::channel(config.queue_capacity.max(1));
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..config.workers.max(1) {
            let receiver = Arc::clone(&receiver);
            let store = Arc::clone(&store);
            let max_batch = config.max_batch.max(1);
            tokio::spawn(async move { run_worker(store, receiver, max_batch).await });
        }
        Self { sender }
    }

    /// Insert one request; resolves once it is durable (or known to exist already).
    pub async fn submit(&self, request: NewRequest) -> Result<InsertOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .try_send(Job { request, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    StoreError::Unavailable("ingest queue is full".to_owned())
                }
                mpsc::error::TrySendError::Closed(_) => {
                    StoreError::Unavailable("ingest is shutting down".to_owned())
                }
            })?;
        answer.await.map_err(|_| {
            StoreError::Internal("ingest worker stopped before answering".to_owned())
        })?
    }
}

async fn run_worker(
    store: Arc<dyn RequestStore>,
    receiver: Arc<Mutex<mpsc::Receiver<Job>>>,
    max_batch: usize,
) {
    let mut jobs: Vec<Job> = Vec::with_capacity(max_batch);
    loop {
        {
            let mut rx = receiver.lock().await;
            match rx.recv().await {
                Some(job) => jobs.push(job),
                None => return,
            }
            while jobs.len() < max_batch {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
        }
        let requests: Vec<NewRequest> = jobs.iter().map(|j| j.request.clone()).collect();
        let result = store.insert_requests(&requests).await;
        match result {
            Ok(outcomes) if outcomes.len() == jobs.len() => {
                for (job, outcome) in jobs.drain(..).zip(outcomes) {
                    let _ = job.reply.send(Ok(outcome));
                }
            }
            Ok(outcomes) => {
                let err = StoreError::Internal(format!(
                    "store returned {} outcomes for {} requests",
                    outcomes.len(),
                    jobs.len()
                ));
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(err.clone()));
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, rows = jobs.len(), "group insert failed");
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(err.clone()));
                }
            }
        }
    }
}
