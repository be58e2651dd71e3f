# The team bus carries Tamp's own events (source "tamp"); AWS services' events (S3, Batch)
# arrive on the default bus.
resource "aws_cloudwatch_event_bus" "team" {
  name               = var.name
  kms_key_identifier = aws_kms_key.tamp.arn
  tags               = local.tags
}

# S3 Object Created for uploads/…/recipe.yaml → ingest queue.
resource "aws_cloudwatch_event_rule" "uploads" {
  name        = "${var.name}-uploads"
  description = "recipe.yaml written under uploads/ starts a job"
  event_pattern = jsonencode({
    source        = ["aws.s3"]
    "detail-type" = ["Object Created"]
    detail = {
      bucket = { name = [aws_s3_bucket.data.bucket] }
      object = { key = [{ wildcard = "uploads/*/recipe.yaml" }] }
    }
  })
  tags = local.tags
}

resource "aws_cloudwatch_event_target" "uploads" {
  rule      = aws_cloudwatch_event_rule.uploads.name
  target_id = "ingest-queue"
  arn       = aws_sqs_queue.main["ingest"].arn
  retry_policy {
    maximum_event_age_in_seconds = 86400
    maximum_retry_attempts       = 185
  }
  dead_letter_config {
    arn = aws_sqs_queue.dlq["events"].arn
  }
}

# Batch Job State Change for this stack's job queues → orchestrator queue.
resource "aws_cloudwatch_event_rule" "batch_state" {
  name        = "${var.name}-batch-state"
  description = "Batch job state changes of Tamp stage runs"
  event_pattern = jsonencode({
    source        = ["aws.batch"]
    "detail-type" = ["Batch Job State Change"]
    detail = {
      jobQueue = [aws_batch_job_queue.cpu.arn, aws_batch_job_queue.gpu.arn]
      status   = ["RUNNING", "SUCCEEDED", "FAILED"]
    }
  })
  tags = local.tags
}

resource "aws_cloudwatch_event_target" "batch_state" {
  rule      = aws_cloudwatch_event_rule.batch_state.name
  target_id = "orchestrator-queue"
  arn       = aws_sqs_queue.main["orchestrator"].arn
  retry_policy {
    maximum_event_age_in_seconds = 86400
    maximum_retry_attempts       = 185
  }
  dead_letter_config {
    arn = aws_sqs_queue.dlq["events"].arn
  }
}

# Tamp's events → report (finished jobs), export (succeeded jobs) and notify (job events,
# quality alerts).
locals {
  bus_subscribers = {
    report = ["tamp.job.succeeded", "tamp.job.failed", "tamp.job.cancelled"]
    export = ["tamp.job.succeeded"]
    notify = ["tamp.job.created", "tamp.job.succeeded", "tamp.job.failed", "tamp.job.cancelled", "tamp.quality.alert", "tamp.report.ready"]
  }
}

resource "aws_cloudwatch_event_rule" "bus" {
  for_each       = local.bus_subscribers
  name           = "${var.name}-${each.key}"
  description    = "Tamp events for the ${each.key} function"
  event_bus_name = aws_cloudwatch_event_bus.team.name
  event_pattern = jsonencode({
    source        = ["tamp"]
    "detail-type" = each.value
  })
  tags = local.tags
}

resource "aws_cloudwatch_event_target" "bus" {
  for_each       = local.bus_subscribers
  rule           = aws_cloudwatch_event_rule.bus[each.key].name
  event_bus_name = aws_cloudwatch_event_bus.team.name
  target_id      = "${each.key}-function"
  arn            = aws_lambda_function.fn[each.key].arn
  retry_policy {
    maximum_event_age_in_seconds = 3600
    maximum_retry_attempts       = 24
  }
  dead_letter_config {
    arn = aws_sqs_queue.dlq["events"].arn
  }
}

resource "aws_lambda_permission" "bus" {
  for_each      = local.bus_subscribers
  statement_id  = "AllowTeamBus"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.fn[each.key].function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.bus[each.key].arn
}

# Reconcile: repairs jobs whose Batch submission was lost.
resource "aws_cloudwatch_event_rule" "reconcile" {
  name                = "${var.name}-reconcile"
  description         = "Tamp reconcile (jobs stuck in submitted/running)"
  schedule_expression = "rate(5 minutes)"
  tags                = local.tags
}

resource "aws_cloudwatch_event_target" "reconcile" {
  rule      = aws_cloudwatch_event_rule.reconcile.name
  target_id = "orchestrator-function"
  arn       = aws_lambda_function.fn["orchestrator"].arn
  retry_policy {
    maximum_event_age_in_seconds = 600
    maximum_retry_attempts       = 2
  }
  dead_letter_config {
    arn = aws_sqs_queue.dlq["events"].arn
  }
}

resource "aws_lambda_permission" "reconcile" {
  statement_id  = "AllowReconcileSchedule"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.fn["orchestrator"].function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.reconcile.arn
}
