output "api_url" {
  description = "The team's Tamp API."
  value       = module.tamp.api_url
}

output "bucket" {
  description = "Upload here: uploads/<project>/<model>/<version>/."
  value       = module.tamp.bucket
}

output "worker_repository_url" {
  description = "Push worker images here."
  value       = module.tamp.worker_repository_url
}

output "ui_url" {
  description = "The team's Tamp web UI (log in with the OIDC issuer)."
  value       = module.tamp.ui_url
}
