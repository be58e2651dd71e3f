# The web UI: the built files (ui/dist) in a private bucket of the team's stack, served by
# CloudFront through origin access control (the bucket answers CloudFront only, signed with
# SigV4), and /config.json written from this module's own values: where the API is (the
# HTTP API's endpoint) and how to log in (the team's OIDC issuer with PKCE, the same issuer
# whose JWTs the api function accepts). The API allows the UI's origin by CORS, and the data
# bucket allows the browser's presigned uploads from it.

locals {
  ui_origin = "https://${aws_cloudfront_distribution.ui.domain_name}"
  # What the UI reads at start (ui/src/api/client.ts: UiConfig).
  ui_config = {
    api_base_url = aws_apigatewayv2_api.http.api_endpoint
    auth = {
      mode      = "oidc"
      issuer    = var.jwt_issuer
      client_id = var.ui_oidc_client_id
      scope     = "openid profile"
    }
  }
  # Nothing to upload without var.ui_dist_dir (fileset(null) fails, try gives the empty set).
  ui_files = try(fileset(var.ui_dist_dir, "**"), toset([]))
  ui_types = {
    html = "text/html; charset=utf-8", js = "text/javascript", css = "text/css", svg = "image/svg+xml",
    json = "application/json", png = "image/png", ico = "image/x-icon", woff2 = "font/woff2", txt = "text/plain"
  }
}

resource "aws_s3_bucket" "ui" {
  #checkov:skip=CKV_AWS_144: the UI is rebuilt from the repository; replicating it buys nothing
  #checkov:skip=CKV_AWS_145: the UI's files are the published JavaScript bundle, readable by anyone who loads the page; SSE-S3 keeps CloudFront's OAC simple (a KMS key would need CloudFront in its policy)
  #checkov:skip=CKV2_AWS_62: nothing reacts to UI uploads
  #checkov:skip=CKV2_AWS_61: every deploy replaces the bundle; old hashed files are removed by terraform itself
  bucket_prefix = "${var.name}-ui-"
  force_destroy = true
  tags          = local.tags
}

resource "aws_s3_bucket_versioning" "ui" {
  bucket = aws_s3_bucket.ui.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "ui" {
  bucket = aws_s3_bucket.ui.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_public_access_block" "ui" {
  bucket                  = aws_s3_bucket.ui.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "ui" {
  bucket = aws_s3_bucket.ui.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_logging" "ui" {
  bucket        = aws_s3_bucket.ui.id
  target_bucket = aws_s3_bucket.access_logs.id
  target_prefix = "ui-bucket/"
}

resource "aws_cloudfront_origin_access_control" "ui" {
  name                              = "${var.name}-ui"
  description                       = "CloudFront reads the Tamp UI bucket, signed (SigV4)"
  origin_access_control_origin_type = "s3"
  signing_behavior                  = "always"
  signing_protocol                  = "sigv4"
}

# Only this distribution may read the bucket, and only over TLS.
resource "aws_s3_bucket_policy" "ui" {
  bucket = aws_s3_bucket.ui.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "CloudFrontReadsThroughOAC"
        Effect    = "Allow"
        Principal = { Service = "cloudfront.amazonaws.com" }
        Action    = "s3:GetObject"
        Resource  = "${aws_s3_bucket.ui.arn}/*"
        Condition = { StringEquals = { "AWS:SourceArn" = aws_cloudfront_distribution.ui.arn } }
      },
      {
        Sid       = "TlsOnly"
        Effect    = "Deny"
        Principal = "*"
        Action    = "s3:*"
        Resource  = [aws_s3_bucket.ui.arn, "${aws_s3_bucket.ui.arn}/*"]
        Condition = { Bool = { "aws:SecureTransport" = "false" } }
      },
    ]
  })
  depends_on = [aws_s3_bucket_public_access_block.ui]
}

# The same security headers tamp serve sends: scripts and styles from the origin only; the
# API (named by region: the API's own CORS rule names this distribution, so naming the API
# here would be a cycle), the bucket's presigned links and the issuer as the only other
# origins it talks to.
resource "aws_cloudfront_response_headers_policy" "ui" {
  name = "${var.name}-ui"
  security_headers_config {
    content_security_policy {
      content_security_policy = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; frame-src blob:; connect-src 'self' https://*.execute-api.${data.aws_region.current.id}.amazonaws.com https://${aws_s3_bucket.data.bucket_regional_domain_name} ${var.jwt_issuer}; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
      override                = true
    }
    strict_transport_security {
      access_control_max_age_sec = 31536000
      include_subdomains         = true
      preload                    = true
      override                   = true
    }
    content_type_options {
      override = true
    }
    frame_options {
      frame_option = "DENY"
      override     = true
    }
    referrer_policy {
      referrer_policy = "no-referrer"
      override        = true
    }
  }
}

resource "aws_cloudfront_distribution" "ui" {
  #checkov:skip=CKV_AWS_68: a WAF web ACL is a per-organisation choice (pass one with var.ui_web_acl_id); the UI serves static files and the API authenticates every call
  #checkov:skip=CKV2_AWS_47: as CKV_AWS_68 (the Log4j rule set belongs to that WAF)
  #checkov:skip=CKV_AWS_310: one origin (the bucket); a failover origin would be a second copy of a static bundle
  #checkov:skip=CKV_AWS_374: teams are not restricted by geography; add a restriction in the root module if yours is
  #checkov:skip=CKV_AWS_174: the default *.cloudfront.net certificate cannot set a minimum protocol version (a custom domain and certificate are the root module's to add)
  #checkov:skip=CKV2_AWS_42: as CKV_AWS_174
  enabled             = true
  comment             = "Tamp UI for ${var.name}"
  default_root_object = "index.html"
  price_class         = var.ui_price_class
  http_version        = "http2and3"
  web_acl_id          = var.ui_web_acl_id

  origin {
    origin_id                = "ui-bucket"
    domain_name              = aws_s3_bucket.ui.bucket_regional_domain_name
    origin_access_control_id = aws_cloudfront_origin_access_control.ui.id
  }

  default_cache_behavior {
    target_origin_id           = "ui-bucket"
    viewer_protocol_policy     = "redirect-to-https"
    allowed_methods            = ["GET", "HEAD"]
    cached_methods             = ["GET", "HEAD"]
    compress                   = true
    cache_policy_id            = "658327ea-f89d-4fab-a63d-7e88639e58f6" # Managed-CachingOptimized (hashed bundle files)
    response_headers_policy_id = aws_cloudfront_response_headers_policy.ui.id
  }

  # index.html and config.json change with every deploy: never cached.
  dynamic "ordered_cache_behavior" {
    for_each = ["/index.html", "/config.json"]
    content {
      path_pattern               = ordered_cache_behavior.value
      target_origin_id           = "ui-bucket"
      viewer_protocol_policy     = "redirect-to-https"
      allowed_methods            = ["GET", "HEAD"]
      cached_methods             = ["GET", "HEAD"]
      compress                   = true
      cache_policy_id            = "4135ea2d-6df8-44a3-9df3-4b5a84be39ad" # Managed-CachingDisabled
      response_headers_policy_id = aws_cloudfront_response_headers_policy.ui.id
    }
  }

  logging_config {
    bucket = aws_s3_bucket.access_logs.bucket_domain_name
    prefix = "cloudfront-ui/"
  }

  restrictions {
    geo_restriction {
      restriction_type = "none"
    }
  }

  viewer_certificate {
    cloudfront_default_certificate = true
  }

  tags = local.tags
}

# Where the API is and how to log in, from this module's values (the UI never hard-codes them).
resource "aws_s3_object" "ui_config" {
  bucket        = aws_s3_bucket.ui.id
  key           = "config.json"
  content       = jsonencode(local.ui_config)
  content_type  = "application/json"
  cache_control = "no-cache"
}

# The built UI (make ui → ui/dist), uploaded by `terraform apply` when var.ui_dist_dir is set.
resource "aws_s3_object" "ui_files" {
  for_each      = local.ui_files
  bucket        = aws_s3_bucket.ui.id
  key           = each.value
  source        = "${var.ui_dist_dir}/${each.value}"
  etag          = filemd5("${var.ui_dist_dir}/${each.value}")
  content_type  = lookup(local.ui_types, reverse(split(".", each.value))[0], "application/octet-stream")
  cache_control = lookup({ assets = "public, max-age=31536000, immutable" }, split("/", each.value)[0], "no-cache")
}

# The browser uploads models and data straight to the data bucket by presigned PUT.
resource "aws_s3_bucket_cors_configuration" "data" {
  bucket = aws_s3_bucket.data.id
  cors_rule {
    allowed_methods = ["PUT", "GET"]
    allowed_origins = [local.ui_origin]
    allowed_headers = ["content-type", "content-length"]
    expose_headers  = ["etag"]
    max_age_seconds = 600
  }
}
