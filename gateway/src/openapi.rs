//! One OpenAPI 3.1 document merged from the operations live services
//! announce.
//!
//! Services ship their operations complete (operationId, tags, parameters,
//! bodies, responses referring to `#/components/schemas/…`), derived from
//! the plugin types, so the gateway only places each one under its path
//! and method and merges the component schemas. A schema name defined
//! differently by two claims keeps its first definition and the clash is
//! reported, instead of one side being picked silently.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value, json};

use crate::routes::{Claim, Conflict, ConflictKind, Owner};

/// The document for `claims` (the routes of live services, earlier claims
/// first), and the schema clashes found while merging.
pub fn merge<'a>(claims: impl IntoIterator<Item = &'a Claim>) -> (Value, Vec<Conflict>) {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    // Who defined each schema first.
    let mut definers: HashMap<String, Owner> = HashMap::new();
    let mut reported: HashSet<(String, String)> = HashSet::new();
    let mut conflicts = Vec::new();

    for claim in claims {
        let item = paths
            .entry(openapi_path(claim.path()))
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(item) = item {
            item.entry(claim.method.as_str().to_ascii_lowercase())
                .or_insert_with(|| claim.endpoint.operation.clone());
        }

        for (name, schema) in &claim.endpoint.schemas {
            let Some(existing) = schemas.get(name) else {
                schemas.insert(name.clone(), schema.clone());
                definers.insert(name.clone(), Owner::of(claim));
                continue;
            };
            if existing == schema || !reported.insert((claim.service.clone(), name.clone())) {
                continue;
            }
            let owner = definers.get(name).cloned();
            let first = owner.as_ref().map_or("another service", |o| &o.service);
            let reason = format!(
                "schema `{name}` differs from the one `{first}` defines; the document keeps the first"
            );
            let mut conflict = Conflict::new(ConflictKind::Schema, claim, owner, reason);
            conflict.schema = Some(name.clone());
            conflicts.push(conflict);
        }
    }

    let document = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "microcore",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every endpoint of every live service, served through the gateway.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    });
    (document, conflicts)
}

/// The OpenAPI form of a route template: a catch-all `{*rest}` is the
/// parameter `{rest}`, and escaped braces are plain.
fn openapi_path(template: &str) -> String {
    template
        .replace("{*", "{")
        .replace("{{", "{")
        .replace("}}", "}")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::routes::tests::endpoint;

    fn claim(service: &str, method: &str, path: &str, product: Value) -> Claim {
        let mut endpoint = endpoint(method, path);
        endpoint.operation = json!({
            "operationId": format!("{service}_{method}"),
            "responses": {"200": {"$ref": "#/components/schemas/Product"}},
        });
        endpoint.schemas.insert("Product".into(), product);
        Claim::new(service, &format!("mc.http.{service}.{method}"), endpoint).unwrap()
    }

    #[test]
    fn operations_go_under_their_path_and_lowercase_method() {
        let object = json!({"type": "object"});
        let claims = [
            claim("products", "GET", "/products", object.clone()),
            claim("products", "POST", "/products", object.clone()),
            claim("products", "GET", "/products/{id}", object.clone()),
            claim("files", "GET", "/files/{*path}", object),
        ];
        let (document, conflicts) = merge(&claims);
        assert!(conflicts.is_empty(), "{conflicts:?}");
        assert_eq!(document["openapi"], "3.1.0");
        assert_eq!(document["info"]["title"], "microcore");
        assert!(document["info"]["version"].is_string());
        let paths = &document["paths"];
        assert_eq!(paths["/products"]["get"]["operationId"], "products_GET");
        assert_eq!(paths["/products"]["post"]["operationId"], "products_POST");
        assert_eq!(
            paths["/products/{id}"]["get"]["operationId"],
            "products_GET"
        );
        assert_eq!(paths["/files/{path}"]["get"]["operationId"], "files_GET");
        assert_eq!(
            paths["/products"]["get"]["responses"]["200"]["$ref"],
            "#/components/schemas/Product"
        );
        assert_eq!(
            document["components"]["schemas"]["Product"]["type"],
            "object"
        );
    }

    #[test]
    fn a_clashing_schema_keeps_the_first_definition_and_is_reported_once() {
        let claims = [
            claim("products", "GET", "/products", json!({"type": "object"})),
            claim("legacy", "GET", "/old", json!({"type": "string"})),
            claim("legacy", "POST", "/old", json!({"type": "string"})),
            claim("mirror", "GET", "/mirror", json!({"type": "object"})),
        ];
        let (document, conflicts) = merge(&claims);
        assert_eq!(
            document["components"]["schemas"]["Product"]["type"],
            "object"
        );
        // The operation is still documented; only its schema lost.
        assert_eq!(
            document["paths"]["/old"]["get"]["operationId"],
            "legacy_GET"
        );

        let [conflict] = conflicts.as_slice() else {
            panic!("one conflict: {conflicts:?}");
        };
        assert_eq!(conflict.kind, ConflictKind::Schema);
        assert_eq!(conflict.service, "legacy");
        assert_eq!(conflict.schema.as_deref(), Some("Product"));
        assert_eq!(conflict.kept_by.as_ref().unwrap().service, "products");
    }

    #[test]
    fn no_services_is_an_empty_valid_document() {
        let (document, conflicts) = merge(&[]);
        assert!(conflicts.is_empty());
        assert_eq!(document["paths"], json!({}));
        assert_eq!(document["components"]["schemas"], json!({}));
    }
}
