# Stage workers: CPU stages on Fargate (Spot first, on-demand fallback), GPU stages on EC2
# g6/g5 (Spot first, on-demand fallback). The image comes from the stack's ECR repository.
resource "aws_ecr_repository" "worker" {
  name                 = "${var.name}-worker"
  image_tag_mutability = "IMMUTABLE"
  image_scanning_configuration {
    scan_on_push = true
  }
  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = aws_kms_key.tamp.arn
  }
  tags = local.tags
}

resource "aws_ecr_lifecycle_policy" "worker" {
  repository = aws_ecr_repository.worker.name
  policy = jsonencode({
    rules = [{
      rulePriority = 1
      description  = "keep the 30 newest images"
      selection    = { tagStatus = "any", countType = "imageCountMoreThan", countNumber = 30 }
      action       = { type = "expire" }
    }]
  })
}

locals {
  cpu_environments = { spot = "FARGATE_SPOT", ondemand = "FARGATE" }
  gpu_environments = {
    spot     = { type = "SPOT", strategy = "SPOT_PRICE_CAPACITY_OPTIMIZED" }
    ondemand = { type = "EC2", strategy = "BEST_FIT_PROGRESSIVE" }
  }
  worker_env = [
    { name = "TAMP_BUCKET", value = aws_s3_bucket.data.bucket },
    { name = "TAMP_TABLE", value = aws_dynamodb_table.meta.name },
    { name = "TAMP_KMS_KEY_ID", value = aws_kms_key.tamp.arn },
    { name = "TAMP_SCRATCH", value = "/scratch" },
    # Export stages record their artifact and announce it on the team bus.
    { name = "TAMP_EVENT_BUS", value = aws_cloudwatch_event_bus.team.name },
  ]
}

resource "aws_batch_compute_environment" "cpu" {
  for_each                        = local.cpu_environments
  compute_environment_name_prefix = "${var.name}-cpu-${each.key}-"
  type                            = "MANAGED"
  service_role                    = aws_iam_role.batch_service.arn
  compute_resources {
    type               = each.value
    max_vcpus          = var.cpu_max_vcpus
    subnets            = var.subnet_ids
    security_group_ids = var.security_group_ids
  }
  lifecycle {
    create_before_destroy = true
  }
  tags = local.tags
}

resource "aws_batch_compute_environment" "gpu" {
  for_each                        = local.gpu_environments
  compute_environment_name_prefix = "${var.name}-gpu-${each.key}-"
  type                            = "MANAGED"
  service_role                    = aws_iam_role.batch_service.arn
  compute_resources {
    type                = each.value.type
    allocation_strategy = each.value.strategy
    min_vcpus           = 0
    max_vcpus           = var.gpu_max_vcpus
    instance_type       = var.gpu_instance_types
    instance_role       = aws_iam_instance_profile.batch_instance.arn
    subnets             = var.subnet_ids
    security_group_ids  = var.security_group_ids
    ec2_configuration {
      image_type = "ECS_AL2023_NVIDIA"
    }
  }
  lifecycle {
    create_before_destroy = true
  }
  tags = local.tags
}

resource "aws_batch_job_queue" "cpu" {
  name     = "${var.name}-cpu"
  state    = "ENABLED"
  priority = 10
  compute_environment_order {
    order               = 1
    compute_environment = aws_batch_compute_environment.cpu["spot"].arn
  }
  compute_environment_order {
    order               = 2
    compute_environment = aws_batch_compute_environment.cpu["ondemand"].arn
  }
  tags = local.tags
}

resource "aws_batch_job_queue" "gpu" {
  name     = "${var.name}-gpu"
  state    = "ENABLED"
  priority = 10
  compute_environment_order {
    order               = 1
    compute_environment = aws_batch_compute_environment.gpu["spot"].arn
  }
  compute_environment_order {
    order               = 2
    compute_environment = aws_batch_compute_environment.gpu["ondemand"].arn
  }
  tags = local.tags
}

# The command is set per submission (`worker --job J --stage S --attempt A`); Batch retries
# infrastructure failures (Spot reclaim, host loss) and never the worker's own verdicts.
resource "aws_batch_job_definition" "cpu" {
  name                  = "${var.name}-worker-cpu"
  type                  = "container"
  platform_capabilities = ["FARGATE"]
  propagate_tags        = true
  timeout {
    attempt_duration_seconds = 14400 # 4 h
  }
  retry_strategy {
    attempts = 2
    evaluate_on_exit {
      on_status_reason = "Host EC2*"
      action           = "RETRY"
    }
    evaluate_on_exit {
      on_reason = "CannotPullContainerError*"
      action    = "RETRY"
    }
    evaluate_on_exit {
      on_reason = "*"
      action    = "EXIT"
    }
  }
  container_properties = jsonencode({
    image            = "${aws_ecr_repository.worker.repository_url}:${var.worker_image_tag}"
    command          = ["worker", "--job", "Ref::job", "--stage", "Ref::stage", "--attempt", "Ref::attempt"]
    jobRoleArn       = aws_iam_role.worker.arn
    executionRoleArn = aws_iam_role.batch_execution.arn
    environment      = local.worker_env
    resourceRequirements = [
      { type = "VCPU", value = "4" },
      { type = "MEMORY", value = "16384" },
    ]
    ephemeralStorage             = { sizeInGiB = 100 }
    fargatePlatformConfiguration = { platformVersion = "LATEST" }
    runtimePlatform              = { operatingSystemFamily = "LINUX", cpuArchitecture = "X86_64" }
    readonlyRootFilesystem       = false
    logConfiguration = {
      logDriver = "awslogs"
      options   = { "awslogs-group" = aws_cloudwatch_log_group.batch.name, "awslogs-region" = local.region, "awslogs-stream-prefix" = "cpu" }
    }
  })
  tags = local.tags
}

resource "aws_batch_job_definition" "gpu" {
  name                  = "${var.name}-worker-gpu"
  type                  = "container"
  platform_capabilities = ["EC2"]
  propagate_tags        = true
  timeout {
    attempt_duration_seconds = 28800 # 8 h
  }
  retry_strategy {
    attempts = 3
    evaluate_on_exit {
      on_status_reason = "Host EC2*"
      action           = "RETRY"
    }
    evaluate_on_exit {
      on_reason = "*"
      action    = "EXIT"
    }
  }
  container_properties = jsonencode({
    image       = "${aws_ecr_repository.worker.repository_url}:${var.worker_gpu_image_tag}"
    command     = ["worker", "--job", "Ref::job", "--stage", "Ref::stage", "--attempt", "Ref::attempt"]
    jobRoleArn  = aws_iam_role.worker.arn
    environment = local.worker_env
    resourceRequirements = [
      { type = "VCPU", value = "4" },
      { type = "MEMORY", value = "15000" },
      { type = "GPU", value = "1" },
    ]
    readonlyRootFilesystem = false
    logConfiguration = {
      logDriver = "awslogs"
      options   = { "awslogs-group" = aws_cloudwatch_log_group.batch.name, "awslogs-region" = local.region, "awslogs-stream-prefix" = "gpu" }
    }
  })
  tags = local.tags
}

resource "aws_cloudwatch_log_group" "batch" {
  name              = "/aws/batch/${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.tamp.arn
  tags              = local.tags
}

# --- IAM -------------------------------------------------------------------------------

data "aws_iam_policy_document" "batch_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["batch.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "batch_service" {
  name               = "${var.name}-${local.region}-batch-service"
  assume_role_policy = data.aws_iam_policy_document.batch_assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "batch_execution" {
  name               = "${var.name}-${local.region}-batch-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "batch_instance" {
  name               = "${var.name}-${local.region}-batch-instance"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
  tags               = local.tags
}

resource "aws_iam_instance_profile" "batch_instance" {
  name = "${var.name}-${local.region}-batch-instance"
  role = aws_iam_role.batch_instance.name
}

# The worker: reads its job and inputs, writes artifacts and manifests. Nothing else.
resource "aws_iam_role" "worker" {
  name               = "${var.name}-${local.region}-worker"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "worker" {
  name   = "tamp"
  role   = aws_iam_role.worker.id
  policy = data.aws_iam_policy_document.worker.json
}

data "aws_iam_policy_document" "worker" {
  statement {
    sid       = "Inputs"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.data.arn}/uploads/*", "${aws_s3_bucket.data.arn}/artifacts/*"]
  }
  statement {
    sid       = "Outputs"
    actions   = ["s3:PutObject", "s3:AbortMultipartUpload"]
    resources = ["${aws_s3_bucket.data.arn}/artifacts/*"]
  }
  statement {
    sid       = "List"
    actions   = ["s3:ListBucket", "s3:ListBucketMultipartUploads"]
    resources = [aws_s3_bucket.data.arn]
  }
  statement {
    sid       = "Jobs"
    actions   = ["dynamodb:GetItem"]
    resources = [aws_dynamodb_table.meta.arn]
  }
  # Export stages (`tamp-batch-worker export`) record the file they made and announce it.
  statement {
    sid       = "ExportRecords"
    actions   = ["dynamodb:PutItem", "dynamodb:UpdateItem"]
    resources = [aws_dynamodb_table.meta.arn]
  }
  statement {
    sid       = "ExportEvents"
    actions   = ["events:PutEvents"]
    resources = [aws_cloudwatch_event_bus.team.arn]
  }
  statement {
    sid       = "Key"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.tamp.arn]
  }
}

# AWS-managed policies, attached as resources (managed_policy_arns is deprecated).
resource "aws_iam_role_policy_attachment" "batch_service" {
  role       = aws_iam_role.batch_service.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AWSBatchServiceRole"
}

resource "aws_iam_role_policy_attachment" "batch_execution" {
  role       = aws_iam_role.batch_execution.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

resource "aws_iam_role_policy_attachment" "batch_instance" {
  role       = aws_iam_role.batch_instance.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role"
}
