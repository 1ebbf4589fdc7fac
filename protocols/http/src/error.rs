//! API errors: a status code and a JSON body `{"error": CODE, "detail": TEXT}`.
//!
//! `error` is a stable, machine-readable code (listed in
//! `docs/protocols/http.md` and the OpenAPI document); `detail` is for
//! people and may change.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use switchyard_core::CoreError;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    /// Extra members of the JSON body, already encoded (`"k":v,...`).
    pub extra: String,
    /// A 401 that carries the `WWW-Authenticate` challenge.
    pub challenge: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
            extra: String::new(),
            challenge: false,
        }
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// 404 `queue_not_found`.
    pub fn no_queue(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "queue_not_found",
            format!("no queue '{name}'"),
        )
    }

    /// 413 `body_too_large`.
    pub fn too_large(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", detail)
    }

    /// 503 with `code` (answered with `Retry-After: 1`).
    pub fn unavailable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
    }

    /// Adds `"key": <json>` to the body.
    pub fn with(mut self, key: &str, json: impl std::fmt::Display) -> Self {
        use std::fmt::Write as _;
        let _ = write!(self.extra, ",\"{key}\":{json}");
        self
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        let mut out = String::with_capacity(48 + self.detail.len() + self.extra.len());
        out.push_str("{\"error\":\"");
        out.push_str(self.code);
        out.push_str("\",\"detail\":");
        crate::mapping::push_json_str(&mut out, &self.detail);
        out.push_str(&self.extra);
        out.push('}');
        out
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        let detail = e.to_string();
        match e {
            CoreError::NotFound { kind: "queue", .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "queue_not_found", detail)
            }
            CoreError::NotFound { .. } => ApiError::new(StatusCode::NOT_FOUND, "not_found", detail),
            CoreError::AccessRefused(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "access_refused", detail)
            }
            CoreError::ResourceLocked(_) => {
                ApiError::new(StatusCode::CONFLICT, "resource_locked", detail)
            }
            CoreError::PreconditionFailed(_) => {
                ApiError::new(StatusCode::CONFLICT, "precondition_failed", detail)
            }
            CoreError::ResourceLimit(_) => ApiError::unavailable("resource_limit", detail),
            CoreError::ShuttingDown => ApiError::unavailable("shutting_down", detail),
            CoreError::Storage(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store_failed", detail)
            }
            CoreError::MessageTooLarge { .. } => ApiError::too_large(detail),
            CoreError::Address(_) => ApiError::bad_request("invalid_address", detail),
            CoreError::InvalidArgument(_) => ApiError::bad_request("invalid_parameter", detail),
            CoreError::UnknownDeliveryTag(_)
            | CoreError::UnknownConsumer
            | CoreError::Transaction(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry = self.status == StatusCode::SERVICE_UNAVAILABLE;
        let mut r = (self.status, self.body()).into_response();
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if retry {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.challenge {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(crate::auth::CHALLENGE),
            );
        }
        r
    }
}
