//! Request ids. A client's `X-Request-ID` is honoured when it is one sane
//! value (visible ASCII, at most 200 characters), so a caller can follow
//! its own id through the logs; anything else is replaced by a fresh UUID,
//! so no client can put control characters or megabytes into every log
//! line. tower-http's layers then set the id on the request (the proxy
//! forwards it to the service) and echo it on every response, the
//! gateway's own errors included.

use http::{HeaderName, HeaderValue, Request};

/// The longest client id that is kept.
pub const MAX_LEN: usize = 200;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Removes the client's request id unless it is usable, so that the
/// request-id layer that follows makes a fresh one.
pub fn drop_unusable<B>(mut request: Request<B>) -> Request<B> {
    let mut ids = request.headers().get_all(X_REQUEST_ID).iter();
    let usable = match (ids.next(), ids.next()) {
        (None, _) => true,
        (Some(id), None) => is_usable(id),
        // Which of several would be the id is anyone's guess.
        (Some(_), Some(_)) => false,
    };
    if !usable {
        request.headers_mut().remove(X_REQUEST_ID);
    }
    request
}

fn is_usable(id: &HeaderValue) -> bool {
    !id.is_empty() && id.len() <= MAX_LEN && id.as_bytes().iter().all(u8::is_ascii_graphic)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(ids: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut request = Request::new(());
        for id in ids {
            request
                .headers_mut()
                .append(X_REQUEST_ID, HeaderValue::from_bytes(id).unwrap());
        }
        drop_unusable(request)
            .headers()
            .get_all(X_REQUEST_ID)
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect()
    }

    #[test]
    fn sane_ids_are_kept() {
        let longest = "a".repeat(MAX_LEN);
        for id in [
            "client-chosen-id-1",
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "a/b:c=d~!",
            &longest,
        ] {
            assert_eq!(kept(&[id.as_bytes()]), [id.as_bytes()], "{id}");
        }
        assert!(kept(&[]).is_empty());
    }

    #[test]
    fn other_ids_are_dropped_for_a_fresh_one() {
        let too_long = "a".repeat(MAX_LEN + 1);
        for id in [
            b"".as_slice(),
            b"with space",
            b"tab\there",
            "caf\u{e9}".as_bytes(),
            too_long.as_bytes(),
        ] {
            assert!(kept(&[id]).is_empty(), "{:?}", String::from_utf8_lossy(id));
        }
        assert!(kept(&[b"one", b"two"]).is_empty());
    }
}
