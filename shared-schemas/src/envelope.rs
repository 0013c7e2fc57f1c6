//! The standard response envelope every JSON answer uses, the gateway's own
//! errors included.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `{"success": bool, "data": …, "error": …}`, plus `details` on 422.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiResponse<T> {
    pub success: bool,
    pub data: Option<T>,
    pub error: Option<String>,
    /// The offending fields when the input was invalid (422).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
}

/// One invalid input field: where it is and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    /// Path of the field in the request data (`price`, `items[0].qty`).
    pub field: String,
    pub message: String,
}

impl<T> ApiResponse<T> {
    pub fn ok(data: T) -> Self {
        Self {
            success: true,
            data: Some(data),
            error: None,
            details: Vec::new(),
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Self {
            success: false,
            data: None,
            error: Some(message.into()),
            details: Vec::new(),
        }
    }

    pub fn invalid(message: impl Into<String>, details: Vec<FieldError>) -> Self {
        Self {
            details,
            ..Self::error(message)
        }
    }
}

/// The JSON Schema of a successful envelope whose `data` has the schema
/// `data`: how every OpenAPI document of the system describes a success.
pub fn success_schema(data: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "required": ["success", "data", "error"],
        "properties": {
            "success": {"type": "boolean", "const": true},
            "data": data,
            "error": {"type": "null"},
        },
    })
}
