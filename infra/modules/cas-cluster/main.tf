# One anchor-service cluster: the cas image as three ECS services (api, scheduler, worker)
# plus a one-off migrate task, with its own queues, bucket, database and wallet.
#
#   main.tf        names, and the environment of each role
#   network.tf     security groups
#   queues.tf      SQS ingest queues, batch queue, dead-letter queues
#   storage.tf     S3 bucket, KMS key
#   database.tf    RDS PostgreSQL (+ read replica), the DATABASE_URL secret
#   secrets.tf     wallet key and RPC URL secrets
#   iam.tf         execution and task roles, one pair per role
#   ecs.tf         cluster, log groups, task definitions, services
#   alb.tf         load balancer in front of the API
#   autoscaling.tf api on CPU and requests, worker on batch-queue depth
#   alarms.tf      CloudWatch alarms

data "aws_caller_identity" "current" {}

data "aws_region" "current" {}

data "aws_partition" "current" {}

locals {
  region     = data.aws_region.current.region
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition

  tags = merge(var.tags, { "cas:cluster" = var.name })

  # Queue names follow the binary: <prefix>ingest-0 .. <prefix>ingest-(N-1), <prefix>batch,
  # and <queue>-dlq for each dead-letter queue (as `cas --create-queues` names them).
  queue_prefix = "${var.name}-"
  ingest_queue_names = [
    for i in range(var.ingest_queue_count) : "${local.queue_prefix}ingest-${i}"
  ]
  batch_queue_name = "${local.queue_prefix}batch"

  bucket_name = coalesce(var.bucket_name, "${var.name}-${local.account_id}")
  # Object keys are <prefix>/batches/<id> and <prefix>/trees/<id> (no prefix: batches/<id>).
  key_prefix = trimspace(trim(var.s3_prefix, "/")) == "" ? "" : "${trim(var.s3_prefix, "/")}/"

  # use_kms is known at plan time (the created key's ARN is not), so conditions use it.
  use_kms     = var.create_kms_key || var.kms_key_arn != null
  kms_key_arn = var.create_kms_key ? aws_kms_key.this[0].arn : var.kms_key_arn

  api_port = 8081
  # Prometheus metrics of the roles without the API (the API serves /metrics on api_port).
  metrics_port = 9464

  # The environment of each role: only variables that `cas <role> --help` lists, plus the
  # AWS SDK's AWS_REGION and RUST_LOG. scripts/check-infra compares these keys with the
  # binary, so keep them literal here. Null values are left out.
  role_environment = {
    migrate = {
      CAS_LOG_FORMAT         = "json"
      RUST_LOG               = var.rust_log
      CAS_DB_MAX_CONNECTIONS = 2
    }
    api = {
      CAS_LOG_FORMAT         = "json"
      RUST_LOG               = var.rust_log
      AWS_REGION             = local.region
      CAS_HTTP_ADDR          = "0.0.0.0:${local.api_port}"
      CAS_DB_MAX_CONNECTIONS = var.api_db_max_connections
      CAS_SQS_QUEUE_PREFIX   = local.queue_prefix
      CAS_INGEST_QUEUES      = var.ingest_queue_count
      CAS_S3_BUCKET          = aws_s3_bucket.this.id
      CAS_S3_PREFIX          = var.s3_prefix
      CAS_AUTH               = var.auth_mode
      CAS_AUTH_ALLOWED_DIDS  = length(var.auth_allowed_dids) > 0 ? join(",", var.auth_allowed_dids) : null
      CAS_TRUSTED_PROXIES    = length(var.trusted_proxies) > 0 ? join(",", var.trusted_proxies) : null
    }
    scheduler = {
      CAS_LOG_FORMAT           = "json"
      RUST_LOG                 = var.rust_log
      AWS_REGION               = local.region
      CAS_DB_MAX_CONNECTIONS   = 8
      CAS_SQS_QUEUE_PREFIX     = local.queue_prefix
      CAS_INGEST_QUEUES        = var.ingest_queue_count
      CAS_S3_BUCKET            = aws_s3_bucket.this.id
      CAS_S3_PREFIX            = var.s3_prefix
      CAS_BATCH_MAX            = var.batch_max
      CAS_BATCH_LINGER         = var.batch_linger
      CAS_BATCH_FLUSH_INTERVAL = var.batch_flush_interval
      CAS_METRICS_ADDR         = "0.0.0.0:${local.metrics_port}"
    }
    worker = {
      CAS_LOG_FORMAT         = "json"
      RUST_LOG               = var.rust_log
      AWS_REGION             = local.region
      CAS_DB_MAX_CONNECTIONS = 4
      CAS_SQS_QUEUE_PREFIX   = local.queue_prefix
      CAS_INGEST_QUEUES      = var.ingest_queue_count
      CAS_S3_BUCKET          = aws_s3_bucket.this.id
      CAS_S3_PREFIX          = var.s3_prefix
      CAS_CHAIN_ID           = var.eth_chain_id
      CAS_ETH_CONFIRMATIONS  = var.eth_confirmations
      CAS_ETH_TX_TIMEOUT     = var.eth_tx_timeout
      CAS_ANCHOR_CONTRACT    = var.anchor_contract
      CAS_ETH_MAX_FEE_GWEI   = var.eth_max_fee_gwei
      CAS_QUEUE_MAX_RECEIVES = var.queue_max_receives
      CAS_METRICS_ADDR       = "0.0.0.0:${local.metrics_port}"
    }
  }

  # Secrets injected as environment variables by ECS (read by the execution role at start).
  role_secrets = {
    migrate = {
      DATABASE_URL = aws_secretsmanager_secret.database_url.arn
    }
    api = {
      DATABASE_URL = aws_secretsmanager_secret.database_url.arn
      ETH_RPC_URL  = aws_secretsmanager_secret.eth_rpc_url.arn
    }
    scheduler = {
      DATABASE_URL = aws_secretsmanager_secret.database_url.arn
    }
    worker = {
      DATABASE_URL        = aws_secretsmanager_secret.database_url.arn
      ETH_RPC_URL         = aws_secretsmanager_secret.eth_rpc_url.arn
      CAS_ETH_PRIVATE_KEY = aws_secretsmanager_secret.eth_private_key.arn
    }
  }

  roles         = toset(keys(local.role_environment))
  service_roles = toset(["api", "scheduler", "worker"])

  container_environment = {
    for role, env in local.role_environment : role => [
      for key, value in merge(env, lookup(var.extra_environment, role, {})) : {
        name  = key
        value = tostring(value)
      } if value != null
    ]
  }

  container_secrets = {
    for role, secrets in local.role_secrets : role => [
      for key, arn in secrets : {
        name      = key
        valueFrom = arn
      }
    ]
  }

  task_size = {
    migrate   = { cpu = 256, memory = 512 }
    api       = { cpu = var.api_cpu, memory = var.api_memory }
    scheduler = { cpu = var.scheduler_cpu, memory = var.scheduler_memory }
    worker    = { cpu = var.worker_cpu, memory = var.worker_memory }
  }
}
