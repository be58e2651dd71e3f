# ingest: S3 upload events (EventBridge → SQS). orchestrator: Tamp's own messages and Batch
# state changes. Each has a DLQ after 5 receives; `events` is the DLQ of EventBridge
# targets and of the functions' asynchronous invocations.
locals {
  queues = {
    ingest       = { visibility = 360 } # ≥ 6 × the function timeout
    orchestrator = { visibility = 360 }
  }
  dlqs = toset(["ingest", "orchestrator", "events"])
}

resource "aws_sqs_queue" "dlq" {
  for_each                  = local.dlqs
  name                      = "${var.name}-${each.key}-dlq"
  message_retention_seconds = 1209600
  kms_master_key_id         = aws_kms_key.tamp.arn
  tags                      = local.tags
}

resource "aws_sqs_queue" "main" {
  for_each                   = local.queues
  name                       = "${var.name}-${each.key}"
  visibility_timeout_seconds = each.value.visibility
  message_retention_seconds  = 345600
  kms_master_key_id          = aws_kms_key.tamp.arn
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dlq[each.key].arn
    maxReceiveCount     = 5
  })
  tags = local.tags
}

resource "aws_sqs_queue_redrive_allow_policy" "dlq" {
  for_each  = local.queues
  queue_url = aws_sqs_queue.dlq[each.key].id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.main[each.key].arn]
  })
}

# EventBridge may send to the ingest and orchestrator queues (its rules) and to the events
# DLQ (failed target deliveries).
resource "aws_sqs_queue_policy" "from_eventbridge" {
  for_each  = toset(["ingest", "orchestrator"])
  queue_url = aws_sqs_queue.main[each.key].id
  policy    = data.aws_iam_policy_document.queue_from_eventbridge[each.key].json
}

data "aws_iam_policy_document" "queue_from_eventbridge" {
  for_each = toset(["ingest", "orchestrator"])
  statement {
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.main[each.key].arn]
    principals {
      type        = "Service"
      identifiers = ["events.amazonaws.com"]
    }
    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [{ ingest = aws_cloudwatch_event_rule.uploads.arn, orchestrator = aws_cloudwatch_event_rule.batch_state.arn }[each.key]]
    }
  }
}

resource "aws_sqs_queue_policy" "events_dlq" {
  queue_url = aws_sqs_queue.dlq["events"].id
  policy    = data.aws_iam_policy_document.events_dlq.json
}

data "aws_iam_policy_document" "events_dlq" {
  statement {
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.dlq["events"].arn]
    principals {
      type        = "Service"
      identifiers = ["events.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account]
    }
  }
}

# Anything in a DLQ needs a person: alarm on the first message.
resource "aws_cloudwatch_metric_alarm" "dlq" {
  for_each            = local.dlqs
  alarm_name          = "${var.name}-${each.key}-dlq-not-empty"
  alarm_description   = "Messages in ${aws_sqs_queue.dlq[each.key].name}: inspect, fix, then redrive."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.dlq[each.key].name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = compact([var.alarm_topic_arn])
  tags                = local.tags
}
