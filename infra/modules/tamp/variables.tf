variable "name" {
  description = "Stack name: prefixes every resource (one stack per team, e.g. \"tamp-vision\"). Lowercase letters, digits and hyphens."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,30}$", var.name))
    error_message = "name must be 3-31 characters of lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

variable "lambda_package_dir" {
  description = "Folder holding <function>/bootstrap.zip as written by `make package` (dist/lambda)."
  type        = string
}

variable "lambda_architecture" {
  description = "Lambda architecture: arm64 or x86_64. Empty (the default): what `make package` built, read from <lambda_package_dir>/ARCHITECTURE, so the functions never run zips built for the other one."
  type        = string
  default     = ""

  validation {
    condition     = contains(["", "arm64", "x86_64"], var.lambda_architecture)
    error_message = "lambda_architecture must be arm64, x86_64, or empty (read the built zips' ARCHITECTURE file)."
  }
}

variable "lambda_reserved_concurrency" {
  description = "Reserved concurrency per function (caps cost and protects DynamoDB and Batch from bursts)."
  type        = map(number)
  default = {
    api          = 50
    ingest       = 10
    orchestrator = 10
    report       = 5
    notify       = 5
    export       = 5
  }
}

variable "export_in_place_max_bytes" {
  description = "The export function converts artifacts up to this size (bytes; default 256 MiB) itself; larger ones go to a Batch CPU export stage (the worker image, `tamp-batch-worker export`)."
  type        = number
  default     = 268435456
}

variable "worker_image_tag" {
  description = "Tag of the Batch worker image pushed to the stack's ECR repository (`make package` builds it; see README). The repository's tags are immutable, so this is a version (cpu-0.1.0), never a moving *-latest."
  type        = string
  validation {
    condition     = contains(["0"], tostring(length(regexall("latest$", var.worker_image_tag))))
    error_message = "worker_image_tag must name a version (the ECR repository's tags are immutable): push cpu-<version> and set it here."
  }
}

variable "worker_gpu_image_tag" {
  description = "Tag of the GPU worker image (CUDA execution provider) in the same repository (a version, as for worker_image_tag)."
  type        = string
  default     = "gpu-0.1.0"
  validation {
    condition     = contains(["0"], tostring(length(regexall("latest$", var.worker_gpu_image_tag))))
    error_message = "worker_gpu_image_tag must name a version (the ECR repository's tags are immutable)."
  }
}

variable "subnet_ids" {
  description = "Private subnets (with a NAT or VPC endpoints to S3, DynamoDB, ECR, CloudWatch Logs) for the Batch compute environments."
  type        = list(string)
}

variable "security_group_ids" {
  description = "Security groups for Batch containers (egress to AWS endpoints only is enough)."
  type        = list(string)
}

variable "cpu_max_vcpus" {
  description = "Upper bound of Fargate vCPUs for CPU stages."
  type        = number
  default     = 64
}

variable "gpu_max_vcpus" {
  description = "Upper bound of EC2 vCPUs for GPU stages (0 disables GPU capacity)."
  type        = number
  default     = 32
}

variable "gpu_instance_types" {
  description = "GPU instance types for the GPU compute environments, in order of preference."
  type        = list(string)
  default     = ["g6.xlarge", "g6.2xlarge", "g5.xlarge", "g5.2xlarge"]
}

variable "jwt_issuer" {
  description = "OIDC issuer URL whose JWTs the API accepts (the api function checks them, beside Tamp tokens)."
  type        = string
}

variable "jwt_audience" {
  description = "Audience (client id) the JWTs must carry."
  type        = string
}

variable "jwks_url" {
  description = "The issuer's JWKS URL (RS256 keys); usually <issuer>/.well-known/jwks.json."
  type        = string
}

variable "slack_webhook_url" {
  description = "Slack incoming-webhook URL for the team channel (empty: none)."
  type        = string
  default     = ""
  sensitive   = true
}

variable "teams_webhook_url" {
  description = "Microsoft Teams (Workflows) webhook URL for the team channel (empty: none)."
  type        = string
  default     = ""
  sensitive   = true
}

variable "webhook_urls" {
  description = "Generic webhook URLs that receive every job event, HMAC-signed (X-Tamp-Signature)."
  type        = list(string)
  default     = []
  sensitive   = true
}

variable "webhook_secret" {
  description = "HMAC key for generic webhooks (at least 16 characters when webhook_urls is set)."
  type        = string
  default     = ""
  sensitive   = true
  validation {
    condition     = can(regex("^(|.{16,})$", var.webhook_secret))
    error_message = "webhook_secret must be at least 16 characters (receivers verify X-Tamp-Signature with it)."
  }
}

variable "secrets_parameter_name" {
  description = "An existing SSM SecureString parameter holding {slack_webhook_url, teams_webhook_url, webhook_urls, webhook_secret} as JSON, encrypted with a key the notify function may use. Empty: the module creates one from the webhook variables (their values are then in the Terraform state: keep the state encrypted)."
  type        = string
  default     = ""
}

variable "max_attempts" {
  description = "Attempts per stage before a job fails (retryable failures only)."
  type        = number
  default     = 3
}

variable "retry_delay_s" {
  description = "Seconds before a stage's second attempt (doubling after)."
  type        = number
  default     = 30
}

variable "log_retention_days" {
  description = "CloudWatch Logs retention for functions, the API and Batch."
  type        = number
  default     = 365
}

variable "upload_expiry_days" {
  description = "Days after which uploads (models and data under uploads/) expire; artifacts and reports are kept."
  type        = number
  default     = 90
}

variable "alarm_topic_arn" {
  description = "SNS topic for the alarms: DLQ depth, job failure rate, oldest message, worker failures (empty: alarms without actions)."
  type        = string
  default     = ""
}

variable "job_failure_rate_pct" {
  description = "Alarm when more than this share (%) of the jobs finished in an hour failed."
  type        = number
  default     = 20
}

variable "oldest_message_alarm_s" {
  description = "Alarm when a queue's oldest message is older than this many seconds."
  type        = number
  default     = 900
}

variable "worker_failure_alarm" {
  description = "Alarm when more stage attempts than this fail retryably in an hour."
  type        = number
  default     = 5
}

variable "ui_oidc_client_id" {
  description = "The web UI's OIDC client id at var.jwt_issuer (a public client: authorization code with PKCE, redirect URI = output ui_url + \"/\")."
  type        = string
  default     = ""
}

variable "ui_dist_dir" {
  description = "The built UI (make ui → ui/dist) to upload to the UI bucket; null uploads nothing but config.json."
  type        = string
  default     = null
}

variable "ui_web_acl_id" {
  description = "A WAF web ACL (CLOUDFRONT scope) to put in front of the UI, if your organisation uses one."
  type        = string
  default     = null
}

variable "ui_price_class" {
  description = "CloudFront price class of the UI distribution."
  type        = string
  default     = "PriceClass_100"
}
