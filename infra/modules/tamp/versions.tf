terraform {
  required_version = ">= 1.11.0, < 2.0.0" # the S3 backend's use_lockfile

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.80" # 6.x renames Batch attributes this module uses; make infra-check holds the pin
    }
  }
}
