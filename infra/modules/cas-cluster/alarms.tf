# Alarms, all notifying var.alarm_actions:
#
#   oldest pending request  ApproximateAgeOfOldestMessage of each ingest queue. The
#                           scheduler keeps a request's message until its batch is closed
#                           and recorded, so this is the age of the oldest request that is
#                           not yet in a batch.
#   oldest batch            the same on the batch queue: a closed batch not yet anchored.
#   dead letters            any message in a dead-letter queue (a request or batch that
#                           failed queue_max_receives times).
#   oldest unbatched        the custom metric cas_oldest_unbatched_seconds: the oldest
#                           accepted request in no batch, whether or not a queue holds it
#                           (a lost publish is re-published by the sweeper; this fires if
#                           that does not bring it into a batch).
#   failed batches          the custom metric cas_batches_failed_total: a batch that can
#                           never be anchored (its file missing or corrupt). Its requests
#                           move to a new batch by themselves; find out why it happened.
#   wallet balance          the custom metric cas_wallet_balance_wei below the minimum.
#   5xx rate                share of API answers that are 5xx, at the load balancer.

resource "aws_cloudwatch_metric_alarm" "oldest_pending" {
  count = var.ingest_queue_count

  alarm_name          = "${var.name}-oldest-pending-${count.index}"
  alarm_description   = "A request on ${aws_sqs_queue.ingest[count.index].name} has waited more than ${var.oldest_pending_alarm_seconds}s for its batch. Is the scheduler running?"
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateAgeOfOldestMessage"
  dimensions          = { QueueName = aws_sqs_queue.ingest[count.index].name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.oldest_pending_alarm_seconds
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
  tags                = local.tags
}

resource "aws_cloudwatch_metric_alarm" "oldest_batch" {
  alarm_name          = "${var.name}-oldest-batch"
  alarm_description   = "A closed batch has waited more than ${var.oldest_batch_alarm_seconds}s to be anchored. Are the workers running, is the wallet funded, is the RPC up?"
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateAgeOfOldestMessage"
  dimensions          = { QueueName = aws_sqs_queue.batch.name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.oldest_batch_alarm_seconds
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
  tags                = local.tags
}

resource "aws_cloudwatch_metric_alarm" "dead_letters" {
  for_each = local.dead_letter_queues

  alarm_name          = "${var.name}-dead-letters-${each.key}"
  alarm_description   = "Messages reached the dead-letter queue ${each.value}. Inspect them, fix the cause, then redrive them."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = each.value }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
  tags                = local.tags
}

# The next three are published by whatever scrapes the roles' Prometheus metrics into
# CloudWatch (for example the CloudWatch agent's Prometheus support, which publishes
# counters as the increase over each scrape), with dimension Cluster = var.name. Until that
# runs they have no data and stay INSUFFICIENT_DATA.
resource "aws_cloudwatch_metric_alarm" "oldest_unbatched" {
  alarm_name          = "${var.name}-oldest-unbatched"
  alarm_description   = "An accepted request of ${var.name} has been in no batch for more than ${var.oldest_unbatched_alarm_seconds}s although the sweeper re-publishes such requests. Is the scheduler running and able to close batches?"
  namespace           = var.metrics_namespace
  metric_name         = "cas_oldest_unbatched_seconds"
  dimensions          = { Cluster = var.name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.oldest_unbatched_alarm_seconds
  treat_missing_data  = "missing"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
  tags                = local.tags
}

resource "aws_cloudwatch_metric_alarm" "failed_batches" {
  alarm_name          = "${var.name}-failed-batches"
  alarm_description   = "A batch of ${var.name} failed for good (its batch file is missing or corrupt). Its requests were moved to a new batch; find out what removed or damaged the file."
  namespace           = var.metrics_namespace
  metric_name         = "cas_batches_failed_total"
  dimensions          = { Cluster = var.name }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
  tags                = local.tags
}

resource "aws_cloudwatch_metric_alarm" "wallet_balance" {
  alarm_name          = "${var.name}-wallet-balance-low"
  alarm_description   = "The anchoring wallet of ${var.name} holds less than ${var.wallet_min_balance_wei} wei. Top it up before transactions fail."
  namespace           = var.metrics_namespace
  metric_name         = "cas_wallet_balance_wei"
  dimensions          = { Cluster = var.name }
  statistic           = "Minimum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "LessThanThreshold"
  threshold           = var.wallet_min_balance_wei
  treat_missing_data  = "missing"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
  tags                = local.tags
}

resource "aws_cloudwatch_metric_alarm" "api_5xx_rate" {
  alarm_name          = "${var.name}-api-5xx-rate"
  alarm_description   = "More than ${var.alb_5xx_alarm_percent}% of API answers were 5xx (from the tasks or the load balancer) over 5 minutes."
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.alb_5xx_alarm_percent
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
  tags                = local.tags

  metric_query {
    id          = "rate"
    expression  = "IF(requests > 0, 100 * (FILL(target5xx, 0) + FILL(elb5xx, 0)) / requests, 0)"
    label       = "5xx answers (%)"
    return_data = true
  }

  metric_query {
    id = "requests"

    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "RequestCount"
      dimensions  = { LoadBalancer = aws_lb.api.arn_suffix }
      stat        = "Sum"
      period      = 300
    }
  }

  metric_query {
    id = "target5xx"

    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "HTTPCode_Target_5XX_Count"
      dimensions  = { LoadBalancer = aws_lb.api.arn_suffix }
      stat        = "Sum"
      period      = 300
    }
  }

  metric_query {
    id = "elb5xx"

    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "HTTPCode_ELB_5XX_Count"
      dimensions  = { LoadBalancer = aws_lb.api.arn_suffix }
      stat        = "Sum"
      period      = 300
    }
  }
}
