output "api_url" {
  description = "The HTTP API's base URL."
  value       = aws_apigatewayv2_api.http.api_endpoint
}

output "bucket" {
  description = "The team bucket: upload to uploads/<project>/<model>/<version>/ (recipe.yaml last)."
  value       = aws_s3_bucket.data.bucket
}

output "table" {
  description = "The DynamoDB table holding jobs, artifacts, tokens and the catalog."
  value       = aws_dynamodb_table.meta.name
}

output "event_bus" {
  description = "The team's EventBridge bus (source \"tamp\"): subscribe more targets here."
  value       = aws_cloudwatch_event_bus.team.name
}

output "worker_repository_url" {
  description = "Push the worker images here (tags var.worker_image_tag and var.worker_gpu_image_tag)."
  value       = aws_ecr_repository.worker.repository_url
}

output "batch_job_queues" {
  description = "Batch job queues: cpu (Fargate) and gpu (EC2 g6/g5)."
  value       = { cpu = aws_batch_job_queue.cpu.name, gpu = aws_batch_job_queue.gpu.name }
}

output "kms_key_arn" {
  description = "The stack's KMS key."
  value       = aws_kms_key.tamp.arn
}

output "dead_letter_queues" {
  description = "DLQ URLs (alarmed): ingest, orchestrator, events."
  value       = { for k, q in aws_sqs_queue.dlq : k => q.url }
}

output "function_names" {
  description = "Lambda function names by role."
  value       = { for k, f in aws_lambda_function.fn : k => f.function_name }
}

output "ui_url" {
  description = "The web UI (CloudFront); register <ui_url>/ as the OIDC client's redirect URI."
  value       = local.ui_origin
}

output "ui_bucket" {
  description = "The bucket the UI is served from (CloudFront reads it through origin access control)."
  value       = aws_s3_bucket.ui.id
}

output "ui_config" {
  description = "What the UI reads from /config.json: the API's URL and the OIDC settings."
  value       = local.ui_config
}
