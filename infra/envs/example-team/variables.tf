variable "region" {
  description = "AWS region of the stack."
  type        = string
}

variable "team" {
  description = "Team name (lowercase): the stack is named tamp-<team>."
  type        = string
}

variable "lambda_architecture" {
  description = "arm64 or x86_64; empty reads what `make package` built (dist/lambda/ARCHITECTURE)."
  type        = string
  default     = ""
}

variable "worker_image_tag" {
  description = "Worker image tag pushed to the stack's ECR repository."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets for Batch."
  type        = list(string)
}

variable "security_group_ids" {
  description = "Security groups for Batch containers."
  type        = list(string)
}

variable "jwt_issuer" {
  description = "OIDC issuer URL."
  type        = string
}

variable "jwt_audience" {
  description = "JWT audience (client id)."
  type        = string
}

variable "jwks_url" {
  description = "The issuer's JWKS URL."
  type        = string
}

variable "slack_webhook_url" {
  description = "Slack incoming webhook for the team channel."
  type        = string
  default     = ""
  sensitive   = true
}

variable "teams_webhook_url" {
  description = "Microsoft Teams workflow webhook for the team channel."
  type        = string
  default     = ""
  sensitive   = true
}

variable "webhook_urls" {
  description = "Generic signed webhooks."
  type        = list(string)
  default     = []
  sensitive   = true
}

variable "webhook_secret" {
  description = "HMAC key for generic webhooks."
  type        = string
  default     = ""
  sensitive   = true
}

variable "alarm_topic_arn" {
  description = "SNS topic for DLQ alarms."
  type        = string
  default     = ""
}

variable "ui_oidc_client_id" {
  description = "The web UI's client id at jwt_issuer (public client, PKCE)."
  type        = string
  default     = ""
}
