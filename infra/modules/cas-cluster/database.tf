# RDS PostgreSQL: request rows, batches, batch members and the transaction journal. The
# roles connect with DATABASE_URL, stored in Secrets Manager and injected by ECS.

resource "random_password" "db" {
  length  = 40
  special = false
}

resource "aws_db_subnet_group" "this" {
  name       = "${var.name}-db"
  subnet_ids = var.private_subnet_ids
  tags       = local.tags
}

resource "aws_db_parameter_group" "this" {
  name_prefix = "${var.name}-pg${split(".", var.db_engine_version)[0]}-"
  family      = "postgres${split(".", var.db_engine_version)[0]}"
  description = "cas cluster ${var.name}"
  tags        = local.tags

  # The cas binary's PostgreSQL driver is built without TLS, so the connection inside the
  # VPC is plain; RDS for PostgreSQL 15+ refuses that by default. Turn this back on once
  # the binary speaks TLS to PostgreSQL.
  parameter {
    name         = "rds.force_ssl"
    value        = "0"
    apply_method = "pending-reboot"
  }

  # Log statements slower than one second.
  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_db_instance" "primary" {
  identifier     = "${var.name}-db"
  engine         = "postgres"
  engine_version = var.db_engine_version
  instance_class = var.db_instance_class

  db_name  = "cas"
  username = "cas"
  password = random_password.db.result
  port     = 5432

  allocated_storage     = var.db_allocated_storage
  max_allocated_storage = var.db_max_allocated_storage
  storage_type          = "gp3"
  storage_encrypted     = true
  kms_key_id            = local.kms_key_arn

  db_subnet_group_name   = aws_db_subnet_group.this.name
  vpc_security_group_ids = [aws_security_group.db.id]
  parameter_group_name   = aws_db_parameter_group.this.name
  publicly_accessible    = false
  multi_az               = var.db_multi_az

  backup_retention_period    = var.db_backup_retention_days
  backup_window              = "03:00-04:00"
  maintenance_window         = "sun:04:30-sun:05:30"
  auto_minor_version_upgrade = true
  copy_tags_to_snapshot      = true
  deletion_protection        = var.db_deletion_protection
  skip_final_snapshot        = var.db_skip_final_snapshot
  final_snapshot_identifier  = var.db_skip_final_snapshot ? null : "${var.name}-db-final"

  performance_insights_enabled    = var.db_performance_insights
  performance_insights_kms_key_id = var.db_performance_insights ? local.kms_key_arn : null
  enabled_cloudwatch_logs_exports = ["postgresql"]

  tags = local.tags

  lifecycle {
    precondition {
      condition     = !var.db_read_replica || var.db_backup_retention_days >= 1
      error_message = "A read replica needs automated backups on the primary (db_backup_retention_days >= 1)."
    }
  }
}

resource "aws_db_instance" "replica" {
  count = var.db_read_replica ? 1 : 0

  identifier          = "${var.name}-db-replica"
  replicate_source_db = aws_db_instance.primary.identifier
  instance_class      = coalesce(var.db_replica_instance_class, var.db_instance_class)

  storage_encrypted      = true
  kms_key_id             = local.kms_key_arn
  vpc_security_group_ids = [aws_security_group.db.id]
  parameter_group_name   = aws_db_parameter_group.this.name
  publicly_accessible    = false

  backup_retention_period    = 0
  auto_minor_version_upgrade = true
  skip_final_snapshot        = true
  deletion_protection        = var.db_deletion_protection

  performance_insights_enabled    = var.db_performance_insights
  performance_insights_kms_key_id = var.db_performance_insights ? local.kms_key_arn : null

  tags = local.tags
}

resource "aws_secretsmanager_secret" "database_url" {
  name                    = "${var.name}/database-url"
  description             = "DATABASE_URL of the cas roles of ${var.name}"
  kms_key_id              = local.kms_key_arn
  recovery_window_in_days = var.secret_recovery_window_days
  tags                    = local.tags
}

resource "aws_secretsmanager_secret_version" "database_url" {
  secret_id     = aws_secretsmanager_secret.database_url.id
  secret_string = "postgres://${aws_db_instance.primary.username}:${random_password.db.result}@${aws_db_instance.primary.address}:${aws_db_instance.primary.port}/${aws_db_instance.primary.db_name}"
}
