//! The OpenAPI operation of one endpoint, derived from the plugin's own
//! request and response types, so documentation and behaviour cannot
//! drift. The gateway merges the operations of every live service into one
//! document.

use http::{Method, StatusCode};
use serde_json::{Map, Value, json};
use shared_schemas::FieldError;
use shared_schemas::auth::OPENAPI_SCHEME as BEARER_SCHEME;
use shared_schemas::envelope::success_schema;
use utoipa::ToSchema;

use super::path_params;

/// Component name of the error envelope.
const ERROR_RESPONSE: &str = "ErrorResponse";

pub(super) struct Operation<'a> {
    pub name: &'a str,
    pub method: &'a Method,
    pub path: &'a str,
    pub tags: &'a [String],
    pub summary: Option<&'a str>,
    pub description: Option<&'a str>,
    pub success: StatusCode,
    pub auth: bool,
}

impl Operation<'_> {
    /// The operation object and the component schemas it refers to.
    pub fn build<Req: ToSchema, Res: ToSchema>(&self) -> (Value, Map<String, Value>) {
        let mut components = Map::new();
        let request = named::<Req>(&mut components);
        let response = named::<Res>(&mut components);
        register::<FieldError>(&mut components);
        components.insert(ERROR_RESPONSE.into(), error_response());

        let request_schema = resolve(&request, &components);
        let properties = request_schema["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let required: Vec<&str> = request_schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();

        let in_path: Vec<&str> = path_params(self.path).collect();
        let mut parameters: Vec<Value> = in_path
            .iter()
            .map(|name| {
                let schema = properties
                    .get(*name)
                    .cloned()
                    .unwrap_or(json!({"type": "string"}));
                json!({"name": name, "in": "path", "required": true, "schema": schema})
            })
            .collect();
        let rest: Map<String, Value> = properties
            .into_iter()
            .filter(|(name, _)| !in_path.contains(&name.as_str()))
            .collect();

        let mut operation = json!({
            "operationId": self.name,
            "tags": self.tags,
            "responses": self.responses(response, !in_path.is_empty()),
        });
        let takes_body = !matches!(*self.method, Method::GET | Method::HEAD | Method::DELETE);
        if takes_body && !rest.is_empty() {
            let schema = if in_path.is_empty() {
                request
            } else {
                let required: Vec<&&str> =
                    required.iter().filter(|r| !in_path.contains(r)).collect();
                json!({"type": "object", "required": required, "properties": rest})
            };
            operation["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": schema}},
            });
        } else {
            parameters.extend(rest.into_iter().map(|(name, schema)| {
                json!({
                    "name": name,
                    "in": "query",
                    "required": required.contains(&name.as_str()),
                    "schema": schema,
                })
            }));
        }
        if !parameters.is_empty() {
            operation["parameters"] = Value::Array(parameters);
        }
        if self.auth {
            operation["security"] = json!([{ BEARER_SCHEME: [] }]);
        }
        if let Some(summary) = self.summary {
            operation["summary"] = summary.into();
        }
        if let Some(description) = self.description {
            operation["description"] = description.into();
        }
        (operation, components)
    }

    fn responses(&self, data: Value, has_path_params: bool) -> Value {
        let error = |description: &str| {
            json!({
                "description": description,
                "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{ERROR_RESPONSE}")}}},
            })
        };
        let mut responses = json!({
            self.success.as_str(): {
                "description": self.success.canonical_reason().unwrap_or("Success"),
                "content": {"application/json": {"schema": success_schema(data)}},
            },
            "400": error("Business failure"),
            "422": error("Invalid input: the offending fields are in `details`"),
            "500": error("Internal error (the cause is logged, never returned)"),
            "503": error("No live instance of the service"),
            "504": error("The handler did not answer in time"),
        });
        if has_path_params {
            responses["404"] = error("Not found");
        }
        if self.auth {
            responses["401"] = error("Missing, invalid or expired access token");
        }
        responses
    }
}

/// The schema of `T`: a `$ref` to a component for named object types, the
/// inline schema otherwise (arrays, primitives). Nested components are
/// collected into `components`.
fn named<T: ToSchema>(components: &mut Map<String, Value>) -> Value {
    let schema = serde_json::to_value(T::schema()).unwrap_or(Value::Null);
    let mut nested = Vec::new();
    T::schemas(&mut nested);
    for (name, schema) in nested {
        components.insert(name, serde_json::to_value(schema).unwrap_or(Value::Null));
    }
    if schema.get("properties").is_some() {
        let name = T::name().into_owned();
        components.insert(name.clone(), schema);
        json!({"$ref": format!("#/components/schemas/{name}")})
    } else {
        schema
    }
}

fn register<T: ToSchema>(components: &mut Map<String, Value>) {
    components.insert(
        T::name().into_owned(),
        serde_json::to_value(T::schema()).unwrap_or(Value::Null),
    );
}

/// Follows a local `$ref`.
fn resolve<'a>(schema: &'a Value, components: &'a Map<String, Value>) -> &'a Value {
    schema["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
        .and_then(|name| components.get(name))
        .unwrap_or(schema)
}

fn error_response() -> Value {
    json!({
        "type": "object",
        "description": "The standard envelope of a failed request.",
        "required": ["success", "data", "error"],
        "properties": {
            "success": {"type": "boolean", "const": false},
            "data": {"type": "null"},
            "error": {"type": "string"},
            "details": {"type": "array", "items": {"$ref": "#/components/schemas/FieldError"}},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(dead_code)]
    #[derive(ToSchema)]
    struct GetThing {
        id: i64,
        verbose: Option<bool>,
    }

    #[allow(dead_code)]
    #[derive(ToSchema)]
    struct Thing {
        id: i64,
        name: String,
    }

    fn op<'a>(method: &'a Method, path: &'a str) -> Operation<'a> {
        Operation {
            name: "op",
            method,
            path,
            tags: &[],
            summary: None,
            description: None,
            success: StatusCode::OK,
            auth: false,
        }
    }

    #[test]
    fn get_fields_become_path_and_query_parameters() {
        let (operation, components) = op(&Method::GET, "/things/{id}").build::<GetThing, Thing>();
        let params = operation["parameters"].as_array().unwrap();
        assert_eq!(params[0]["in"], "path");
        assert_eq!(params[0]["schema"]["type"], "integer");
        assert_eq!(params[1]["name"], "verbose");
        assert_eq!(params[1]["in"], "query");
        assert!(operation.get("requestBody").is_none());
        assert_eq!(
            operation["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["data"]
                ["$ref"],
            "#/components/schemas/Thing"
        );
        assert!(components.contains_key("Thing"));
        assert!(components.contains_key("ErrorResponse"));
        assert!(operation["responses"]["404"].is_object());
    }

    #[test]
    fn protected_operations_name_the_bearer_scheme_and_document_401() {
        let (public, _) = op(&Method::GET, "/things").build::<GetThing, Thing>();
        assert!(public.get("security").is_none());
        let protected = Operation {
            auth: true,
            ..op(&Method::GET, "/things")
        };
        let (operation, _) = protected.build::<GetThing, Thing>();
        assert_eq!(operation["security"][0][BEARER_SCHEME], json!([]));
        assert!(operation["responses"]["401"].is_object());
    }

    #[test]
    fn post_fields_become_the_body_and_lists_stay_inline() {
        let (operation, _) = op(&Method::POST, "/things").build::<Thing, Vec<Thing>>();
        assert_eq!(
            operation["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Thing"
        );
        let data = &operation["responses"]["200"]["content"]["application/json"]["schema"]["properties"]
            ["data"];
        assert_eq!(data["type"], "array");
    }
}
