# Inputs of one anchor-service cluster. Every cluster (community, each partner) gets its own
# queues, bucket, database, wallet secret, ECS services and alarms.

# ---------------------------------------------------------------------------------------
# Identity and network
# ---------------------------------------------------------------------------------------

variable "name" {
  description = "Cluster name, used as the prefix of every resource name (queues are <name>-ingest-0 ..., <name>-batch). Lowercase letters, digits and dashes."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,22}[a-z0-9]$", var.name))
    error_message = "name must be 3-24 characters of lowercase letters, digits and dashes (ALB and target group names are limited to 32 characters)."
  }
}

variable "tags" {
  description = "Tags added to every resource of the cluster."
  type        = map(string)
  default     = {}
}

variable "image" {
  description = "Container image of the cas binary (repository:tag or repository@digest). The role is passed as the command."
  type        = string
}

variable "cpu_architecture" {
  description = "CPU architecture of the image: X86_64 or ARM64."
  type        = string
  default     = "X86_64"

  validation {
    condition     = contains(["X86_64", "ARM64"], var.cpu_architecture)
    error_message = "cpu_architecture must be X86_64 or ARM64."
  }
}

variable "vpc_id" {
  description = "VPC the cluster runs in."
  type        = string
}

variable "public_subnet_ids" {
  description = "Subnets of the load balancer (public ones for an internet-facing ALB), in at least two availability zones."
  type        = list(string)

  validation {
    condition     = length(var.public_subnet_ids) >= 2
    error_message = "An ALB needs subnets in at least two availability zones."
  }
}

variable "private_subnet_ids" {
  description = "Subnets of the ECS tasks and the database, in at least two availability zones. The tasks need a route to SQS, S3, Secrets Manager, ECR, CloudWatch Logs and the Ethereum RPC (NAT gateway or VPC endpoints)."
  type        = list(string)

  validation {
    condition     = length(var.private_subnet_ids) >= 2
    error_message = "RDS needs subnets in at least two availability zones."
  }
}

variable "assign_public_ip" {
  description = "Give the tasks public IPs (only for subnets without NAT)."
  type        = bool
  default     = false
}

variable "alb_internal" {
  description = "Make the load balancer internal instead of internet-facing."
  type        = bool
  default     = false
}

variable "alb_ingress_cidrs" {
  description = "IPv4 ranges allowed to reach the load balancer."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "certificate_arn" {
  description = "ACM certificate for the HTTPS listener. Without it the ALB serves plain HTTP on port 80; with it port 80 redirects to 443."
  type        = string
  default     = null
}

variable "alb_deletion_protection" {
  description = "Protect the load balancer from deletion."
  type        = bool
  default     = true
}

variable "log_retention_days" {
  description = "Retention of the CloudWatch log groups of the roles."
  type        = number
  default     = 30
}

variable "rust_log" {
  description = "RUST_LOG of every role (log level and filters)."
  type        = string
  default     = "info"
}

variable "container_insights" {
  description = "Enable CloudWatch Container Insights on the ECS cluster."
  type        = bool
  default     = true
}

variable "enable_execute_command" {
  description = "Allow `aws ecs execute-command` into the tasks (for debugging)."
  type        = bool
  default     = false
}

# ---------------------------------------------------------------------------------------
# Queues
# ---------------------------------------------------------------------------------------

variable "ingest_queue_count" {
  description = "Number of ingest queues (CAS_INGEST_QUEUES). Requests are spread round-robin; each SQS queue allows about 120,000 messages in flight."
  type        = number
  default     = 10

  validation {
    condition     = var.ingest_queue_count >= 1 && var.ingest_queue_count <= 100 && floor(var.ingest_queue_count) == var.ingest_queue_count
    error_message = "ingest_queue_count must be a whole number from 1 to 100."
  }
}

variable "queue_max_receives" {
  description = "Receives of a message without a delete before SQS moves it to its dead-letter queue (also CAS_QUEUE_MAX_RECEIVES of the worker, which announces a batch afresh before its message gets there for a passing failure)."
  type        = number
  default     = 5
}

variable "queue_message_retention_seconds" {
  description = "How long the ingest and batch queues (and their dead-letter queues) keep a message."
  type        = number
  default     = 1209600
}

# ---------------------------------------------------------------------------------------
# Bucket and encryption
# ---------------------------------------------------------------------------------------

variable "bucket_name" {
  description = "Name of the bucket of batch files and tree artifacts. Default: <name>-<account id>."
  type        = string
  default     = null
}

variable "s3_prefix" {
  description = "Key prefix inside the bucket (CAS_S3_PREFIX). Batch files are <prefix>/batches/<id>, tree artifacts <prefix>/trees/<id>."
  type        = string
  default     = "cas"
}

variable "bucket_force_destroy" {
  description = "Let `terraform destroy` delete a bucket that still holds objects. Tree artifacts are what witnesses are built from: keep this false in production."
  type        = bool
  default     = false
}

variable "batch_file_expiration_days" {
  description = "Days after which batch files (the scheduler's hand-over to the worker) are deleted. Witnesses need only the tree artifacts. 0 keeps them."
  type        = number
  default     = 90
}

variable "tree_artifact_ia_transition_days" {
  description = "Days after which tree artifacts move to STANDARD_IA (they are read less once nodes have their witnesses). 0 keeps them in STANDARD. They never expire."
  type        = number
  default     = 90

  validation {
    condition     = var.tree_artifact_ia_transition_days == 0 || var.tree_artifact_ia_transition_days >= 30
    error_message = "S3 moves objects to STANDARD_IA only after 30 days or more (0 disables the transition)."
  }
}

variable "noncurrent_version_expiration_days" {
  description = "Days after which overwritten or deleted object versions are removed."
  type        = number
  default     = 30
}

variable "create_kms_key" {
  description = "Create a customer-managed KMS key (with rotation) for the bucket, the secrets and the database. Otherwise kms_key_arn is used, or AWS-managed encryption when that is null too."
  type        = bool
  default     = false
}

variable "kms_key_arn" {
  description = "An existing KMS key for the bucket, the secrets and the database (used when create_kms_key is false)."
  type        = string
  default     = null
}

variable "kms_deletion_window_days" {
  description = "Waiting period before a deleted KMS key is destroyed."
  type        = number
  default     = 30
}

variable "secret_recovery_window_days" {
  description = "Days a deleted secret can be restored (0 deletes at once, which lets a destroyed cluster be recreated with the same name)."
  type        = number
  default     = 30
}

# ---------------------------------------------------------------------------------------
# Database
# ---------------------------------------------------------------------------------------

variable "db_engine_version" {
  description = "PostgreSQL major version (or major.minor) of RDS."
  type        = string
  default     = "16"
}

variable "db_instance_class" {
  description = "RDS instance class of the primary."
  type        = string
  default     = "db.t4g.medium"
}

variable "db_allocated_storage" {
  description = "Initial storage of the database in GiB."
  type        = number
  default     = 50
}

variable "db_max_allocated_storage" {
  description = "Upper bound of storage autoscaling in GiB."
  type        = number
  default     = 500
}

variable "db_multi_az" {
  description = "Run the primary with a synchronous standby in a second availability zone."
  type        = bool
  default     = false
}

variable "db_backup_retention_days" {
  description = "Days of automated backups (must be at least 1 for a read replica)."
  type        = number
  default     = 7
}

variable "db_deletion_protection" {
  description = "Protect the database from deletion."
  type        = bool
  default     = true
}

variable "db_skip_final_snapshot" {
  description = "Skip the final snapshot when the database is deleted."
  type        = bool
  default     = false
}

variable "db_performance_insights" {
  description = "Enable Performance Insights on the database."
  type        = bool
  default     = true
}

variable "db_read_replica" {
  description = "Create a read replica of the database (for reporting and dashboards; the roles use the primary)."
  type        = bool
  default     = false
}

variable "db_replica_instance_class" {
  description = "Instance class of the read replica. Default: the primary's."
  type        = string
  default     = null
}

# ---------------------------------------------------------------------------------------
# Ethereum
# ---------------------------------------------------------------------------------------

variable "eth_chain_id" {
  description = "Chain id the worker must find behind ETH_RPC_URL (CAS_CHAIN_ID), e.g. 1 for mainnet, 100 for Gnosis, 11155111 for Sepolia."
  type        = number
}

variable "eth_confirmations" {
  description = "Confirmations before a batch counts as anchored (CAS_ETH_CONFIRMATIONS). Null keeps the binary's default (4 on public chains)."
  type        = number
  default     = null
}

variable "eth_tx_timeout" {
  description = "Time limit of one anchor transaction attempt (CAS_ETH_TX_TIMEOUT), e.g. 120s."
  type        = string
  default     = "120s"
}

variable "anchor_contract" {
  description = "Anchor contract address (CAS_ANCHOR_CONTRACT). Ceramic nodes only accept anchors from the official one."
  type        = string
  default     = "0x231055A0852D67C7107Ad0d0DFeab60278fE6AdC"

  validation {
    condition     = can(regex("^0x[0-9a-fA-F]{40}$", var.anchor_contract))
    error_message = "anchor_contract must be a 0x-prefixed 20-byte hex address."
  }
}

# ---------------------------------------------------------------------------------------
# Batching (scheduler)
# ---------------------------------------------------------------------------------------

variable "batch_max" {
  description = "Most requests per batch (CAS_BATCH_MAX): one Merkle tree, one transaction."
  type        = number
  default     = 1048576
}

variable "batch_linger" {
  description = "Longest a request waits for its batch to close (CAS_BATCH_LINGER), e.g. 60s, 10m."
  type        = string
  default     = "60s"
}

variable "batch_flush_interval" {
  description = "Also close batches at every multiple of this wall-clock interval (CAS_BATCH_FLUSH_INTERVAL), e.g. 1h. Null: only size and linger close batches."
  type        = string
  default     = null
}

# ---------------------------------------------------------------------------------------
# Sizing and scaling
# ---------------------------------------------------------------------------------------

variable "api_cpu" {
  description = "Fargate CPU units of one API task."
  type        = number
  default     = 1024
}

variable "api_memory" {
  description = "Fargate memory (MiB) of one API task."
  type        = number
  default     = 2048
}

variable "api_min_count" {
  description = "Fewest API tasks."
  type        = number
  default     = 2
}

variable "api_max_count" {
  description = "Most API tasks."
  type        = number
  default     = 10
}

variable "api_cpu_target" {
  description = "Average CPU utilisation (percent) the API service is scaled to."
  type        = number
  default     = 60
}

variable "api_requests_per_target" {
  description = "ALB requests per API task per minute the API service is scaled to (ALBRequestCountPerTarget)."
  type        = number
  default     = 60000
}

variable "api_db_max_connections" {
  description = "Database pool size of one API task (CAS_DB_MAX_CONNECTIONS). api_max_count x this + the other roles' pools must stay below the database's max_connections."
  type        = number
  default     = 32
}

variable "scheduler_cpu" {
  description = "Fargate CPU units of the scheduler task."
  type        = number
  default     = 1024
}

variable "scheduler_memory" {
  description = "Fargate memory (MiB) of the scheduler task (a full batch of 2^20 requests is held in memory)."
  type        = number
  default     = 2048
}

variable "scheduler_count" {
  description = "Scheduler tasks. One is enough; more split batches between them."
  type        = number
  default     = 1
}

variable "worker_cpu" {
  description = "Fargate CPU units of one worker task (the Merkle tree is built on all cores)."
  type        = number
  default     = 2048
}

variable "worker_memory" {
  description = "Fargate memory (MiB) of one worker task."
  type        = number
  default     = 4096
}

variable "worker_min_count" {
  description = "Fewest worker tasks (at least one, or nothing is anchored)."
  type        = number
  default     = 1

  validation {
    condition     = var.worker_min_count >= 1
    error_message = "At least one worker must run."
  }
}

variable "worker_max_count" {
  description = "Most worker tasks. Transactions of one wallet are serialized, so more workers help only while trees and artifacts are being built."
  type        = number
  default     = 3
}

variable "worker_scale_out_backlog" {
  description = "Batch messages waiting (visible on the batch queue) that add a worker."
  type        = number
  default     = 1
}

variable "extra_environment" {
  description = "More variables per role (keys: migrate, api, scheduler, worker), e.g. { api = { CAS_INGEST_WORKERS = \"8\" } }. Only variables that `cas <role> --help` lists are accepted (scripts/check-infra checks this)."
  type        = map(map(string))
  default     = {}

  validation {
    condition     = alltrue([for role in keys(var.extra_environment) : contains(["migrate", "api", "scheduler", "worker"], role)])
    error_message = "extra_environment keys must be roles: migrate, api, scheduler, worker."
  }
}

# ---------------------------------------------------------------------------------------
# Alarms
# ---------------------------------------------------------------------------------------

variable "alarm_actions" {
  description = "ARNs (SNS topics) notified when an alarm fires or recovers."
  type        = list(string)
  default     = []
}

variable "oldest_pending_alarm_seconds" {
  description = "Alarm when the oldest message of an ingest queue (a request not yet in a closed batch) is older than this. Must exceed the batch linger (or the flush interval)."
  type        = number
  default     = 1800
}

variable "oldest_batch_alarm_seconds" {
  description = "Alarm when the oldest batch message (a batch not yet anchored) is older than this."
  type        = number
  default     = 3600
}

variable "oldest_unbatched_alarm_seconds" {
  description = "Alarm when an accepted request has been in no batch for longer than this (cas_oldest_unbatched_seconds, from the scheduler's sweeper; it covers requests whose publish was lost, which no queue holds). Must exceed the batch linger + 2 minutes, the bound after which the sweeper has re-published them."
  type        = number
  default     = 900
}

variable "alb_5xx_alarm_percent" {
  description = "Alarm when more than this percentage of API requests answer 5xx over five minutes."
  type        = number
  default     = 1
}

variable "metrics_namespace" {
  description = "CloudWatch namespace the cas_* Prometheus metrics are published under (by the collector that scrapes them). The wallet alarm reads cas_wallet_balance_wei there, with dimension Cluster = name."
  type        = string
  default     = "CAS"
}

variable "wallet_min_balance_wei" {
  description = "Alarm when the anchoring wallet holds less than this (wei). Default 0.05 ETH."
  type        = number
  default     = 50000000000000000
}

variable "eth_max_fee_gwei" {
  description = "Highest maxFeePerGas any anchor transaction attempt offers, in gwei (CAS_ETH_MAX_FEE_GWEI)."
  type        = number
  default     = 200
}

variable "auth_mode" {
  description = "DID authentication of anchor requests (CAS_AUTH): off, allowlist or relaxed."
  type        = string
  default     = "relaxed"

  validation {
    condition     = contains(["off", "allowlist", "relaxed"], var.auth_mode)
    error_message = "auth_mode must be off, allowlist or relaxed."
  }
}

variable "auth_allowed_dids" {
  description = "did:key DIDs of the nodes this cluster serves (CAS_AUTH_ALLOWED_DIDS), for auth_mode = allowlist."
  type        = list(string)
  default     = []
}

variable "trusted_proxies" {
  description = "Addresses or CIDR ranges whose did/digest/sourceIp headers are trusted (CAS_TRUSTED_PROXIES), e.g. the ALB subnets when a gateway authenticates in front."
  type        = list(string)
  default     = []
}
