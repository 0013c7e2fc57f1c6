//! One OpenAPI 3.1 document merged from the operations every live service
//! announces. Services ship their operations already complete (schemas
//! derived from the plugin types); the gateway only places them and merges
//! the component schemas, reporting a name defined differently by two
//! services instead of picking one silently.

use serde_json::{Map, Value, json};
use shared_schemas::auth::OPENAPI_SCHEME;
use shared_schemas::envelope::success_schema;

use crate::routes::{Claim, Conflict};

/// The document for `claims` (the routes of live services), and the schema
/// name clashes found while merging.
pub fn merge<'a>(claims: impl IntoIterator<Item = &'a Claim>) -> (Value, Vec<Conflict>) {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    let mut conflicts = Vec::new();
    let mut owners: Map<String, Value> = Map::new();
    for claim in claims {
        let method = claim.endpoint.method.to_ascii_lowercase();
        let item = paths
            .entry(claim.endpoint.path.clone())
            .or_insert_with(|| json!({}));
        if item.get(&method).is_none() {
            item[&method] = claim.endpoint.operation.clone();
        }
        for (name, schema) in &claim.endpoint.schemas {
            match schemas.get(name) {
                None => {
                    schemas.insert(name.clone(), schema.clone());
                    owners.insert(name.clone(), claim.service.clone().into());
                }
                Some(existing) if existing != schema => conflicts.push(Conflict {
                    method: claim.endpoint.method.clone(),
                    path: claim.endpoint.path.clone(),
                    service: claim.service.clone(),
                    kept_by: owners[name].as_str().map(str::to_owned),
                    reason: format!("schema `{name}` differs from the one already documented"),
                }),
                Some(_) => {}
            }
        }
    }
    paths.extend(system_paths());
    paths.extend(crate::observe::openapi_paths());
    let document = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "microcore",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every endpoint of every live service, routed by the gateway.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                OPENAPI_SCHEME: {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            },
        },
    });
    (document, conflicts)
}

/// The gateway's own endpoints, under the `System` tag.
fn system_paths() -> Map<String, Value> {
    let operation = |id: &str, summary: &str| {
        json!({"get": {
            "operationId": id,
            "tags": ["System"],
            "summary": summary,
            "responses": {"200": {
                "description": "OK",
                "content": {"application/json": {"schema": success_schema(json!({"type": "object"}))}},
            }},
        }})
    };
    let prometheus = |id: &str, summary: &str, parameters: Value| {
        json!({"get": {
            "operationId": id,
            "tags": ["System"],
            "summary": summary,
            "parameters": parameters,
            "responses": {"200": {
                "description": "Prometheus text exposition format 0.0.4",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }},
        }})
    };
    let path_parameter = |name: &str, description: &str| json!({"name": name, "in": "path", "required": true, "description": description, "schema": {"type": "string"}});
    [
        ("/health", operation("health", "Live services and their transports")),
        ("/health/live", operation("health_live", "Liveness: the gateway answers")),
        (
            "/health/ready",
            operation("health_ready", "Readiness: connected to NATS (503 otherwise)"),
        ),
        (
            "/metrics",
            prometheus("gateway_metrics", "The gateway's own metrics", json!([])),
        ),
        ("/system/routes", operation("system_routes", "The route table and its conflicts")),
        (
            "/system/status",
            operation(
                "system_status",
                "Every service and instance: plugins (ready or dead, and why), endpoints, subscriptions, and its tools' health as the instance reports it when asked (`tools`), or why it did not (`health_error`)",
            ),
        ),
        (
            "/system/events",
            operation(
                "system_events",
                "The event topology: who publishes and who subscribes to each event, with handled, retried and dead-lettered counts summed over live instances",
            ),
        ),
        (
            "/system/metrics/targets",
            json!({"get": {
                "operationId": "system_metrics_targets",
                "tags": ["System"],
                "summary": "Every live instance as a Prometheus HTTP service discovery target, scraped through this gateway",
                "responses": {"200": {
                    "description": "A Prometheus `http_sd_config` document (a bare list, not the envelope)",
                    "content": {"application/json": {"schema": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["targets", "labels"],
                            "properties": {
                                "targets": {"type": "array", "items": {"type": "string"}},
                                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                            },
                        },
                    }}},
                }},
            }}),
        ),
        (
            "/system/metrics/{service}/{instance}",
            prometheus(
                "system_instance_metrics",
                "One service instance's metrics, asked over its system endpoint",
                json!([
                    path_parameter("service", "The service name"),
                    path_parameter("instance", "The instance id, as `/system/status` lists it"),
                ]),
            ),
        ),
    ]
    .into_iter()
    .map(|(path, item)| (path.to_owned(), item))
    .collect()
}

#[cfg(test)]
mod tests {
    use shared_schemas::discovery::HttpEndpoint;

    use super::*;

    fn claim(service: &str, method: &str, path: &str, schema: Value) -> Claim {
        let mut schemas = Map::new();
        schemas.insert("Product".into(), schema);
        Claim {
            service: service.into(),
            subject: String::new(),
            endpoint: HttpEndpoint {
                method: method.into(),
                path: path.into(),
                timeout_ms: 1000,
                auth: false,
                operation: json!({"operationId": format!("{service}_{method}")}),
                schemas,
            },
        }
    }

    #[test]
    fn operations_are_placed_and_schema_clashes_reported() {
        let claims = [
            claim("products", "GET", "/products", json!({"type": "object"})),
            claim("products", "POST", "/products", json!({"type": "object"})),
            claim("legacy", "GET", "/old", json!({"type": "string"})),
        ];
        let (document, conflicts) = merge(&claims);
        assert_eq!(document["openapi"], "3.1.0");
        assert_eq!(
            document["paths"]["/products"]["get"]["operationId"],
            "products_GET"
        );
        assert_eq!(
            document["paths"]["/products"]["post"]["operationId"],
            "products_POST"
        );
        assert_eq!(
            document["components"]["schemas"]["Product"]["type"],
            "object"
        );
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].service, "legacy");
    }
}
