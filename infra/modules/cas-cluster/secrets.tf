# The wallet and the RPC URL. Terraform creates the secrets but never their values, so the
# key stays out of the Terraform state: put them once with
#
#   aws secretsmanager put-secret-value --secret-id <name>/eth-private-key --secret-string 0x...
#   aws secretsmanager put-secret-value --secret-id <name>/eth-rpc-url     --secret-string https://...
#
# ECS injects them into the worker (and the RPC URL into the api) as CAS_ETH_PRIVATE_KEY
# and ETH_RPC_URL when a task starts. Only the worker's execution role may read the key.

resource "aws_secretsmanager_secret" "eth_private_key" {
  name                    = "${var.name}/eth-private-key"
  description             = "Private key (hex) of the anchoring wallet of ${var.name} (CAS_ETH_PRIVATE_KEY of the worker)"
  kms_key_id              = local.kms_key_arn
  recovery_window_in_days = var.secret_recovery_window_days
  tags                    = local.tags
}

resource "aws_secretsmanager_secret" "eth_rpc_url" {
  name                    = "${var.name}/eth-rpc-url"
  description             = "Ethereum JSON-RPC URL of ${var.name} (ETH_RPC_URL of the api and the worker; may hold an API key)"
  kms_key_id              = local.kms_key_arn
  recovery_window_in_days = var.secret_recovery_window_days
  tags                    = local.tags
}
