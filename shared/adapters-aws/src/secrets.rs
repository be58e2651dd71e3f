//! Secrets from SSM Parameter Store: one SecureString parameter (encrypted with the stack's
//! KMS key) holding a JSON object, read once per cold start. The functions' environment
//! carries only the parameter's name, so a webhook URL or HMAC key never appears in the
//! Lambda configuration, in `GetFunctionConfiguration` output, or in Terraform's plan of the
//! functions.

use tamp_ports::{PortError, Result};

/// The JSON object stored in SecureString parameter `name`, decrypted.
pub async fn load_json(config: &aws_config::SdkConfig, name: &str) -> Result<serde_json::Value> {
    let client = aws_sdk_ssm::Client::new(config);
    let out = client
        .get_parameter()
        .name(name)
        .with_decryption(true)
        .send()
        .await
        .map_err(|e| PortError::Unavailable(format!("ssm parameter {name}: {}", e.into_service_error())))?;
    let text = out.parameter().and_then(|p| p.value()).ok_or_else(|| PortError::NotFound(format!("ssm parameter {name} has no value")))?;
    // Never echo the value: it is the secret.
    serde_json::from_str(text).map_err(|e| PortError::Invalid(format!("ssm parameter {name} is not a JSON object (line {}, column {})", e.line(), e.column())))
}
