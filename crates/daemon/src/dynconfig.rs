//! Where the schedulers are, and keeping that current.
//!
//! Daemons find schedulers the Kubernetes way: a `name:port` stands for every address behind
//! the name (a headless Service lists one per ready scheduler pod), and it is resolved again
//! every `dynconfig.refreshInterval`, so scaling the scheduler Deployment changes the ring
//! without restarting daemons. Dragonfly's local dynconfig file (`--dynconfig`, with
//! `scheduler.addrs` and `scheduler.addr`) is read again at each refresh too, so an edited
//! ConfigMap takes effect in place. Static `IP:port` lists never change.
//!
//! Unlike Dragonfly we do not health-check each scheduler on refresh: a headless Service
//! lists only ready pods, and a scheduler that is down is skipped per call by failover.

use crate::error::DaemonError;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Dragonfly's default local dynconfig file, read when nothing else names the schedulers.
pub const DEFAULT_DYNCONFIG_PATH: &str = "/etc/dragonfly/dynconfig.yaml";
/// Limit on one name lookup; a resolver that hangs must not hold the refresh loop.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// One scheduler entry: a socket address, or a DNS name with a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchedulerEndpoint {
    Addr(SocketAddr),
    Name { host: String, port: u16 },
}

impl FromStr for SchedulerEndpoint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Self::Addr(addr));
        }
        let without_scheme = text
            .strip_prefix("http://")
            .or_else(|| text.strip_prefix("grpc://"))
            .unwrap_or(text);
        let (host, port) = without_scheme
            .rsplit_once(':')
            .ok_or_else(|| format!("scheduler {text:?}: expected HOST:PORT or IP:PORT"))?;
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("scheduler {text:?}: bad port {port:?}"))?;
        let valid_name = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
        if !valid_name {
            return Err(format!("scheduler {text:?}: {host:?} is not a host name"));
        }
        Ok(Self::Name {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for SchedulerEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(addr) => write!(f, "{addr}"),
            Self::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl Serialize for SchedulerEndpoint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SchedulerEndpoint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl From<SocketAddr> for SchedulerEndpoint {
    fn from(addr: SocketAddr) -> Self {
        Self::Addr(addr)
    }
}

/// Dragonfly's local dynconfig file. `addrs` wins when it lists anything; Damselfly also
/// accepts names in it. Blocklists (`clientConfig`, `seedClientConfig`) are not implemented
/// and are reported as ignored keys.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct DynconfigFile {
    pub scheduler: DynconfigScheduler,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct DynconfigScheduler {
    pub addrs: Vec<SchedulerEndpoint>,
    pub addr: Option<SchedulerEndpoint>,
}

impl DynconfigFile {
    pub fn endpoints(&self) -> Vec<SchedulerEndpoint> {
        match (&self.scheduler.addrs[..], &self.scheduler.addr) {
            ([], Some(addr)) => vec![addr.clone()],
            (addrs, _) => addrs.to_vec(),
        }
    }
}

/// Where this daemon's scheduler list comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchedulerSource {
    /// No scheduler: every download goes to the origin.
    None,
    /// A list from the flags or dfdaemon.yaml.
    Endpoints(Vec<SchedulerEndpoint>),
    /// Dragonfly's local dynconfig file, read again at every refresh.
    File(PathBuf),
}

impl SchedulerSource {
    /// Whether a refresh can ever give another answer (a name or a file).
    pub fn is_dynamic(&self) -> bool {
        match self {
            Self::None => false,
            Self::Endpoints(endpoints) => endpoints
                .iter()
                .any(|e| matches!(e, SchedulerEndpoint::Name { .. })),
            Self::File(_) => true,
        }
    }

    /// The scheduler addresses now, sorted and without duplicates. Names that resolve to
    /// nothing are skipped with a warning; an error only when nothing is left of a non-empty
    /// list (the caller then keeps the list it had).
    pub async fn resolve(&self) -> Result<Vec<SocketAddr>, DaemonError> {
        let endpoints = match self {
            Self::None => return Ok(Vec::new()),
            Self::Endpoints(endpoints) => endpoints.clone(),
            Self::File(path) => read_file(path)?.endpoints(),
        };
        resolve_all(&endpoints).await
    }
}

/// Reads and parses a dynconfig file.
pub fn read_file(path: &std::path::Path) -> Result<DynconfigFile, DaemonError> {
    damselfly_configfile::load(path)
        .map(|parsed| parsed.config)
        .map_err(|e| DaemonError::Config(e.to_string()))
}

/// The ignored keys of a dynconfig file, for the startup warning.
pub fn ignored_keys(path: &std::path::Path) -> Result<Vec<String>, DaemonError> {
    damselfly_configfile::load::<DynconfigFile>(path)
        .map(|parsed| parsed.ignored)
        .map_err(|e| DaemonError::Config(e.to_string()))
}

async fn resolve_all(endpoints: &[SchedulerEndpoint]) -> Result<Vec<SocketAddr>, DaemonError> {
    let mut addrs = Vec::new();
    let mut failures = Vec::new();
    for endpoint in endpoints {
        match resolve_one(endpoint).await {
            Ok(found) => addrs.extend(found),
            Err(reason) => failures.push(format!("{endpoint}: {reason}")),
        }
    }
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() && !endpoints.is_empty() {
        return Err(DaemonError::NoScheduler(format!(
            "no scheduler address could be resolved ({})",
            failures.join("; ")
        )));
    }
    for failure in failures {
        tracing::warn!(%failure, "a scheduler name did not resolve; using the others");
    }
    Ok(addrs)
}

/// A name's addresses, IPv4 only when it has any (as Dragonfly: dual-stack names would
/// otherwise put each scheduler on the ring twice).
async fn resolve_one(endpoint: &SchedulerEndpoint) -> Result<Vec<SocketAddr>, String> {
    let (host, port) = match endpoint {
        SchedulerEndpoint::Addr(addr) => return Ok(vec![*addr]),
        SchedulerEndpoint::Name { host, port } => (host.as_str(), *port),
    };
    let lookup = tokio::net::lookup_host((host, port));
    let found: Vec<SocketAddr> = tokio::time::timeout(RESOLVE_TIMEOUT, lookup)
        .await
        .map_err(|_| format!("lookup timed out after {RESOLVE_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?
        .collect();
    let v4: Vec<SocketAddr> = found.iter().copied().filter(SocketAddr::is_ipv4).collect();
    let chosen = if v4.is_empty() { found } else { v4 };
    if chosen.is_empty() {
        return Err("no address".into());
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_addresses_and_names() {
        let addr: SchedulerEndpoint = "127.0.0.1:8002".parse().unwrap();
        assert_eq!(
            addr,
            SchedulerEndpoint::Addr("127.0.0.1:8002".parse().unwrap())
        );
        let v6: SchedulerEndpoint = "[::1]:8002".parse().unwrap();
        assert!(matches!(v6, SchedulerEndpoint::Addr(_)));
        let name: SchedulerEndpoint = "damselfly-scheduler.ns.svc.cluster.local:8002"
            .parse()
            .unwrap();
        assert_eq!(
            name,
            SchedulerEndpoint::Name {
                host: "damselfly-scheduler.ns.svc.cluster.local".into(),
                port: 8002
            }
        );
        assert_eq!(
            name.to_string(),
            "damselfly-scheduler.ns.svc.cluster.local:8002"
        );
        let with_scheme: SchedulerEndpoint = "http://sched:8002".parse().unwrap();
        assert_eq!(with_scheme.to_string(), "sched:8002");
        for bad in [
            "nohost",
            "host:",
            "host:99999",
            ":8002",
            "a b:8002",
            "x/y:1",
        ] {
            assert!(bad.parse::<SchedulerEndpoint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn dragonfly_dynconfig_files_parse() {
        let text = "scheduler:\n  addrs: ['10.0.0.1:8002', '10.0.0.2:8002']\n  addr: ignored:8002\nclientConfig:\n  blockList: {}\n";
        let parsed = damselfly_configfile::parse::<DynconfigFile>(text, "d.yaml").unwrap();
        assert_eq!(parsed.config.endpoints().len(), 2, "addrs wins");
        assert_eq!(parsed.ignored, ["clientConfig"]);
        let by_name = "scheduler:\n  addr: dragonfly-scheduler:8002\n";
        let parsed = damselfly_configfile::parse::<DynconfigFile>(by_name, "d.yaml").unwrap();
        assert_eq!(
            parsed.config.endpoints(),
            ["dragonfly-scheduler:8002".parse().unwrap()]
        );
        assert!(
            damselfly_configfile::parse::<DynconfigFile>("scheduler: {addrs: [x]}", "d").is_err()
        );
    }

    #[test]
    fn only_names_and_files_are_dynamic() {
        let fixed = SchedulerSource::Endpoints(vec!["127.0.0.1:1".parse().unwrap()]);
        assert!(!fixed.is_dynamic());
        let named = SchedulerSource::Endpoints(vec!["localhost:1".parse().unwrap()]);
        assert!(named.is_dynamic());
        assert!(SchedulerSource::File("/x".into()).is_dynamic());
        assert!(!SchedulerSource::None.is_dynamic());
    }

    #[tokio::test]
    async fn names_resolve_to_sorted_ipv4_addresses() {
        let source = SchedulerSource::Endpoints(vec![
            "127.0.0.9:8002".parse().unwrap(),
            "localhost:8002".parse().unwrap(),
            "127.0.0.9:8002".parse().unwrap(),
        ]);
        let addrs = source.resolve().await.unwrap();
        assert_eq!(
            addrs,
            [
                "127.0.0.1:8002".parse::<SocketAddr>().unwrap(),
                "127.0.0.9:8002".parse().unwrap()
            ]
        );
    }

    #[tokio::test]
    async fn a_file_is_read_again_at_each_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dynconfig.yaml");
        std::fs::write(&path, "scheduler:\n  addrs: ['127.0.0.2:8002']\n").unwrap();
        let source = SchedulerSource::File(path.clone());
        assert_eq!(
            source.resolve().await.unwrap(),
            ["127.0.0.2:8002".parse().unwrap()]
        );
        std::fs::write(&path, "scheduler:\n  addr: localhost:9002\n").unwrap();
        assert_eq!(
            source.resolve().await.unwrap(),
            ["127.0.0.1:9002".parse().unwrap()]
        );
        std::fs::write(&path, "scheduler: [").unwrap();
        assert!(
            source.resolve().await.is_err(),
            "a broken file keeps the old list"
        );
    }
}
