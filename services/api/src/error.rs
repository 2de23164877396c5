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
