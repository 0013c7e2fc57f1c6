//! The merged document and the page that reads it: `/openapi.json`, and
//! Swagger UI at `/docs` from assets vendored at build time, so the page
//! works with no internet access.

use std::sync::{Arc, LazyLock};

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use http::{HeaderValue, StatusCode, header};
use utoipa_swagger_ui::Config;

use crate::AppState;
use crate::envelope;

/// Where the page finds the document.
const DOCUMENT: &str = "/openapi.json";

static CONFIG: LazyLock<Arc<Config<'static>>> = LazyLock::new(|| {
    Arc::new(
        Config::from(DOCUMENT)
            .try_it_out_enabled(true)
            .display_request_duration(true)
            .filter(true),
    )
});

/// `GET /openapi.json`: the document serialized when the routes last
/// changed.
pub async fn openapi(State(state): State<Arc<AppState>>) -> Response {
    let document = state.snapshot.load().openapi.clone();
    ([(header::CONTENT_TYPE, "application/json")], document).into_response()
}

/// `GET /docs`: the page's assets are relative to `/docs/`.
pub async fn redirect() -> Redirect {
    Redirect::permanent("/docs/")
}

/// `GET /docs/`.
pub async fn index() -> Response {
    asset("")
}

/// `GET /docs/{*file}`.
pub async fn file(Path(file): Path<String>) -> Response {
    asset(&file)
}

fn asset(file: &str) -> Response {
    match utoipa_swagger_ui::serve(file, CONFIG.clone()) {
        Ok(Some(asset)) => {
            let content_type = HeaderValue::try_from(asset.content_type)
                .unwrap_or(HeaderValue::from_static("application/octet-stream"));
            let mut response = asset.bytes.into_owned().into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, content_type);
            if asset.gzpipped {
                headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            response
        }
        Ok(None) => envelope::error(StatusCode::NOT_FOUND, format!("no docs file `{file}`")),
        Err(e) => {
            tracing::error!(error = %e, file, "could not serve a docs file");
            envelope::error(StatusCode::INTERNAL_SERVER_ERROR, "internal server error")
        }
    }
}
