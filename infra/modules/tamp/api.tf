# HTTP API → the api function, which authenticates every request itself, as `tamp serve`
# does: the team's JWTs (issuer, audience, RS256 keys from the JWKS, refreshed on rotation)
# and Tamp's own service-account tokens (`tamp_…`, stored hashed in the table). API
# Gateway's JWT authorizer could only take the first kind, so CI bots holding a Tamp token
# were refused; one code path for both, locally and here, is why no authorizer sits in front.
# Unauthenticated requests are bounded by the stage throttle below and the function's
# failed-login lockout per address. Uploads go to S3 by presigned URL, never through the API
# (10 MB / 30 s limits).
resource "aws_apigatewayv2_api" "http" {
  name          = var.name
  protocol_type = "HTTP"
  description   = "Tamp API for ${var.name}"
  # The web UI (ui.tf) calls the API from its CloudFront origin with a bearer token.
  cors_configuration {
    allow_origins = [local.ui_origin]
    allow_methods = ["GET", "POST", "PUT", "DELETE"]
    allow_headers = ["authorization", "content-type", "idempotency-key", "accept"]
    max_age       = 600
  }
  tags = local.tags
}

resource "aws_apigatewayv2_integration" "api" {
  api_id                 = aws_apigatewayv2_api.http.id
  integration_type       = "AWS_PROXY"
  integration_uri        = aws_lambda_function.fn["api"].invoke_arn
  payload_format_version = "2.0"
  timeout_milliseconds   = 29000
}

locals {
  # Route → the least role it needs (the function enforces it per project; listed here for
  # the reader). Every route the router serves on AWS (not /uploads and /objects: S3 serves
  # those by presigned URL).
  routes = {
    "GET /projects"                          = "viewer"
    "GET /projects/{project}"                = "viewer"
    "POST /models"                           = "editor"
    "GET /models/{id}/versions/{version}"    = "viewer"
    "GET /policies"                          = "viewer"
    "POST /policies/validate"                = "viewer"
    "GET /policy-templates"                  = "viewer"
    "POST /projects"                         = "admin"
    "DELETE /projects/{project}"             = "admin"
    "GET /projects/{project}/models"         = "viewer"
    "POST /projects/{project}/models"        = "editor"
    "GET /models/{id}"                       = "viewer"
    "DELETE /models/{id}"                    = "admin"
    "GET /models/{id}/versions"              = "viewer"
    "POST /models/{id}/versions"             = "editor"
    "DELETE /models/{id}/versions/{version}" = "admin"
    "GET /models/{id}/best"                  = "viewer"
    "GET /jobs"                              = "viewer"
    "POST /jobs"                             = "editor"
    "GET /jobs/{id}"                         = "viewer"
    "DELETE /jobs/{id}"                      = "admin"
    "POST /jobs/{id}/cancel"                 = "editor"
    "GET /artifacts/{id}"                    = "viewer"
    "DELETE /artifacts/{id}"                 = "admin"
    "GET /reports/{job}"                     = "viewer"
    "POST /policies"                         = "editor"
    "GET /policies/{id}"                     = "viewer"
    "POST /tokens"                           = "admin"
    "GET /tokens"                            = "admin"
    "DELETE /tokens/{id}"                    = "admin"
    "GET /audit"                             = "admin"
  }
}

resource "aws_apigatewayv2_route" "api" {
  #checkov:skip=CKV_AWS_309: the api function authenticates every request (JWTs and Tamp's service-account tokens); see the comment at the top of this file
  for_each  = local.routes
  api_id    = aws_apigatewayv2_api.http.id
  route_key = each.key
  target    = "integrations/${aws_apigatewayv2_integration.api.id}"
}

# The OpenAPI document and health check need no token.
resource "aws_apigatewayv2_route" "public" {
  #checkov:skip=CKV_AWS_309: /healthz and /openapi.json are public by design (no data, no side effects)
  for_each  = toset(["GET /healthz", "GET /openapi.json"])
  api_id    = aws_apigatewayv2_api.http.id
  route_key = each.key
  target    = "integrations/${aws_apigatewayv2_integration.api.id}"
}

resource "aws_apigatewayv2_stage" "default" {
  api_id      = aws_apigatewayv2_api.http.id
  name        = "$default"
  auto_deploy = true
  access_log_settings {
    destination_arn = aws_cloudwatch_log_group.api_access.arn
    format = jsonencode({
      requestId = "$context.requestId", ip = "$context.identity.sourceIp", time = "$context.requestTime",
      method    = "$context.httpMethod", route = "$context.routeKey", status = "$context.status",
      latency   = "$context.responseLatency", error = "$context.integrationErrorMessage"
    })
  }
  default_route_settings {
    throttling_burst_limit = 200
    throttling_rate_limit  = 100
  }
  tags = local.tags
}

resource "aws_cloudwatch_log_group" "api_access" {
  name              = "/aws/apigateway/${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.tamp.arn
  tags              = local.tags
}

resource "aws_lambda_permission" "api" {
  statement_id  = "AllowHttpApi"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.fn["api"].function_name
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_apigatewayv2_api.http.execution_arn}/*/*"
}
