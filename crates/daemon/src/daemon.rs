//! Starting and stopping a daemon: bind every server, announce, run the background loops,
//! and on shutdown stop accepting, let in-flight work finish within `SHUTDOWN_GRACE`, abort the
//! rest, leave the schedulers and remove the socket (the steps are in `lifecycle`).

use crate::config::DaemonConfig;
use crate::config::SchedulerSource;
use crate::context::{limiter, Activity, Context, DaemonContext, Limits, TlsLinks};
use crate::engine::Engine;
use crate::error::DaemonError;
use crate::host::HostInfo;
use crate::lifecycle::{Lifecycle, SHUTDOWN_GRACE};
use crate::metrics;
use crate::ration::SeedRation;
use crate::scheduler_client::Schedulers;
use crate::services::download::DownloadService;
use crate::services::upload::UploadService;
use damselfly_monitor::Endpoints;
use damselfly_storage::{Storage, StorageConfig};
use damselfly_transfer::{
    Backend, BackendConfig, QuicListener, QuicSecurity, UploadHook, UploadSlots, VortexServerConfig,
};
use dragonfly_api::dfdaemon::v2::dfdaemon_download_server::DfdaemonDownloadServer;
use dragonfly_api::dfdaemon::v2::dfdaemon_upload_server::DfdaemonUploadServer;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

/// Bound on leaving the schedulers and on the embedded scheduler's stop at shutdown.
const SHUTDOWN_STEP_LIMIT: Duration = Duration::from_secs(5);
/// Longest pause between idle checks.
const IDLE_CHECK_MAX: Duration = Duration::from_secs(5);

/// Where the daemon actually listens (ports resolved when the config said 0).
#[derive(Debug, Clone)]
pub struct BoundAddrs {
    pub upload: SocketAddr,
    pub piece: SocketAddr,
    /// The Vortex QUIC server (UDP).
    pub quic: SocketAddr,
    pub metrics: SocketAddr,
    pub health: SocketAddr,
    pub socket: PathBuf,
    /// The registry mirror / HTTP proxy; `None` when its default address was busy.
    pub proxy: Option<SocketAddr>,
    /// The in-process scheduler, with `embedded_scheduler`.
    pub embedded_scheduler: Option<SocketAddr>,
}

/// A running daemon.
pub struct Daemon {
    addrs: BoundAddrs,
    engine: Arc<Engine>,
    scheduler: Option<(CancellationToken, JoinHandle<()>)>,
}

/// Runs a daemon until `shutdown` resolves (or `--idle-exit` fires), then stops it cleanly.
pub async fn run(
    config: DaemonConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let daemon = Daemon::start(config).await?;
    let token = daemon.shutdown_token();
    tokio::select! {
        _ = shutdown => token.cancel(),
        _ = token.cancelled() => {}
    }
    daemon.stop().await;
    Ok(())
}

struct Listeners {
    upload: TcpListener,
    piece: TcpListener,
    quic: QuicListener,
    metrics: TcpListener,
    health: TcpListener,
    socket: UnixListener,
}

impl Listeners {
    /// Where they actually listen (ports resolved when the config said 0).
    fn addrs(
        &self,
        config: &DaemonConfig,
        proxy: Option<&TcpListener>,
        embedded_scheduler: Option<SocketAddr>,
    ) -> Result<BoundAddrs, DaemonError> {
        Ok(BoundAddrs {
            upload: local_addr(&self.upload)?,
            piece: local_addr(&self.piece)?,
            quic: self
                .quic
                .local_addr()
                .map_err(|e| DaemonError::io("reading a bound address", e))?,
            metrics: local_addr(&self.metrics)?,
            health: local_addr(&self.health)?,
            socket: config.download.server.socket_path.clone(),
            proxy: proxy.and_then(|l| l.local_addr().ok()),
            embedded_scheduler,
        })
    }
}

/// An in-process scheduler (its address, its stop, its task).
type EmbeddedScheduler = (SocketAddr, CancellationToken, JoinHandle<()>);

/// With `embedded_scheduler`, starts one and points the config at it alone.
async fn embed_scheduler(
    config: &mut DaemonConfig,
) -> Result<Option<EmbeddedScheduler>, DaemonError> {
    if !config.embedded_scheduler {
        return Ok(None);
    }
    let (addr, token, handle) = start_embedded_scheduler().await?;
    config.scheduler.addrs = vec![addr.into()];
    config.dynconfig_path = None;
    Ok(Some((addr, token, handle)))
}

impl Daemon {
    /// Binds, opens storage, announces, and starts everything; returns once serving.
    pub async fn start(mut config: DaemonConfig) -> Result<Daemon, DaemonError> {
        config.validate()?;
        metrics::init();
        damselfly_transfer::register_metrics();
        let scheduler = embed_scheduler(&mut config).await?;
        let host_ip = config.host_ip();
        let proxy_listener = crate::proxy::bind(&config.proxy, host_ip).await?;
        let quic_security = crate::quic::quic_security(&config)?;
        let listeners = bind_all(&config, host_ip, &quic_security).await?;
        let addrs = listeners.addrs(
            &config,
            proxy_listener.as_ref(),
            scheduler.as_ref().map(|(addr, _, _)| *addr),
        )?;
        let ctx = match build_context(config, host_ip, &addrs, &quic_security).await {
            Ok(ctx) => ctx,
            Err(error) => return Err(abandon(error, &addrs, &scheduler)),
        };
        info!(host_id = %ctx.host.id, upload = %addrs.upload, piece = %addrs.piece, socket = %addrs.socket.display(), "dfdaemon starting");
        let engine = Engine::new(ctx.clone());
        let proxy = match proxy_listener {
            None => None,
            Some(listener) => match crate::proxy::Proxy::new(engine.clone(), &ctx.config.proxy) {
                Ok(proxy) => Some((proxy, listener)),
                Err(error) => return Err(abandon(error, &addrs, &scheduler)),
            },
        };
        spawn_servers(&engine, listeners);
        if let Some((proxy, listener)) = proxy {
            info!(addr = ?addrs.proxy, "proxy serving");
            ctx.lifecycle.spawn(
                crate::proxy::serve(proxy, listener).instrument(tracing::info_span!("proxy")),
            );
        }
        join_schedulers(&ctx).await;
        spawn_background(&engine);
        info!(host_id = %ctx.host.id, "dfdaemon ready");
        Ok(Daemon {
            addrs,
            engine,
            scheduler: scheduler.map(|(_, token, handle)| (token, handle)),
        })
    }

    pub fn addrs(&self) -> &BoundAddrs {
        &self.addrs
    }

    pub fn host_id(&self) -> &str {
        &self.engine.context().host.id
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Cancelling it stops the daemon (used by `--idle-exit` too).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.engine.context().lifecycle.stop_token()
    }

    /// Graceful stop: stop accepting, finish or cancel in-flight work, leave the schedulers,
    /// remove the socket.
    pub async fn stop(self) {
        info!("dfdaemon shutting down");
        let ctx = self.engine.context();
        let drained = ctx.lifecycle.drain(SHUTDOWN_GRACE).await;
        info!(?drained, "in-flight work done");
        let leave = ctx.schedulers.delete_host_all(&ctx.host.id);
        if tokio::time::timeout(SHUTDOWN_STEP_LIMIT, leave)
            .await
            .is_err()
        {
            warn!("leaving the schedulers timed out");
        }
        if let Some((token, handle)) = self.scheduler {
            token.cancel();
            let _ = tokio::time::timeout(SHUTDOWN_STEP_LIMIT, handle).await;
        }
        remove_socket(&self.addrs.socket);
        info!("dfdaemon stopped");
    }
}

fn local_addr(listener: &TcpListener) -> Result<SocketAddr, DaemonError> {
    listener
        .local_addr()
        .map_err(|e| DaemonError::io("reading a bound address", e))
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, DaemonError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Bind {
            what,
            addr: addr.to_string(),
            source,
        })
}

async fn bind_all(
    config: &DaemonConfig,
    host_ip: std::net::IpAddr,
    quic: &QuicSecurity,
) -> Result<Listeners, DaemonError> {
    Ok(Listeners {
        upload: bind("upload gRPC server", config.upload_addr(host_ip)).await?,
        piece: bind("piece server", config.piece_addr(host_ip)).await?,
        quic: bind_quic(
            config.quic_addr(host_ip),
            quic,
            &VortexServerConfig::default(),
        )?,
        metrics: bind("metrics server", config.metrics_addr(host_ip)).await?,
        health: bind("health server", config.health_addr(host_ip)).await?,
        socket: bind_socket(&config.download.server.socket_path).await?,
    })
}

/// The QUIC piece server's UDP socket, with its certificate set up.
fn bind_quic(
    addr: SocketAddr,
    security: &QuicSecurity,
    config: &VortexServerConfig,
) -> Result<QuicListener, DaemonError> {
    let socket = std::net::UdpSocket::bind(addr).map_err(|source| DaemonError::Bind {
        what: "QUIC piece server",
        addr: addr.to_string(),
        source,
    })?;
    Ok(damselfly_transfer::bind_quic(socket, security, config)?)
}

/// Creates the socket's directory and replaces a stale socket file; refuses to steal the
/// socket of a daemon that still answers on it.
async fn bind_socket(path: &Path) -> Result<UnixListener, DaemonError> {
    let bind_error = |source| DaemonError::Bind {
        what: "download socket",
        addr: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir).await.map_err(bind_error)?;
    }
    if let Ok(meta) = tokio::fs::symlink_metadata(path).await {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(bind_error(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket",
            )));
        }
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(bind_error(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another daemon is listening on this socket",
            )));
        }
        tokio::fs::remove_file(path).await.map_err(bind_error)?;
    }
    UnixListener::bind(path).map_err(bind_error)
}

fn remove_socket(path: &Path) {
    if let Err(error) = std::fs::remove_file(path) {
        if error.kind() != std::io::ErrorKind::NotFound {
            warn!(%error, socket = %path.display(), "cannot remove the socket file");
        }
    }
}

async fn build_context(
    config: DaemonConfig,
    host_ip: std::net::IpAddr,
    addrs: &BoundAddrs,
    quic: &QuicSecurity,
) -> Result<Context, DaemonError> {
    let policy = &config.gc.policy;
    let storage_config = StorageConfig {
        dir: config.storage.dir.clone(),
        keep: config.storage.keep,
        quota_bytes: policy.disk_threshold.as_u64(),
        high_watermark_percent: policy.disk_high_threshold_percent,
        low_watermark_percent: policy.disk_low_threshold_percent,
        task_ttl: policy.task_ttl,
    };
    let storage = tokio::task::spawn_blocking(move || Storage::open(storage_config))
        .await
        .map_err(|e| DaemonError::Config(format!("opening storage: {e}")))??;
    let backend = Backend::new(BackendConfig::default())?;
    let pieces = crate::quic::piece_fetcher(&config, quic)?;
    let host = host_info(&config, host_ip, addrs);
    let seed = host.seed;
    let limits = Limits {
        download: limiter(config.download.bandwidth_limit.as_u64()),
        back_to_source: limiter(config.download.back_to_source_bandwidth_limit.as_u64()),
        upload: limiter(config.upload.bandwidth_limit.as_u64()),
    };
    let rc = &config.seed_peer.ration;
    let ration =
        (seed && rc.enable).then(|| SeedRation::new(rc.pieces_in_flight, rc.max_pieces_in_flight));
    let tls = TlsLinks::load(&config.tls_files()?)?;
    let uploads = upload_slots(&config, ration.is_some());
    Ok(Arc::new(DaemonContext {
        // Filled by `join_schedulers` once names are resolved.
        schedulers: Schedulers::new(&[], tls.scheduler.clone()),
        tls,
        config,
        host,
        storage,
        backend,
        pieces,
        limits,
        activity: Arc::new(Activity::default()),
        ration,
        uploads,
        lifecycle: Lifecycle::default(),
    }))
}

/// The turns to send pieces, shared by the TCP and QUIC piece servers (one uplink). A
/// rationing seed paces its given pieces itself (`crate::ration`), so its servers send
/// whatever is asked up to the cap: two controllers on the same flows would each see the
/// other's line as a slow uplink.
fn upload_slots(config: &DaemonConfig, rationing: bool) -> Arc<UploadSlots> {
    let upload = &config.upload;
    let ceiling = upload.max_pieces_in_flight.max(1);
    let floor = if rationing {
        ceiling
    } else {
        upload.pieces_in_flight
    };
    UploadSlots::new(floor, ceiling)
}

/// This host as the schedulers see it.
fn host_info(config: &DaemonConfig, host_ip: std::net::IpAddr, addrs: &BoundAddrs) -> HostInfo {
    let hostname = config.hostname();
    let seed = config.seed_peer.enable;
    HostInfo {
        id: damselfly_core::host_id(&host_ip.to_string(), &hostname, seed),
        ip: host_ip,
        hostname,
        seed,
        host_type: config.seed_peer.host_type(),
        upload_port: addrs.upload.port(),
        piece_port: addrs.piece.port(),
        quic_port: addrs.quic.port(),
        idc: config.host.idc.clone(),
        location: config.host.location.clone(),
        max_tx_bandwidth: config.upload.bandwidth_limit.as_u64(),
        max_rx_bandwidth: config.download.bandwidth_limit.as_u64(),
        storage_dir: config.storage.dir.clone(),
    }
}

/// A start that failed half-way: the socket file and the embedded scheduler must not
/// outlive it.
fn abandon(
    error: DaemonError,
    addrs: &BoundAddrs,
    scheduler: &Option<EmbeddedScheduler>,
) -> DaemonError {
    remove_socket(&addrs.socket);
    if let Some((_, token, _)) = scheduler {
        token.cancel();
    }
    error
}

/// The loops beside the servers: announcing (and re-announcing held tasks to schedulers that
/// come back), scheduler refresh, GC, idle exit. Each ends when the daemon stops.
fn spawn_background(engine: &Arc<Engine>) {
    let ctx = engine.context().clone();
    let life = &ctx.lifecycle;
    life.spawn(announce_loop(ctx.clone()));
    life.spawn(gc_loop(engine.clone()));
    life.spawn(crate::held::watch_schedulers(ctx.clone()));
    if ctx.config.scheduler_source().is_dynamic() {
        life.spawn(dynconfig_loop(ctx.clone()));
    }
    if let Some(idle) = ctx.config.idle_exit {
        life.spawn(idle_watch(ctx.clone(), idle));
    }
    if let Some(ration) = ctx.ration.clone() {
        life.spawn(crate::ration::follow_upload_rates(ration, ctx.clone()));
    }
}

/// Every server, tracked by the lifecycle; each stops accepting when the daemon stops (the
/// gRPC servers then let their open calls, such as a dfget download, finish).
fn spawn_servers(engine: &Arc<Engine>, listeners: Listeners) {
    let ctx = engine.context().clone();
    let life = &ctx.lifecycle;
    let stop = life.stop_token();
    life.spawn(
        serve_upload(engine.clone(), listeners.upload, stop.clone())
            .instrument(tracing::info_span!("upload_server")),
    );
    life.spawn(
        serve_download(engine.clone(), listeners.socket, stop.clone())
            .instrument(tracing::info_span!("download_server")),
    );
    let piece_servers = piece_server_config(&ctx);
    life.spawn(damselfly_transfer::serve_vortex_with(
        listeners.piece,
        ctx.storage.clone(),
        ctx.limits.upload.clone(),
        stop.clone(),
        piece_servers.clone(),
    ));
    life.spawn(damselfly_transfer::serve_quic(
        listeners.quic,
        ctx.storage.clone(),
        ctx.limits.upload.clone(),
        stop.clone(),
        piece_servers,
    ));
    life.spawn(damselfly_monitor::serve(
        listeners.metrics,
        Endpoints::Metrics,
        stop.clone(),
    ));
    life.spawn(damselfly_monitor::serve(
        listeners.health,
        Endpoints::Health,
        stop,
    ));
}

/// `DfdaemonUpload` (and gRPC health) for peers and schedulers, on TCP.
async fn serve_upload(engine: Arc<Engine>, listener: TcpListener, stop: CancellationToken) {
    let tls = engine.context().tls.upload_server.clone();
    let upload = DfdaemonUploadServer::new(UploadService::new(engine))
        .max_decoding_message_size(damselfly_core::MAX_GRPC_MESSAGE_SIZE)
        .max_encoding_message_size(damselfly_core::MAX_GRPC_MESSAGE_SIZE);
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<DfdaemonUploadServer<UploadService>>()
        .await;
    let router = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(upload);
    let stopped = stop.cancelled_owned();
    let result = match tls {
        Some(tls) => {
            let incoming = damselfly_tls::grpc::incoming(listener, tls);
            router.serve_with_incoming_shutdown(incoming, stopped).await
        }
        None => {
            let incoming = damselfly_tls::grpc::plain_incoming(listener);
            router.serve_with_incoming_shutdown(incoming, stopped).await
        }
    };
    if let Err(error) = result {
        warn!(%error, "upload gRPC server failed");
    }
}

/// `DfdaemonDownload` (and gRPC health) for dfget, on the unix socket.
async fn serve_download(engine: Arc<Engine>, listener: UnixListener, stop: CancellationToken) {
    let download = DfdaemonDownloadServer::new(DownloadService::new(engine))
        .max_decoding_message_size(damselfly_core::MAX_GRPC_MESSAGE_SIZE)
        .max_encoding_message_size(damselfly_core::MAX_GRPC_MESSAGE_SIZE);
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<DfdaemonDownloadServer<DownloadService>>()
        .await;
    let result = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(download)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop.cancelled_owned())
        .await;
    if let Err(error) = result {
        warn!(%error, "download gRPC server failed");
    }
}

/// Limits of the TCP and of the QUIC piece server: each has its own socket caps; they share
/// the turns to send.
fn piece_server_config(ctx: &Context) -> VortexServerConfig {
    VortexServerConfig {
        on_uploaded: upload_hook(ctx),
        on_requested: request_hook(ctx),
        max_connections: ctx.config.upload.max_pieces_in_flight.max(1),
        slots: Arc::clone(&ctx.uploads),
        ..VortexServerConfig::default()
    }
}

/// A rationing seed learns of every completed upload from the piece servers.
fn upload_hook(ctx: &Context) -> Option<UploadHook> {
    ration_hook(ctx, SeedRation::uploaded)
}

/// A rationing seed learns of every piece request from the piece servers.
fn request_hook(ctx: &Context) -> Option<UploadHook> {
    ration_hook(ctx, SeedRation::requested)
}

/// `tell` the seed's ration about (task ID, piece number); None on a peer that does not ration.
fn ration_hook(ctx: &Context, tell: fn(&SeedRation, &str, u32)) -> Option<UploadHook> {
    ctx.ration.clone().map(|ration| {
        let hook: UploadHook = Arc::new(move |task_id: &str, number: u32| {
            tell(&ration, task_id, number);
        });
        hook
    })
}

async fn start_embedded_scheduler() -> Result<EmbeddedScheduler, DaemonError> {
    let listener = bind(
        "embedded scheduler",
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    )
    .await?;
    let addr = local_addr(&listener)?;
    let token = CancellationToken::new();
    let stop = token.clone();
    let handle = tokio::spawn(async move {
        let config = damselfly_scheduler::SchedulerConfig::default();
        if let Err(error) =
            damselfly_scheduler::serve(config, listener, stop.cancelled_owned()).await
        {
            warn!(%error, "embedded scheduler stopped with an error");
        }
    });
    info!(%addr, "embedded scheduler serving");
    Ok((addr, token, handle))
}

/// Resolves the scheduler list and announces this host to every scheduler on it. A daemon
/// whose schedulers cannot be reached yet still starts: downloads go to the origin until a
/// refresh finds one.
async fn join_schedulers(ctx: &Context) {
    let source = ctx.config.scheduler_source();
    if source == SchedulerSource::None {
        warn!("no scheduler configured; every download goes to the origin");
        return;
    }
    match source.resolve().await {
        Ok(addrs) => {
            ctx.schedulers.replace(&addrs);
        }
        Err(error) => {
            warn!(%error, "no scheduler yet; downloads go to the origin until a refresh finds one");
            return;
        }
    }
    let interval = ctx.config.scheduler.announce_interval;
    let accepted = ctx
        .schedulers
        .announce_host_all_with_retries(&ctx.host.to_proto(), interval)
        .await;
    if accepted == 0 {
        warn!("no scheduler accepted this host; downloads will go to the origin until one does");
    }
}

/// Every `dynconfig.refreshInterval`: resolves the scheduler names (and re-reads the
/// dynconfig file) again, puts the result on the ring, and announces this host to every
/// scheduler that has not accepted it yet (new ones, and ones that were down). A failed
/// refresh keeps the list it had.
async fn dynconfig_loop(ctx: Context) {
    let source = ctx.config.scheduler_source();
    let interval = ctx.config.dynconfig.refresh_interval;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = ctx.lifecycle.stopping() => return,
        }
        let addrs = match source.resolve().await {
            Ok(addrs) => addrs,
            Err(error) => {
                warn!(%error, "scheduler refresh failed; keeping the current schedulers");
                continue;
            }
        };
        let before = ctx.schedulers.addrs();
        ctx.schedulers.replace(&addrs);
        if ctx.schedulers.addrs() != before {
            info!(schedulers = ?addrs, "scheduler list changed");
        }
        announce_to(&ctx, &ctx.schedulers.unannounced()).await;
    }
}

async fn announce_to(ctx: &Context, addrs: &[std::net::SocketAddr]) {
    let interval = ctx.config.scheduler.announce_interval;
    for &addr in addrs {
        match ctx
            .schedulers
            .announce_host_to(addr, ctx.host.to_proto(), interval)
            .await
        {
            Ok(()) => info!(scheduler = %addr, "announced host"),
            Err(error) => {
                debug!(scheduler = %addr, %error, "announce failed; retrying at the next refresh")
            }
        }
    }
}

/// AnnounceHost to every scheduler each `announceInterval`.
async fn announce_loop(ctx: Context) {
    if ctx.config.scheduler_source() == SchedulerSource::None {
        return;
    }
    let interval = ctx.config.scheduler.announce_interval;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = ctx.lifecycle.stopping() => return,
        }
        ctx.schedulers
            .announce_host_all(&ctx.host.to_proto(), interval)
            .instrument(tracing::debug_span!("announce_host"))
            .await;
    }
}

/// Evicts by TTL and quota every `gc.interval`, sparing tasks being downloaded, and tells
/// the schedulers.
async fn gc_loop(engine: Arc<Engine>) {
    let ctx = engine.context().clone();
    let interval = ctx.config.gc.interval;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = ctx.lifecycle.stopping() => return,
        }
        let in_use = engine.in_flight_tasks();
        match ctx.storage.gc(&in_use).await {
            Ok(evicted) => {
                for task_id in evicted {
                    info!(%task_id, "evicted task");
                    ctx.schedulers.delete_task(&ctx.host.id, &task_id).await;
                }
            }
            Err(error) => warn!(%error, "cache GC failed"),
        }
    }
}

/// Cancels the daemon after `idle` without downloads or uploads.
async fn idle_watch(ctx: Context, idle: Duration) {
    let check = (idle / 4).clamp(Duration::from_millis(100), IDLE_CHECK_MAX);
    let mut uploaded = metrics::upload_bytes_total();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(check) => {}
            _ = ctx.lifecycle.stopping() => return,
        }
        let now = metrics::upload_bytes_total();
        if now != uploaded {
            uploaded = now;
            ctx.activity.touch();
        }
        if ctx.activity.idle_for().is_some_and(|quiet| quiet >= idle) {
            info!(idle = %humantime::format_duration(idle), "idle; exiting");
            ctx.lifecycle.stop();
            return;
        }
    }
}
