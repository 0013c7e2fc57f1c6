//! The gateway's own answers, in the standard envelope.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;
use shared_schemas::ApiResponse;

pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(ApiResponse::<()>::error(message))).into_response()
}

pub fn ok<T: Serialize>(data: T) -> Response {
    Json(ApiResponse::ok(data)).into_response()
}
