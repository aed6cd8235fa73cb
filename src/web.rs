//! The browser pages the gateway serves itself: the chat page on every
//! WebSocket listener with `web = true`, and the operator console on the
//! admin listener (README: "In the browser").
//!
//! The files under `web/` are compiled into the binary: nothing is fetched
//! at run time and no build step is needed. Every answer carries a strict
//! `Content-Security-Policy` (scripts and styles only from the gateway, no
//! inline script), an `ETag` made from the file's bytes and
//! `Cache-Control: no-cache`, so a browser revalidates and gets `304` until
//! a new binary serves new files.

use std::sync::LazyLock;

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    /// File name, as requested under the page's directory.
    pub file: &'static str,
    /// `Content-Type` header value.
    pub content_type: &'static str,
    /// The bytes served.
    pub body: &'static [u8],
    /// Strong entity tag, quoted, from the bytes.
    etag: String,
}

impl Asset {
    fn new(file: &'static str, content_type: &'static str, body: &'static [u8]) -> Asset {
        Asset {
            file,
            content_type,
            body,
            etag: format!("\"{:016x}\"", fnv1a(body)),
        }
    }

    /// The entity tag, quoted.
    pub fn etag(&self) -> &str {
        &self.etag
    }

    /// True when an `If-None-Match` header value names this file's
    /// current bytes (or is `*`): the browser's copy is fresh, answer 304.
    pub fn is_fresh(&self, if_none_match: &[u8]) -> bool {
        let Ok(value) = std::str::from_utf8(if_none_match) else {
            return false;
        };
        value.split(',').map(str::trim).any(|tag| {
            // A weak comparison (RFC 9110 section 13.1.2): W/ is ignored.
            tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == self.etag
        })
    }
}

/// A page and the files it loads, with the policy they are served under.
#[derive(Debug)]
pub struct Site {
    /// The files; the first is the page itself (`index.html`).
    assets: Vec<Asset>,
    /// `Content-Security-Policy` header value.
    pub csp: &'static str,
}

impl Site {
    /// The file for a path relative to the page's directory: `""` and
    /// `index.html` are the page.
    pub fn find(&self, file: &str) -> Option<&Asset> {
        let file = if file.is_empty() { "index.html" } else { file };
        self.assets.iter().find(|a| a.file == file)
    }

    /// Every file, the page first.
    pub fn assets(&self) -> &[Asset] {
        &self.assets
    }

    /// The headers of a `200` or `304` answer for `asset` (without
    /// `Content-Length` and `Connection`, which the writer adds).
    pub fn headers<'a>(&'a self, asset: &'a Asset) -> [(&'static str, &'a str); 7] {
        [
            ("Content-Type", asset.content_type),
            ("ETag", asset.etag()),
            ("Cache-Control", "no-cache"),
            ("Content-Security-Policy", self.csp),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
            ("X-Frame-Options", "DENY"),
        ]
    }
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The chat page. It connects back to the listener it was loaded from, over
/// `ws:` or `wss:` as the page came, hence `ws: wss:` in `connect-src`
/// (`'self'` alone does not cover WebSocket schemes in every browser).
pub static CHAT: LazyLock<Site> = LazyLock::new(|| Site {
    assets: vec![
        Asset::new("index.html", HTML, include_bytes!("../web/chat/index.html")),
        Asset::new("chat.js", JS, include_bytes!("../web/chat/chat.js")),
        Asset::new("chat.css", CSS, include_bytes!("../web/chat/chat.css")),
    ],
    csp: "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self' ws: wss:; \
          img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
});

/// The operator console: it talks only to the API it was loaded from.
pub static CONSOLE: LazyLock<Site> = LazyLock::new(|| Site {
    assets: vec![
        Asset::new(
            "index.html",
            HTML,
            include_bytes!("../web/console/index.html"),
        ),
        Asset::new(
            "console.js",
            JS,
            include_bytes!("../web/console/console.js"),
        ),
        Asset::new(
            "console.css",
            CSS,
            include_bytes!("../web/console/console.css"),
        ),
    ],
    csp: "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
          img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
});

/// FNV-1a, 64 bits: enough to tell one build's file from another's.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_the_empty_path_and_index_html() {
        for site in [&*CHAT, &*CONSOLE] {
            let page = site.find("").map(|a| a.file);
            assert_eq!(page, Some("index.html"));
            assert_eq!(site.find("index.html").map(|a| a.file), page);
            assert!(site.find("../Cargo.toml").is_none());
            assert!(site.find("missing.js").is_none());
        }
    }

    #[test]
    fn pages_load_only_their_own_files_and_no_inline_script() {
        for site in [&*CHAT, &*CONSOLE] {
            let page = String::from_utf8_lossy(site.assets()[0].body);
            for asset in &site.assets()[1..] {
                assert!(page.contains(asset.file), "page loads {}", asset.file);
            }
            assert!(!page.contains("<script>"), "inline script");
            assert!(!page.contains(" style=\""), "inline style");
            assert!(!page.contains("http://") && !page.contains("https://"));
            assert!(site.csp.contains("script-src 'self';"));
        }
    }

    #[test]
    fn an_etag_names_the_bytes_and_matches_lists_and_weak_tags() {
        let a = Asset::new("a.js", JS, b"one");
        let b = Asset::new("a.js", JS, b"two");
        assert_ne!(a.etag(), b.etag());
        assert!(a.is_fresh(a.etag().as_bytes()));
        assert!(a.is_fresh(format!("\"x\", W/{}", a.etag()).as_bytes()));
        assert!(a.is_fresh(b"*"));
        assert!(!a.is_fresh(b.etag().as_bytes()));
        assert!(!a.is_fresh(b"\xff"));
    }
}
