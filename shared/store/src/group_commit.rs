//! Group commit and grouped reads: many concurrent calls become one statement.
//!
//! Callers submit one item each and wait. A few worker tasks take whatever has queued up
//! (up to `max_batch`), run one statement for all of it, and answer every caller. Under
//! load batches grow, so statements per second stay bounded (by the disk for inserts, by
//! round trips for reads) while rows per second scale; when idle, a call waits for one
//! statement only.

use std::{collections::HashMap, future::Future, pin::Pin, sync::Arc};

use tokio::sync::{Mutex, mpsc, oneshot};

use crate::{InsertOutcome, NewRequest, RequestRecord, RequestStore, StoreError};

/// Tuning of a group committer or reader.
#[derive(Debug, Clone, Copy)]
pub struct GroupCommitConfig {
    /// Most rows in one statement.
    pub max_batch: usize,
    /// Statements in flight at once.
    pub workers: usize,
    /// Calls that may wait for a statement; beyond this, calls fail fast with
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

type BatchFuture<O> = Pin<Box<dyn Future<Output = Result<Vec<O>, StoreError>> + Send>>;
type BatchFn<I, O> = Arc<dyn Fn(Vec<I>) -> BatchFuture<O> + Send + Sync>;

struct Job<I, O> {
    item: I,
    reply: oneshot::Sender<Result<O, StoreError>>,
}

/// Runs one call of a batch function for many waiting callers. The function answers its
/// inputs in order, one output each.
struct Grouper<I, O> {
    sender: mpsc::Sender<Job<I, O>>,
    what: &'static str,
}

impl<I, O> Clone for Grouper<I, O> {
    fn clone(&self) -> Self {
        Self {
            sender: self.sender.clone(),
            what: self.what,
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> Grouper<I, O> {
    fn spawn(what: &'static str, config: GroupCommitConfig, run: BatchFn<I, O>) -> Self {
        let (sender, receiver) = mpsc::channel(config.queue_capacity.max(1));
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..config.workers.max(1) {
            let receiver = Arc::clone(&receiver);
            let run = Arc::clone(&run);
            let max_batch = config.max_batch.max(1);
            tokio::spawn(async move { work(what, run, receiver, max_batch).await });
        }
        Self { sender, what }
    }

    async fn call(&self, item: I) -> Result<O, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .try_send(Job { item, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    StoreError::Unavailable(format!("{} queue is full", self.what))
                }
                mpsc::error::TrySendError::Closed(_) => {
                    StoreError::Unavailable(format!("{} is shutting down", self.what))
                }
            })?;
        answer.await.map_err(|_| {
            StoreError::Internal(format!("{} worker stopped before answering", self.what))
        })?
    }
}

async fn work<I, O>(
    what: &'static str,
    run: BatchFn<I, O>,
    receiver: Arc<Mutex<mpsc::Receiver<Job<I, O>>>>,
    max_batch: usize,
) {
    let mut items: Vec<I> = Vec::with_capacity(max_batch);
    let mut replies: Vec<oneshot::Sender<Result<O, StoreError>>> = Vec::with_capacity(max_batch);
    loop {
        {
            let mut rx = receiver.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            items.push(first.item);
            replies.push(first.reply);
            while items.len() < max_batch {
                match rx.try_recv() {
                    Ok(job) => {
                        items.push(job.item);
                        replies.push(job.reply);
                    }
                    Err(_) => break,
                }
            }
        }
        let count = items.len();
        match run(std::mem::take(&mut items)).await {
            Ok(outputs) if outputs.len() == count => {
                for (reply, output) in replies.drain(..).zip(outputs) {
                    let _ = reply.send(Ok(output));
                }
            }
            Ok(outputs) => {
                let err = StoreError::Internal(format!(
                    "{what}: {} answers for {count} calls",
                    outputs.len()
                ));
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(err.clone()));
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, rows = count, "{what} failed");
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }
}

/// Handle to the group-commit workers. Cloning it is cheap; the workers stop once every
/// handle is dropped and the queue is drained.
#[derive(Clone)]
pub struct GroupCommitter {
    inner: Grouper<NewRequest, InsertOutcome>,
}

impl std::fmt::Debug for GroupCommitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommitter").finish_non_exhaustive()
    }
}

impl GroupCommitter {
    /// Start the workers on the current Tokio runtime.
    pub fn spawn(store: Arc<dyn RequestStore>, config: GroupCommitConfig) -> Self {
        let run: BatchFn<NewRequest, InsertOutcome> = Arc::new(move |requests| {
            let store = Arc::clone(&store);
            Box::pin(async move { store.insert_requests(&requests).await })
        });
        Self {
            inner: Grouper::spawn("ingest", config, run),
        }
    }

    /// Insert one request; resolves once it is durable (or known to exist already).
    pub async fn submit(&self, request: NewRequest) -> Result<InsertOutcome, StoreError> {
        self.inner.call(request).await
    }
}

/// Handle to the grouped-read workers: concurrent lookups by CID become one
/// [`RequestStore::get_requests`] call. Cloning it is cheap.
#[derive(Clone)]
pub struct GroupReader {
    inner: Grouper<String, Option<RequestRecord>>,
}

impl std::fmt::Debug for GroupReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupReader").finish_non_exhaustive()
    }
}

impl GroupReader {
    /// Start the workers on the current Tokio runtime.
    pub fn spawn(store: Arc<dyn RequestStore>, config: GroupCommitConfig) -> Self {
        let run: BatchFn<String, Option<RequestRecord>> = Arc::new(move |cids| {
            let store = Arc::clone(&store);
            Box::pin(async move {
                let found = store.get_requests(&cids).await?;
                let mut by_cid: HashMap<String, RequestRecord> =
                    found.into_iter().map(|r| (r.cid.clone(), r)).collect();
                // A CID asked for twice in one batch gets the record twice.
                let mut asked: HashMap<&str, usize> = HashMap::with_capacity(cids.len());
                for cid in &cids {
                    *asked.entry(cid.as_str()).or_default() += 1;
                }
                let mut answers: Vec<Option<RequestRecord>> = Vec::with_capacity(cids.len());
                for cid in &cids {
                    let left = asked.get_mut(cid.as_str()).expect("counted above");
                    *left -= 1;
                    answers.push(if *left == 0 {
                        by_cid.remove(cid)
                    } else {
                        by_cid.get(cid).cloned()
                    });
                }
                Ok(answers)
            })
        });
        Self {
            inner: Grouper::spawn("status read", config, run),
        }
    }

    /// The request with this CID, as [`RequestStore::get_request`] answers it.
    pub async fn get(&self, cid: String) -> Result<Option<RequestRecord>, StoreError> {
        self.inner.call(cid).await
    }
}
