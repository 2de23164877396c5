output "api_url" {
  description = "URL to give Ceramic nodes (anchor-service-url)."
  value       = module.cas.api_url
}

output "alb_dns_name" {
  description = "Point the public hostname here."
  value       = module.cas.alb_dns_name
}

output "ecs_cluster_name" {
  description = "ECS cluster of the roles."
  value       = module.cas.ecs_cluster_name
}

output "migrate_task_definition" {
  description = "Task definition family of cas migrate."
  value       = module.cas.migrate_task_definition
}

output "private_subnet_ids" {
  description = "Subnets for aws ecs run-task."
  value       = module.cas.private_subnet_ids
}

output "task_security_group_id" {
  description = "Security group for aws ecs run-task."
  value       = module.cas.task_security_group_id
}

output "eth_private_key_secret_name" {
  description = "Put the wallet key here."
  value       = module.cas.eth_private_key_secret_name
}

output "eth_rpc_url_secret_name" {
  description = "Put the RPC URL here."
  value       = module.cas.eth_rpc_url_secret_name
}

output "bucket_name" {
  description = "Bucket of batch files and tree artifacts."
  value       = module.cas.bucket_name
}

output "db_replica_endpoint" {
  description = "Read replica for reporting (null: none)."
  value       = module.cas.db_replica_endpoint
}

output "alarm_topic_arn" {
  description = "SNS topic of the alarms."
  value       = aws_sns_topic.alarms.arn
}
