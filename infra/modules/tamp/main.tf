data "aws_caller_identity" "current" {}
data "aws_region" "current" {}
data "aws_partition" "current" {}

locals {
  account   = data.aws_caller_identity.current.account_id
  region    = data.aws_region.current.id
  partition = data.aws_partition.current.partition
  tags      = merge({ "tamp:stack" = var.name }, var.tags)

  # One entry per crate under functions/ (a test in tests/infra.rs keeps the two in step).
  functions = {
    api          = { memory = 512, timeout = 29, description = "Tamp HTTP API (API Gateway)" }
    ingest       = { memory = 256, timeout = 60, description = "Uploads (S3 via EventBridge and SQS) to jobs" }
    orchestrator = { memory = 256, timeout = 60, description = "Job state machine: Tamp messages, Batch state changes, reconcile" }
    report       = { memory = 512, timeout = 120, description = "Report documents for finished jobs" }
    notify       = { memory = 256, timeout = 30, description = "Slack, Teams and signed webhooks" }
    # Converts and measures in place (ONNX Runtime and LiteRT load from the zip): 3 GB and
    # 2 GB of /tmp hold a 256 MiB artifact, its conversion and both sessions with room.
    export = { memory = 3008, timeout = 900, description = "Succeeded jobs' artifacts for other runtimes (TFLite), measured there" }
  }

  # What every function reads (shared/lambda/src/settings.rs).
  common_env = {
    TAMP_BUCKET               = aws_s3_bucket.data.bucket
    TAMP_TABLE                = aws_dynamodb_table.meta.name
    TAMP_QUEUE_URL            = aws_sqs_queue.main["orchestrator"].url
    TAMP_DLQ_URL              = aws_sqs_queue.dlq["orchestrator"].url
    TAMP_EVENT_BUS            = aws_cloudwatch_event_bus.team.name
    TAMP_BATCH_QUEUE          = aws_batch_job_queue.cpu.name
    TAMP_BATCH_JOB_DEFINITION = aws_batch_job_definition.cpu.name
    # Training stages (the planner's `gpu` class) go to the GPU queue (batch.tf).
    TAMP_BATCH_GPU_QUEUE          = aws_batch_job_queue.gpu.name
    TAMP_BATCH_GPU_JOB_DEFINITION = aws_batch_job_definition.gpu.name
    TAMP_KMS_KEY_ID               = aws_kms_key.tamp.arn
    TAMP_MAX_ATTEMPTS             = tostring(var.max_attempts)
    TAMP_RETRY_DELAY_S            = tostring(var.retry_delay_s)
  }

  function_env = {
    api = {
      TAMP_JWT_ISSUER   = var.jwt_issuer
      TAMP_JWT_AUDIENCE = var.jwt_audience
      TAMP_JWKS_URL     = var.jwks_url
      TAMP_PUBLIC_URL   = aws_apigatewayv2_api.http.api_endpoint
      TAMP_RATE_LIMIT   = "1000"
    }
    ingest       = { TAMP_SOURCE_DLQ_URL = aws_sqs_queue.dlq["ingest"].url }
    orchestrator = { TAMP_SOURCE_DLQ_URL = aws_sqs_queue.dlq["orchestrator"].url }
    report       = {}
    export = {
      TAMP_EXPORT_IN_PLACE_MAX_BYTES = tostring(var.export_in_place_max_bytes)
      TAMP_SCRATCH                   = "/tmp"
      ORT_DYLIB_PATH                 = "/var/task/lib/libonnxruntime.so.1.31.1"
      LITERT_LIB_PATH                = "/var/task/lib/libLiteRt.so"
    }
    # Only the parameter's name: the URLs (a Slack URL is itself a credential) and the HMAC
    # key live in an SSM SecureString under the stack's KMS key (secrets.tf).
    notify = {
      TAMP_PUBLIC_URL        = aws_apigatewayv2_api.http.api_endpoint
      TAMP_SECRETS_PARAMETER = local.secrets_parameter
    }
  }
}

# One customer-managed key encrypts the bucket, the table, the queues, the logs, the
# function environments and the images.
resource "aws_kms_key" "tamp" {
  description             = "${var.name}: Tamp data, metadata, queues and logs"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
  tags                    = local.tags
}

resource "aws_kms_alias" "tamp" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.tamp.key_id
}

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_111: a key policy's resource "*" is the key itself; this is AWS's default key policy
  #checkov:skip=CKV_AWS_356: a key policy's resource "*" is the key itself
  #checkov:skip=CKV_AWS_109: the account root administers its own key (AWS's default key policy)
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"] # in a key policy, "*" means this key
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account}:root"]
    }
  }

  statement {
    sid       = "ServicesUseTheKey"
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"]
    resources = ["*"] # in a key policy, "*" means this key
    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.amazonaws.com", "events.amazonaws.com", "s3.amazonaws.com", "sqs.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account]
    }
  }
}
