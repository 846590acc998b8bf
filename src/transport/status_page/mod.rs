//! `GET /status-demo`: a small live status page served from the binary.
//!
//! A player logs in with a custom id (`fetch` to the authenticate endpoint),
//! opens the realtime socket with `status=true`, follows friends by username
//! or user id, and sees their online state and status text change live; it
//! can set or clear its own status. The script is the project's own (no
//! third-party code) and speaks the same JSON protocol as Nakama clients.
//! The assets are embedded with `include_str!`, so the page needs no files
//! at run time.

use bytes::Bytes;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};

use super::http::Body;

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const STYLE_CSS: &str = include_str!("style.css");

/// Same-origin everything: the page loads only its own script and style and
/// talks only to the server that served it (`'self'` covers `ws:`/`wss:` to it).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// The page's paths, for routing.
pub const PATHS: [&str; 4] = [
    "/status-demo",
    "/status-demo/",
    "/status-demo/app.js",
    "/status-demo/style.css",
];

/// The asset at `path`, or `None` when `path` is not one of [`PATHS`].
pub fn asset(path: &str) -> Option<Response<Body>> {
    let (body, content_type) = match path {
        "/status-demo" | "/status-demo/" => (INDEX_HTML, "text/html; charset=utf-8"),
        "/status-demo/app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "/status-demo/style.css" => (STYLE_CSS, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut response = Response::new(Body::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("content-security-policy", HeaderValue::from_static(CSP));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_serves_an_asset_and_others_do_not() {
        for path in PATHS {
            let response = asset(path).expect(path);
            assert_eq!(response.status(), StatusCode::OK);
            assert!(response.headers().contains_key(CONTENT_TYPE));
        }
        assert!(asset("/status-demo/other.js").is_none());
        assert!(asset("/status-demo-x").is_none());
    }

    #[test]
    fn the_page_loads_only_its_own_assets() {
        assert!(INDEX_HTML.contains("src=\"/status-demo/app.js\""));
        assert!(INDEX_HTML.contains("href=\"/status-demo/style.css\""));
        assert!(!INDEX_HTML.contains("http://") && !INDEX_HTML.contains("https://"));
        assert!(!APP_JS.contains("http://") && !APP_JS.contains("https://"));
    }
}
