# One execution role (pull the image, write logs, read the role's secrets at start) and one
# task role (what the running binary may do) per role, each with the least it needs:
#
#   role       task role                                             secrets (execution role)
#   api        send to ingest queues, read tree artifacts            DATABASE_URL, ETH_RPC_URL
#   scheduler  receive/delete/re-send ingest, send batch, write       DATABASE_URL
#              batch files
#   worker     receive/delete batch, read batch files, write tree    DATABASE_URL, ETH_RPC_URL,
#              artifacts                                             CAS_ETH_PRIVATE_KEY
#   migrate    nothing                                               DATABASE_URL
#
# Every role resolves all queue URLs at start (sqs:GetQueueUrl) and may read queue
# attributes (the scheduler exports queue depths).

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

# ---------------------------------------------------------------------------------------
# Execution roles
# ---------------------------------------------------------------------------------------

resource "aws_iam_role" "execution" {
  for_each = local.roles

  name               = "${var.name}-${each.key}-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy_attachment" "execution" {
  for_each = local.roles

  role       = aws_iam_role.execution[each.key].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

data "aws_iam_policy_document" "execution_secrets" {
  for_each = local.roles

  statement {
    sid       = "ReadRoleSecrets"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = values(local.role_secrets[each.key])
  }

  dynamic "statement" {
    for_each = local.use_kms ? [local.kms_key_arn] : []

    content {
      sid       = "DecryptSecrets"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]

      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["secretsmanager.${local.region}.amazonaws.com"]
      }
    }
  }
}

resource "aws_iam_role_policy" "execution_secrets" {
  for_each = local.roles

  name   = "secrets"
  role   = aws_iam_role.execution[each.key].id
  policy = data.aws_iam_policy_document.execution_secrets[each.key].json
}

# ---------------------------------------------------------------------------------------
# Task roles
# ---------------------------------------------------------------------------------------

resource "aws_iam_role" "task" {
  for_each = local.roles

  name               = "${var.name}-${each.key}-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = local.tags
}

locals {
  bucket_arn         = aws_s3_bucket.this.arn
  batch_files_arn    = "${aws_s3_bucket.this.arn}/${local.key_prefix}batches/*"
  tree_artifacts_arn = "${aws_s3_bucket.this.arn}/${local.key_prefix}trees/*"

  # KMS use of the bucket's key (when it has one): reading needs Decrypt, writing also
  # GenerateDataKey.
  kms_read_statements = local.use_kms ? [{
    sid     = "BucketKeyRead"
    actions = ["kms:Decrypt"]
  }] : []
  kms_write_statements = local.use_kms ? [{
    sid     = "BucketKeyReadWrite"
    actions = ["kms:Decrypt", "kms:GenerateDataKey"]
  }] : []
}

data "aws_iam_policy_document" "task_api" {
  statement {
    sid       = "ResolveQueues"
    actions   = ["sqs:GetQueueUrl", "sqs:GetQueueAttributes"]
    resources = local.all_queue_arns
  }

  statement {
    sid       = "PublishToIngestQueues"
    actions   = ["sqs:SendMessage"]
    resources = local.ingest_queue_arns
  }

  statement {
    sid       = "ReadTreeArtifacts"
    actions   = ["s3:GetObject"]
    resources = [local.tree_artifacts_arn]
  }

  # Without ListBucket a missing object answers 403 instead of 404.
  statement {
    sid       = "TellMissingObjects"
    actions   = ["s3:ListBucket"]
    resources = [local.bucket_arn]
  }

  dynamic "statement" {
    for_each = local.kms_read_statements

    content {
      sid       = statement.value.sid
      actions   = statement.value.actions
      resources = [local.kms_key_arn]
    }
  }
}

data "aws_iam_policy_document" "task_scheduler" {
  statement {
    sid       = "ResolveQueues"
    actions   = ["sqs:GetQueueUrl", "sqs:GetQueueAttributes"]
    resources = local.all_queue_arns
  }

  # Receive and acknowledge ingest messages; the sweeper re-publishes lost requests.
  statement {
    sid = "ConsumeIngestQueues"
    actions = [
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:ChangeMessageVisibility",
      "sqs:SendMessage",
    ]
    resources = local.ingest_queue_arns
  }

  statement {
    sid       = "AnnounceBatches"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.batch.arn]
  }

  statement {
    sid       = "WriteBatchFiles"
    actions   = ["s3:PutObject"]
    resources = [local.batch_files_arn]
  }

  dynamic "statement" {
    for_each = local.kms_write_statements

    content {
      sid       = statement.value.sid
      actions   = statement.value.actions
      resources = [local.kms_key_arn]
    }
  }
}

data "aws_iam_policy_document" "task_worker" {
  statement {
    sid       = "ResolveQueues"
    actions   = ["sqs:GetQueueUrl", "sqs:GetQueueAttributes"]
    resources = local.all_queue_arns
  }

  statement {
    sid = "ConsumeBatchQueue"
    actions = [
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:ChangeMessageVisibility",
    ]
    resources = [aws_sqs_queue.batch.arn]
  }

  statement {
    sid       = "ReadBatchFiles"
    actions   = ["s3:GetObject"]
    resources = [local.batch_files_arn]
  }

  statement {
    sid       = "WriteTreeArtifacts"
    actions   = ["s3:GetObject", "s3:PutObject"]
    resources = [local.tree_artifacts_arn]
  }

  statement {
    sid       = "TellMissingObjects"
    actions   = ["s3:ListBucket"]
    resources = [local.bucket_arn]
  }

  dynamic "statement" {
    for_each = local.kms_write_statements

    content {
      sid       = statement.value.sid
      actions   = statement.value.actions
      resources = [local.kms_key_arn]
    }
  }
}

locals {
  task_policies = {
    api       = data.aws_iam_policy_document.task_api.json
    scheduler = data.aws_iam_policy_document.task_scheduler.json
    worker    = data.aws_iam_policy_document.task_worker.json
  }
}

resource "aws_iam_role_policy" "task" {
  for_each = local.task_policies

  name   = "cas-${each.key}"
  role   = aws_iam_role.task[each.key].id
  policy = each.value
}

# ECS Exec needs the SSM messages channel on the task role.
data "aws_iam_policy_document" "task_exec" {
  statement {
    sid = "EcsExec"
    actions = [
      "ssmmessages:CreateControlChannel",
      "ssmmessages:CreateDataChannel",
      "ssmmessages:OpenControlChannel",
      "ssmmessages:OpenDataChannel",
    ]
    resources = ["*"]
  }
}

resource "aws_iam_role_policy" "task_exec" {
  for_each = var.enable_execute_command ? local.service_roles : toset([])

  name   = "ecs-exec"
  role   = aws_iam_role.task[each.key].id
  policy = data.aws_iam_policy_document.task_exec.json
}
