# A dedicated partner cluster: the same module as the community cluster, with its own
# queues, bucket, database, KMS key and wallet, sized for one partner's nodes. One copy of
# this directory (or one workspace / state key) per partner; see infra/README.md.

resource "aws_sns_topic" "alarms" {
  name = "cas-${var.partner}-alarms"
}

resource "aws_sns_topic_subscription" "alarm_email" {
  count = var.alarm_email == null ? 0 : 1

  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = var.alarm_email
}

module "cas" {
  source = "../../modules/cas-cluster"

  name  = "cas-${var.partner}"
  image = var.image
  tags  = { "cas:partner" = var.partner }

  vpc_id             = var.vpc_id
  public_subnet_ids  = var.public_subnet_ids
  private_subnet_ids = var.private_subnet_ids
  certificate_arn    = var.certificate_arn
  alb_ingress_cidrs  = var.alb_ingress_cidrs

  eth_chain_id = var.eth_chain_id

  # Only the partner's own nodes may anchor.
  auth_mode         = "allowlist"
  auth_allowed_dids = var.auth_allowed_dids

  # Dedicated encryption key for the partner's bucket, secrets and database.
  create_kms_key = true

  # Less traffic than the community cluster: fewer ingest queues, smaller tasks.
  ingest_queue_count = 4
  batch_linger       = var.batch_linger

  api_cpu                = 1024
  api_memory             = 2048
  api_min_count          = 2
  api_max_count          = 4
  api_db_max_connections = 16

  scheduler_cpu    = 512
  scheduler_memory = 1024

  worker_cpu       = 2048
  worker_memory    = 4096
  worker_min_count = 1
  worker_max_count = 2

  db_instance_class        = "db.t4g.medium"
  db_allocated_storage     = 50
  db_max_allocated_storage = 200
  db_multi_az              = false
  db_read_replica          = false

  # Fewer ALB requests per task before scaling out (smaller tasks).
  api_requests_per_target = 30000

  alarm_actions                = [aws_sns_topic.alarms.arn]
  oldest_pending_alarm_seconds = 1800
}
