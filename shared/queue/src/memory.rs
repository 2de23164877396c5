//! [`MemoryQueue`]: an in-process queue with SQS semantics (for `cas dev` and tests).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use async_trait::async_trait;
use tokio::{sync::Notify, time::Instant};

use crate::{MAX_BATCH, Message, Queue, QueueError, Receipt, check_size};

/// An in-process [`Queue`] with visibility timeouts, redelivery, long polling and an
/// optional dead-letter queue. Cloning gives another handle to the same queue.
///
/// Behaviour where SQS leaves a choice, following what SQS documents:
/// - messages are delivered oldest first (SQS standard queues only try to);
/// - `ack` with a receipt of an earlier delivery, while the message has been delivered
///   again, succeeds but does **not** delete the message (SQS: "the request succeeds, but
///   the message might not be deleted"); acking a deleted message succeeds; a receipt
///   this queue never issued is [`QueueError::InvalidReceipt`];
/// - `set_visibility` with any receipt but the latest one of a message still queued is
///   [`QueueError::InvalidReceipt`];
/// - with a dead-letter queue, a message that has been received `max_receives` times and
///   becomes visible again moves to the dead-letter queue (keeping its id, body and
///   receive count) instead of being delivered again.
#[derive(Debug, Clone)]
pub struct MemoryQueue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    /// Woken when a message becomes visible early (sent, or visibility set to now).
    visible: Notify,
    redrive: Option<Redrive>,
}

#[derive(Debug)]
struct Redrive {
    max_receives: u32,
    dead_letter: MemoryQueue,
}

#[derive(Debug, Default)]
struct State {
    next_seq: u64,
    /// Messages by sequence number (send order).
    entries: BTreeMap<u64, Entry>,
}

#[derive(Debug)]
struct Entry {
    id: String,
    body: String,
    receive_count: u32,
    visible_at: Instant,
    /// The receipt of the latest delivery.
    receipt: Option<String>,
}

impl State {
    fn push(&mut self, id: String, body: String, receive_count: u32) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let entry = Entry {
            id,
            body,
            receive_count,
            visible_at: Instant::now(),
            receipt: None,
        };
        self.entries.insert(seq, entry);
    }
}

/// Receipts are `<sequence number>:<random nonce>`.
fn parse_receipt(receipt: &Receipt) -> Result<u64, QueueError> {
    receipt
        .0
        .split_once(':')
        .and_then(|(seq, _)| seq.parse().ok())
        .ok_or(QueueError::InvalidReceipt)
}

impl Default for MemoryQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryQueue {
    /// An empty queue without a dead-letter queue.
    pub fn new() -> Self {
        Self::build(None)
    }

    /// An empty queue that moves a message to `dead_letter` once it has been received
    /// `max_receives` times without being acknowledged (like SQS's `maxReceiveCount`).
    pub fn with_dead_letter(max_receives: u32, dead_letter: MemoryQueue) -> Self {
        Self::build(Some(Redrive {
            max_receives,
            dead_letter,
        }))
    }

    fn build(redrive: Option<Redrive>) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                visible: Notify::new(),
                redrive,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-updated in a way that
        // matters here, so a poisoned lock is still usable.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push_all(&self, messages: impl IntoIterator<Item = (String, String, u32)>) {
        {
            let mut state = self.state();
            for (id, body, receive_count) in messages {
                state.push(id, body, receive_count);
            }
        }
        self.inner.visible.notify_waiters();
    }

    /// Take up to `max` visible messages now. Returns them and, if none was visible, when
    /// the next in-flight message becomes visible.
    fn take(&self, max: usize, visibility: Duration) -> (Vec<Message>, Option<Instant>) {
        let now = Instant::now();
        let mut taken = Vec::new();
        let mut dead = Vec::new();
        let mut next_visible: Option<Instant> = None;
        {
            let mut state = self.state();
            let mut to_dead_letter = Vec::new();
            for (&seq, entry) in state.entries.iter_mut() {
                if taken.len() == max {
                    break;
                }
                if entry.visible_at > now {
                    next_visible =
                        Some(next_visible.map_or(entry.visible_at, |t| t.min(entry.visible_at)));
                    continue;
                }
                if let Some(redrive) = &self.inner.redrive
                    && entry.receive_count >= redrive.max_receives
                {
                    to_dead_letter.push(seq);
                    continue;
                }
                entry.receive_count += 1;
                entry.visible_at = now + visibility;
                let receipt = format!("{seq}:{}", uuid::Uuid::new_v4().simple());
                entry.receipt = Some(receipt.clone());
                taken.push(Message {
                    id: entry.id.clone(),
                    receipt: Receipt(receipt),
                    body: entry.body.clone(),
                    receive_count: entry.receive_count,
                });
            }
            for seq in to_dead_letter {
                if let Some(entry) = state.entries.remove(&seq) {
                    dead.push((entry.id, entry.body, entry.receive_count));
                }
            }
        }
        // Outside our lock, so a queue may even be its own dead-letter queue.
        if let Some(redrive) = &self.inner.redrive
            && !dead.is_empty()
        {
            tracing::debug!(
                count = dead.len(),
                "moving messages to the dead-letter queue"
            );
            redrive.dead_letter.push_all(dead);
        }
        (taken, next_visible)
    }
}

#[async_trait]
impl Queue for MemoryQueue {
    async fn send(&self, body: String) -> Result<(), QueueError> {
        self.send_many(vec![body]).await
    }

    async fn send_many(&self, bodies: Vec<String>) -> Result<(), QueueError> {
        for body in &bodies {
            check_size(body)?;
        }
        self.push_all(
            bodies
                .into_iter()
                .map(|body| (uuid::Uuid::new_v4().to_string(), body, 0)),
        );
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
        let max = max.min(MAX_BATCH);
        let deadline = Instant::now() + wait;
        loop {
            // Register for wake-ups before looking, so a send in between is not missed.
            let notified = self.inner.visible.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (messages, next_visible) = self.take(max, visibility);
            if !messages.is_empty() || Instant::now() >= deadline {
                return Ok(messages);
            }
            let wake_at = next_visible.map_or(deadline, |t| t.min(deadline));
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    async fn ack(&self, receipts: &[Receipt]) -> Result<(), QueueError> {
        let mut invalid = false;
        let mut state = self.state();
        for receipt in receipts {
            let Ok(seq) = parse_receipt(receipt) else {
                invalid = true;
                continue;
            };
            // Deleted already: fine. An earlier delivery's receipt: succeed, keep the message.
            if state
                .entries
                .get(&seq)
                .is_some_and(|e| e.receipt.as_deref() == Some(&receipt.0))
            {
                state.entries.remove(&seq);
            }
        }
        if invalid {
            Err(QueueError::InvalidReceipt)
        } else {
            Ok(())
        }
    }

    async fn set_visibility(
        &self,
        receipt: &Receipt,
        visibility: Duration,
    ) -> Result<(), QueueError> {
        let seq = parse_receipt(receipt)?;
        {
            let mut state = self.state();
            let entry = state
                .entries
                .get_mut(&seq)
                .filter(|e| e.receipt.as_deref() == Some(&receipt.0))
                .ok_or(QueueError::InvalidReceipt)?;
            entry.visible_at = Instant::now() + visibility;
        }
        if visibility.is_zero() {
            self.inner.visible.notify_waiters();
        }
        Ok(())
    }

    async fn approximate_depth(&self) -> Result<u64, QueueError> {
        Ok(self.state().entries.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIS: Duration = Duration::from_millis(200);

    #[tokio::test]
    async fn stale_receipt_does_not_delete_a_redelivered_message() {
        let queue = MemoryQueue::new();
        queue.send("m".into()).await.unwrap();
        let first = queue.receive(1, VIS, Duration::ZERO).await.unwrap();
        tokio::time::sleep(VIS + Duration::from_millis(50)).await;
        let second = queue
            .receive(1, Duration::from_secs(30), Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(second[0].id, first[0].id);
        assert_eq!(second[0].receive_count, 2);

        queue.ack(&[first[0].receipt.clone()]).await.unwrap();
        assert_eq!(
            queue.approximate_depth().await.unwrap(),
            1,
            "stale ack must not delete"
        );
        assert!(matches!(
            queue
                .set_visibility(&first[0].receipt, Duration::ZERO)
                .await,
            Err(QueueError::InvalidReceipt)
        ));
        queue.ack(&[second[0].receipt.clone()]).await.unwrap();
        assert_eq!(queue.approximate_depth().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn dead_letter_after_max_receives() {
        let dlq = MemoryQueue::new();
        let queue = MemoryQueue::with_dead_letter(2, dlq.clone());
        queue.send("poison".into()).await.unwrap();
        for n in 1..=2 {
            let got = queue
                .receive(1, Duration::ZERO, Duration::ZERO)
                .await
                .unwrap();
            assert_eq!(got[0].receive_count, n);
        }
        assert!(
            queue
                .receive(1, Duration::ZERO, Duration::ZERO)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(queue.approximate_depth().await.unwrap(), 0);
        let dead = dlq.receive(1, VIS, Duration::ZERO).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].body, "poison");
        assert_eq!(dead[0].receive_count, 3);
    }

    #[tokio::test]
    async fn garbage_receipts_are_invalid() {
        let queue = MemoryQueue::new();
        let bad = Receipt("nonsense".into());
        assert!(matches!(
            queue.ack(std::slice::from_ref(&bad)).await,
            Err(QueueError::InvalidReceipt)
        ));
        assert!(matches!(
            queue.set_visibility(&bad, Duration::ZERO).await,
            Err(QueueError::InvalidReceipt)
        ));
        // Well-formed but for a message that is gone: ack is fine (already deleted).
        queue.ack(&[Receipt("7:abc".into())]).await.unwrap();
    }
}
