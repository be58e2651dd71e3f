//! Errors as RFC 9457 problem documents (`application/problem+json`): what every API error
//! is sent as, and how handler and port errors map onto statuses. Storage errors carry server
//! paths and endpoints, so they are logged and never sent.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tamp_ports::PortError;

use crate::handlers::HandlerError;

/// A problem document.
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub title: &'static str,
    pub detail: String,
    /// Seconds, sent as `Retry-After` (429).
    pub retry_after: Option<u64>,
    /// The recipe line an invalid policy fails at (an extension member, `line`).
    pub line: Option<usize>,
}

impl Problem {
    pub fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        Self { status, title, detail: detail.into(), retry_after: None, line: None }
    }
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }
    pub fn too_many(retry_after: u64, detail: impl Into<String>) -> Self {
        Self { retry_after: Some(retry_after), ..Self::new(StatusCode::TOO_MANY_REQUESTS, "too many requests", detail) }
    }
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not found", detail)
    }
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad request", detail)
    }
    /// 422 for a recipe that does not validate, with the line it names.
    pub fn invalid_recipe(e: &tamp_domain::recipe::RecipeError, context: &str) -> Self {
        let detail = if context.is_empty() { e.to_string() } else { format!("{context}: {e}") };
        Self { line: e.line(), ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid policy", detail) }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "type": "about:blank", "title": self.title, "status": self.status.as_u16(), "detail": self.detail });
        if let Some(line) = self.line {
            body["line"] = line.into();
        }
        let mut r = (self.status, [(header::CONTENT_TYPE, "application/problem+json")], body.to_string()).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = secs.to_string().parse()
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

impl From<HandlerError> for Problem {
    fn from(e: HandlerError) -> Self {
        match e {
            HandlerError::Invalid(m) => Self::bad_request(m),
            HandlerError::Port(p) => p.into(),
        }
    }
}

impl From<PortError> for Problem {
    fn from(e: PortError) -> Self {
        match e {
            PortError::NotFound(m) => Self::not_found(m),
            PortError::Conflict(m) => Self::new(StatusCode::CONFLICT, "conflict", m),
            PortError::Invalid(m) => Self::bad_request(m),
            PortError::Unavailable(m) => {
                // Storage errors carry server paths and endpoints: logged, never sent.
                tracing::error!(error = %m, "storage unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the server's storage did not answer; retry in a moment (the operator's log has the details)",
                )
            }
        }
    }
}
