# The community cluster: the public anchor service every Ceramic node may use. Sized for
# the whole network's traffic; polls dominate, so the API scales widest.

resource "aws_sns_topic" "alarms" {
  name = "cas-community-alarms"
}

resource "aws_sns_topic_subscription" "alarm_email" {
  count = var.alarm_email == null ? 0 : 1

  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = var.alarm_email
}

module "cas" {
  source = "../../modules/cas-cluster"

  name  = "cas-community"
  image = var.image

  vpc_id             = var.vpc_id
  public_subnet_ids  = var.public_subnet_ids
  private_subnet_ids = var.private_subnet_ids
  certificate_arn    = var.certificate_arn

  eth_chain_id = var.eth_chain_id

  # Queues: ten ingest queues keep each far below SQS's in-flight limit at 2^20 requests
  # per batch.
  ingest_queue_count = 10

  # One transaction per batch: close a batch at 2^20 requests or every ten minutes.
  batch_max    = 1048576
  batch_linger = "10m"

  api_cpu                = 2048
  api_memory             = 4096
  api_min_count          = 3
  api_max_count          = 20
  api_db_max_connections = 16

  scheduler_cpu    = 2048
  scheduler_memory = 4096

  worker_cpu       = 4096
  worker_memory    = 8192
  worker_min_count = 1
  worker_max_count = 3

  db_instance_class        = "db.r6g.xlarge"
  db_allocated_storage     = 200
  db_max_allocated_storage = 2000
  db_multi_az              = true
  db_read_replica          = true

  alarm_actions                = [aws_sns_topic.alarms.arn]
  oldest_pending_alarm_seconds = 1800
  oldest_batch_alarm_seconds   = 3600
}
