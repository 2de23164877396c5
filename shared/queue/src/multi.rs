//! [`MultiQueue`]: one logical queue spread over several queues.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use tokio::time::Instant;

use crate::{MAX_BATCH, Message, Queue, QueueError, Receipt, check_size};

/// How long `receive` long-polls one queue before moving on to the next, by default.
pub const DEFAULT_POLL_SLICE: Duration = Duration::from_secs(1);

/// A [`Queue`] over N queues, so that no single queue hits a per-queue limit (SQS allows
/// about 120,000 in-flight messages per queue).
///
/// - `send` goes to the queues in turn; `send_many` sends each chunk of up to
///   [`MAX_BATCH`] messages to the next queue.
/// - `receive` first asks every queue at once without waiting, each for an equal share of
///   `max` (queues whose share is zero are skipped, starting at a rotating queue), and
///   returns everything that came. If all are empty and `wait` is not over, it long-polls
///   one queue after the other, each for at most the poll slice
///   ([`DEFAULT_POLL_SLICE`] unless changed), until a message comes or `wait` is over. A
///   message that arrives during the wait is therefore seen after at most about
///   N × slice.
/// - Receipts are `<queue index>/<inner receipt>`, so `ack` and `set_visibility` reach the
///   queue that delivered the message. Message ids are those of the inner queues.
/// - `approximate_depth` is the sum over the queues.
pub struct MultiQueue {
    queues: Vec<Arc<dyn Queue>>,
    next_send: AtomicUsize,
    next_receive: AtomicUsize,
    poll_slice: Duration,
}

impl fmt::Debug for MultiQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MultiQueue")
            .field("queues", &self.queues.len())
            .field("poll_slice", &self.poll_slice)
            .finish_non_exhaustive()
    }
}

impl MultiQueue {
    /// A multi-queue over `queues`.
    ///
    /// # Panics
    ///
    /// If `queues` is empty.
    pub fn new(queues: Vec<Arc<dyn Queue>>) -> Self {
        assert!(!queues.is_empty(), "a MultiQueue needs at least one queue");
        Self {
            queues,
            next_send: AtomicUsize::new(0),
            next_receive: AtomicUsize::new(0),
            poll_slice: DEFAULT_POLL_SLICE,
        }
    }

    /// Change how long `receive` long-polls one queue at a time while waiting (at least
    /// 1 ms). SQS waits in whole seconds, so slices below 1 s do not help there.
    pub fn with_poll_slice(mut self, slice: Duration) -> Self {
        self.poll_slice = slice.max(Duration::from_millis(1));
        self
    }

    /// The number of queues.
    pub fn len(&self) -> usize {
        self.queues.len()
    }

    /// Always false: a multi-queue has at least one queue.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn next(&self, counter: &AtomicUsize) -> usize {
        counter.fetch_add(1, Ordering::Relaxed) % self.queues.len()
    }

    fn tag(index: usize, messages: Vec<Message>) -> Vec<Message> {
        messages
            .into_iter()
            .map(|m| Message {
                receipt: Receipt(format!("{index}/{}", m.receipt.0)),
                ..m
            })
            .collect()
    }

    fn route(&self, receipt: &Receipt) -> Result<(usize, Receipt), QueueError> {
        let (index, inner) = receipt
            .0
            .split_once('/')
            .ok_or(QueueError::InvalidReceipt)?;
        let index: usize = index.parse().map_err(|_| QueueError::InvalidReceipt)?;
        if index >= self.queues.len() {
            return Err(QueueError::InvalidReceipt);
        }
        Ok((index, Receipt(inner.to_owned())))
    }
}

#[async_trait]
impl Queue for MultiQueue {
    async fn send(&self, body: String) -> Result<(), QueueError> {
        check_size(&body)?;
        self.queues[self.next(&self.next_send)].send(body).await
    }

    async fn send_many(&self, bodies: Vec<String>) -> Result<(), QueueError> {
        for body in &bodies {
            check_size(body)?;
        }
        let mut bodies = bodies.into_iter().peekable();
        while bodies.peek().is_some() {
            let chunk: Vec<String> = bodies.by_ref().take(MAX_BATCH).collect();
            self.queues[self.next(&self.next_send)]
                .send_many(chunk)
                .await?;
        }
        Ok(())
    }

    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Message>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + wait;
        let start = self.next(&self.next_receive);
        let n = self.queues.len();
        // Ask every queue at once without waiting, each for its share of `max`, and return
        // all that came: one round of calls drains every queue, instead of one call per
        // queue until one has something.
        let asks = (0..n).filter_map(|i| {
            let share = max / n + usize::from(i < max % n);
            let index = (start + i) % n;
            (share > 0).then_some(async move {
                let got = self.queues[index]
                    .receive(share, visibility, Duration::ZERO)
                    .await;
                (index, got)
            })
        });
        let mut found = Vec::new();
        let mut first_error = None;
        for (index, got) in futures::future::join_all(asks).await {
            match got {
                Ok(messages) => found.extend(Self::tag(index, messages)),
                Err(err) => {
                    tracing::warn!(queue = index, error = %err, "receiving from one ingest queue failed");
                    first_error.get_or_insert(err);
                }
            }
        }
        if !found.is_empty() {
            return Ok(found);
        }
        if let Some(err) = first_error {
            return Err(err);
        }
        let mut i = 0;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Ok(Vec::new());
            }
            let index = (start + i) % n;
            i += 1;
            let slice = remaining.min(self.poll_slice);
            let messages = self.queues[index].receive(max, visibility, slice).await?;
            if !messages.is_empty() {
                return Ok(Self::tag(index, messages));
            }
        }
    }

    async fn ack(&self, receipts: &[Receipt]) -> Result<(), QueueError> {
        let mut by_queue: Vec<Vec<Receipt>> = vec![Vec::new(); self.queues.len()];
        let mut result = Ok(());
        for receipt in receipts {
            match self.route(receipt) {
                Ok((index, inner)) => by_queue[index].push(inner),
                Err(err) => result = Err(err),
            }
        }
        // Ack everything we can, every queue at once, then report the first problem.
        let acks = self
            .queues
            .iter()
            .zip(&by_queue)
            .filter(|(_, receipts)| !receipts.is_empty())
            .map(|(queue, receipts)| queue.ack(receipts));
        for acked in futures::future::join_all(acks).await {
            if let Err(err) = acked
                && result.is_ok()
            {
                result = Err(err);
            }
        }
        result
    }

    async fn set_visibility(
        &self,
        receipt: &Receipt,
        visibility: Duration,
    ) -> Result<(), QueueError> {
        let (index, inner) = self.route(receipt)?;
        self.queues[index].set_visibility(&inner, visibility).await
    }

    async fn approximate_depth(&self) -> Result<u64, QueueError> {
        let mut total = 0;
        for queue in &self.queues {
            total += queue.approximate_depth().await?;
        }
        Ok(total)
    }
}
