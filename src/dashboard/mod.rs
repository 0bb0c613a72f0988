//! The dashboard: one page (`GET /`) with its CSS and JS inlined, built into the binary (no build
//! step, no CDN). The page holds no data: its script reads the API (`/v1/node`, `/v1/egress`,
//! `/v1/fleet/nodes`) and follows `/v1/events`, asking for the API token on a 401.
//!
//! ```text
//!   index.html   the markup, with an empty <style></style> and <script></script>
//!   style.css    inlined into <style>      (phone width: one column, rows become cards)
//!   app.js       inlined into <script>     (fetch + a fetch-read SSE stream, canvas chart)
//! ```
//!
//! The page is served with a Content-Security-Policy that allows exactly its own inline style
//! and script (by SHA-256 hash) and connections to this origin: nothing else runs on it, and no
//! other site may frame it.

use std::sync::LazyLock;

use base64::Engine;
use sha2::{Digest, Sha256};

const HTML: &str = include_str!("index.html");
const CSS: &str = include_str!("style.css");
const JS: &str = include_str!("app.js");

/// The page and its Content-Security-Policy.
pub struct Page {
    pub html: String,
    pub csp: String,
}

/// `'sha256-<base64>'`: a CSP source that allows exactly this inline text.
fn csp_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

fn build() -> Page {
    let html = HTML
        .replacen("<style></style>", &format!("<style>{CSS}</style>"), 1)
        .replacen("<script></script>", &format!("<script>{JS}</script>"), 1);
    let csp = format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self' data: blob:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        csp_hash(JS),
        csp_hash(CSS)
    );
    Page { html, csp }
}

/// Built once, on first use.
pub static PAGE: LazyLock<Page> = LazyLock::new(build);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_inlines_its_assets_and_the_policy_allows_exactly_them() {
        let p = build();
        assert!(p.html.contains(&format!("<style>{CSS}</style>")));
        assert!(p.html.contains(&format!("<script>{JS}</script>")));
        assert!(!p.html.contains("<style></style>") && !p.html.contains("<script></script>"));
        assert!(
            !p.html.contains("http://") && !p.html.contains("https://"),
            "no CDN"
        );
        assert!(p.csp.contains(&csp_hash(JS)) && p.csp.contains(&csp_hash(CSS)));
        // A known vector: sha256("") in base64.
        assert_eq!(
            csp_hash(""),
            "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"
        );
    }
}
