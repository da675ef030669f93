//! Scheduler configuration: a YAML file using Dragonfly's scheduler keys (camelCase) where they
//! mean the same thing. Every default is a named constant so the documentation and the code
//! cannot drift apart. Unknown keys (manager, redis, …) are ignored so a Dragonfly
//! `scheduler.yaml` can be reused as is.
//!
//! ```yaml
//! server:
//!   listenIP: 0.0.0.0        # or `listen: 0.0.0.0:8002`, which wins
//!   port: 8002
//!   http:                    # the JSON API (preheat jobs, hosts, tasks)
//!     enable: true
//!     addr: ":8080"          # listen IP implied; `none` disables
//!     token: ""              # unset: read-only; set: POST needs `Bearer <token>`
//! scheduler:
//!   algorithm: default
//!   backToSourceCount: 200
//!   retryBackToSourceLimit: 4
//!   retryLimit: 5
//!   retryInterval: 500ms
//!   candidateParentLimit: 3
//!   filterParentLimit: 15
//!   parentGraph: mesh        # or `dag`, Dragonfly's rule (no cycles, no pushed parents)
//!   meshParentLimit: 8
//!   seedPeerWaitTimeout: 10s
//!   gc:
//!     peerGCInterval: 10s
//!     peerTTL: 24h
//!     taskGCInterval: 30m
//!     hostGCInterval: 5m
//!     hostTTL: 1h
//! seedPeer:
//!   enable: true
//!   taskDownloadTimeout: 10h
//! metrics:
//!   enable: true
//!   addr: ":8000"            # listen IP implied; `none` disables
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::SchedulerError;
use damselfly_tls::TlsKeys;

/// Default gRPC listen IP (Dragonfly `server.listenIP`).
pub const DEFAULT_LISTEN_IP: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
/// Default gRPC port (Dragonfly `server.port`).
pub const DEFAULT_PORT: u16 = 8002;
/// Default metrics port; the metrics server binds the listen IP with this port.
pub const DEFAULT_METRICS_PORT: u16 = 8000;
/// Only one evaluator exists; the key is kept for Dragonfly config compatibility.
pub const DEFAULT_ALGORITHM: &str = "default";
/// Back-to-source peers allowed per task (Dragonfly `scheduler.backToSourceCount`).
pub const DEFAULT_BACK_TO_SOURCE_COUNT: u32 = 200;
/// Failed scheduling rounds after which a peer is sent to the origin.
pub const DEFAULT_RETRY_BACK_TO_SOURCE_LIMIT: u32 = 4;
/// Failed scheduling rounds after which scheduling fails with `FailedPrecondition`.
pub const DEFAULT_RETRY_LIMIT: u32 = 5;
/// Pause between scheduling rounds (jittered), so a waiting peer does not spin.
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_millis(500);
/// Parents sent in one `NormalTaskResponse` (Dragonfly `candidateParentLimit`).
pub const DEFAULT_CANDIDATE_PARENT_LIMIT: usize = 3;
/// Eligible parents sampled before scoring (Dragonfly `filterParentLimit`).
pub const DEFAULT_FILTER_PARENT_LIMIT: usize = 15;
/// How long peers wait for a triggered seed peer before going to the origin themselves.
pub const DEFAULT_SEED_PEER_WAIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Peer GC sweep interval (Dragonfly `gc.peerGCInterval`).
pub const DEFAULT_PEER_GC_INTERVAL: Duration = Duration::from_secs(10);
/// Peers not updated for this long are removed (Dragonfly `gc.peerTTL`).
pub const DEFAULT_PEER_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Task GC sweep interval (Dragonfly `gc.taskGCInterval`): tasks without peers are removed.
pub const DEFAULT_TASK_GC_INTERVAL: Duration = Duration::from_secs(30 * 60);
/// Host GC sweep interval (Dragonfly `gc.hostGCInterval`).
pub const DEFAULT_HOST_GC_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// Hosts that have not announced for this long are removed with their peers (`gc.hostTTL`).
pub const DEFAULT_HOST_TTL: Duration = Duration::from_secs(60 * 60);
/// Seed peers are triggered by default when a seed host is announced.
pub const DEFAULT_SEED_PEER_ENABLE: bool = true;
/// Upper bound on one triggered seed download (Dragonfly `seedPeer.taskDownloadTimeout`).
pub const DEFAULT_SEED_TASK_DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(10 * 60 * 60);
/// The JSON HTTP API is served by `dfscheduler` unless disabled.
pub const DEFAULT_HTTP_ENABLE: bool = true;
/// Default JSON API port; Dragonfly's manager serves its REST API (jobs) on the same port.
pub const DEFAULT_HTTP_PORT: u16 = 8080;
/// Metrics are served by `dfscheduler` unless disabled.
pub const DEFAULT_METRICS_ENABLE: bool = true;

/// The whole scheduler configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct SchedulerConfig {
    pub server: ServerConfig,
    pub scheduler: SchedulingConfig,
    pub seed_peer: SeedPeerConfig,
    pub metrics: MetricsConfig,
}

/// `server:` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct ServerConfig {
    /// Full listen address; when set it wins over `listenIP` + `port`.
    pub listen: Option<SocketAddr>,
    #[serde(rename = "listenIP")]
    pub listen_ip: IpAddr,
    pub port: u16,
    /// `server.tls.{caCert, cert, key}`: mTLS on the gRPC server (Dragonfly's keys). All three
    /// set: every client must present a certificate signed by `caCert`, and announces are
    /// checked against it. None set (the default): plain text, as in Dragonfly.
    pub tls: TlsKeys,
    /// `server.http`: the JSON API (Damselfly's; Dragonfly has it on the manager).
    pub http: HttpConfig,
}

/// `server.http:` section. `addr` takes the same forms as `metrics.addr`.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpConfig {
    pub enable: bool,
    pub addr: Option<String>,
    /// Bearer token for the routes that change something; unset: the API is read-only.
    pub token: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enable: DEFAULT_HTTP_ENABLE,
            addr: None,
            token: None,
        }
    }
}

impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConfig")
            .field("enable", &self.enable)
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: None,
            listen_ip: DEFAULT_LISTEN_IP,
            port: DEFAULT_PORT,
            tls: TlsKeys::default(),
            http: HttpConfig::default(),
        }
    }
}

/// How peers of a task may feed each other.
///
/// Dragonfly keeps a DAG: a peer never downloads from its own descendants, so a piece that
/// reached a peer deep in the graph cannot flow back up, and the first peers carry the whole
/// task to everyone else. In a mesh, peers that download together feed each other: a new peer
/// gets up to `candidateParentLimit` parents as in Dragonfly, becomes a parent of those parents
/// in turn (pushed to them as an extra `NormalTaskResponse` when their daemon says it takes
/// pushes), and every peer also gets the task's seed peer, which hands out distinct pieces.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ParentGraph {
    #[default]
    Mesh,
    Dag,
}

/// Default parent graph: a mesh (see [`ParentGraph`]).
pub const DEFAULT_PARENT_GRAPH: ParentGraph = ParentGraph::Mesh;
/// In a mesh, the most normal parents a peer collects, its own candidates and the peers that
/// chose it together; past this it is not pushed more. Eight keep a swarm of a few dozen
/// peers two hops wide while a daemon follows about eight normal parents' `SyncPieces`
/// streams per task (plus the seed's; a round keeps the streams of parents the scheduler
/// has since released).
pub const DEFAULT_MESH_PARENT_LIMIT: usize = 8;

/// `scheduler:` section (candidate/filter parent limits live in Dragonfly's dynconfig; here
/// they are plain keys of this section).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct SchedulingConfig {
    pub algorithm: String,
    pub back_to_source_count: u32,
    pub retry_back_to_source_limit: u32,
    pub retry_limit: u32,
    #[serde(with = "humantime_serde")]
    pub retry_interval: Duration,
    pub candidate_parent_limit: usize,
    pub filter_parent_limit: usize,
    pub parent_graph: ParentGraph,
    pub mesh_parent_limit: usize,
    #[serde(with = "humantime_serde")]
    pub seed_peer_wait_timeout: Duration,
    pub gc: GcConfig,
}

impl Default for SchedulingConfig {
    fn default() -> Self {
        Self {
            algorithm: DEFAULT_ALGORITHM.to_string(),
            back_to_source_count: DEFAULT_BACK_TO_SOURCE_COUNT,
            retry_back_to_source_limit: DEFAULT_RETRY_BACK_TO_SOURCE_LIMIT,
            retry_limit: DEFAULT_RETRY_LIMIT,
            retry_interval: DEFAULT_RETRY_INTERVAL,
            candidate_parent_limit: DEFAULT_CANDIDATE_PARENT_LIMIT,
            filter_parent_limit: DEFAULT_FILTER_PARENT_LIMIT,
            parent_graph: DEFAULT_PARENT_GRAPH,
            mesh_parent_limit: DEFAULT_MESH_PARENT_LIMIT,
            seed_peer_wait_timeout: DEFAULT_SEED_PEER_WAIT_TIMEOUT,
            gc: GcConfig::default(),
        }
    }
}

/// `scheduler.gc:` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct GcConfig {
    #[serde(rename = "peerGCInterval", with = "humantime_serde")]
    pub peer_gc_interval: Duration,
    #[serde(rename = "peerTTL", with = "humantime_serde")]
    pub peer_ttl: Duration,
    #[serde(rename = "taskGCInterval", with = "humantime_serde")]
    pub task_gc_interval: Duration,
    #[serde(rename = "hostGCInterval", with = "humantime_serde")]
    pub host_gc_interval: Duration,
    #[serde(rename = "hostTTL", with = "humantime_serde")]
    pub host_ttl: Duration,
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            peer_gc_interval: DEFAULT_PEER_GC_INTERVAL,
            peer_ttl: DEFAULT_PEER_TTL,
            task_gc_interval: DEFAULT_TASK_GC_INTERVAL,
            host_gc_interval: DEFAULT_HOST_GC_INTERVAL,
            host_ttl: DEFAULT_HOST_TTL,
        }
    }
}

/// `seedPeer:` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct SeedPeerConfig {
    pub enable: bool,
    #[serde(with = "humantime_serde")]
    pub task_download_timeout: Duration,
    /// `seedPeer.tls.{caCert, cert, key}`: client mTLS for the seed trigger (DownloadTask on
    /// the seed peer's upload port), Dragonfly's keys. Unset (the default): plain text.
    pub tls: TlsKeys,
}

impl Default for SeedPeerConfig {
    fn default() -> Self {
        Self {
            enable: DEFAULT_SEED_PEER_ENABLE,
            task_download_timeout: DEFAULT_SEED_TASK_DOWNLOAD_TIMEOUT,
            tls: TlsKeys::default(),
        }
    }
}

/// `metrics:` section. `addr` accepts Dragonfly's `":8000"` form (listen IP implied).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct MetricsConfig {
    pub enable: bool,
    pub addr: Option<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enable: DEFAULT_METRICS_ENABLE,
            addr: None,
        }
    }
}

impl SchedulerConfig {
    /// Reads and validates a YAML file; missing keys take their defaults. Also returns the
    /// dotted paths of the keys Damselfly does not implement, for a startup warning.
    pub fn load(path: &Path) -> Result<(Self, Vec<String>), SchedulerError> {
        let parsed = damselfly_configfile::load::<Self>(path)?;
        parsed.config.validate()?;
        Ok((parsed.config, parsed.ignored))
    }

    /// Parses and validates YAML text. An empty document gives the defaults.
    pub fn from_yaml(text: &str) -> Result<Self, SchedulerError> {
        let config = damselfly_configfile::parse::<Self>(text, "scheduler config")?.config;
        config.validate()?;
        Ok(config)
    }

    /// The gRPC listen address: `server.listen`, else `server.listenIP:server.port`.
    pub fn listen_addr(&self) -> SocketAddr {
        self.server
            .listen
            .unwrap_or(SocketAddr::new(self.server.listen_ip, self.server.port))
    }

    /// The metrics address, or `None` when metrics are disabled.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, SchedulerError> {
        if !self.metrics.enable {
            return Ok(None);
        }
        let listen_ip = self.listen_addr().ip();
        match self.metrics.addr.as_deref() {
            None => Ok(Some(SocketAddr::new(listen_ip, DEFAULT_METRICS_PORT))),
            Some(text) => parse_metrics_addr(text, listen_ip),
        }
    }

    /// The JSON API address, or `None` when it is disabled.
    pub fn http_addr(&self) -> Result<Option<SocketAddr>, SchedulerError> {
        if !self.server.http.enable {
            return Ok(None);
        }
        let listen_ip = self.listen_addr().ip();
        match self.server.http.addr.as_deref() {
            None => Ok(Some(SocketAddr::new(listen_ip, DEFAULT_HTTP_PORT))),
            Some(text) => parse_metrics_addr(text, listen_ip),
        }
    }

    /// The gRPC server's mTLS config (`server.tls`), `None` for plain text.
    pub fn server_tls(&self) -> Result<Option<Arc<rustls::ServerConfig>>, SchedulerError> {
        match self.server.tls.files("server.tls")? {
            Some(files) => Ok(Some(damselfly_tls::server_config(&files)?)),
            None => Ok(None),
        }
    }

    /// The seed trigger's client mTLS config (`seedPeer.tls`), `None` for plain text.
    pub fn seed_peer_tls(&self) -> Result<Option<Arc<rustls::ClientConfig>>, SchedulerError> {
        match self.seed_peer.tls.files("seedPeer.tls")? {
            Some(files) => Ok(Some(damselfly_tls::client_config(&files)?)),
            None => Ok(None),
        }
    }

    /// Rejects values that would make scheduling misbehave instead of failing loudly later.
    pub fn validate(&self) -> Result<(), SchedulerError> {
        // Partly set TLS sections fail here, at startup, naming the missing keys.
        self.server.tls.files("server.tls")?;
        self.seed_peer.tls.files("seedPeer.tls")?;
        let s = &self.scheduler;
        if s.algorithm != DEFAULT_ALGORITHM {
            return Err(invalid(format!(
                "scheduler.algorithm {:?} is not supported (only {DEFAULT_ALGORITHM:?})",
                s.algorithm
            )));
        }
        if s.candidate_parent_limit == 0 || s.filter_parent_limit == 0 {
            return Err(invalid(
                "candidateParentLimit and filterParentLimit must be > 0".into(),
            ));
        }
        if s.parent_graph == ParentGraph::Mesh && s.mesh_parent_limit < s.candidate_parent_limit {
            return Err(invalid(
                "meshParentLimit must be >= candidateParentLimit".into(),
            ));
        }
        if s.filter_parent_limit < s.candidate_parent_limit {
            return Err(invalid(
                "filterParentLimit must be >= candidateParentLimit".into(),
            ));
        }
        let gc = &s.gc;
        let intervals = [
            gc.peer_gc_interval,
            gc.task_gc_interval,
            gc.host_gc_interval,
        ];
        if intervals.iter().any(Duration::is_zero) {
            return Err(invalid("GC intervals must be > 0".into()));
        }
        self.metrics_addr()?;
        self.http_addr()?;
        Ok(())
    }
}

fn invalid(message: String) -> SchedulerError {
    SchedulerError::InvalidConfig(message)
}

/// Parses `none`, `:PORT` (listen IP implied) or a full `IP:PORT` (metrics and HTTP API).
pub fn parse_metrics_addr(
    text: &str,
    listen_ip: IpAddr,
) -> Result<Option<SocketAddr>, SchedulerError> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("none") || text.is_empty() {
        return Ok(None);
    }
    if let Some(port) = text.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| invalid(format!("address {text:?}: bad port")))?;
        return Ok(Some(SocketAddr::new(listen_ip, port)));
    }
    text.parse::<SocketAddr>()
        .map(Some)
        .map_err(|_| invalid(format!("address {text:?} is not IP:PORT, :PORT or none")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_yaml_gives_defaults() {
        let config = SchedulerConfig::from_yaml("").unwrap();
        assert_eq!(config, SchedulerConfig::default());
        assert_eq!(config.listen_addr(), "0.0.0.0:8002".parse().unwrap());
        assert_eq!(
            config.metrics_addr().unwrap(),
            Some("0.0.0.0:8000".parse().unwrap())
        );
    }

    /// `scheduler.yaml` as Dragonfly's Helm chart 1.7 renders it (comments dropped; the
    /// chart leaves `seedPeer:` empty): it must start, with what we ignore named.
    const DRAGONFLY_CHART_SCHEDULER_YAML: &str = r#"
server:
  advertiseIP: ''
  advertisePort: 8002
  listenIP: '0.0.0.0'
  port: 8002
  requestRateLimit: 4000
  workHome: ''
  logLevel: 'info'
  logDir: ''
scheduler:
  algorithm: default
  backToSourceCount: 200
  retryBackToSourceLimit: 3
  retryLimit: 5
  retryInterval: 2s
  gc:
    pieceDownloadTimeout: 30m
    peerGCInterval: 5m
    peerTTL: 720h
    taskGCInterval: 30m
    hostGCInterval: 5m
    hostTTL: 1h
dynconfig:
  refreshInterval: 1m
host:
  idc: ''
  location: ''
manager:
  addr: dragonfly-manager.dragonfly-system.svc.cluster.local:65003
  schedulerClusterID: 1
  keepAlive:
    interval: 5s
seedPeer:
console: true
pprofPort: -1
security:
  autoIssueCert: false
  caCert: ''
  tlsVerify: false
  tlsPolicy: prefer
metrics:
  enable: true
  addr: ":8000"
  enableHost: false
"#;

    #[test]
    fn dragonflys_chart_scheduler_yaml_loads() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, DRAGONFLY_CHART_SCHEDULER_YAML.as_bytes()).unwrap();
        let (config, ignored) = SchedulerConfig::load(file.path()).unwrap();
        assert_eq!(config.listen_addr(), "0.0.0.0:8002".parse().unwrap());
        assert_eq!(config.scheduler.retry_back_to_source_limit, 3);
        assert_eq!(config.scheduler.retry_interval, Duration::from_secs(2));
        assert!(
            config.seed_peer.enable,
            "an empty seedPeer: keeps the default"
        );
        for key in [
            "server.advertiseIP",
            "manager",
            "security",
            "scheduler.gc.pieceDownloadTimeout",
            "metrics.enableHost",
        ] {
            assert!(ignored.iter().any(|k| k == key), "{key} not in {ignored:?}");
        }
        let with_tls = DRAGONFLY_CHART_SCHEDULER_YAML.replace("caCert: ''", "caCert: /etc/ca.pem");
        let error = SchedulerConfig::from_yaml(&with_tls)
            .unwrap_err()
            .to_string();
        assert!(error.contains("security.caCert"), "{error}");
    }

    #[test]
    fn tls_sections_are_read_and_partial_ones_refused() {
        let full = "server:\n  tls: {caCert: /a, cert: /b, key: /c}\nseedPeer:\n  tls: {caCert: /a, cert: /b, key: /c}\n";
        let config = SchedulerConfig::from_yaml(full).unwrap();
        assert_eq!(config.server.tls.key.as_deref(), Some(Path::new("/c")));
        assert!(config
            .seed_peer
            .tls
            .files("seedPeer.tls")
            .unwrap()
            .is_some());
        let partial = "seedPeer:\n  tls: {caCert: /a}\n";
        let error = SchedulerConfig::from_yaml(partial).unwrap_err().to_string();
        assert!(
            error.contains("seedPeer.tls.cert, seedPeer.tls.key"),
            "{error}"
        );
        let unimplemented = "peer:\n  tls: {caCert: /a, cert: /b, key: /c}\n";
        let error = SchedulerConfig::from_yaml(unimplemented)
            .unwrap_err()
            .to_string();
        assert!(error.contains("peer.tls.caCert"), "{error}");
    }

    #[test]
    fn dragonfly_keys_are_read() {
        let yaml = r#"
server:
  listenIP: 127.0.0.1
  port: 9002
scheduler:
  retryInterval: 100ms
  retryBackToSourceLimit: 2
  candidateParentLimit: 4
  seedPeerWaitTimeout: 3s
  gc:
    peerTTL: 1m
    hostTTL: 2m
    hostGCInterval: 1s
metrics:
  addr: ":9000"
manager:
  addr: ignored
"#;
        let config = SchedulerConfig::from_yaml(yaml).unwrap();
        assert_eq!(config.listen_addr(), "127.0.0.1:9002".parse().unwrap());
        assert_eq!(config.scheduler.retry_interval, Duration::from_millis(100));
        assert_eq!(config.scheduler.retry_back_to_source_limit, 2);
        assert_eq!(config.scheduler.candidate_parent_limit, 4);
        assert_eq!(
            config.scheduler.seed_peer_wait_timeout,
            Duration::from_secs(3)
        );
        assert_eq!(config.scheduler.gc.peer_ttl, Duration::from_secs(60));
        assert_eq!(config.scheduler.gc.host_gc_interval, Duration::from_secs(1));
        assert_eq!(
            config.metrics_addr().unwrap(),
            Some("127.0.0.1:9000".parse().unwrap())
        );
        assert_eq!(
            config.http_addr().unwrap(),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        let api = "server:\n  http: {addr: ':9090', token: s3cret}\n";
        let config = SchedulerConfig::from_yaml(api).unwrap();
        assert_eq!(
            config.http_addr().unwrap(),
            Some("0.0.0.0:9090".parse().unwrap())
        );
        assert!(!format!("{config:?}").contains("s3cret"));
        let off = SchedulerConfig::from_yaml("server:\n  http: {enable: false}\n").unwrap();
        assert_eq!(off.http_addr().unwrap(), None);
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(SchedulerConfig::from_yaml("scheduler:\n  candidateParentLimit: 0\n").is_err());
        assert!(SchedulerConfig::from_yaml("scheduler:\n  algorithm: ml\n").is_err());
        assert!(SchedulerConfig::from_yaml("scheduler:\n  parentGraph: tree\n").is_err());
        let small_mesh = "scheduler:\n  candidateParentLimit: 4\n  meshParentLimit: 2\n";
        assert!(SchedulerConfig::from_yaml(small_mesh).is_err());
        let dag = "scheduler:\n  parentGraph: dag\n  meshParentLimit: 2\n";
        let config = SchedulerConfig::from_yaml(dag).unwrap();
        assert_eq!(config.scheduler.parent_graph, ParentGraph::Dag);
        assert!(SchedulerConfig::from_yaml("metrics:\n  addr: nonsense\n").is_err());
        assert!(SchedulerConfig::from_yaml("scheduler: [1, 2]\n").is_err());
    }

    #[test]
    fn metrics_none_disables() {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert_eq!(parse_metrics_addr("none", ip).unwrap(), None);
        assert_eq!(
            parse_metrics_addr("1.2.3.4:5", ip).unwrap(),
            Some("1.2.3.4:5".parse().unwrap())
        );
    }
}
