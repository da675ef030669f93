//! Where a proxied request goes (the upstream URL) and how (through the swarm or passed
//! through), from the request form, the mirror settings and the rules.

use super::config::{ProxyConfig, ProxyRule};
use crate::error::DaemonError;
use damselfly_core::id::default_filtered_query_params;
use http::request::Parts;
use http::Method;
use regex::Regex;
use url::Url;

/// Names the upstream registry of a mirror request (Dragonfly's header).
pub const REGISTRY_HEADER: &str = "x-dragonfly-registry";
/// `true` sends a GET through the swarm whatever the rules say.
pub const USE_P2P_HEADER: &str = "x-dragonfly-use-p2p";
/// containerd's mirror requests carry the upstream host in this query parameter.
const NAMESPACE_PARAM: &str = "ns";
/// Docker Hub's short name, as containerd sends it in `ns=`, and its API host.
const DOCKER_HUB_NAME: &str = "docker.io";
const DOCKER_HUB_API: &str = "https://registry-1.docker.io";

/// How a request is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Through the download engine (cached, shared, P2P).
    P2p {
        url: Url,
        filtered_query_params: Vec<String>,
    },
    /// Straight to the upstream, streamed both ways.
    Pass { url: Url },
}

impl Route {
    #[cfg(test)]
    pub fn url(&self) -> &Url {
        match self {
            Route::P2p { url, .. } | Route::Pass { url } => url,
        }
    }
}

/// A request the proxy cannot place: answered 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadTarget(pub String);

struct CompiledRule {
    regex: Regex,
    rule: ProxyRule,
}

struct RegistryMap {
    regex: Regex,
    base: String,
}

pub struct Router {
    rules: Vec<CompiledRule>,
    registries: Vec<RegistryMap>,
    default_upstream: Url,
}

impl Router {
    pub fn new(config: &ProxyConfig) -> Result<Self, DaemonError> {
        let compile = |pattern: &str| {
            Regex::new(pattern).map_err(|e| DaemonError::Config(format!("regex {pattern:?}: {e}")))
        };
        let rules = config
            .effective_rules()
            .into_iter()
            .map(|rule| {
                Ok(CompiledRule {
                    regex: compile(&rule.regex)?,
                    rule,
                })
            })
            .collect::<Result<_, DaemonError>>()?;
        let registries = config
            .registry_mirror
            .registries
            .iter()
            .map(|m| {
                Ok(RegistryMap {
                    regex: compile(&m.regx)?,
                    base: format!("{}://{}", m.schema, m.host),
                })
            })
            .collect::<Result<_, DaemonError>>()?;
        let default_upstream = Url::parse(&config.registry_mirror.addr)
            .map_err(|e| DaemonError::Config(format!("proxy.registryMirror.addr: {e}")))?;
        Ok(Self {
            rules,
            registries,
            default_upstream,
        })
    }

    /// Routes a request. `tls_authority` is the CONNECT target of a terminated TLS tunnel.
    pub fn route(&self, parts: &Parts, tls_authority: Option<&str>) -> Result<Route, BadTarget> {
        let mut url = self.target(parts, tls_authority)?;
        let rule = self.matching_rule(&url);
        if let Some(rule) = rule {
            rewrite(&mut url, rule)?;
        }
        let forced = header_is_true(parts, USE_P2P_HEADER);
        let p2p_rule = rule.filter(|r| !r.direct);
        if parts.method != Method::GET || (p2p_rule.is_none() && !forced) {
            return Ok(Route::Pass { url });
        }
        let filtered_query_params = p2p_rule
            .map(|r| r.filtered_query_params.clone())
            .filter(|f| !f.is_empty())
            .unwrap_or_else(default_filtered_query_params);
        Ok(Route::P2p {
            url,
            filtered_query_params,
        })
    }

    /// The absolute upstream URL of a request.
    fn target(&self, parts: &Parts, tls_authority: Option<&str>) -> Result<Url, BadTarget> {
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let text = match (tls_authority, parts.uri.scheme_str()) {
            (Some(authority), _) => format!("https://{authority}{path}"),
            // Absolute-form: a forward-proxy request.
            (None, Some(_)) => parts.uri.to_string(),
            // Origin-form: a registry-mirror request.
            (None, None) => format!("{}{path}", self.mirror_base(parts)?),
        };
        let url = Url::parse(&text).map_err(|e| BadTarget(format!("invalid URL {text:?}: {e}")))?;
        match url.scheme() {
            "http" | "https" if url.host().is_some() => Ok(url),
            _ => Err(BadTarget(format!(
                "cannot proxy {text:?}: need an http(s) URL"
            ))),
        }
    }

    /// `scheme://host[:port]` of a mirror request's upstream: the header, else `ns=`, else
    /// the configured default.
    fn mirror_base(&self, parts: &Parts) -> Result<String, BadTarget> {
        if let Some(value) = parts.headers.get(REGISTRY_HEADER) {
            let name = value
                .to_str()
                .map_err(|_| BadTarget(format!("{REGISTRY_HEADER} is not text")))?;
            return Ok(self.registry_base(name.trim()));
        }
        let namespace = parts.uri.query().and_then(|query| {
            url::form_urlencoded::parse(query.as_bytes())
                .find(|(key, _)| key == NAMESPACE_PARAM)
                .map(|(_, value)| value.into_owned())
        });
        match namespace.filter(|n| !n.is_empty()) {
            Some(name) => Ok(self.registry_base(&name)),
            None => Ok(origin_of(&self.default_upstream)),
        }
    }

    /// A registry named by URL or by host: mapped, Docker Hub, the default, else HTTPS.
    fn registry_base(&self, name: &str) -> String {
        if name.contains("://") {
            if let Ok(url) = Url::parse(name) {
                return origin_of(&url);
            }
        }
        if let Some(map) = self.registries.iter().find(|m| m.regex.is_match(name)) {
            return map.base.clone();
        }
        if name == DOCKER_HUB_NAME {
            return DOCKER_HUB_API.to_string();
        }
        let default = origin_of(&self.default_upstream);
        if self.default_upstream.host_str().is_some_and(|host| {
            let with_port = match self.default_upstream.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_string(),
            };
            with_port == name
        }) {
            return default;
        }
        format!("https://{name}")
    }

    fn matching_rule(&self, url: &Url) -> Option<&ProxyRule> {
        let mut bare = url.clone();
        bare.set_query(None);
        bare.set_fragment(None);
        self.rules
            .iter()
            .find(|r| r.regex.is_match(bare.as_str()))
            .map(|r| &r.rule)
    }
}

/// `scheme://host[:port]`, without a trailing slash.
fn origin_of(url: &Url) -> String {
    url.origin().ascii_serialization()
}

fn header_is_true(parts: &Parts, name: &str) -> bool {
    parts
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// Applies a rule's `useTLS` and `redirect`.
fn rewrite(url: &mut Url, rule: &ProxyRule) -> Result<(), BadTarget> {
    if rule.use_tls && url.scheme() == "http" {
        url.set_scheme("https")
            .map_err(|_| BadTarget(format!("cannot switch {url} to https")))?;
        if url.port() == Some(80) {
            let _ = url.set_port(None);
        }
    }
    let Some(redirect) = rule.redirect.as_deref().filter(|r| !r.is_empty()) else {
        return Ok(());
    };
    let base = if redirect.contains("://") {
        redirect.to_string()
    } else {
        format!("{}://{redirect}", url.scheme())
    };
    let base =
        Url::parse(&base).map_err(|e| BadTarget(format!("bad redirect {redirect:?}: {e}")))?;
    let mut moved = base.clone();
    moved.set_path(url.path());
    moved.set_query(url.query());
    *url = moved;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: Method, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn router(yaml: &str) -> Router {
        let config: ProxyConfig = serde_yaml::from_str(yaml).unwrap();
        Router::new(&config).unwrap()
    }

    const BLOB: &str =
        "/v2/lib/img/blobs/sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn mirror_upstream_from_header_ns_or_default() {
        let r = router(
            "registryMirror: {addr: 'http://127.0.0.1:5000', registries: [{regx: 'local\\.test', schema: http, host: '127.0.0.1:6000'}]}",
        );
        let route = r.route(&parts(Method::GET, BLOB, &[]), None).unwrap();
        assert!(matches!(route, Route::P2p { .. }));
        assert_eq!(route.url().as_str(), format!("http://127.0.0.1:5000{BLOB}"));

        let manifest = "/v2/lib/img/manifests/latest?ns=local.test";
        let route = r.route(&parts(Method::GET, manifest, &[]), None).unwrap();
        assert_eq!(
            route,
            Route::Pass {
                url: Url::parse(&format!("http://127.0.0.1:6000{manifest}")).unwrap()
            }
        );
        let route = r
            .route(
                &parts(
                    Method::HEAD,
                    BLOB,
                    &[(REGISTRY_HEADER, "https://reg.example:8443")],
                ),
                None,
            )
            .unwrap();
        assert_eq!(
            route.url().as_str(),
            format!("https://reg.example:8443{BLOB}")
        );
        assert!(matches!(route, Route::Pass { .. }), "HEAD passes through");
        let hub = r
            .route(&parts(Method::GET, "/v2/?ns=docker.io", &[]), None)
            .unwrap();
        assert_eq!(hub.url().host_str(), Some("registry-1.docker.io"));
        let other = r
            .route(&parts(Method::GET, "/v2/?ns=quay.io", &[]), None)
            .unwrap();
        assert_eq!(other.url().as_str(), "https://quay.io/v2/?ns=quay.io");
    }

    #[test]
    fn forward_proxy_tls_and_rules() {
        let r = router(
            "rules: [{regex: 'files/.*', useTLS: true}, {regex: 'moved/.*', redirect: '127.0.0.1:9'}, {regex: 'plain/.*', direct: true}]",
        );
        let route = r
            .route(&parts(Method::GET, "http://h.test/files/a?x=1", &[]), None)
            .unwrap();
        assert!(matches!(route, Route::P2p { .. }));
        assert_eq!(route.url().as_str(), "https://h.test/files/a?x=1");
        let route = r
            .route(&parts(Method::GET, "http://h.test/moved/b", &[]), None)
            .unwrap();
        assert_eq!(route.url().as_str(), "http://127.0.0.1:9/moved/b");
        let route = r
            .route(&parts(Method::GET, "http://h.test/plain/c", &[]), None)
            .unwrap();
        assert!(matches!(route, Route::Pass { .. }));
        let forced = r
            .route(
                &parts(
                    Method::GET,
                    "http://h.test/other",
                    &[(USE_P2P_HEADER, "true")],
                ),
                None,
            )
            .unwrap();
        assert!(matches!(forced, Route::P2p { .. }));
        let inner = r
            .route(&parts(Method::GET, "/files/z", &[]), Some("reg.test:443"))
            .unwrap();
        assert_eq!(inner.url().as_str(), "https://reg.test/files/z");
    }

    #[test]
    fn default_rule_is_blobs_only() {
        let r = router("");
        let manifest = r
            .route(
                &parts(Method::GET, "http://h/v2/a/manifests/latest", &[]),
                None,
            )
            .unwrap();
        assert!(matches!(manifest, Route::Pass { .. }));
        let blob = r
            .route(&parts(Method::GET, &format!("http://h{BLOB}"), &[]), None)
            .unwrap();
        assert!(matches!(blob, Route::P2p { .. }));
        assert!(r
            .route(&parts(Method::GET, "ftp://h/x", &[]), None)
            .is_err());
    }
}
