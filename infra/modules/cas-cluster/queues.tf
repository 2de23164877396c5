# SQS: N ingest queues (api -> scheduler), one batch queue (scheduler -> worker), each with
# a dead-letter queue that receives a message after queue_max_receives failed deliveries.
# Names match what the binary resolves from CAS_SQS_QUEUE_PREFIX and CAS_INGEST_QUEUES.

resource "aws_sqs_queue" "ingest_dlq" {
  count = var.ingest_queue_count

  name                      = "${local.ingest_queue_names[count.index]}-dlq"
  message_retention_seconds = var.queue_message_retention_seconds
  sqs_managed_sse_enabled   = true
  tags                      = local.tags
}

resource "aws_sqs_queue" "ingest" {
  count = var.ingest_queue_count

  name = local.ingest_queue_names[count.index]
  # The scheduler holds received messages until their batch closes and extends the
  # visibility while it waits; 15 minutes matches the binary's default.
  visibility_timeout_seconds = 900
  message_retention_seconds  = var.queue_message_retention_seconds
  receive_wait_time_seconds  = 1
  sqs_managed_sse_enabled    = true
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.ingest_dlq[count.index].arn
    maxReceiveCount     = var.queue_max_receives
  })
  tags = local.tags
}

resource "aws_sqs_queue" "batch_dlq" {
  name                      = "${local.batch_queue_name}-dlq"
  message_retention_seconds = var.queue_message_retention_seconds
  sqs_managed_sse_enabled   = true
  tags                      = local.tags
}

resource "aws_sqs_queue" "batch" {
  name = local.batch_queue_name
  # A worker extends the visibility while it builds the tree and waits for confirmations.
  visibility_timeout_seconds = 600
  message_retention_seconds  = var.queue_message_retention_seconds
  receive_wait_time_seconds  = 1
  sqs_managed_sse_enabled    = true
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.batch_dlq.arn
    maxReceiveCount     = var.queue_max_receives
  })
  tags = local.tags
}

# Only the cluster's own queues may use its dead-letter queues.
resource "aws_sqs_queue_redrive_allow_policy" "ingest_dlq" {
  count = var.ingest_queue_count

  queue_url = aws_sqs_queue.ingest_dlq[count.index].id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.ingest[count.index].arn]
  })
}

resource "aws_sqs_queue_redrive_allow_policy" "batch_dlq" {
  queue_url = aws_sqs_queue.batch_dlq.id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.batch.arn]
  })
}

locals {
  ingest_queue_arns = aws_sqs_queue.ingest[*].arn
  all_queue_arns    = concat(aws_sqs_queue.ingest[*].arn, [aws_sqs_queue.batch.arn])
  dead_letter_queues = merge(
    { for i, q in aws_sqs_queue.ingest_dlq : "ingest-${i}" => q.name },
    { batch = aws_sqs_queue.batch_dlq.name },
  )
}
