//! Structured logs, as a log shipper reads them: one JSON object per line
//! (stderr is not a terminal), each with the service and its instance, and
//! inside a handler the plugin, the request id and the route.

use microcore_e2e::{System, wait};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn a_handler_logs_json_lines_with_its_service_instance_plugin_and_request() {
    let (system, mut products) = System::builder()
        .service_env("RUST_LOG", "info,microcore=debug")
        .with_products()
        .await;
    let http = system.http();
    let refused = http
        .send(
            http.request(Method::POST, "/products")
                .header("X-Request-ID", "log-line-1")
                .json(&json!({"name": "Lamp", "price": "cheap"})),
        )
        .await;
    refused.expect_error(StatusCode::UNPROCESSABLE_ENTITY);

    let log = products.process().log_path().to_owned();
    let line = system
        .wait_for("the handler's log line", wait::PROMPT, || {
            let log = log.clone();
            async move {
                let text = std::fs::read_to_string(&log).ok()?;
                text.lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .find(|l| l["message"] == "invalid input")
            }
        })
        .await;
    let spans = line["spans"].as_array().expect("the spans of the line");
    let span = |name: &str| {
        spans
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no {name} span in {line}"))
    };
    assert_eq!(span("service")["service"], "products", "{line}");
    assert_eq!(span("service")["instance"], products.id(), "{line}");
    assert_eq!(
        span("request")["plugin"],
        "products.create_product",
        "{line}"
    );
    assert_eq!(span("request")["request_id"], "log-line-1", "{line}");
    assert_eq!(span("request")["route"], "POST /products", "{line}");
    assert_eq!(line["level"], "DEBUG");
    assert!(line["timestamp"].is_string(), "{line}");

    let text = std::fs::read_to_string(&log).expect("the log");
    let unparsed: Vec<&str> = text
        .lines()
        .filter(|l| serde_json::from_str::<Value>(l).is_err())
        .collect();
    assert!(unparsed.is_empty(), "every line is JSON: {unparsed:?}");
}
