//! An HTTP client for the gateway that answers with plain data.
//!
//! Tests assert on status, headers and body together; [`Reply`] holds all
//! three after the body has been read, and says what it was when a JSON
//! expectation fails, so an assertion message shows the actual answer.

use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};

/// Requests that take longer fail the test instead of hanging it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// A client bound to one base URL, with keep-alive connections.
#[derive(Debug, Clone)]
pub struct HttpClient {
    base: String,
    inner: reqwest::Client,
}

impl HttpClient {
    /// A client for `base`, e.g. `http://127.0.0.1:8080`.
    pub fn new(base: impl Into<String>) -> Self {
        let inner = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("an HTTP client without TLS always builds");
        Self {
            base: base.into(),
            inner,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request to customise (headers, body) and [`send`](Self::send).
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.inner.request(method, self.url(path))
    }

    /// Sends `request` and reads the whole reply.
    ///
    /// # Panics
    /// On a transport error (connection refused, timeout): the gateway is
    /// expected to answer every request, even with an error status.
    pub async fn send(&self, request: RequestBuilder) -> Reply {
        let description = request
            .try_clone()
            .and_then(|r| r.build().ok())
            .map(|r| format!("{} {}", r.method(), r.url()))
            .unwrap_or_else(|| "request".to_owned());
        self.try_send(request)
            .await
            .unwrap_or_else(|e| panic!("{description} failed: {e}"))
    }

    /// Like [`send`](Self::send), but returns transport errors.
    pub async fn try_send(&self, request: RequestBuilder) -> reqwest::Result<Reply> {
        let started = Instant::now();
        let response = request.send().await?;
        let status = response.status();
        let headers = response.headers().clone();
        let url = response.url().to_string();
        let body = response.bytes().await?.to_vec();
        Ok(Reply {
            status,
            headers,
            body,
            url,
            elapsed: started.elapsed(),
        })
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.request(Method::GET, path)).await
    }

    /// `POST` with a JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.send(self.request(Method::POST, path).json(body)).await
    }

    /// Registers `email` (named Ada) with `POST /users` and logs in with
    /// `POST /auth/login`, as a customer of the sample shop does.
    ///
    /// # Panics
    /// Unless both succeed.
    pub async fn sign_up(&self, email: &str, password: &str) -> Account {
        let user = self
            .post_json(
                "/users",
                &json!({"email": email, "password": password, "name": "Ada"}),
            )
            .await
            .expect_success(StatusCode::CREATED);
        let login = self
            .post_json(
                "/auth/login",
                &json!({"email": email, "password": password}),
            )
            .await
            .expect_success(StatusCode::OK);
        Account {
            id: user["id"].to_string(),
            token: login["access_token"]
                .as_str()
                .expect("an access token")
                .to_owned(),
        }
    }
}

/// A signed-up user: the id the shop gave it and its bearer token.
#[derive(Debug, Clone)]
pub struct Account {
    pub id: String,
    pub token: String,
}

/// A complete HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// The final URL (after redirects).
    pub url: String,
    /// From sending the request to the end of the body.
    pub elapsed: Duration,
}

impl Reply {
    /// The body as JSON.
    ///
    /// # Panics
    /// When it is not JSON, showing what it is.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("expected a JSON body ({e}), got {self}"))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body of an envelope, which is JSON and says so.
    #[track_caller]
    fn expect_envelope(&self) -> Value {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "an envelope is JSON: {self}"
        );
        self.json()
    }

    /// Asserts the status and the success envelope, and returns `data`.
    #[track_caller]
    pub fn expect_success(&self, status: StatusCode) -> Value {
        assert_eq!(self.status, status, "unexpected status: {self}");
        let body = self.expect_envelope();
        assert_eq!(body["success"], true, "not a success envelope: {self}");
        assert!(
            body.get("error").is_some_and(Value::is_null),
            "a success envelope has `error: null`: {self}"
        );
        body["data"].clone()
    }

    /// Asserts the status and the error envelope
    /// (`{"success": false, "data": null, "error": "<message>"}`), and
    /// returns the whole body.
    #[track_caller]
    pub fn expect_error(&self, status: StatusCode) -> Value {
        assert_eq!(self.status, status, "unexpected status: {self}");
        let body = self.expect_envelope();
        assert_eq!(body["success"], false, "not an error envelope: {self}");
        assert!(
            body.get("data").is_some_and(Value::is_null),
            "an error envelope has `data: null`: {self}"
        );
        assert!(
            body["error"].as_str().is_some_and(|e| !e.trim().is_empty()),
            "an error envelope carries a message: {self}"
        );
        body
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 2000;
        let text = self.text();
        let shown: String = text.chars().take(SHOWN).collect();
        let more = if text.chars().count() > SHOWN {
            "…"
        } else {
            ""
        };
        write!(f, "{} from {}: {shown}{more}", self.status, self.url)
    }
}
