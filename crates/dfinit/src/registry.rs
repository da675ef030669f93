//! The registries to mirror and the mirror itself, as given on the command line or in
//! dfinit.yaml.

use crate::error::DfinitError;
use url::Url;

/// Docker Hub's name in image references, and the API address Dragonfly's dfinit uses for it.
pub const DOCKER_HUB: &str = "docker.io";
pub const DOCKER_HUB_SERVER: &str = "https://index.docker.io";

/// A registry clients name (`docker.io`, `ghcr.io`, `127.0.0.1:5000`) and where it is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    pub host: String,
    pub server: Url,
}

impl Registry {
    /// `HOST` or `HOST=SERVER_URL` (HTTPS unless the URL says otherwise).
    pub fn parse(spec: &str) -> Result<Self, DfinitError> {
        let (host, server) = match spec.split_once('=') {
            Some((host, server)) => (host, Some(server)),
            None => (spec, None),
        };
        Self::new(host, server)
    }

    /// A registry named `host`, served at `server` or, without one, at Docker Hub's API
    /// address for `docker.io` and `https://HOST` for any other.
    pub fn new(host: &str, server: Option<&str>) -> Result<Self, DfinitError> {
        let host = host.trim();
        if host.is_empty() || host.contains('/') {
            return Err(DfinitError::InvalidArgument(format!(
                "registry {host:?}: expected HOST or HOST=URL, e.g. docker.io or 127.0.0.1:5000=http://127.0.0.1:5000"
            )));
        }
        let server = match server.map(str::trim).filter(|s| !s.is_empty()) {
            Some(server) => server.to_string(),
            None if host == DOCKER_HUB => DOCKER_HUB_SERVER.to_string(),
            None => format!("https://{host}"),
        };
        Ok(Self {
            host: host.to_string(),
            server: parse_http_url(&server)?,
        })
    }

    /// `scheme://host[:port]` of the server, as containerd and the mirror header want it.
    pub fn server_origin(&self) -> String {
        self.server.origin().ascii_serialization()
    }
}

/// An http(s) URL, or a clear error.
pub fn parse_http_url(text: &str) -> Result<Url, DfinitError> {
    let url = Url::parse(text)
        .map_err(|e| DfinitError::InvalidArgument(format!("invalid URL {text:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(DfinitError::InvalidArgument(format!(
            "{text:?} is not an http(s) URL"
        )));
    }
    Ok(url)
}

/// `host:port` of a mirror URL (registries.conf wants no scheme).
pub fn host_port(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port_or_known_default() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let hub = Registry::parse("docker.io").unwrap();
        assert_eq!(hub.server_origin(), "https://index.docker.io");
        let local = Registry::parse("127.0.0.1:5000=http://127.0.0.1:5000").unwrap();
        assert_eq!(local.host, "127.0.0.1:5000");
        assert_eq!(local.server_origin(), "http://127.0.0.1:5000");
        assert_eq!(
            Registry::parse("ghcr.io").unwrap().server_origin(),
            "https://ghcr.io"
        );
        assert!(Registry::parse("a/b").is_err());
        assert!(Registry::parse("x=ftp://x").is_err());
        let mirror = parse_http_url("http://127.0.0.1:4001").unwrap();
        assert_eq!(host_port(&mirror), "127.0.0.1:4001");
    }
}
