# One team's Tamp stack. Copy this folder per team, fill terraform.tfvars and the backend.
terraform {
  required_version = ">= 1.11.0, < 2.0.0" # the S3 backend's use_lockfile

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.80" # 6.x renames Batch attributes this module uses; make infra-check holds the pin
    }
  }

  backend "s3" {
    # Filled per team at `terraform init -backend-config=backend.hcl` (bucket, key, region,
    # use_lockfile = true); see infra/README.md.
  }
}

provider "aws" {
  region = var.region
  default_tags {
    tags = { team = var.team, "managed-by" = "terraform" }
  }
}

module "tamp" {
  source = "../../modules/tamp"

  name                = "tamp-${var.team}"
  lambda_package_dir  = "${path.root}/../../../dist/lambda"
  lambda_architecture = var.lambda_architecture
  worker_image_tag    = var.worker_image_tag
  subnet_ids          = var.subnet_ids
  security_group_ids  = var.security_group_ids
  jwt_issuer          = var.jwt_issuer
  jwt_audience        = var.jwt_audience
  jwks_url            = var.jwks_url
  slack_webhook_url   = var.slack_webhook_url
  teams_webhook_url   = var.teams_webhook_url
  webhook_urls        = var.webhook_urls
  webhook_secret      = var.webhook_secret
  alarm_topic_arn     = var.alarm_topic_arn
  ui_oidc_client_id   = var.ui_oidc_client_id
  ui_dist_dir         = "${path.root}/../../../ui/dist"
}
