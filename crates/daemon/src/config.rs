//! dfdaemon configuration: a YAML file with Dragonfly's camelCase keys (where a key means the
//! same thing as in Dragonfly's `dfdaemon.yaml`), every default a named constant, flags on top.
//!
//! Unknown keys are ignored so an official `dfdaemon.yaml` can be reused as is.

pub use crate::dynconfig::{SchedulerEndpoint, SchedulerSource};
use crate::error::DaemonError;
use bytesize::ByteSize;
use damselfly_tls::{TlsFiles, TlsKeys};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Upload gRPC (`DfdaemonUpload`) port, as Dragonfly.
pub const DEFAULT_UPLOAD_PORT: u16 = 4000;
/// Vortex TCP piece server port, as Dragonfly's `storage.server.tcpPort`.
pub const DEFAULT_PIECE_PORT: u16 = 4005;
/// Vortex QUIC piece server port, as Dragonfly's `storage.server.quicPort`.
pub const DEFAULT_QUIC_PORT: u16 = 4006;
/// How pieces are fetched from parents, as Dragonfly's `download.protocol` default.
pub const DEFAULT_PIECE_PROTOCOL: PieceProtocol = PieceProtocol::Tcp;
/// Damselfly: ask parents that offer it to forward pieces still arriving at them
/// (`download.cutThrough`), so a piece crosses a chain of peers in about the time of one hop
/// instead of one whole piece per hop. Parents serve it either way; only official peers,
/// which never offer it, are asked for recorded pieces only.
pub const DEFAULT_CUT_THROUGH: bool = true;
/// A verifying QUIC client refuses parents without a cluster certificate unless the
/// operator turns on `download.quic.allowUnverifiedPeers`.
pub const DEFAULT_ALLOW_UNVERIFIED_PEERS: bool = false;
/// Prometheus `/metrics` port, as Dragonfly.
pub const DEFAULT_METRICS_PORT: u16 = 4002;
/// `/healthy` port, as Dragonfly.
pub const DEFAULT_HEALTH_PORT: u16 = 4003;
/// Unix socket of `DfdaemonDownload`, where dfget looks by default.
pub const DEFAULT_SOCKET_PATH: &str = "/var/run/dragonfly/dfdaemon.sock";
/// Cache directory, as Dragonfly.
pub const DEFAULT_STORAGE_DIR: &str = "/var/lib/dragonfly";
/// Dragonfly wipes the cache on restart by default; we keep it (pieces are digest-checked).
pub const DEFAULT_STORAGE_KEEP: bool = true;
/// Dragonfly's default for every bandwidth limit: effectively unlimited.
pub const DEFAULT_BANDWIDTH_LIMIT: ByteSize = ByteSize::gb(50);
/// Pieces fetched from parents at once, per download.
pub const DEFAULT_CONCURRENT_PIECE_COUNT: u32 = 8;
/// Ranged origin requests in flight at once, per download. Enough parallel TCP streams to beat
/// a single-stream client on a fast link without hammering the origin.
pub const DEFAULT_BACK_TO_SOURCE_CONCURRENCY: u32 = 6;
/// Time limit on fetching one piece from a parent, as Dragonfly's `download.pieceTimeout`.
pub const DEFAULT_PIECE_TIMEOUT: Duration = Duration::from_secs(360);
/// How long a parent round may go without any parent offering a missing piece before we ask
/// the scheduler for other parents. Dragonfly's `collectedPieceTimeout` is 360 s; a stuck
/// parent should not stall a download that long, so ours is shorter.
pub const DEFAULT_COLLECTED_PIECE_TIMEOUT: Duration = Duration::from_secs(30);
/// Host re-announcement period, as Dragonfly.
pub const DEFAULT_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(300);
/// Wait for one scheduling decision. Dragonfly's 3 h bounds the whole interaction; a
/// scheduler that stays silent this long is treated as down and we go to the origin.
pub const DEFAULT_SCHEDULE_TIMEOUT: Duration = Duration::from_secs(60);
/// Scheduling decisions before the rest of a task comes from the origin, as Dragonfly.
pub const DEFAULT_MAX_SCHEDULE_COUNT: u32 = 5;
/// GC period, as Dragonfly.
pub const DEFAULT_GC_INTERVAL: Duration = Duration::from_secs(15 * 60);
/// Finished tasks not accessed for this long are evicted, as Dragonfly.
pub const DEFAULT_TASK_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Own cache quota; 0 = the whole file system of the cache, as Dragonfly (the thresholds
/// below then apply to its used space).
pub const DEFAULT_DISK_THRESHOLD: ByteSize = ByteSize::b(0);
/// Quota eviction starts above this share of the quota (or file system), as Dragonfly.
pub const DEFAULT_DISK_HIGH_THRESHOLD_PERCENT: u8 = 80;
/// Quota eviction stops below this share of the quota (or file system), as Dragonfly.
pub const DEFAULT_DISK_LOW_THRESHOLD_PERCENT: u8 = 60;

/// The TLS files of each gRPC link; `None`: that link is plain text.
#[derive(Debug, Clone, Default)]
pub struct LinkFiles {
    pub upload_server: Option<TlsFiles>,
    pub upload_client: Option<TlsFiles>,
    pub scheduler: Option<TlsFiles>,
}

/// The whole configuration. Every section is optional in the file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct DaemonConfig {
    pub host: HostConfig,
    pub upload: UploadConfig,
    pub download: DownloadConfig,
    pub scheduler: SchedulerConfig,
    pub seed_peer: SeedPeerConfig,
    pub storage: StorageSection,
    pub dynconfig: DynconfigSection,
    pub gc: GcConfig,
    pub metrics: ServerSection<MetricsPort>,
    pub health: ServerSection<HealthPort>,
    /// Registry mirror and HTTP(S) proxy (`proxy.*`, see `crate::proxy::config`).
    pub proxy: crate::proxy::config::ProxyConfig,
    /// Damselfly: run the scheduler library in-process and use it as the only scheduler.
    pub embedded_scheduler: bool,
    /// Damselfly: exit after this long without download or upload activity.
    #[serde(with = "humantime_serde")]
    pub idle_exit: Option<Duration>,
    /// Dragonfly's local dynconfig file (`--dynconfig`), when it names the schedulers.
    #[serde(skip)]
    pub dynconfig_path: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct HostConfig {
    /// Advertised IP, and the bind IP of every server unless a section sets its own.
    pub ip: Option<IpAddr>,
    pub hostname: Option<String>,
    pub idc: Option<String>,
    pub location: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct UploadConfig {
    pub server: UploadServerConfig,
    /// `upload.client.{caCert, cert, key}`: mTLS towards parents' upload ports (SyncPieces),
    /// Dragonfly's keys. Unset (the default): plain text.
    pub client: TlsKeys,
    #[serde(serialize_with = "exact_bytes")]
    pub bandwidth_limit: ByteSize,
    /// Damselfly: pieces the piece servers (TCP and QUIC together) send at once, at least;
    /// more while they add to the measured upload (`damselfly_transfer::UploadSlots`).
    pub pieces_in_flight: usize,
    /// Damselfly: pieces sent at once, at most.
    pub max_pieces_in_flight: usize,
}

/// Uploads a daemon runs at once before its measured upload says more would add: two, so a
/// thin uplink (10 Mbit/s under peers at 100, bench/netns) sends whole pieces its peers can
/// pass on in 7 s rather than a trickle of every piece asked for, and one stalled child
/// cannot hold the uplink alone.
pub const DEFAULT_UPLOAD_PIECES_IN_FLIGHT: usize = 2;
/// Uploads at once at most: the piece servers' cap on pieces being sent.
pub const DEFAULT_UPLOAD_MAX_PIECES_IN_FLIGHT: usize = damselfly_transfer::DEFAULT_MAX_CONNECTIONS;

impl Default for UploadConfig {
    fn default() -> Self {
        Self {
            server: UploadServerConfig::default(),
            client: TlsKeys::default(),
            bandwidth_limit: DEFAULT_BANDWIDTH_LIMIT,
            pieces_in_flight: DEFAULT_UPLOAD_PIECES_IN_FLIGHT,
            max_pieces_in_flight: DEFAULT_UPLOAD_MAX_PIECES_IN_FLIGHT,
        }
    }
}

/// `upload.server`: where the DfdaemonUpload gRPC server listens, and its mTLS.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct UploadServerConfig {
    /// Unset: the host IP.
    pub ip: Option<IpAddr>,
    /// 0: any free port.
    pub port: u16,
    /// `caCert` / `cert` / `key` (Dragonfly's keys): all three set, every caller (peers, the
    /// scheduler) must present a certificate signed by `caCert`. Unset (the default): plain.
    pub ca_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Default for UploadServerConfig {
    fn default() -> Self {
        Self {
            ip: None,
            port: DEFAULT_UPLOAD_PORT,
            ca_cert: None,
            cert: None,
            key: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct DownloadConfig {
    pub server: DownloadServerConfig,
    #[serde(serialize_with = "exact_bytes")]
    pub bandwidth_limit: ByteSize,
    #[serde(serialize_with = "exact_bytes")]
    pub back_to_source_bandwidth_limit: ByteSize,
    pub concurrent_piece_count: u32,
    /// Damselfly: ranged origin requests in flight per download.
    pub back_to_source_concurrency: u32,
    #[serde(with = "humantime_serde")]
    pub piece_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub collected_piece_timeout: Duration,
    /// Transport for pieces from parents (`tcp` | `quic`), as Dragonfly's.
    pub protocol: PieceProtocol,
    /// Damselfly: how the QUIC client treats parents.
    pub quic: DownloadQuicConfig,
    /// Damselfly: fetch pieces still arriving at parents that offer it (TCP only).
    pub cut_through: bool,
}

impl DownloadConfig {
    /// Whether this daemon asks parents for pieces still arriving. Only the TCP piece server
    /// forwards those, so a daemon fetching over QUIC asks for recorded pieces: were it to
    /// ask, a parent would announce pieces its QUIC server cannot yet serve.
    pub fn asks_for_cut_through(&self) -> bool {
        self.cut_through && self.protocol == PieceProtocol::Tcp
    }
}

/// `download.protocol`: Vortex over TCP or over QUIC. QUIC is used only with parents that
/// advertise a QUIC port; others are fetched from over TCP.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PieceProtocol {
    Tcp,
    Quic,
}

/// `download.quic:` (Damselfly).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct DownloadQuicConfig {
    /// With cluster certificates configured, still fetch (as Dragonfly does, encrypted but
    /// unauthenticated) from parents whose certificate the cluster CA did not sign.
    pub allow_unverified_peers: bool,
}

impl Default for DownloadQuicConfig {
    fn default() -> Self {
        Self {
            allow_unverified_peers: DEFAULT_ALLOW_UNVERIFIED_PEERS,
        }
    }
}

impl Default for DownloadConfig {
    fn default() -> Self {
        Self {
            server: DownloadServerConfig::default(),
            bandwidth_limit: DEFAULT_BANDWIDTH_LIMIT,
            back_to_source_bandwidth_limit: DEFAULT_BANDWIDTH_LIMIT,
            concurrent_piece_count: DEFAULT_CONCURRENT_PIECE_COUNT,
            back_to_source_concurrency: DEFAULT_BACK_TO_SOURCE_CONCURRENCY,
            piece_timeout: DEFAULT_PIECE_TIMEOUT,
            collected_piece_timeout: DEFAULT_COLLECTED_PIECE_TIMEOUT,
            protocol: DEFAULT_PIECE_PROTOCOL,
            quic: DownloadQuicConfig::default(),
            cut_through: DEFAULT_CUT_THROUGH,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct DownloadServerConfig {
    pub socket_path: PathBuf,
}

impl Default for DownloadServerConfig {
    fn default() -> Self {
        Self {
            socket_path: PathBuf::from(DEFAULT_SOCKET_PATH),
        }
    }
}

/// How often the scheduler list is refreshed (the dynconfig file re-read, names resolved
/// again), as Dragonfly's `dynconfig.refreshInterval`.
pub const DEFAULT_DYNCONFIG_REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// `dynconfig:` in dfdaemon.yaml.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct DynconfigSection {
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
}

impl Default for DynconfigSection {
    fn default() -> Self {
        Self {
            refresh_interval: DEFAULT_DYNCONFIG_REFRESH_INTERVAL,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct SchedulerConfig {
    /// Damselfly: every scheduler, `IP:port` or `name:port` (a name is resolved to all its
    /// addresses and resolved again each `dynconfig.refreshInterval`); per-task calls are
    /// sharded over the addresses by a hash ring.
    pub addrs: Vec<SchedulerEndpoint>,
    #[serde(with = "humantime_serde")]
    pub announce_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub schedule_timeout: Duration,
    pub max_schedule_count: u32,
    /// `scheduler.caCert` / `cert` / `key` (Dragonfly's keys): all three set, every
    /// scheduler connection is mTLS and the scheduler must present a certificate signed by
    /// `caCert` naming the address dialled. Unset (the default): plain text.
    pub ca_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            addrs: Vec::new(),
            announce_interval: DEFAULT_ANNOUNCE_INTERVAL,
            schedule_timeout: DEFAULT_SCHEDULE_TIMEOUT,
            max_schedule_count: DEFAULT_MAX_SCHEDULE_COUNT,
            ca_cert: None,
            cert: None,
            key: None,
        }
    }
}

/// Dragonfly's seed peer host types; the serde default is `super`, as Dragonfly's.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum SeedPeerType {
    Normal,
    #[default]
    Super,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct SeedPeerConfig {
    pub enable: bool,
    #[serde(rename = "type")]
    pub kind: SeedPeerType,
    /// Damselfly's super-seeding (`crate::ration`); not a Dragonfly key.
    pub ration: RationConfig,
}

/// A seed rations its `SyncPieces` announcements by default (see `crate::ration`).
pub const DEFAULT_RATION_ENABLE: bool = true;
/// Given pieces a rationing seed has waiting for their first upload, over all its tasks (the
/// layers of an image pull share its uplink), at least (the seed keeps more in flight while
/// they add to its measured upload, see `crate::ration`). Each seed upload shares its child's
/// downlink with the child's transfers from peers, so one or two flows leave a seed's uplink
/// partly idle; four kept a 50 Mbit/s seed at its line rate in
/// bench/netns (16 hosts: the last piece left the seed at 45.0 s with 4, 45.8-46.8 s with 2)
/// while the last pieces still leave it close together.
pub const DEFAULT_RATION_PIECES_IN_FLIGHT: usize = 4;
/// At most this many given pieces in flight over all tasks: 4 MiB pieces at a 100 Mbit/s
/// child's downlink take 0.34 s each, so 32 keep a 10 Gbit/s seed busy.
pub const DEFAULT_RATION_MAX_PIECES_IN_FLIGHT: usize = 32;

/// `seedPeer.ration:`. Turning it off lets every child take any piece from the seed at once,
/// as from a Dragonfly seed; with it on, a seed with far more uplink than its children keeps
/// more pieces in flight by itself (`maxPiecesInFlight`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct RationConfig {
    pub enable: bool,
    pub pieces_in_flight: usize,
    pub max_pieces_in_flight: usize,
}

impl Default for RationConfig {
    fn default() -> Self {
        Self {
            enable: DEFAULT_RATION_ENABLE,
            pieces_in_flight: DEFAULT_RATION_PIECES_IN_FLIGHT,
            max_pieces_in_flight: DEFAULT_RATION_MAX_PIECES_IN_FLIGHT,
        }
    }
}

impl SeedPeerConfig {
    /// `common.v2.Host.type`: 0 normal, 1 super seed.
    pub fn host_type(&self) -> u32 {
        match (self.enable, self.kind) {
            (true, SeedPeerType::Super) => 1,
            _ => 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct StorageSection {
    pub dir: PathBuf,
    pub keep: bool,
    pub server: PieceServerConfig,
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            dir: PathBuf::from(DEFAULT_STORAGE_DIR),
            keep: DEFAULT_STORAGE_KEEP,
            server: PieceServerConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct PieceServerConfig {
    pub ip: Option<IpAddr>,
    pub tcp_port: u16,
    pub quic_port: u16,
}

impl Default for PieceServerConfig {
    fn default() -> Self {
        Self {
            ip: None,
            tcp_port: DEFAULT_PIECE_PORT,
            quic_port: DEFAULT_QUIC_PORT,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct GcConfig {
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    pub policy: GcPolicy,
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            interval: DEFAULT_GC_INTERVAL,
            policy: GcPolicy::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct GcPolicy {
    #[serde(rename = "taskTTL", alias = "taskTtl", with = "humantime_serde")]
    pub task_ttl: Duration,
    /// Dragonfly's client spells these `dist…`; both spellings are read.
    #[serde(alias = "distThreshold")]
    #[serde(serialize_with = "exact_bytes")]
    pub disk_threshold: ByteSize,
    #[serde(alias = "distHighThresholdPercent")]
    pub disk_high_threshold_percent: u8,
    #[serde(alias = "distLowThresholdPercent")]
    pub disk_low_threshold_percent: u8,
}

impl Default for GcPolicy {
    fn default() -> Self {
        Self {
            task_ttl: DEFAULT_TASK_TTL,
            disk_threshold: DEFAULT_DISK_THRESHOLD,
            disk_high_threshold_percent: DEFAULT_DISK_HIGH_THRESHOLD_PERCENT,
            disk_low_threshold_percent: DEFAULT_DISK_LOW_THRESHOLD_PERCENT,
        }
    }
}

/// The default port of a listening section, as a type so one struct serves every section.
pub trait DefaultPort {
    const PORT: u16;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadPort;
impl DefaultPort for UploadPort {
    const PORT: u16 = DEFAULT_UPLOAD_PORT;
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsPort;
impl DefaultPort for MetricsPort {
    const PORT: u16 = DEFAULT_METRICS_PORT;
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPort;
impl DefaultPort for HealthPort {
    const PORT: u16 = DEFAULT_HEALTH_PORT;
}

/// `{ip, port}`; `ip` unset = the host IP; port 0 = any free port.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase", bound = "P: DefaultPort")]
pub struct ListenConfig<P> {
    pub ip: Option<IpAddr>,
    pub port: u16,
    #[serde(skip)]
    _port: std::marker::PhantomData<P>,
}

impl<P: DefaultPort> Default for ListenConfig<P> {
    fn default() -> Self {
        Self {
            ip: None,
            port: P::PORT,
            _port: std::marker::PhantomData,
        }
    }
}

/// `{server: {ip, port}}` as Dragonfly's metrics and health sections.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase", bound = "P: DefaultPort")]
pub struct ServerSection<P> {
    pub server: ListenConfig<P>,
}

impl<P: DefaultPort> Default for ServerSection<P> {
    fn default() -> Self {
        Self {
            server: ListenConfig::default(),
        }
    }
}

impl DaemonConfig {
    /// Parses a YAML document; an empty document is the default configuration. Keys we do
    /// not implement are dropped here; [`DaemonConfig::load`] reports them.
    pub fn from_yaml(text: &str) -> Result<Self, DaemonError> {
        damselfly_configfile::parse(text, "dfdaemon config")
            .map(|parsed| parsed.config)
            .map_err(|e| DaemonError::Config(e.to_string()))
    }

    /// Reads and parses a config file; also returns the dotted paths of the keys in it that
    /// Damselfly does not implement, for the caller to warn about. A set certificate or key
    /// that is not implemented is an error.
    pub fn load(path: &Path) -> Result<(Self, Vec<String>), DaemonError> {
        damselfly_configfile::load(path)
            .map(|parsed| (parsed.config, parsed.ignored))
            .map_err(|e| DaemonError::Config(e.to_string()))
    }

    /// Rejects values that would make the daemon misbehave later rather than fail now.
    pub fn validate(&self) -> Result<(), DaemonError> {
        let links = self.tls_files()?;
        if self.embedded_scheduler && links.scheduler.is_some() {
            return Err(DaemonError::Config(
                "the embedded scheduler serves plain text on loopback; unset scheduler.caCert/cert/key to use it".into(),
            ));
        }
        let ration = &self.seed_peer.ration;
        check_pieces_in_flight(
            "seedPeer.ration",
            ration.pieces_in_flight,
            ration.max_pieces_in_flight,
        )?;
        let upload = &self.upload;
        check_pieces_in_flight(
            "upload",
            upload.pieces_in_flight,
            upload.max_pieces_in_flight,
        )?;
        if self.download.concurrent_piece_count == 0 {
            return Err(DaemonError::Config(
                "download.concurrentPieceCount must be at least 1".into(),
            ));
        }
        if self.download.back_to_source_concurrency == 0 {
            return Err(DaemonError::Config(
                "download.backToSourceConcurrency must be at least 1".into(),
            ));
        }
        let policy = &self.gc.policy;
        if policy.disk_low_threshold_percent > policy.disk_high_threshold_percent
            || policy.disk_high_threshold_percent > 100
        {
            return Err(DaemonError::Config(
                "gc.policy: need diskLowThresholdPercent <= diskHighThresholdPercent <= 100".into(),
            ));
        }
        if self.scheduler.announce_interval.is_zero()
            || self.gc.interval.is_zero()
            || self.dynconfig.refresh_interval.is_zero()
        {
            return Err(DaemonError::Config(
                "scheduler.announceInterval, gc.interval and dynconfig.refreshInterval must be positive".into(),
            ));
        }
        self.proxy.validate()
    }

    /// Where the scheduler list comes from: the dynconfig file when one is set, else
    /// `scheduler.addrs`.
    pub fn scheduler_source(&self) -> SchedulerSource {
        match (&self.dynconfig_path, &self.scheduler.addrs[..]) {
            (Some(path), _) => SchedulerSource::File(path.clone()),
            (None, []) => SchedulerSource::None,
            (None, addrs) => SchedulerSource::Endpoints(addrs.to_vec()),
        }
    }

    /// The IP we advertise: configured, else the address the kernel would route from, else
    /// loopback (a daemon without a network still serves its own dfget).
    pub fn host_ip(&self) -> IpAddr {
        self.host.ip.unwrap_or_else(detect_local_ip)
    }

    pub fn hostname(&self) -> String {
        self.host.hostname.clone().unwrap_or_else(system_hostname)
    }

    /// The TLS triples of the three gRPC links; a partly set triple is an error naming the
    /// missing keys.
    pub fn tls_files(&self) -> Result<LinkFiles, DaemonError> {
        let (server, client, scheduler) =
            (&self.upload.server, &self.upload.client, &self.scheduler);
        Ok(LinkFiles {
            upload_server: TlsFiles::from_section(
                "upload.server",
                server.ca_cert.as_deref(),
                server.cert.as_deref(),
                server.key.as_deref(),
            )?,
            upload_client: client.files("upload.client")?,
            scheduler: TlsFiles::from_section(
                "scheduler",
                scheduler.ca_cert.as_deref(),
                scheduler.cert.as_deref(),
                scheduler.key.as_deref(),
            )?,
        })
    }

    /// Where each server binds: its own IP if set, else the host IP.
    pub fn upload_addr(&self, host_ip: IpAddr) -> SocketAddr {
        SocketAddr::new(
            self.upload.server.ip.unwrap_or(host_ip),
            self.upload.server.port,
        )
    }

    pub fn piece_addr(&self, host_ip: IpAddr) -> SocketAddr {
        SocketAddr::new(
            self.storage.server.ip.unwrap_or(host_ip),
            self.storage.server.tcp_port,
        )
    }

    /// The QUIC piece server's UDP address (same IP as the TCP one).
    pub fn quic_addr(&self, host_ip: IpAddr) -> SocketAddr {
        SocketAddr::new(
            self.storage.server.ip.unwrap_or(host_ip),
            self.storage.server.quic_port,
        )
    }

    pub fn metrics_addr(&self, host_ip: IpAddr) -> SocketAddr {
        SocketAddr::new(
            self.metrics.server.ip.unwrap_or(host_ip),
            self.metrics.server.port,
        )
    }

    pub fn health_addr(&self, host_ip: IpAddr) -> SocketAddr {
        SocketAddr::new(
            self.health.server.ip.unwrap_or(host_ip),
            self.health.server.port,
        )
    }
}

/// The source address of a route to a public address. A UDP `connect` sends no packet; it
/// only asks the kernel for the route.
fn detect_local_ip() -> IpAddr {
    let probe = || -> std::io::Result<IpAddr> {
        let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        socket.connect((Ipv4Addr::new(192, 0, 2, 1), 9))?;
        Ok(socket.local_addr()?.ip())
    };
    match probe() {
        Ok(ip) if !ip.is_unspecified() => ip,
        _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
    }
}

fn system_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        if let Ok(name) = std::str::from_utf8(&buf[..end]) {
            if !name.is_empty() {
                return name.to_string();
            }
        }
    }
    "localhost".to_string()
}

/// Writes a size as its exact number of bytes: `bytesize` writes "46.6 GiB" for 50 GB, which
/// reads back as another number (found by the `daemon_config` fuzz target's round trip).
pub(crate) fn exact_bytes<S: serde::Serializer>(
    size: &ByteSize,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(size.as_u64())
}

/// `{section}.piecesInFlight` at least 1 and `{section}.maxPiecesInFlight` at least that.
fn check_pieces_in_flight(section: &str, floor: usize, ceiling: usize) -> Result<(), DaemonError> {
    if floor == 0 {
        return Err(DaemonError::Config(format!(
            "{section}.piecesInFlight must be at least 1"
        )));
    }
    if ceiling < floor {
        return Err(DaemonError::Config(format!(
            "{section}.maxPiecesInFlight ({ceiling}) must be at least piecesInFlight ({floor})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes written out read back as the same number of bytes (fuzz finding: 50 GB was
    /// written as "46.6 GiB" and read back 36,368,998 bytes larger).
    #[test]
    fn a_written_config_reads_back_equal() {
        let config = DaemonConfig::from_yaml("gc:\n  policy:\n    diskThreshold: 10GB\n").unwrap();
        let yaml = serde_yaml::to_string(&config).unwrap();
        assert!(yaml.contains("bandwidthLimit: 50000000000"), "{yaml}");
        assert_eq!(DaemonConfig::from_yaml(&yaml).unwrap(), config);
    }

    /// The QUIC piece server serves recorded pieces only, so a QUIC daemon must not ask
    /// parents to announce pieces still arriving (CI failure: every piece "not found").
    #[test]
    fn only_a_tcp_fetcher_asks_for_cut_through() {
        let tcp = DaemonConfig::from_yaml("").unwrap();
        assert!(tcp.download.asks_for_cut_through());
        let quic = DaemonConfig::from_yaml("download:\n  protocol: quic\n").unwrap();
        assert!(quic.download.cut_through);
        assert!(!quic.download.asks_for_cut_through());
        let off = DaemonConfig::from_yaml("download:\n  cutThrough: false\n").unwrap();
        assert!(!off.download.asks_for_cut_through());
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = DaemonConfig::from_yaml("").unwrap();
        assert_eq!(c, DaemonConfig::default());
        assert_eq!(c.upload.server.port, 4000);
        assert_eq!(c.storage.server.tcp_port, 4005);
        assert_eq!(c.metrics.server.port, 4002);
        assert_eq!(c.health.server.port, 4003);
        assert_eq!(c.download.concurrent_piece_count, 8);
        assert_eq!(c.scheduler.announce_interval, Duration::from_secs(300));
        assert_eq!(c.scheduler.max_schedule_count, 5);
        assert_eq!(
            c.download.server.socket_path,
            PathBuf::from(DEFAULT_SOCKET_PATH)
        );
        assert!(c.storage.keep);
        assert_eq!(c.gc.policy.task_ttl, DEFAULT_TASK_TTL);
        assert_eq!(c.seed_peer.host_type(), 0);
        assert_eq!(c.seed_peer.ration, RationConfig::default());
        c.validate().unwrap();
    }

    #[test]
    fn dragonfly_style_yaml_parses() {
        let yaml = r#"
host:
  ip: 127.0.0.2
  hostname: node-a
  idc: idc-1
  location: cn|hz
upload:
  server:
    port: 0
  bandwidthLimit: 100MB
download:
  server:
    socketPath: /tmp/d.sock
  bandwidthLimit: 1GB
  backToSourceBandwidthLimit: 2GB
  concurrentPieceCount: 16
  pieceTimeout: 30s
scheduler:
  addrs: ["127.0.0.1:8002", "127.0.0.3:8002"]
  announceInterval: 1m
  scheduleTimeout: 10s
  maxScheduleCount: 3
seedPeer:
  enable: true
  ration:
    piecesInFlight: 3
    maxPiecesInFlight: 12
storage:
  dir: /tmp/cache
  keep: false
  server:
    tcpPort: 4105
gc:
  interval: 1m
  policy:
    taskTTL: 1h
    diskThreshold: 10GiB
    diskHighThresholdPercent: 90
    diskLowThresholdPercent: 70
metrics:
  server:
    port: 9002
health:
  server:
    ip: 127.0.0.9
manager:
  addr: ignored:65003
"#;
        let c = DaemonConfig::from_yaml(yaml).unwrap();
        assert_eq!(c.host.ip, Some("127.0.0.2".parse().unwrap()));
        assert_eq!(c.host.location.as_deref(), Some("cn|hz"));
        assert_eq!(c.upload.server.port, 0);
        assert_eq!(c.upload.bandwidth_limit, ByteSize::mb(100));
        assert_eq!(c.download.concurrent_piece_count, 16);
        assert_eq!(c.download.piece_timeout, Duration::from_secs(30));
        assert_eq!(c.scheduler.addrs.len(), 2);
        assert_eq!(c.scheduler.max_schedule_count, 3);
        assert_eq!(
            c.seed_peer.host_type(),
            1,
            "seedPeer.type defaults to super"
        );
        assert!(c.seed_peer.ration.enable);
        assert_eq!(c.seed_peer.ration.pieces_in_flight, 3);
        assert_eq!(c.seed_peer.ration.max_pieces_in_flight, 12);
        assert!(!c.storage.keep);
        assert_eq!(c.storage.server.tcp_port, 4105);
        assert_eq!(c.gc.policy.task_ttl, Duration::from_secs(3600));
        assert_eq!(c.gc.policy.disk_threshold, ByteSize::gib(10));
        assert_eq!(c.metrics.server.port, 9002);
        assert_eq!(c.health.server.port, 4003);
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(c.health_addr(ip), "127.0.0.9:4003".parse().unwrap());
        assert_eq!(c.piece_addr(ip), "127.0.0.2:4105".parse().unwrap());
        c.validate().unwrap();
    }

    /// `dfdaemon.yaml` as Dragonfly's Helm chart 1.7 renders it for its client DaemonSet,
    /// comments dropped: it must start a daemon, with what we do not implement reported.
    const DRAGONFLY_CHART_DFDAEMON_YAML: &str = r#"
host:
  schedulerClusterID: 1
  idc: ''
  location: ''
server:
  pluginDir: /usr/local/lib/dragonfly/plugins/dfdaemon/
  adaptiveRateLimit: {bucketCount: 50, bucketInterval: 200ms, cpuThreshold: 100, memoryThreshold: 90}
download:
  protocol: tcp
  server:
    socketPath: /var/run/dragonfly/dfdaemon.sock
    requestRateLimit: 50
    requestbufferSize: 20
  bandwidthLimit: 50GB
  backToSourceBandwidthLimit: 50GB
  pieceTimeout: 360s
  collectedPieceTimeout: 360s
  concurrentPieceCount: 16
upload:
  server:
    port: 4000
    requestRateLimit: 200
  disableShared: false
  bandwidthLimit: 50GB
manager:
  addr: ''
scheduler:
  announceInterval: 5m
  scheduleTimeout: 3h
  maxScheduleCount: 5
  enableBackToSource: true
dynconfig:
  refreshInterval: 5m
storage:
  server: {tcpPort: 4005, quicPort: 4006}
  dir: /var/lib/dragonfly/
  keep: true
  writeBufferSize: 524288
  readBufferSize: 524288
  writePieceTimeout: 360s
gc:
  interval: 900s
  policy:
    taskTTL: 720h
    persistentTaskTTL: 24h
    persistentCacheTaskTTL: 24h
    distHighThresholdPercent: 90
    distLowThresholdPercent: 70
proxy:
  server:
    port: 4001
    requestRateLimit: 50
  rules:
    - regex: 'blobs/sha256.*'
  registryMirror:
    addr: https://index.docker.io
    enableTaskIDBasedBlobDigest: true
  disableBackToSource: false
  prefetch: true
  prefetchBandwidthLimit: 10GB
  readBufferSize: 524288
health:
  server: {port: 4003}
metrics:
  server: {port: 4002}
stats:
  server: {port: 4004}
tracing:
  protocol: ''
backend:
  requestHeader: {}
  maxRetries: 1
network:
"#;

    #[test]
    fn dragonflys_chart_config_loads_and_names_what_is_ignored() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, DRAGONFLY_CHART_DFDAEMON_YAML.as_bytes()).unwrap();
        let (c, ignored) = DaemonConfig::load(file.path()).unwrap();
        c.validate().unwrap();
        assert_eq!(c.download.concurrent_piece_count, 16);
        assert_eq!(c.dynconfig.refresh_interval, Duration::from_secs(300));
        assert_eq!(
            c.gc.policy.disk_high_threshold_percent, 90,
            "dist* spelling"
        );
        assert_eq!(c.gc.policy.disk_low_threshold_percent, 70);
        assert_eq!(c.storage.dir, PathBuf::from("/var/lib/dragonfly/"));
        assert_eq!(c.download.protocol, PieceProtocol::Tcp);
        assert_eq!(c.storage.server.quic_port, 4006);
        for key in [
            "manager",
            "server",
            "host.schedulerClusterID",
            "scheduler.enableBackToSource",
            "stats",
            "storage.writeBufferSize",
        ] {
            assert!(
                ignored.iter().any(|k| k == key),
                "{key} not reported in {ignored:?}"
            );
        }
        assert!(
            !ignored.iter().any(|k| k.starts_with("gc.policy.dist")),
            "{ignored:?}"
        );
    }

    #[test]
    fn tls_keys_partly_set_or_not_implemented_refuse_to_start() {
        // A partial triple parses, and startup (validate) refuses it naming what is missing.
        let error = DaemonConfig::from_yaml("scheduler:\n  caCert: /etc/ca.pem\n")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(error.contains("scheduler.cert, scheduler.key"), "{error}");
        DaemonConfig::from_yaml("scheduler:\n  caCert: ''\n").unwrap();
        let error = DaemonConfig::from_yaml("manager:\n  caCert: /etc/ca.pem\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("manager.caCert"), "{error}");
        let full = "upload:\n  client: {caCert: /a, cert: /b, key: /c}\n  server: {caCert: /a, cert: /b, key: /c}\nscheduler: {caCert: /a, cert: /b, key: /c}\n";
        let config = DaemonConfig::from_yaml(full).unwrap();
        config.validate().unwrap();
        let links = config.tls_files().unwrap();
        assert!(links.upload_server.is_some() && links.upload_client.is_some());
        assert_eq!(links.scheduler.unwrap().key, Path::new("/c"));
    }

    #[test]
    fn quic_keys_are_read() {
        let c = DaemonConfig::from_yaml(
            "download: {protocol: quic, quic: {allowUnverifiedPeers: true}}\nstorage: {server: {quicPort: 4106}}\n",
        )
        .unwrap();
        assert_eq!(c.download.protocol, PieceProtocol::Quic);
        assert!(c.download.quic.allow_unverified_peers);
        assert_eq!(c.storage.server.quic_port, 4106);
        let d = DaemonConfig::default();
        assert_eq!(d.download.protocol, PieceProtocol::Tcp);
        assert!(!d.download.quic.allow_unverified_peers);
        assert_eq!(d.storage.server.quic_port, DEFAULT_QUIC_PORT);
        assert!(DaemonConfig::from_yaml("download: {protocol: udp}").is_err());
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(DaemonConfig::from_yaml("download: {concurrentPieceCount: -1}").is_err());
        let c = DaemonConfig::from_yaml("download: {concurrentPieceCount: 0}").unwrap();
        assert!(c.validate().is_err());
        let c = DaemonConfig::from_yaml(
            "gc: {policy: {diskHighThresholdPercent: 50, diskLowThresholdPercent: 60}}",
        )
        .unwrap();
        assert!(c.validate().is_err());
        let c = DaemonConfig::from_yaml("seedPeer: {ration: {piecesInFlight: 0}}").unwrap();
        let error = c.validate().unwrap_err().to_string();
        assert!(error.contains("piecesInFlight"), "{error}");
        assert!(DaemonConfig::from_yaml("seedPeer: {ration: {piecesInFlight: many}}").is_err());
        let c = DaemonConfig::from_yaml(
            "seedPeer: {ration: {piecesInFlight: 8, maxPiecesInFlight: 4}}",
        )
        .unwrap();
        let error = c.validate().unwrap_err().to_string();
        assert!(error.contains("maxPiecesInFlight"), "{error}");
        let c = DaemonConfig::from_yaml("upload: {piecesInFlight: 0}").unwrap();
        let error = c.validate().unwrap_err().to_string();
        assert!(error.contains("upload.piecesInFlight"), "{error}");
        let c =
            DaemonConfig::from_yaml("upload: {piecesInFlight: 8, maxPiecesInFlight: 4}").unwrap();
        let error = c.validate().unwrap_err().to_string();
        assert!(error.contains("upload.maxPiecesInFlight"), "{error}");
        assert!(DaemonConfig::from_yaml("upload: {maxPiecesInFlight: -3}").is_err());
        DaemonConfig::from_yaml("upload: {piecesInFlight: 1, maxPiecesInFlight: 1}")
            .unwrap()
            .validate()
            .unwrap();
    }
}
