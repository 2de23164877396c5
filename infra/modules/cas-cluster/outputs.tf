output "api_url" {
  description = "Base URL of the anchor service (what Ceramic nodes are pointed at)."
  value       = var.certificate_arn == null ? "http://${aws_lb.api.dns_name}" : "https://${aws_lb.api.dns_name}"
}

output "alb_dns_name" {
  description = "DNS name of the load balancer (for a CNAME or alias record)."
  value       = aws_lb.api.dns_name
}

output "alb_zone_id" {
  description = "Hosted zone of the load balancer (for a Route 53 alias record)."
  value       = aws_lb.api.zone_id
}

output "ecs_cluster_name" {
  description = "ECS cluster of the roles."
  value       = aws_ecs_cluster.this.name
}

output "ecs_service_names" {
  description = "ECS service of each long-running role."
  value = {
    api       = aws_ecs_service.api.name
    scheduler = aws_ecs_service.scheduler.name
    worker    = aws_ecs_service.worker.name
  }
}

output "task_definition_arns" {
  description = "Task definition of each role, migrate included."
  value       = { for role, td in aws_ecs_task_definition.role : role => td.arn }
}

output "migrate_task_definition" {
  description = "Task definition family of `cas migrate` (run it with aws ecs run-task before starting a new release)."
  value       = aws_ecs_task_definition.role["migrate"].family
}

output "private_subnet_ids" {
  description = "Subnets of the tasks (for aws ecs run-task)."
  value       = var.private_subnet_ids
}

output "task_security_group_id" {
  description = "Security group of the tasks (for aws ecs run-task)."
  value       = aws_security_group.tasks.id
}

output "queue_prefix" {
  description = "CAS_SQS_QUEUE_PREFIX of the cluster."
  value       = local.queue_prefix
}

output "ingest_queue_urls" {
  description = "URLs of the ingest queues, in order."
  value       = aws_sqs_queue.ingest[*].url
}

output "batch_queue_url" {
  description = "URL of the batch queue."
  value       = aws_sqs_queue.batch.url
}

output "dead_letter_queue_urls" {
  description = "URLs of the dead-letter queues."
  value       = concat(aws_sqs_queue.ingest_dlq[*].url, [aws_sqs_queue.batch_dlq.url])
}

output "bucket_name" {
  description = "Bucket of batch files and tree artifacts."
  value       = aws_s3_bucket.this.id
}

output "kms_key_arn" {
  description = "KMS key of the bucket, secrets and database (null: AWS-managed encryption)."
  value       = local.kms_key_arn
}

output "db_endpoint" {
  description = "Address of the primary database."
  value       = aws_db_instance.primary.address
}

output "db_replica_endpoint" {
  description = "Address of the read replica (null without one)."
  value       = var.db_read_replica ? aws_db_instance.replica[0].address : null
}

output "database_url_secret_arn" {
  description = "Secret holding DATABASE_URL."
  value       = aws_secretsmanager_secret.database_url.arn
}

output "eth_private_key_secret_name" {
  description = "Secret to put the wallet's private key in (aws secretsmanager put-secret-value)."
  value       = aws_secretsmanager_secret.eth_private_key.name
}

output "eth_rpc_url_secret_name" {
  description = "Secret to put the Ethereum RPC URL in (aws secretsmanager put-secret-value)."
  value       = aws_secretsmanager_secret.eth_rpc_url.name
}

output "log_groups" {
  description = "CloudWatch log group of each role."
  value       = { for role, group in aws_cloudwatch_log_group.role : role => group.name }
}
