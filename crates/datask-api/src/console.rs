//! `GET /console`: the task history as one page (SPEC §7). The page holds no
//! data and needs no credential to load: it asks for a key and then speaks
//! to the REST API like any client. It is left out of the OpenAPI document,
//! which describes the API, not this page.

use std::sync::LazyLock;

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::AppState;

const PAGE: &str = include_str!("console/index.html");

pub fn router() -> Router<AppState> {
    Router::new().route("/console", get(page))
}

/// The text between the page's only `<tag>` and `</tag>`.
fn inline(tag: &str) -> &'static str {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = PAGE.find(&open).map(|i| i + open.len()).unwrap_or(0);
    let end = PAGE[start..].find(&close).map_or(start, |i| start + i);
    &PAGE[start..end]
}

fn sha256_source(text: &str) -> String {
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()))
    )
}

/// Only the page's own script and style may run, by hash, and it may talk
/// to this origin only: should task data ever reach the page as markup, it
/// could neither run script nor load anything.
static CSP: LazyLock<HeaderValue> = LazyLock::new(|| {
    let policy = format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        sha256_source(inline("script")),
        sha256_source(inline("style")),
    );
    HeaderValue::from_str(&policy).expect("the policy is ASCII")
});

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_SECURITY_POLICY, CSP.clone()),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                HeaderName::from_static("referrer-policy"),
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        Html(PAGE),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy's hashes are over the one script and the one style block;
    /// a second block, or attributes on the tags, would go unhashed and be
    /// refused by the browser.
    #[test]
    fn one_inline_script_and_style_covered_by_the_policy() {
        for tag in ["script", "style"] {
            assert_eq!(PAGE.matches(&format!("<{tag}")).count(), 1, "<{tag}");
            assert!(inline(tag).len() > 100, "{tag} is found");
        }
        let csp = CSP.to_str().unwrap();
        assert!(csp.contains(&sha256_source(inline("script"))), "{csp}");
        assert!(!csp.contains("unsafe-inline"));
    }

    /// Task data is user input: the page inserts it as text only.
    #[test]
    fn the_page_never_parses_markup() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!PAGE.contains(sink), "{sink} in console/index.html");
        }
        // A key belongs in the fragment or the header, never in a URL's query.
        assert!(!PAGE.contains("?key="));
    }
}
