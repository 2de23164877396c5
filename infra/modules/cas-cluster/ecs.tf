# ECS on Fargate: one task definition per role, all from the same image with the role as
# the command, and a service for api, scheduler and worker. `migrate` is a task definition
# only: run it with `aws ecs run-task` before a release (see infra/README.md).

resource "aws_ecs_cluster" "this" {
  name = var.name
  tags = local.tags

  setting {
    name  = "containerInsights"
    value = var.container_insights ? "enabled" : "disabled"
  }
}

resource "aws_cloudwatch_log_group" "role" {
  for_each = local.roles

  name              = "/ecs/${var.name}/${each.key}"
  retention_in_days = var.log_retention_days
  tags              = local.tags
}

resource "aws_ecs_task_definition" "role" {
  for_each = local.roles

  family                   = "${var.name}-${each.key}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = local.task_size[each.key].cpu
  memory                   = local.task_size[each.key].memory
  execution_role_arn       = aws_iam_role.execution[each.key].arn
  task_role_arn            = aws_iam_role.task[each.key].arn
  tags                     = local.tags

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  container_definitions = jsonencode([
    {
      name      = "cas"
      image     = var.image
      essential = true
      command   = [each.key]

      environment = local.container_environment[each.key]
      secrets     = local.container_secrets[each.key]

      portMappings = each.key == "api" ? [
        {
          name          = "http"
          containerPort = local.api_port
          protocol      = "tcp"
        }
      ] : []

      # The binary writes nothing to disk.
      readonlyRootFilesystem = true
      # SIGTERM drains in-flight work; give it the longest time Fargate allows.
      stopTimeout = 120

      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.role[each.key].name
          awslogs-region        = local.region
          awslogs-stream-prefix = each.key
        }
      }
    }
  ])
}

resource "aws_ecs_service" "api" {
  name                   = "api"
  cluster                = aws_ecs_cluster.this.id
  task_definition        = aws_ecs_task_definition.role["api"].arn
  desired_count          = var.api_min_count
  launch_type            = "FARGATE"
  propagate_tags         = "SERVICE"
  enable_execute_command = var.enable_execute_command
  tags                   = local.tags

  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
  health_check_grace_period_seconds  = 60

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.tasks.id]
    assign_public_ip = var.assign_public_ip
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.api.arn
    container_name   = "cas"
    container_port   = local.api_port
  }

  # The autoscaler owns the task count.
  lifecycle {
    ignore_changes = [desired_count]
  }

  depends_on = [aws_lb_listener.http, aws_iam_role_policy.task]
}

resource "aws_ecs_service" "scheduler" {
  name                   = "scheduler"
  cluster                = aws_ecs_cluster.this.id
  task_definition        = aws_ecs_task_definition.role["scheduler"].arn
  desired_count          = var.scheduler_count
  launch_type            = "FARGATE"
  propagate_tags         = "SERVICE"
  enable_execute_command = var.enable_execute_command
  tags                   = local.tags

  # Replace the scheduler rather than run two side by side (two would split batches).
  deployment_minimum_healthy_percent = 0
  deployment_maximum_percent         = 100

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.tasks.id]
    assign_public_ip = var.assign_public_ip
  }

  depends_on = [aws_iam_role_policy.task]
}

resource "aws_ecs_service" "worker" {
  name                   = "worker"
  cluster                = aws_ecs_cluster.this.id
  task_definition        = aws_ecs_task_definition.role["worker"].arn
  desired_count          = var.worker_min_count
  launch_type            = "FARGATE"
  propagate_tags         = "SERVICE"
  enable_execute_command = var.enable_execute_command
  tags                   = local.tags

  # Two workers may overlap during a deployment: a per-batch database lock keeps them from
  # anchoring the same batch twice.
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.tasks.id]
    assign_public_ip = var.assign_public_ip
  }

  lifecycle {
    ignore_changes = [desired_count]
  }

  depends_on = [aws_iam_role_policy.task]
}
