//! The handler's view of its request beyond the data: who asked (request
//! id, verified identity, headers) and how to shape the answer (status,
//! headers, cookies).

use std::sync::{Arc, Mutex, MutexGuard};

pub use cookie::{Cookie, SameSite};
use http::header::{InvalidHeaderName, InvalidHeaderValue};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use shared_schemas::auth::Claims;

use super::HandlerError;

/// Handed to every handler. Cheap to clone; the kernel keeps a clone to
/// read back the status and headers the handler set.
#[derive(Clone, Debug)]
pub struct Context {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    request_id: String,
    user: Option<Claims>,
    /// As they came over the wire: the gateway's metadata too, which
    /// [`Context::header`] keeps from the handler.
    headers: HeaderMap,
    reply: Mutex<ReplyParts>,
}

/// What a handler set on its answer.
#[derive(Debug, Default, Clone)]
pub(crate) struct ReplyParts {
    pub status: Option<StatusCode>,
    pub headers: HeaderMap,
}

/// A header the handler tried to set is not valid HTTP.
#[derive(Debug, thiserror::Error)]
pub enum InvalidHeader {
    #[error(transparent)]
    Name(#[from] InvalidHeaderName),
    #[error(transparent)]
    Value(#[from] InvalidHeaderValue),
}

impl Context {
    pub(crate) fn new(request_id: String, user: Option<Claims>, headers: HeaderMap) -> Self {
        Self {
            inner: Arc::new(Inner {
                request_id,
                user,
                headers,
                reply: Mutex::default(),
            }),
        }
    }

    /// The request id: the gateway's `X-Request-ID`, the root of the causal
    /// chain of everything this request publishes.
    pub fn request_id(&self) -> &str {
        &self.inner.request_id
    }

    /// The verified identity of the caller: the claims of the access token
    /// the gateway checked. Only endpoints declared `.authenticated()` have
    /// one; elsewhere this is a 401, whatever the client sent.
    pub fn user(&self) -> Result<&Claims, HandlerError> {
        self.inner.user.as_ref().ok_or_else(|| {
            HandlerError::with_status(StatusCode::UNAUTHORIZED, "authentication required")
        })
    }

    /// A request header the client sent (hop-by-hop headers excluded).
    pub fn header(&self, name: &str) -> Option<&str> {
        if shared_schemas::http::is_reserved(name) {
            return None;
        }
        self.inner.headers.get(name)?.to_str().ok()
    }

    /// The status of the answer; wins over the default (200 on success,
    /// 400 on a business failure).
    pub fn set_status(&self, status: StatusCode) {
        self.reply().status = Some(status);
    }

    /// Sets a response header, replacing any earlier value.
    pub fn set_header(&self, name: &str, value: &str) -> Result<(), InvalidHeader> {
        let name = HeaderName::from_bytes(name.as_bytes())?;
        let value = HeaderValue::from_str(value)?;
        self.reply().headers.insert(name, value);
        Ok(())
    }

    /// Adds a `Set-Cookie`. Attributes left unset get secure defaults:
    /// `Path=/`, `Secure`, `HttpOnly`, `SameSite=Lax`.
    pub fn set_cookie(&self, mut cookie: Cookie<'_>) -> Result<(), InvalidHeader> {
        if cookie.path().is_none() {
            cookie.set_path("/");
        }
        if cookie.secure().is_none() {
            cookie.set_secure(true);
        }
        if cookie.http_only().is_none() {
            cookie.set_http_only(true);
        }
        if cookie.same_site().is_none() {
            cookie.set_same_site(SameSite::Lax);
        }
        let value = HeaderValue::from_str(&cookie.to_string())?;
        self.reply().headers.append(http::header::SET_COOKIE, value);
        Ok(())
    }

    /// Answers with a redirect to `location` (303 See Other unless a status
    /// was set).
    pub fn redirect(&self, location: &str) -> Result<(), InvalidHeader> {
        let value = HeaderValue::from_str(location)?;
        let mut reply = self.reply();
        reply.headers.insert(http::header::LOCATION, value);
        reply.status.get_or_insert(StatusCode::SEE_OTHER);
        Ok(())
    }

    pub(crate) fn take_reply(&self) -> ReplyParts {
        std::mem::take(&mut *self.reply())
    }

    fn reply(&self) -> MutexGuard<'_, ReplyParts> {
        // Poisoned only if a handler panicked mid-update; the parts are
        // still usable data.
        self.inner.reply.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_metadata_is_not_a_client_header() {
        let mut headers = HeaderMap::new();
        headers.insert("accept", http::HeaderValue::from_static("text/plain"));
        headers.insert("mc-auth", http::HeaderValue::from_static("claims"));
        let ctx = Context::new("r".into(), None, headers);
        assert_eq!(ctx.header("Accept"), Some("text/plain"));
        assert_eq!(ctx.header("Mc-Auth"), None);
        assert_eq!(ctx.header("mc-auth"), None);
    }

    #[test]
    fn cookies_get_secure_defaults_unless_set() {
        let ctx = Context::new("r".into(), None, HeaderMap::new());
        ctx.set_cookie(Cookie::new("session", "abc")).unwrap();
        let mut relaxed = Cookie::new("theme", "dark");
        relaxed.set_http_only(false);
        ctx.set_cookie(relaxed).unwrap();
        let reply = ctx.take_reply();
        let cookies: Vec<_> = reply
            .headers
            .get_all(http::header::SET_COOKIE)
            .iter()
            .collect();
        assert_eq!(
            cookies[0],
            "session=abc; HttpOnly; SameSite=Lax; Secure; Path=/"
        );
        assert!(!cookies[1].to_str().unwrap().contains("HttpOnly"));
    }
}
