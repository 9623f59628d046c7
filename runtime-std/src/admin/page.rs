//! `GET /`: the status page, and `GET /v1/openapi.json`: the API's
//! description.
//!
//! The page holds no data, so it is served without the token; its script
//! asks for the token and reads everything through `/v1/`. Its files are
//! compiled into the binary, so there is nothing to install and nothing
//! fetched from elsewhere. The script and style are their own routes so
//! the Content-Security-Policy can forbid inline code: a value from the
//! API that slipped into the markup would not run.

use super::*;

const INDEX_HTML: &str = include_str!("page/index.html");
const STATUS_JS: &str = include_str!("page/status.js");
const STATUS_CSS: &str = include_str!("page/status.css");

/// The OpenAPI description, kept in docs/ where operators read it and
/// tested against this router by tests/tests/openapi.rs.
pub const OPENAPI_JSON: &str = include_str!("../../../docs/openapi.json");

/// Only this origin's own script, style and API; no frames, forms posted
/// elsewhere, or plugins.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            // A new binary's page must not be mixed with an old script.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub(super) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", STATUS_JS)
}

pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", STATUS_CSS)
}

pub(super) async fn openapi(_: Authorized) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}
