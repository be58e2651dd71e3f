//! The api function: the same axum router as `tamp serve`, over the AWS ports. API Gateway's
//! JWT authorizer checks tokens first; the router checks them again (API tokens, JWTs from
//! `TAMP_JWT_ISSUER` with keys from `TAMP_JWKS_URL`) and applies RBAC and rate limits.

use std::sync::Arc;

use tamp_control::Services;
use tamp_control::api::{AppState, router as api_router};
use tamp_control::auth::{self, Auth, AuthConfig, JwtConfig, JwtKeys};

use crate::{Error, Settings};

/// The router for the function.
pub async fn router(settings: &Settings, svc: Services) -> Result<axum::Router, Error> {
    let jwt = match (&settings.jwt_issuer, &settings.jwt_audience, &settings.jwks_url) {
        (Some(issuer), Some(audience), Some(jwks)) => {
            let keys = auth::resolve_jwks(JwtKeys::JwksUrl(jwks.clone())).await.map_err(|e| Error::Config(format!("TAMP_JWKS_URL {jwks}: {e}")))?;
            Some(JwtConfig { issuer: issuer.clone(), audience: audience.clone(), keys })
        }
        (None, None, None) => None,
        _ => return Err(Error::Config("TAMP_JWT_ISSUER, TAMP_JWT_AUDIENCE and TAMP_JWKS_URL go together".into())),
    };
    let auth = Arc::new(Auth::new(AuthConfig { jwt, rate_per_min: settings.rate_limit.max(1), ..AuthConfig::default() }, svc.meta.clone()));
    Ok(api_router(AppState { svc, files: None, auth, limits: tamp_control::api::Limits::default(), metrics: None }))
}
