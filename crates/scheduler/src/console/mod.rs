//! The console: one web page served by the scheduler on its `server.http` listener, with its
//! script and style built into the binary (no CDN, no build step, works offline), reading the
//! JSON API and following `GET /api/v1/events` for live updates.
//!
//! | route | what |
//! |---|---|
//! | `GET /`, `GET /console` | the page |
//! | `GET /console/console.js`, `GET /console/console.css` | its script and style |
//! | `GET /api/v1/console` | what the page needs to know first: whether changes are allowed |
//! | `GET /api/v1/events` | server-sent events: `change` (what changed), `resync` |
//!
//! The page shows hosts (seed or normal, address, CPU load, bytes in and out, cache disk),
//! tasks (size, peers, state, origin bytes saved), and for the selected task its flow:
//! parent → child edges with bytes, bytes from the origin, from seeds and from other peers,
//! and each peer's reason for going to the origin. It is read-only unless
//! `server.http.token` is set; then it shows preheat and remove buttons, which ask for the
//! token and send it as `Authorization: Bearer` (the token is never in the page).

pub mod events;
pub mod views;

pub use events::{Change, Events};

const INDEX_HTML: &str = include_str!("index.html");
const CONSOLE_JS: &str = include_str!("console.js");
const CONSOLE_CSS: &str = include_str!("console.css");

/// A built-in file: its content type and text.
pub fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "" | "/console" | "/console/index.html" => Some(("text/html; charset=utf-8", INDEX_HTML)),
        "/console/console.js" => Some(("text/javascript; charset=utf-8", CONSOLE_JS)),
        "/console/console.css" => Some(("text/css; charset=utf-8", CONSOLE_CSS)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_its_own_assets_only() {
        let (kind, html) = asset("").unwrap();
        assert!(kind.starts_with("text/html"));
        assert!(html.contains("/console/console.js") && html.contains("/console/console.css"));
        // Works offline: nothing loaded from another origin.
        assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));
        let (_, css) = asset("/console/console.css").unwrap();
        assert!(!css.contains("url("));
        let (_, js) = asset("/console/console.js").unwrap();
        assert!(!js.contains("fetch(\"http") && !js.contains("EventSource(\"http"));
        assert!(asset("/console/../Cargo.toml").is_none());
    }
}
