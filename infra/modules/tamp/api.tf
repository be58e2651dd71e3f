# HTTP API → the api function. API Gateway checks JWTs (issuer, audience, scopes per route)
# before the function does its own RBAC; uploads go to S3 by presigned URL, never through
# the API (10 MB / 30 s limits).
resource "aws_apigatewayv2_api" "http" {
  name          = var.name
  protocol_type = "HTTP"
  description   = "Tamp API for ${var.name}"
  tags          = local.tags
}

resource "aws_apigatewayv2_authorizer" "jwt" {
  api_id           = aws_apigatewayv2_api.http.id
  authorizer_type  = "JWT"
  name             = "jwt"
  identity_sources = ["$request.header.Authorization"]
  jwt_configuration {
    issuer   = var.jwt_issuer
    audience = [var.jwt_audience]
  }
}

resource "aws_apigatewayv2_integration" "api" {
  api_id                 = aws_apigatewayv2_api.http.id
  integration_type       = "AWS_PROXY"
  integration_uri        = aws_lambda_function.fn["api"].invoke_arn
  payload_format_version = "2.0"
  timeout_milliseconds   = 29000
}

locals {
  # Route → OAuth scopes the token must carry (read for GETs, write for changes, admin for tokens).
  routes = {
    "GET /projects"                   = ["tamp/read"]
    "POST /projects"                  = ["tamp/write"]
    "GET /projects/{project}/models"  = ["tamp/read"]
    "POST /projects/{project}/models" = ["tamp/write"]
    "GET /models/{id}"                = ["tamp/read"]
    "GET /models/{id}/versions"       = ["tamp/read"]
    "POST /models/{id}/versions"      = ["tamp/write"]
    "GET /models/{id}/best"           = ["tamp/read"]
    "GET /jobs"                       = ["tamp/read"]
    "POST /jobs"                      = ["tamp/write"]
    "GET /jobs/{id}"                  = ["tamp/read"]
    "POST /jobs/{id}/cancel"          = ["tamp/write"]
    "GET /artifacts/{id}"             = ["tamp/read"]
    "GET /reports/{job}"              = ["tamp/read"]
    "POST /policies"                  = ["tamp/write"]
    "GET /policies/{id}"              = ["tamp/read"]
    "POST /tokens"                    = ["tamp/admin"]
    "GET /audit"                      = ["tamp/admin"]
  }
}

resource "aws_apigatewayv2_route" "api" {
  for_each             = local.routes
  api_id               = aws_apigatewayv2_api.http.id
  route_key            = each.key
  target               = "integrations/${aws_apigatewayv2_integration.api.id}"
  authorization_type   = "JWT"
  authorizer_id        = aws_apigatewayv2_authorizer.jwt.id
  authorization_scopes = each.value
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
      latency   = "$context.responseLatency", sub = "$context.authorizer.claims.sub", error = "$context.authorizer.error"
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
