# The five functions: provided.al2023 with the `bootstrap` from `make package`.
resource "aws_lambda_function" "fn" {
  #checkov:skip=CKV_AWS_117: the functions only call AWS APIs and team webhooks; a VPC adds NAT cost and cold-start time without isolating anything here
  #checkov:skip=CKV_AWS_272: code signing needs a signing profile per team; zips are built reproducibly by `make package` and checked by sha256 below
  for_each         = local.functions
  function_name    = "${var.name}-${each.key}"
  description      = each.value.description
  role             = aws_iam_role.fn[each.key].arn
  runtime          = "provided.al2023"
  handler          = "bootstrap"
  architectures    = [lookup(local.function_arch, each.key, local.lambda_architecture)]
  filename         = "${var.lambda_package_dir}/tamp-${each.key}/bootstrap.zip"
  source_code_hash = filebase64sha256("${var.lambda_package_dir}/tamp-${each.key}/bootstrap.zip")
  memory_size      = each.value.memory
  timeout          = each.value.timeout
  ephemeral_storage {
    size = lookup(local.function_scratch_mb, each.key, 512)
  }
  reserved_concurrent_executions = lookup(var.lambda_reserved_concurrency, each.key, 5)
  kms_key_arn                    = aws_kms_key.tamp.arn

  environment {
    variables = merge(local.common_env, local.function_env[each.key])
  }

  logging_config {
    log_format = "JSON"
    log_group  = aws_cloudwatch_log_group.fn[each.key].name
  }

  tracing_config {
    mode = "Active"
  }

  dead_letter_config {
    target_arn = aws_sqs_queue.dlq["events"].arn
  }

  tags = local.tags
}

resource "aws_cloudwatch_log_group" "fn" {
  for_each          = local.functions
  name              = "/aws/lambda/${var.name}-${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.tamp.arn
  tags              = local.tags
}

resource "aws_lambda_event_source_mapping" "ingest" {
  event_source_arn                   = aws_sqs_queue.main["ingest"].arn
  function_name                      = aws_lambda_function.fn["ingest"].arn
  batch_size                         = 10
  maximum_batching_window_in_seconds = 1
  function_response_types            = ["ReportBatchItemFailures"]
  # The poller never runs more batches at once than the function's reserved concurrency, so
  # messages wait on the queue instead of being throttled toward the DLQ.
  scaling_config {
    maximum_concurrency = max(2, lookup(var.lambda_reserved_concurrency, "ingest", 5))
  }
}

resource "aws_lambda_event_source_mapping" "orchestrator" {
  event_source_arn                   = aws_sqs_queue.main["orchestrator"].arn
  function_name                      = aws_lambda_function.fn["orchestrator"].arn
  batch_size                         = 10
  maximum_batching_window_in_seconds = 1
  function_response_types            = ["ReportBatchItemFailures"]
  # The poller never runs more batches at once than the function's reserved concurrency, so
  # messages wait on the queue instead of being throttled toward the DLQ.
  scaling_config {
    maximum_concurrency = max(2, lookup(var.lambda_reserved_concurrency, "orchestrator", 5))
  }
}

# /tmp beyond Lambda's default 512 MB: the export function's conversions.
locals {
  function_scratch_mb = { export = 2048 }
  # The export zip carries x86_64 builds of ONNX Runtime and LiteRT (`make package`).
  function_arch = { export = "x86_64" }
}

# The functions EventBridge invokes (report, notify, export) and the schedule's orchestrator call:
# asynchronous invocations get two retries within an hour, then the events DLQ, so a
# throttled or failing invocation is kept, not dropped.
resource "aws_lambda_function_event_invoke_config" "async" {
  for_each                     = toset(["report", "notify", "export", "orchestrator"])
  function_name                = aws_lambda_function.fn[each.key].function_name
  maximum_retry_attempts       = 2
  maximum_event_age_in_seconds = 3600
  destination_config {
    on_failure {
      destination = aws_sqs_queue.dlq["events"].arn
    }
  }
}

# --- IAM: one role per function, each with only what its handler touches ---------------

data "aws_iam_policy_document" "lambda_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "fn" {
  for_each = local.functions
  # IAM names are global to the account: the region keeps one team's stacks in two regions apart.
  name               = "${var.name}-${local.region}-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "fn" {
  for_each = local.functions
  name     = "tamp"
  role     = aws_iam_role.fn[each.key].id
  policy = {
    api          = data.aws_iam_policy_document.fn_api.json
    ingest       = data.aws_iam_policy_document.fn_ingest.json
    orchestrator = data.aws_iam_policy_document.fn_orchestrator.json
    report       = data.aws_iam_policy_document.fn_report.json
    notify       = data.aws_iam_policy_document.fn_notify.json
    export       = data.aws_iam_policy_document.fn_export.json
  }[each.key]
}

locals {
  lambda_architecture = coalesce(var.lambda_architecture, trimspace(file("${var.lambda_package_dir}/ARCHITECTURE")))
  table_arns          = [aws_dynamodb_table.meta.arn, "${aws_dynamodb_table.meta.arn}/index/*"]
  # What shared/adapters-aws/src/dynamo.rs calls; deletion (DeleteItem, and Scan for the
  # token listing) only from the api function.
  table_rw   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query", "dynamodb:TransactWriteItems"]
  batch_jobs = [aws_batch_job_queue.cpu.arn, aws_batch_job_queue.gpu.arn, "arn:${local.partition}:batch:${local.region}:${local.account}:job-definition/${var.name}-worker-*", "arn:${local.partition}:batch:${local.region}:${local.account}:job/*"]
  # Jobs carry the queue they were submitted to as the tag tamp:queue; cancel and terminate
  # are allowed only on this stack's, not on other teams' jobs in the account.
  batch_own_queues = [aws_batch_job_queue.cpu.name, aws_batch_job_queue.gpu.name]
}

# Shared by every function: its own logs, the key, the async DLQ, X-Ray.
data "aws_iam_policy_document" "fn_base" {
  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = [for g in aws_cloudwatch_log_group.fn : "${g.arn}:*"]
  }
  statement {
    sid       = "Key"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey", "kms:Encrypt"]
    resources = [aws_kms_key.tamp.arn]
  }
  statement {
    sid       = "AsyncDeadLetters"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.dlq["events"].arn]
  }
  statement {
    sid       = "Tracing"
    actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
    resources = ["*"] # X-Ray has no resource-level permissions
  }
}

# Submitting, stopping and finding stage runs: the api (cancel) and the orchestrator share it.
data "aws_iam_policy_document" "batch_control" {
  statement {
    sid       = "Batch"
    actions   = ["batch:SubmitJob", "batch:TagResource"]
    resources = local.batch_jobs
  }
  statement {
    sid       = "BatchStop"
    actions   = ["batch:CancelJob", "batch:TerminateJob"]
    resources = ["arn:${local.partition}:batch:${local.region}:${local.account}:job/*"]
    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/tamp:queue"
      values   = local.batch_own_queues
    }
  }
  statement {
    sid       = "BatchRead"
    actions   = ["batch:ListJobs", "batch:DescribeJobs"]
    resources = ["*"] # Batch's List/Describe have no resource-level permissions
  }
}

data "aws_iam_policy_document" "fn_api" {
  source_policy_documents = [data.aws_iam_policy_document.fn_base.json, data.aws_iam_policy_document.batch_control.json]
  statement {
    sid       = "Read"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.data.arn}/uploads/*", "${aws_s3_bucket.data.arn}/artifacts/*", "${aws_s3_bucket.data.arn}/reports/*"]
  }
  statement {
    sid       = "Upload"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.data.arn}/uploads/*"]
  }
  statement {
    sid       = "Erase"
    actions   = ["s3:DeleteObject"]
    resources = ["${aws_s3_bucket.data.arn}/uploads/*", "${aws_s3_bucket.data.arn}/artifacts/*", "${aws_s3_bucket.data.arn}/reports/*"]
  }
  statement {
    sid       = "List"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data.arn]
  }
  statement {
    sid       = "Table"
    actions   = concat(local.table_rw, ["dynamodb:DeleteItem", "dynamodb:Scan"])
    resources = local.table_arns
  }
  statement {
    sid       = "Queue"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.main["orchestrator"].arn]
  }
  statement {
    sid       = "Bus"
    actions   = ["events:PutEvents"]
    resources = [aws_cloudwatch_event_bus.team.arn]
  }
}

data "aws_iam_policy_document" "fn_ingest" {
  source_policy_documents = [data.aws_iam_policy_document.fn_base.json]
  statement {
    sid       = "Uploads"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.data.arn}/uploads/*"]
  }
  statement {
    sid       = "List"
    actions   = ["s3:ListBucket"] # a missing object answers 404, not 403
    resources = [aws_s3_bucket.data.arn]
  }
  statement {
    sid       = "Table"
    actions   = local.table_rw
    resources = local.table_arns
  }
  statement {
    sid       = "Queues"
    actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility"]
    resources = [aws_sqs_queue.main["ingest"].arn]
  }
  statement {
    sid       = "Send"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.main["orchestrator"].arn]
  }
  statement {
    sid       = "Park"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.dlq["ingest"].arn]
  }
  statement {
    sid       = "Bus"
    actions   = ["events:PutEvents"]
    resources = [aws_cloudwatch_event_bus.team.arn]
  }
}

data "aws_iam_policy_document" "fn_orchestrator" {
  source_policy_documents = [data.aws_iam_policy_document.fn_base.json, data.aws_iam_policy_document.batch_control.json]
  statement {
    sid       = "Manifests"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.data.arn}/artifacts/*"]
  }
  statement {
    sid       = "List"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data.arn]
  }
  statement {
    sid       = "Table"
    actions   = local.table_rw
    resources = local.table_arns
  }
  statement {
    sid       = "Queue"
    actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility", "sqs:SendMessage"]
    resources = [aws_sqs_queue.main["orchestrator"].arn]
  }
  statement {
    sid       = "Park"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.dlq["orchestrator"].arn]
  }
  statement {
    sid       = "Bus"
    actions   = ["events:PutEvents"]
    resources = [aws_cloudwatch_event_bus.team.arn]
  }
}

data "aws_iam_policy_document" "fn_report" {
  source_policy_documents = [data.aws_iam_policy_document.fn_base.json]
  statement {
    sid       = "Read"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.data.arn}/artifacts/*"]
  }
  statement {
    sid       = "List"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data.arn]
  }
  statement {
    sid       = "Write"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.data.arn}/reports/*"]
  }
  statement {
    sid       = "Table"
    actions   = ["dynamodb:GetItem", "dynamodb:Query"]
    resources = local.table_arns
  }
  statement {
    sid       = "Bus"
    actions   = ["events:PutEvents"]
    resources = [aws_cloudwatch_event_bus.team.arn]
  }
}

# export reads a succeeded job's artifact and evaluation set, writes the converted file
# beside the artifact, records it, and hands artifacts too large for it to a Batch stage.
data "aws_iam_policy_document" "fn_export" {
  source_policy_documents = [data.aws_iam_policy_document.fn_base.json, data.aws_iam_policy_document.batch_control.json]
  statement {
    sid       = "Read"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.data.arn}/uploads/*", "${aws_s3_bucket.data.arn}/artifacts/*"]
  }
  statement {
    sid       = "Write"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.data.arn}/artifacts/*"]
  }
  statement {
    sid       = "List"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data.arn]
  }
  statement {
    sid       = "Table"
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"]
    resources = local.table_arns
  }
  statement {
    sid       = "Bus"
    actions   = ["events:PutEvents"]
    resources = [aws_cloudwatch_event_bus.team.arn]
  }
}

# notify posts to the team's webhooks and keeps a ledger of deliveries in the table, so a
# retried event reaches only the targets that missed it.
data "aws_iam_policy_document" "fn_notify" {
  source_policy_documents = [data.aws_iam_policy_document.fn_base.json]
  statement {
    sid       = "Deliveries"
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem"]
    resources = local.table_arns
  }
  statement {
    sid       = "Secrets"
    actions   = ["ssm:GetParameter"]
    resources = [local.secrets_parameter_arn]
  }
}
