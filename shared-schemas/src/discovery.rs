//! Discovery: services follow the NATS micro protocol (`$SRV.PING`,
//! `$SRV.INFO`, `$SRV.STATS`), so standard NATS tooling lists them. Each
//! HTTP endpoint carries its method, path, timeout and OpenAPI operation in
//! the endpoint metadata, under the keys in [`meta`].

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Endpoint metadata keys.
pub mod meta {
    /// HTTP method, upper case.
    pub const METHOD: &str = "http.method";
    /// Route template, `{param}` syntax.
    pub const PATH: &str = "http.path";
    /// How long the gateway waits for the reply, in milliseconds.
    pub const TIMEOUT_MS: &str = "http.timeout_ms";
    /// `bearer` when the endpoint needs a verified access token; absent
    /// for public endpoints.
    pub const AUTH: &str = "http.auth";
    /// The OpenAPI operation object, JSON.
    pub const OPERATION: &str = "openapi.operation";
    /// The OpenAPI component schemas the operation refers to, JSON object.
    pub const SCHEMAS: &str = "openapi.schemas";
    /// A request-reply endpoint: the name callers ask for.
    pub const RPC_NAME: &str = "rpc.name";
    /// The instance's system endpoint, answering with its live figures
    /// ([`InstanceReport`](crate::system::InstanceReport)); the value is
    /// [`SYSTEM_INSTANCE`]. The gateway asks it and never routes it as HTTP.
    pub const SYSTEM: &str = "microcore.system";
    /// The value of [`SYSTEM`].
    pub const SYSTEM_INSTANCE: &str = "instance";
    /// Service metadata: the wire contract version.
    pub const WIRE_VERSION: &str = "microcore.wire";
    /// Service metadata: the transport the instance runs on, `nats` or
    /// `in-process` (events in memory only, lost when the process stops).
    pub const TRANSPORT: &str = "microcore.transport";
    /// Service metadata: when the instance started, RFC 3339.
    pub const STARTED: &str = "microcore.started";
    /// Service metadata: the host the instance runs on.
    pub const HOST: &str = "microcore.host";
    /// Service metadata: its plugins and their states, a JSON list of
    /// [`PluginStatus`](super::PluginStatus).
    pub const PLUGINS: &str = "microcore.plugins";
    /// Service metadata: its event subscriptions, a JSON list of
    /// [`SubscriptionInfo`](super::SubscriptionInfo).
    pub const SUBSCRIPTIONS: &str = "microcore.subscriptions";
}

/// One instance's answer to `$SRV.INFO` (micro protocol
/// `io.nats.micro.v1.info_response`), also the payload of an up announcement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub name: String,
    /// Unique per instance.
    pub id: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: HashMap<String, String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub endpoints: Vec<EndpointInfo>,
}

/// One endpoint of a [`ServiceInfo`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointInfo {
    pub name: String,
    pub subject: String,
    #[serde(default)]
    pub queue_group: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: HashMap<String, String>,
}

/// One plugin of an instance, as it booted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginStatus {
    /// `service.plugin`.
    pub plugin: String,
    /// `ready` or `dead`.
    pub state: String,
    /// Why a dead plugin is dead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One event subscription of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionInfo {
    /// `service.plugin.name`.
    pub subscriber: String,
    pub event: String,
    /// `plugin` (one delivery per subscribing plugin), `group:<name>` or
    /// `broadcast`.
    pub audience: String,
}

/// Payload of a down announcement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceDown {
    pub name: String,
    pub id: String,
}

/// What the gateway needs to route to and document one HTTP endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpEndpoint {
    pub method: String,
    pub path: String,
    pub timeout_ms: u64,
    /// The gateway admits only requests with a valid access token and
    /// forwards their claims.
    pub auth: bool,
    pub operation: serde_json::Value,
    pub schemas: serde_json::Map<String, serde_json::Value>,
}

/// Why endpoint metadata could not be read as an [`HttpEndpoint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataError(pub String);

impl std::fmt::Display for MetadataError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid endpoint metadata: {}", self.0)
    }
}

impl std::error::Error for MetadataError {}

impl HttpEndpoint {
    pub fn to_metadata(&self) -> HashMap<String, String> {
        let mut metadata = HashMap::from([
            (meta::METHOD.to_owned(), self.method.clone()),
            (meta::PATH.to_owned(), self.path.clone()),
            (meta::TIMEOUT_MS.to_owned(), self.timeout_ms.to_string()),
            (meta::OPERATION.to_owned(), self.operation.to_string()),
            (
                meta::SCHEMAS.to_owned(),
                serde_json::Value::Object(self.schemas.clone()).to_string(),
            ),
        ]);
        if self.auth {
            metadata.insert(meta::AUTH.to_owned(), "bearer".to_owned());
        }
        metadata
    }

    /// Reads endpoint metadata; `Ok(None)` for an endpoint that is not an
    /// HTTP endpoint (another kind of micro endpoint).
    pub fn from_metadata(
        metadata: &HashMap<String, String>,
    ) -> Result<Option<Self>, MetadataError> {
        let (Some(method), Some(path)) = (metadata.get(meta::METHOD), metadata.get(meta::PATH))
        else {
            return Ok(None);
        };
        let field = |key: &str| {
            metadata
                .get(key)
                .ok_or_else(|| MetadataError(format!("missing `{key}`")))
        };
        let json = |key: &str| {
            field(key).and_then(|raw| {
                serde_json::from_str::<serde_json::Value>(raw)
                    .map_err(|e| MetadataError(format!("`{key}` is not JSON: {e}")))
            })
        };
        let timeout_ms = field(meta::TIMEOUT_MS)?
            .parse()
            .map_err(|e| MetadataError(format!("`{}`: {e}", meta::TIMEOUT_MS)))?;
        let schemas = match json(meta::SCHEMAS)? {
            serde_json::Value::Object(map) => map,
            _ => {
                return Err(MetadataError(format!(
                    "`{}` is not an object",
                    meta::SCHEMAS
                )));
            }
        };
        let auth = match metadata.get(meta::AUTH).map(String::as_str) {
            None => false,
            Some("bearer") => true,
            // Never serve a route unprotected because its scheme is unknown.
            Some(other) => {
                return Err(MetadataError(format!(
                    "`{}`: unknown scheme `{other}`",
                    meta::AUTH
                )));
            }
        };
        Ok(Some(Self {
            method: method.clone(),
            path: path.clone(),
            timeout_ms,
            auth,
            operation: json(meta::OPERATION)?,
            schemas,
        }))
    }
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_metadata_round_trips() {
        let endpoint = HttpEndpoint {
            method: "GET".into(),
            path: "/products/{id}".into(),
            timeout_ms: 5000,
            auth: true,
            operation: serde_json::json!({"operationId": "get_product"}),
            schemas: serde_json::Map::new(),
        };
        let metadata = endpoint.to_metadata();
        assert_eq!(HttpEndpoint::from_metadata(&metadata), Ok(Some(endpoint)));
    }

    #[test]
    fn non_http_endpoints_are_skipped_and_broken_ones_reported() {
        assert_eq!(HttpEndpoint::from_metadata(&HashMap::new()), Ok(None));
        let broken = HashMap::from([
            (meta::METHOD.to_owned(), "GET".to_owned()),
            (meta::PATH.to_owned(), "/x".to_owned()),
        ]);
        assert!(HttpEndpoint::from_metadata(&broken).is_err());
        let mut unknown_scheme = HttpEndpoint {
            method: "GET".into(),
            path: "/x".into(),
            timeout_ms: 1,
            auth: false,
            operation: serde_json::json!({}),
            schemas: serde_json::Map::new(),
        }
        .to_metadata();
        unknown_scheme.insert(meta::AUTH.to_owned(), "basic".to_owned());
        assert!(HttpEndpoint::from_metadata(&unknown_scheme).is_err());
    }

    #[test]
    fn info_accepts_null_collections() {
        let info: ServiceInfo = serde_json::from_str(
            r#"{"type":"io.nats.micro.v1.info_response","name":"a","id":"1","version":"0.1.0","metadata":null,"endpoints":null}"#,
        )
        .unwrap();
        assert!(info.endpoints.is_empty());
    }
}
