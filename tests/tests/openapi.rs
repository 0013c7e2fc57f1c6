//! The merged OpenAPI document and the docs page, as a client reads them:
//! the operations the live services registered, with the plugins' own field
//! names and types, the response envelopes, and an interactive page that
//! works without the internet.

use std::collections::BTreeSet;

use microcore_e2e::{Reply, System};
use reqwest::StatusCode;
use serde_json::Value;

async fn openapi(system: &System) -> Value {
    let reply = system.http().get("/openapi.json").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply}");
    reply.json()
}

/// Follows local references (`#/components/schemas/X`) to the schema.
fn resolve<'a>(doc: &'a Value, mut schema: &'a Value) -> &'a Value {
    for _ in 0..16 {
        let Some(reference) = schema["$ref"].as_str() else {
            return schema;
        };
        schema = pointer(doc, reference)
            .unwrap_or_else(|| panic!("dangling reference {reference} in the document"));
    }
    panic!("reference cycle at {schema}")
}

/// The node a local reference (`#/a/b`) points to.
fn pointer<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

/// True when `schema` admits JSON type `ty` (`"type": "x"` or
/// `"type": ["x", "null"]`).
fn has_type(schema: &Value, ty: &str) -> bool {
    match &schema["type"] {
        Value::String(t) => t == ty,
        Value::Array(types) => types.iter().any(|t| t == ty),
        _ => false,
    }
}

/// The JSON schema of a response or request body.
fn json_schema<'a>(doc: &'a Value, holder: &'a Value) -> &'a Value {
    let holder = resolve(doc, holder);
    let schema = &holder["content"]["application/json"]["schema"];
    assert!(!schema.is_null(), "no application/json schema in {holder}");
    resolve(doc, schema)
}

/// Asserts each named property of `schema` has the given JSON type.
#[track_caller]
fn assert_property_types(doc: &Value, schema: &Value, expected: &[(&str, &str)]) {
    let properties = &schema["properties"];
    for (name, kind) in expected {
        assert!(
            has_type(resolve(doc, &properties[*name]), kind),
            "`{name}` is {kind}: {schema}"
        );
    }
}

/// Asserts `schema` is a product: `id` integer, `name` string, `price`
/// number.
#[track_caller]
fn assert_product(doc: &Value, schema: &Value) {
    let schema = resolve(doc, schema);
    assert_property_types(
        doc,
        schema,
        &[("id", "integer"), ("name", "string"), ("price", "number")],
    );
}

/// Asserts a success response wraps `data` in the envelope, and returns
/// the `data` schema.
#[track_caller]
fn success_data<'a>(doc: &'a Value, response: &'a Value) -> &'a Value {
    let envelope = json_schema(doc, response);
    assert_property_types(doc, envelope, &[("success", "boolean"), ("error", "null")]);
    let data = &envelope["properties"]["data"];
    assert!(!data.is_null(), "{envelope}");
    resolve(doc, data)
}

/// Asserts an error response is the error envelope.
#[track_caller]
fn assert_error_envelope(doc: &Value, response: &Value) {
    let envelope = json_schema(doc, response);
    assert_property_types(
        doc,
        envelope,
        &[
            ("success", "boolean"),
            ("error", "string"),
            ("details", "array"),
        ],
    );
}

/// Every `$ref` anywhere in `node`.
fn references<'a>(node: &'a Value, found: &mut Vec<&'a str>) {
    match node {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get("$ref") {
                found.push(reference);
            }
            map.values().for_each(|v| references(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, found)),
        _ => {}
    }
}

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

#[tokio::test]
async fn the_document_is_openapi_3_1_with_exactly_the_live_operations() {
    let (system, _products) = System::with_products().await;
    let doc = openapi(&system).await;

    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1."), "openapi is {version:?}");
    assert!(doc["info"]["title"].is_string(), "{}", doc["info"]);
    assert!(doc["info"]["version"].is_string(), "{}", doc["info"]);

    let mut operations = BTreeSet::new();
    let mut operation_ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("`paths` is an object") {
        for (method, operation) in item.as_object().expect("a path item is an object") {
            if METHODS.contains(&method.as_str()) {
                operations.insert(format!("{method} {path}"));
                let id = operation["operationId"].as_str().unwrap_or_default();
                assert!(
                    operation_ids.insert(id.to_owned()),
                    "operationId {id:?} is not unique"
                );
            }
        }
    }
    let expected: BTreeSet<String> = [
        "get /health",
        "get /health/live",
        "get /health/ready",
        "get /metrics",
        "get /system/routes",
        "get /system/status",
        "get /system/events",
        "get /system/metrics/targets",
        "get /system/metrics/{service}/{instance}",
        "get /system/traces",
        "get /system/traces/flat",
        "get /system/events/stream",
        "get /system/logs/stream",
        "get /products",
        "get /products/{id}",
        "post /products",
        "put /products/{id}/stock",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(operations, expected);

    let mut found = Vec::new();
    references(&doc, &mut found);
    assert!(!found.is_empty(), "the schemas are shared as components");
    for reference in found {
        assert!(
            pointer(&doc, reference).is_some(),
            "dangling reference {reference}"
        );
    }
}

#[tokio::test]
async fn operations_carry_the_plugins_schemas_and_the_envelopes() {
    let (system, _products) = System::with_products().await;
    let doc = openapi(&system).await;
    let paths = &doc["paths"];

    let create = &paths["/products"]["post"];
    let body = json_schema(&doc, &create["requestBody"]);
    assert!(
        has_type(resolve(&doc, &body["properties"]["name"]), "string"),
        "{body}"
    );
    assert!(
        has_type(resolve(&doc, &body["properties"]["price"]), "number"),
        "{body}"
    );
    let required: BTreeSet<&str> = body["required"]
        .as_array()
        .unwrap_or_else(|| panic!("the body lists its required fields: {body}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(required, BTreeSet::from(["name", "price"]), "{body}");
    assert_product(&doc, success_data(&doc, &create["responses"]["201"]));

    let get = &paths["/products/{id}"]["get"];
    let id = get["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| resolve(&doc, p))
        .find(|p| p["name"] == "id")
        .unwrap_or_else(|| panic!("`id` is a parameter: {get}"));
    assert_eq!(id["in"], "path", "{id}");
    assert_eq!(id["required"], true, "{id}");
    assert!(has_type(resolve(&doc, &id["schema"]), "integer"), "{id}");
    assert_product(&doc, success_data(&doc, &get["responses"]["200"]));
    assert_error_envelope(&doc, &get["responses"]["404"]);

    let list = &paths["/products"]["get"];
    let query: BTreeSet<&str> = list["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| resolve(&doc, p))
        .filter(|p| p["in"] == "query")
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(query, BTreeSet::from(["limit", "offset"]), "{list}");
    let page = success_data(&doc, &list["responses"]["200"]);
    assert!(has_type(page, "array"), "{page}");
    assert_product(&doc, &page["items"]);

    for (name, operation) in [("create", create), ("get", get), ("list", list)] {
        for status in ["422", "500", "503", "504"] {
            let response = &operation["responses"][status];
            assert!(
                !response.is_null(),
                "{name} documents {status}: {operation}"
            );
            assert_error_envelope(&doc, response);
        }
    }
}

/// Values of `attribute="…"` (or `'…'`) in an HTML document.
fn attribute_values(html: &str, attribute: &str) -> Vec<String> {
    let mut values = Vec::new();
    for quote in ['"', '\''] {
        let needle = format!("{attribute}={quote}");
        let mut rest = html;
        while let Some(start) = rest.find(&needle) {
            rest = &rest[start + needle.len()..];
            if let Some(end) = rest.find(quote) {
                values.push(rest[..end].to_owned());
                rest = &rest[end..];
            }
        }
    }
    values
}

fn is_external(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    lower.starts_with("http:") || lower.starts_with("https:") || lower.starts_with("//")
}

#[tokio::test]
async fn the_docs_page_is_served_from_local_assets() {
    let (system, _products) = System::with_products().await;
    let page: Reply = system.http().get("/docs").await;
    assert_eq!(page.status, StatusCode::OK, "{page}");
    assert!(
        page.header("content-type")
            .is_some_and(|t| t.starts_with("text/html")),
        "{page:?}"
    );
    let html = page.text();
    assert!(html.to_ascii_lowercase().contains("swagger"), "{page}");

    let assets: Vec<String> = ["src", "href"]
        .iter()
        .flat_map(|a| attribute_values(&html, a))
        .filter(|url| !url.starts_with('#') && !url.starts_with("data:"))
        .collect();
    assert!(
        !assets.is_empty(),
        "the page loads scripts and styles: {page}"
    );
    let external: Vec<&String> = assets.iter().filter(|u| is_external(u)).collect();
    assert!(
        external.is_empty(),
        "the docs page loads {external:?} from elsewhere"
    );

    let base = reqwest::Url::parse(&page.url).expect("the final URL parses");
    let mut sources = vec![html.clone()];
    for asset in &assets {
        let url = base.join(asset).expect("a relative URL joins");
        let path = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        let reply = system.http().get(&path).await;
        assert_eq!(reply.status, StatusCode::OK, "asset {asset}: {reply}");
        sources.push(reply.text());
    }
    assert!(
        sources.iter().any(|s| s.contains("openapi.json")),
        "the page or its scripts point Swagger UI at the merged /openapi.json"
    );
}
