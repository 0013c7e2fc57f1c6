//! `/docs`: Swagger UI from assets vendored at build time (nothing is
//! fetched from the network), pointed at the merged `/openapi.json`.

use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::extract::Path;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use http::{StatusCode, header};
use utoipa_swagger_ui::Config;

use crate::envelope;

static CONFIG: LazyLock<Arc<Config<'static>>> =
    LazyLock::new(|| Arc::new(Config::from("/openapi.json")));

pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/docs", get(|| async { Redirect::permanent("/docs/") }))
        .route("/docs/", get(|| asset(String::new())))
        .route("/docs/{*file}", get(|Path(file): Path<String>| asset(file)))
}

async fn asset(file: String) -> Response {
    match utoipa_swagger_ui::serve(&file, CONFIG.clone()) {
        Ok(Some(file)) => {
            let mut response = (
                [(header::CONTENT_TYPE, file.content_type)],
                file.bytes.into_owned(),
            )
                .into_response();
            if file.gzpipped {
                response.headers_mut().insert(
                    header::CONTENT_ENCODING,
                    http::HeaderValue::from_static("gzip"),
                );
            }
            response
        }
        Ok(None) => envelope::error(StatusCode::NOT_FOUND, format!("no docs asset `{file}`")),
        Err(e) => {
            tracing::error!(error = %e, "could not serve a docs asset");
            envelope::error(StatusCode::INTERNAL_SERVER_ERROR, "internal server error")
        }
    }
}
