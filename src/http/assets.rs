//! The files the relay serves from its binary: the browser client, the OpenAPI document and
//! the demo page.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use base64::Engine;

/// The browser client module, served at `/v1/client.js`: the package's minified build of
/// clients/js/src, committed so that building the relay needs no Node (tests/suite/js_client.rs
/// checks it is what `npm run build` makes).
const CLIENT_JS: &str = include_str!("../../clients/js/dist/pgrelay-client.min.js");

/// The OpenAPI 3.1 document of this API, served at `/v1/openapi.json` (tests/suite/openapi.rs
/// checks the live server against it).
const OPENAPI_JSON: &str = include_str!("../../docs/openapi.json");

/// The demo chat page, served at `/` by `pgrelay demo` and `pgrelay serve --demo`.
const DEMO_HTML: &str = include_str!("../../static/demo.html");

/// `GET /v1/client.js`: the browser client, an ES module.
pub async fn client_js() -> Response {
    static_file("text/javascript; charset=utf-8", CLIENT_JS)
}

/// `GET /v1/openapi.json`: the machine-readable description of this API.
pub async fn openapi_json() -> Response {
    static_file("application/json", OPENAPI_JSON)
}

/// `GET /`: the demo chat page, with a Content-Security-Policy that lets it run its own inline
/// script and style (by hash) and load and call nothing but this origin.
pub async fn demo_page() -> Response {
    static DEMO_CSP: std::sync::LazyLock<HeaderValue> = std::sync::LazyLock::new(|| {
        let hash = |open: &str, close: &str| {
            let start = DEMO_HTML.find(open).expect("the demo page has the block") + open.len();
            let end = start + DEMO_HTML[start..].find(close).expect("the block ends");
            let digest = <sha2::Sha256 as sha2::Digest>::digest(&DEMO_HTML.as_bytes()[start..end]);
            format!(
                "'sha256-{}'",
                base64::engine::general_purpose::STANDARD.encode(digest)
            )
        };
        let policy = format!(
            "default-src 'none'; script-src 'self' {}; style-src {}; connect-src 'self'; \
             img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash("<script type=\"module\">", "</script>"),
            hash("<style>", "</style>"),
        );
        HeaderValue::from_str(&policy).expect("the policy is ASCII")
    });
    let mut response = static_file("text/html; charset=utf-8", DEMO_HTML);
    response
        .headers_mut()
        .insert(header::CONTENT_SECURITY_POLICY, DEMO_CSP.clone());
    response
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    (headers, body).into_response()
}
