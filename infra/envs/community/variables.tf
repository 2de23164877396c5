variable "aws_region" {
  description = "AWS region of the community cluster."
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
  description = "ACM certificate of the public hostname (null: plain HTTP on port 80)."
  type        = string
  default     = null
}

variable "eth_chain_id" {
  description = "Chain the community cluster anchors on (1 = Ethereum mainnet)."
  type        = number
  default     = 1
}

variable "alarm_email" {
  description = "Address that receives the alarms (null: no e-mail subscription; the SNS topic is still created)."
  type        = string
  default     = null
}
