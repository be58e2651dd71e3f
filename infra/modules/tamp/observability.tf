# Alarms and a dashboard on what the functions emit (namespace "Tamp", embedded metric
# format, dimension Function = "<name>-<function>") and on SQS's own metrics. The DLQ alarms
# are in queues.tf. Every alarm notifies var.alarm_topic_arn when it is set.

locals {
  metric_fn = { for k in keys(local.functions) : k => "${var.name}-${k}" }
}

# Jobs that fail, as a share of finished jobs over an hour (report function's counts).
resource "aws_cloudwatch_metric_alarm" "job_failure_rate" {
  alarm_name          = "${var.name}-job-failure-rate"
  alarm_description   = "More than ${var.job_failure_rate_pct} % of finished jobs failed in the last hour: read the jobs' reasons (GET /jobs?status=failed)."
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.job_failure_rate_pct
  evaluation_periods  = 1
  treat_missing_data  = "notBreaching"
  alarm_actions       = compact([var.alarm_topic_arn])
  tags                = local.tags

  metric_query {
    id          = "rate"
    expression  = "100 * failed / MAX([failed + succeeded, 1])"
    label       = "failed jobs (%)"
    return_data = true
  }
  metric_query {
    id = "failed"
    metric {
      namespace   = "Tamp"
      metric_name = "JobsFailed"
      dimensions  = { Function = local.metric_fn["report"] }
      stat        = "Sum"
      period      = 3600
    }
  }
  metric_query {
    id = "succeeded"
    metric {
      namespace   = "Tamp"
      metric_name = "JobsSucceeded"
      dimensions  = { Function = local.metric_fn["report"] }
      stat        = "Sum"
      period      = 3600
    }
  }
}

# Messages waiting too long: the consumer is failing or throttled.
resource "aws_cloudwatch_metric_alarm" "oldest_message" {
  for_each            = local.queues
  alarm_name          = "${var.name}-${each.key}-oldest-message"
  alarm_description   = "A message has waited over ${var.oldest_message_alarm_s} s on ${aws_sqs_queue.main[each.key].name}: check the ${each.key} function's errors and throttles."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateAgeOfOldestMessage"
  dimensions          = { QueueName = aws_sqs_queue.main[each.key].name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 2
  threshold           = var.oldest_message_alarm_s
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = compact([var.alarm_topic_arn])
  tags                = local.tags
}

# Batch attempts that died for a reason other than bad input (crashes, lost hosts).
resource "aws_cloudwatch_metric_alarm" "worker_failures" {
  alarm_name          = "${var.name}-worker-failures"
  alarm_description   = "More than ${var.worker_failure_alarm} stage attempts failed retryably in an hour: read the Batch job logs (tamp-<job>-s<stage>-a<attempt>)."
  namespace           = "Tamp"
  metric_name         = "WorkerFailures"
  dimensions          = { Function = local.metric_fn["orchestrator"] }
  statistic           = "Sum"
  period              = 3600
  evaluation_periods  = 1
  threshold           = var.worker_failure_alarm
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = compact([var.alarm_topic_arn])
  tags                = local.tags
}

resource "aws_cloudwatch_dashboard" "tamp" {
  dashboard_name = var.name
  dashboard_body = jsonencode({
    widgets = [
      {
        type = "metric", x = 0, y = 0, width = 12, height = 6
        properties = {
          title   = "Finished jobs"
          region  = local.region
          stat    = "Sum"
          period  = 300
          metrics = [for m in ["JobsSucceeded", "JobsFailed", "JobsCancelled"] : ["Tamp", m, "Function", local.metric_fn["report"]]]
        }
      },
      {
        type = "metric", x = 12, y = 0, width = 12, height = 6
        properties = {
          title  = "Stage attempts that failed, reconcile repairs, poison messages"
          region = local.region
          stat   = "Sum"
          period = 300
          metrics = [
            ["Tamp", "WorkerFailures", "Function", local.metric_fn["orchestrator"]],
            ["Tamp", "WorkerBadInput", "Function", local.metric_fn["orchestrator"]],
            ["Tamp", "Reconciled", "Function", local.metric_fn["orchestrator"]],
            ["Tamp", "PoisonMessages", "Function", local.metric_fn["orchestrator"]],
            ["Tamp", "PoisonMessages", "Function", local.metric_fn["ingest"]],
          ]
        }
      },
      {
        type = "metric", x = 0, y = 6, width = 12, height = 6
        properties = {
          title   = "Queue age of the oldest message (s)"
          region  = local.region
          stat    = "Maximum"
          period  = 300
          metrics = [for k in keys(local.queues) : ["AWS/SQS", "ApproximateAgeOfOldestMessage", "QueueName", aws_sqs_queue.main[k].name]]
        }
      },
      {
        type = "metric", x = 12, y = 6, width = 12, height = 6
        properties = {
          title   = "Dead-letter queues"
          region  = local.region
          stat    = "Maximum"
          period  = 300
          metrics = [for k in local.dlqs : ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", aws_sqs_queue.dlq[k].name]]
        }
      },
      {
        type = "metric", x = 0, y = 12, width = 24, height = 6
        properties = {
          title   = "Function errors and throttles"
          region  = local.region
          stat    = "Sum"
          period  = 300
          metrics = concat([for k, n in local.metric_fn : ["AWS/Lambda", "Errors", "FunctionName", n]], [for k, n in local.metric_fn : ["AWS/Lambda", "Throttles", "FunctionName", n]])
        }
      },
    ]
  })
}
