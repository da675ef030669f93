//! The `proxy` section of `dfdaemon.yaml`, with Dragonfly's keys (`proxy.server.port`,
//! `proxy.rules`, `proxy.registryMirror.addr`, ...) and a few Damselfly additions
//! (`registryMirror.registries`, `hijackHTTPS`).

use crate::error::DaemonError;
use bytesize::ByteSize;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

/// Proxy port, as Dragonfly's `proxy.server.port`.
pub const DEFAULT_PROXY_PORT: u16 = 4001;
/// The proxy is not an open proxy: it listens on loopback unless told otherwise.
pub const DEFAULT_PROXY_IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Requests per second before the proxy answers 429, as Dragonfly's
/// `proxy.server.requestRateLimit`.
pub const DEFAULT_PROXY_REQUEST_RATE_LIMIT: u64 = 4000;
/// Upstream of mirror requests that name no registry, as Dragonfly's `registryMirror.addr`.
pub const DEFAULT_REGISTRY_MIRROR_ADDR: &str = "https://index.docker.io";
/// The rule used when the config has none: OCI blobs go through the swarm, as Dragonfly's helm
/// chart default.
pub const DEFAULT_PROXY_RULE_REGEX: &str = "blobs/sha256.*";
/// A blob's task ID is its digest, so one layer from any mirror, registry or signed URL is one
/// task. Dragonfly's default is false; the digest names the content, so it is ours.
pub const DEFAULT_ENABLE_TASK_ID_BASED_BLOB_DIGEST: bool = true;

/// A Range request fetches only the pieces covering it; the rest of the blob is not
/// prefetched unless asked (Dragonfly's `proxy.prefetch` default).
pub const DEFAULT_PROXY_PREFETCH: bool = false;
/// Bandwidth of prefetch downloads, on top of the host's limits (Dragonfly's
/// `proxy.prefetchBandwidthLimit` default, 10 GB/s).
pub const DEFAULT_PREFETCH_BANDWIDTH_LIMIT: ByteSize = ByteSize::gb(10);
/// A cold range that no peer can serve sooner (its task was just sent to the origin) is read
/// from the origin directly while its pieces fill the cache: near a direct read's latency, at
/// the cost of the range's bytes once more at the origin. Not in Dragonfly.
pub const DEFAULT_PROXY_RANGE_HEDGE: bool = true;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct ProxyConfig {
    pub server: ProxyServerConfig,
    /// First match wins; empty = [`DEFAULT_PROXY_RULE_REGEX`].
    pub rules: Vec<ProxyRule>,
    pub registry_mirror: RegistryMirrorConfig,
    /// Never fetch from the origin for P2P requests (peers only).
    pub disable_back_to_source: bool,
    /// CONNECT targets whose TLS the proxy terminates (with the CA of `server.caCert/caKey`);
    /// every other CONNECT is tunnelled untouched.
    #[serde(rename = "hijackHTTPS", alias = "hijackHttps")]
    pub hijack_https: HijackHttpsConfig,
    /// After answering a Range request, fetch the whole blob in the background (a request's
    /// `X-Dragonfly-Prefetch: true|false` overrides it).
    pub prefetch: bool,
    /// Bytes per second for prefetching, on top of the download limits.
    #[serde(serialize_with = "crate::config::exact_bytes")]
    pub prefetch_bandwidth_limit: ByteSize,
    /// Answer a cold range from the origin directly when no peer can serve it sooner, while
    /// its pieces are fetched behind it (off: it waits for its pieces). Never with prefetch.
    pub range_hedge: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            server: ProxyServerConfig::default(),
            rules: Vec::new(),
            registry_mirror: RegistryMirrorConfig::default(),
            disable_back_to_source: false,
            hijack_https: HijackHttpsConfig::default(),
            prefetch: DEFAULT_PROXY_PREFETCH,
            prefetch_bandwidth_limit: DEFAULT_PREFETCH_BANDWIDTH_LIMIT,
            range_hedge: DEFAULT_PROXY_RANGE_HEDGE,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct ProxyServerConfig {
    /// Unset: the host IP when that is a loopback address (so daemons side by side on
    /// 127.0.0.x each get their own proxy), else [`DEFAULT_PROXY_IP`].
    pub ip: Option<IpAddr>,
    /// Unset: [`DEFAULT_PROXY_PORT`], and a busy port only disables the proxy with a warning
    /// (the daemon's other servers matter more to a dfget user); set: a busy port is fatal.
    pub port: Option<u16>,
    /// Requests per second; 0 = unlimited.
    pub request_rate_limit: Option<u64>,
    /// PEM CA certificate and key for TLS termination. If both are set and neither file
    /// exists, the daemon generates a CA there (`dfdaemon --print-ca-cert` prints it).
    pub ca_cert: Option<PathBuf>,
    pub ca_key: Option<PathBuf>,
    pub basic_auth: Option<BasicAuth>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct BasicAuth {
    pub username: String,
    pub password: String,
}

/// One `proxy.rules` entry.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct ProxyRule {
    /// Matched against the URL without its query and fragment.
    pub regex: String,
    /// Send matching plain-HTTP requests to the origin over HTTPS.
    #[serde(rename = "useTLS", alias = "useTls")]
    pub use_tls: bool,
    /// Replace the origin: a host (`host:port`) or a base URL (`https://host:port`).
    pub redirect: Option<String>,
    /// Query parameters left out of the task ID (default: Dragonfly's signed-URL list).
    pub filtered_query_params: Vec<String>,
    /// Match, but pass through instead of going P2P (Dragonfly 1.x `direct`).
    pub direct: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct RegistryMirrorConfig {
    /// Default upstream of mirror requests.
    pub addr: String,
    /// PEM file of the CA(s) that sign the upstream registry's certificate, trusted on top of
    /// the system store for requests through the proxy. Sent with each download (Dragonfly's
    /// `certificate_chain`), so the seed that fetches the blob trusts it too.
    pub cert: Option<PathBuf>,
    #[serde(
        rename = "enableTaskIDBasedBlobDigest",
        alias = "enableTaskIdBasedBlobDigest"
    )]
    pub enable_task_id_based_blob_digest: bool,
    /// Maps the registry a client names (containerd's `ns=`, `X-Dragonfly-Registry` without a
    /// scheme) to a scheme and host, as Dragonfly 0.x's `regx/schema/host` list.
    pub registries: Vec<RegistryMapping>,
}

impl Default for RegistryMirrorConfig {
    fn default() -> Self {
        Self {
            addr: DEFAULT_REGISTRY_MIRROR_ADDR.to_string(),
            cert: None,
            enable_task_id_based_blob_digest: DEFAULT_ENABLE_TASK_ID_BASED_BLOB_DIGEST,
            registries: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct RegistryMapping {
    pub regx: String,
    /// `http` or `https`.
    pub schema: String,
    pub host: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct HijackHttpsConfig {
    pub hosts: Vec<HijackHost>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct HijackHost {
    /// Matched against the CONNECT target `host:port`.
    pub regx: String,
    /// Accept any certificate from this origin (self-signed test registries).
    pub insecure: bool,
}

impl ProxyConfig {
    /// Where the proxy binds, given the host IP.
    pub fn addr(&self, host_ip: IpAddr) -> SocketAddr {
        let ip = self.server.ip.unwrap_or(if host_ip.is_loopback() {
            host_ip
        } else {
            DEFAULT_PROXY_IP
        });
        SocketAddr::new(ip, self.server.port.unwrap_or(DEFAULT_PROXY_PORT))
    }

    pub fn request_rate_limit(&self) -> u64 {
        self.server
            .request_rate_limit
            .unwrap_or(DEFAULT_PROXY_REQUEST_RATE_LIMIT)
    }

    /// Rules in effect: the configured ones, else the default blob rule.
    pub fn effective_rules(&self) -> Vec<ProxyRule> {
        if !self.rules.is_empty() {
            return self.rules.clone();
        }
        vec![ProxyRule {
            regex: DEFAULT_PROXY_RULE_REGEX.to_string(),
            ..Default::default()
        }]
    }

    /// Regexes and URLs are checked at start, so a typo fails the daemon, not a pull.
    pub fn validate(&self) -> Result<(), DaemonError> {
        for rule in &self.rules {
            check_regex("proxy.rules[].regex", &rule.regex)?;
        }
        for mapping in &self.registry_mirror.registries {
            check_regex("proxy.registryMirror.registries[].regx", &mapping.regx)?;
            if mapping.schema != "http" && mapping.schema != "https" {
                return Err(DaemonError::Config(format!(
                    "proxy.registryMirror.registries[].schema must be http or https, got {:?}",
                    mapping.schema
                )));
            }
        }
        for host in &self.hijack_https.hosts {
            check_regex("proxy.hijackHTTPS.hosts[].regx", &host.regx)?;
        }
        url::Url::parse(&self.registry_mirror.addr).map_err(|e| {
            DaemonError::Config(format!(
                "proxy.registryMirror.addr {:?}: {e}",
                self.registry_mirror.addr
            ))
        })?;
        if self.server.ca_cert.is_some() != self.server.ca_key.is_some() {
            return Err(DaemonError::Config(
                "proxy.server.caCert and proxy.server.caKey must be set together".into(),
            ));
        }
        Ok(())
    }
}

fn check_regex(key: &str, pattern: &str) -> Result<(), DaemonError> {
    regex::Regex::new(pattern)
        .map(|_| ())
        .map_err(|e| DaemonError::Config(format!("{key} {pattern:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_dragonfly_keys() {
        let c = ProxyConfig::default();
        assert_eq!(
            c.addr("10.1.2.3".parse().unwrap()),
            "127.0.0.1:4001".parse().unwrap()
        );
        assert_eq!(
            c.addr("127.0.0.7".parse().unwrap()),
            "127.0.0.7:4001".parse().unwrap()
        );
        assert_eq!(c.effective_rules()[0].regex, DEFAULT_PROXY_RULE_REGEX);
        assert_eq!(c.request_rate_limit(), 4000);
        assert!(c.registry_mirror.enable_task_id_based_blob_digest);

        let yaml = r#"
server: {port: 5001, requestRateLimit: 10, basicAuth: {username: u, password: p}}
rules:
  - regex: 'blobs/sha256.*'
    useTLS: true
    redirect: 127.0.0.1:5000
registryMirror:
  addr: http://127.0.0.1:5000
  cert: /etc/registry/ca.crt
  enableTaskIDBasedBlobDigest: false
  registries:
    - {regx: 'local\.test', schema: http, host: '127.0.0.1:5000'}
hijackHTTPS:
  hosts: [{regx: 'registry\.test:443', insecure: true}]
"#;
        let c: ProxyConfig = serde_yaml::from_str(yaml).unwrap();
        c.validate().unwrap();
        assert_eq!(c.server.port, Some(5001));
        assert_eq!(c.request_rate_limit(), 10);
        assert!(c.rules[0].use_tls);
        assert!(!c.registry_mirror.enable_task_id_based_blob_digest);
        assert_eq!(
            c.registry_mirror.cert.as_deref(),
            Some(std::path::Path::new("/etc/registry/ca.crt"))
        );
        assert_eq!(c.registry_mirror.registries[0].host, "127.0.0.1:5000");
        assert!(c.hijack_https.hosts[0].insecure);
    }

    #[test]
    fn bad_values_fail_at_start() {
        let c: ProxyConfig = serde_yaml::from_str("rules: [{regex: '('}]").unwrap();
        assert!(c.validate().is_err());
        let c: ProxyConfig =
            serde_yaml::from_str("registryMirror: {registries: [{regx: a, schema: ftp}]}").unwrap();
        assert!(c.validate().is_err());
        let c: ProxyConfig = serde_yaml::from_str("server: {caCert: /x}").unwrap();
        assert!(c.validate().is_err());
    }
}
