//! [`SqsQueue`]: a queue on Amazon SQS (or an emulator), through aws-sdk-sqs.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::{
    Client,
    config::BehaviorVersion,
    error::{DisplayErrorContext, ProvideErrorMetadata, SdkError},
    types::{
        BatchResultErrorEntry, DeleteMessageBatchRequestEntry, MessageSystemAttributeName,
        QueueAttributeName, SendMessageBatchRequestEntry,
    },
};
use tokio::time::Instant;

use crate::{MAX_BATCH, MAX_MESSAGE_BYTES, Message, Queue, QueueError, Receipt, check_size};

/// SQS's longest long poll.
const MAX_WAIT_SECS: u64 = 20;
/// SQS's longest visibility timeout (12 hours).
const MAX_VISIBILITY_SECS: u64 = 12 * 60 * 60;

/// A [`Queue`] on one SQS queue.
///
/// - Durations are rounded up to whole seconds (SQS's unit). A `wait` over 20 s (SQS's
///   limit for one long poll) is served by several long polls.
/// - `send_many` sends batches of at most [`MAX_BATCH`] messages and
///   [`MAX_MESSAGE_BYTES`] bytes; entries SQS rejects are retried once, then the call
///   fails. Messages of earlier batches stay sent, so a retried `send_many` can duplicate
///   messages (the queue is at-least-once anyway).
/// - Errors: timeouts, connection failures, 5xx answers and throttling are
///   [`QueueError::Unavailable`]; an invalid receipt or a message no longer in flight is
///   [`QueueError::InvalidReceipt`]; everything else is [`QueueError::Internal`].
/// - `ack` with the receipt of an earlier delivery is what SQS makes of it: it succeeds
///   and may or may not delete the message.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: Client,
    queue_url: String,
}

impl SqsQueue {
    /// A queue at `queue_url`, reached through `client`.
    pub fn new(client: Client, queue_url: impl Into<String>) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
        }
    }

    /// A queue whose client is configured from the environment (region, credentials,
    /// `AWS_ENDPOINT_URL`, …) as aws-config does it; `endpoint` overrides the endpoint URL.
    pub async fn from_env(queue_url: impl Into<String>, endpoint: Option<String>) -> Self {
        Self::new(Self::client_from_env(endpoint).await, queue_url)
    }

    /// An SQS client configured from the environment, as in [`SqsQueue::from_env`].
    pub async fn client_from_env(endpoint: Option<String>) -> Client {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(endpoint) = endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        Client::new(&loader.load().await)
    }

    /// The SQS client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The queue URL.
    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// Send one batch (≤ 10 entries, ≤ 256 KiB), retrying rejected entries once.
    async fn send_batch(&self, bodies: &[String]) -> Result<(), QueueError> {
        let mut pending: Vec<usize> = (0..bodies.len()).collect();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let entries = pending
                .iter()
                .map(|&i| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(bodies[i].clone())
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| QueueError::Internal(format!("build batch entry: {err}")))?;
            let output = self
                .client
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|err| map_err("send message batch", err))?;
            let failed = output.failed();
            if failed.is_empty() {
                return Ok(());
            }
            if attempt >= 2 {
                return Err(batch_error("send", failed));
            }
            tracing::warn!(
                failed = failed.len(),
                "SQS rejected batch entries; retrying them"
            );
            pending = failed.iter().filter_map(|f| f.id().parse().ok()).collect();
        }
    }

    /// One ReceiveMessage call.
    async fn receive_once(
        &self,
        max: i32,
        visibility_secs: i32,
        wait_secs: i32,
    ) -> Result<Vec<Message>, QueueError> {
        let output = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(max)
            .visibility_timeout(visibility_secs)
            .wait_time_seconds(wait_secs)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|err| map_err("receive message", err))?;
        output
            .messages()
            .iter()
            .map(|m| {
                let (Some(id), Some(receipt)) = (m.message_id(), m.receipt_handle()) else {
                    return Err(QueueError::Internal(
                        "SQS returned a message without id or receipt handle".to_owned(),
                    ));
                };
                let receive_count = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|count| count.parse().ok())
                    .unwrap_or(1);
                Ok(Message {
                    id: id.to_owned(),
                    receipt: Receipt(receipt.to_owned()),
                    body: m.body().unwrap_or_default().to_owned(),
                    receive_count,
                })
            })
            .collect()
    }
}

/// Whole seconds, rounded up, capped at `max`.
fn ceil_secs(duration: Duration, max: u64) -> i32 {
    let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    // `max` is at most 43,200, so the cast cannot truncate.
    secs.min(max) as i32
}

/// Split bodies into SQS batches: at most [`MAX_BATCH`] entries and [`MAX_MESSAGE_BYTES`]
/// bytes each (every body is at most [`MAX_MESSAGE_BYTES`]).
fn batches(bodies: &[String]) -> Vec<&[String]> {
    let mut batches = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, body) in bodies.iter().enumerate() {
        if i - start == MAX_BATCH || bytes + body.len() > MAX_MESSAGE_BYTES {
            batches.push(&bodies[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += body.len();
    }
    if start < bodies.len() {
        batches.push(&bodies[start..]);
    }
    batches
}

/// The last `.`-separated part of an error code (SQS's query-compatible codes look like
/// `AWS.SimpleQueueService.NonExistentQueue`).
fn short_code(code: &str) -> &str {
    code.rsplit('.').next().unwrap_or(code)
}

fn is_invalid_receipt(code: &str) -> bool {
    matches!(
        short_code(code),
        "ReceiptHandleIsInvalid" | "MessageNotInflight" | "InvalidReceiptHandle"
    )
}

fn is_retryable_code(code: &str) -> bool {
    matches!(
        short_code(code),
        "RequestThrottled"
            | "Throttling"
            | "ThrottlingException"
            | "TooManyRequestsException"
            | "RequestLimitExceeded"
            | "KmsThrottled"
            | "OverLimit"
            | "ServiceUnavailable"
            | "InternalError"
            | "InternalFailure"
    )
}

fn map_err<E>(op: &str, err: SdkError<E>) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if err.code().is_some_and(is_invalid_receipt) {
        return QueueError::InvalidReceipt;
    }
    let retryable = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => true,
        SdkError::ResponseError(e) => e.raw().status().is_server_error(),
        SdkError::ServiceError(e) => {
            let status = e.raw().status().as_u16();
            status >= 500 || status == 429 || err.code().is_some_and(is_retryable_code)
        }
        _ => false,
    };
    let message = format!("{op}: {}", DisplayErrorContext(&err));
    if retryable {
        QueueError::Unavailable(message)
    } else {
        QueueError::Internal(message)
    }
}

fn batch_error(op: &str, failed: &[BatchResultErrorEntry]) -> QueueError {
    if failed.iter().all(|f| is_invalid_receipt(f.code())) {
        return QueueError::InvalidReceipt;
    }
    let details: Vec<String> = failed
        .iter()
        .map(|f| {
            format!(
                "{}: {} {}",
                f.id(),
                f.code(),
                f.message().unwrap_or_default()
            )
        })
        .collect();
    let message = format!(
        "{op}: {} entries failed: {}",
        failed.len(),
        details.join("; ")
    );
    if failed
        .iter()
        .any(|f| !f.sender_fault() || is_retryable_code(f.code()))
    {
        QueueError::Unavailable(message)
    } else {
        QueueError::Internal(message)
    }
}

async fn queue_attribute(
    client: &Client,
    queue_url: &str,
    name: QueueAttributeName,
) -> Result<String, QueueError> {
    let output = client
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(name.clone())
        .send()
        .await
        .map_err(|err| map_err("get queue attributes", err))?;
    output
        .attributes()
        .and_then(|a| a.get(&name))
        .cloned()
        .ok_or_else(|| QueueError::Internal(format!("queue attribute {name} missing")))
}

/// Create the queue `name` if it does not exist and set its default visibility timeout;
/// returns its URL. Calling it again for an existing queue is fine.
pub async fn create_queue(
    client: &Client,
    name: &str,
    visibility: Duration,
) -> Result<String, QueueError> {
    let output = client
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .map_err(|err| map_err("create queue", err))?;
    let url = output
        .queue_url()
        .ok_or_else(|| QueueError::Internal(format!("no URL for created queue {name}")))?
        .to_owned();
    // Set attributes separately, so that re-creating a queue with other settings works.
    client
        .set_queue_attributes()
        .queue_url(&url)
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            ceil_secs(visibility, MAX_VISIBILITY_SECS).to_string(),
        )
        .send()
        .await
        .map_err(|err| map_err("set queue attributes", err))?;
    Ok(url)
}

/// Create the queue `name` and its dead-letter queue `<name>-dlq` (if missing), and make
/// SQS move a message to the dead-letter queue after `max_receives` receives without a
/// delete (the redrive policy). Returns `(queue URL, dead-letter queue URL)`. Idempotent.
pub async fn create_queue_with_dlq(
    client: &Client,
    name: &str,
    visibility: Duration,
    max_receives: u32,
) -> Result<(String, String), QueueError> {
    let dlq_url = create_queue(client, &format!("{name}-dlq"), visibility).await?;
    let dlq_arn = queue_attribute(client, &dlq_url, QueueAttributeName::QueueArn).await?;
    let url = create_queue(client, name, visibility).await?;
    let policy =
        format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"{max_receives}"}}"#);
    client
        .set_queue_attributes()
        .queue_url(&url)
        .attributes(QueueAttributeName::RedrivePolicy, policy)
        .send()
        .await
        .map_err(|err| map_err("set redrive policy", err))?;
    Ok((url, dlq_url))
}

#[async_trait]
impl Queue for SqsQueue {
    async fn send(&self, body: String) -> Result<(), QueueError> {
        check_size(&body)?;
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .send()
            .await
            .map_err(|err| map_err("send message", err))?;
        Ok(())
    }

    async fn send_many(&self, bodies: Vec<String>) -> Result<(), QueueError> {
        for body in &bodies {
            check_size(body)?;
        }
        for batch in batches(&bodies) {
            self.send_batch(batch).await?;
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
        // At most 10, so the cast cannot truncate.
        let max = max.min(MAX_BATCH) as i32;
        let visibility_secs = ceil_secs(visibility, MAX_VISIBILITY_SECS);
        let deadline = Instant::now() + wait;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let wait_secs = ceil_secs(remaining, MAX_WAIT_SECS);
            let messages = self.receive_once(max, visibility_secs, wait_secs).await?;
            if !messages.is_empty() || Instant::now() >= deadline {
                return Ok(messages);
            }
        }
    }

    async fn ack(&self, receipts: &[Receipt]) -> Result<(), QueueError> {
        let mut result = Ok(());
        for chunk in receipts.chunks(MAX_BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, receipt)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(receipt.0.clone())
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| QueueError::Internal(format!("build batch entry: {err}")))?;
            let output = self
                .client
                .delete_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|err| map_err("delete message batch", err))?;
            // Delete every chunk we can, then report the first problem.
            if !output.failed().is_empty() && result.is_ok() {
                result = Err(batch_error("delete", output.failed()));
            }
        }
        result
    }

    async fn set_visibility(
        &self,
        receipt: &Receipt,
        visibility: Duration,
    ) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt.0.clone())
            .visibility_timeout(ceil_secs(visibility, MAX_VISIBILITY_SECS))
            .send()
            .await
            .map_err(|err| map_err("change message visibility", err))?;
        Ok(())
    }

    async fn approximate_depth(&self) -> Result<u64, QueueError> {
        let output = self
            .client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|err| map_err("get queue attributes", err))?;
        let attributes = output.attributes();
        let mut total = 0;
        for name in [
            QueueAttributeName::ApproximateNumberOfMessages,
            QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
        ] {
            let value = attributes
                .and_then(|a| a.get(&name))
                .ok_or_else(|| QueueError::Internal(format!("queue attribute {name} missing")))?;
            total += value.parse::<u64>().map_err(|err| {
                QueueError::Internal(format!("queue attribute {name} = {value:?}: {err}"))
            })?;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_count_and_size() {
        let small: Vec<String> = (0..25).map(|i| i.to_string()).collect();
        let sizes: Vec<usize> = batches(&small).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, vec![10, 10, 5]);

        let big = "x".repeat(100 * 1024);
        let bodies = vec![big.clone(), big.clone(), big.clone(), "y".into(), big];
        let sizes: Vec<usize> = batches(&bodies).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, vec![2, 3]);
        for batch in batches(&bodies) {
            assert!(batch.iter().map(String::len).sum::<usize>() <= MAX_MESSAGE_BYTES);
        }
        assert!(batches(&[]).is_empty());
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(ceil_secs(Duration::ZERO, 20), 0);
        assert_eq!(ceil_secs(Duration::from_millis(1), 20), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2), 20), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2001), 20), 3);
        assert_eq!(ceil_secs(Duration::from_secs(100), 20), 20);
    }

    #[test]
    fn receipt_codes() {
        assert!(is_invalid_receipt("ReceiptHandleIsInvalid"));
        assert!(is_invalid_receipt(
            "AWS.SimpleQueueService.MessageNotInflight"
        ));
        assert!(!is_invalid_receipt("QueueDoesNotExist"));
        assert!(is_retryable_code("AWS.SimpleQueueService.RequestThrottled"));
    }
}
