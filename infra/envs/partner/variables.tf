variable "partner" {
  description = "Short name of the partner (lowercase letters, digits, dashes); the cluster is cas-<partner>."
  type        = string
}

variable "aws_region" {
  description = "AWS region of the partner's cluster."
  type        = string
  default     = "us-east-1"
}

variable "image" {
  description = "cas image to run, e.g. <account>.dkr.ecr.<region>.amazonaws.com/cas:<git sha>."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the cluster."
  type        = string
}

variable "public_subnet_ids" {
  description = "Public subnets of the load balancer (two or more availability zones)."
  type        = list(string)
}

variable "private_subnet_ids" {
  description = "Private subnets (with NAT) of the tasks and the database (two or more availability zones)."
  type        = list(string)
}

variable "certificate_arn" {
  description = "ACM certificate of the partner's hostname (null: plain HTTP on port 80)."
  type        = string
  default     = null
}

variable "alb_ingress_cidrs" {
  description = "Address ranges of the partner's Ceramic nodes allowed to reach the API."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "eth_chain_id" {
  description = "Chain the partner anchors on (1 = Ethereum mainnet)."
  type        = number
  default     = 1
}

variable "batch_linger" {
  description = "Longest a request waits for its batch (the partner's anchoring cadence)."
  type        = string
  default     = "5m"
}

variable "alarm_email" {
  description = "Address that receives the alarms (null: no e-mail subscription)."
  type        = string
  default     = null
}

variable "auth_allowed_dids" {
  description = "did:key DIDs of the partner's Ceramic nodes (the only ones allowed to anchor)."
  type        = list(string)
}
