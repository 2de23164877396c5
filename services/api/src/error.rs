//! The one place that maps failures to HTTP answers.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use cas_store::StoreError;

/// A failed API call. Client errors carry their message to the client; server errors are
/// logged once here and answered with a generic message.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed (400).
    #[error("{0}")]
    BadRequest(String),
    /// No request with that CID (404).
    #[error("{0}")]
    NotFound(String),
    /// The body is larger than allowed (413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Authentication failed (401 `{"message":"Unauthorized"}`, the body ceramic-one
    /// recognises). The reason (a metric label) is never sent to the client.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// Over a rate limit (429 with `Retry-After`).
    #[error("rate limit of this {what} exceeded")]
    TooManyRequests {
        /// When the next request would be allowed.
        retry_after: std::time::Duration,
        /// Which limit: `ip` or `did`.
        what: &'static str,
    },
    /// Overloaded or a dependency is down: retry later (503).
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected dependency answer (500).
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        if err.is_retryable() {
            Self::Unavailable(err.to_string())
        } else {
            Self::Internal(err.to_string())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            Self::Unauthorized(_) => {
                return (
                    StatusCode::UNAUTHORIZED,
                    Json(serde_json::json!({ "message": "Unauthorized" })),
                )
                    .into_response();
            }
            Self::TooManyRequests { retry_after, what } => {
                metrics::counter!("cas_rate_limited_total", "limit" => *what).increment(1);
                let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                let mut response = (
                    StatusCode::TOO_MANY_REQUESTS,
                    Json(serde_json::json!({
                        "error": format!("Too many requests from this {what}; retry in {seconds} s")
                    })),
                )
                    .into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
                return response;
            }
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, m.clone()),
            Self::NotFound(m) => (StatusCode::NOT_FOUND, m.clone()),
            Self::PayloadTooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m.clone()),
            Self::Unavailable(cause) => {
                tracing::warn!(error = %cause, "answering 503");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service temporarily unavailable, retry later".to_owned(),
                )
            }
            Self::Internal(cause) => {
                tracing::error!(error = %cause, "answering 500");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal server error".to_owned(),
                )
            }
        };
        let mut response = (status, Json(serde_json::json!({ "error": message }))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}
