//! dfscheduler: the Damselfly scheduler (Dragonfly v2 `scheduler.v2.Scheduler`). All logic
//! lives in `damselfly_scheduler`; this binary reads flags and config, binds, and waits for a
//! signal.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use damselfly::logging::LogArgs;
use damselfly_scheduler::config::parse_metrics_addr;
use damselfly_scheduler::SchedulerConfig;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Dragonfly's scheduler config file, read when `--config` is not given and it exists.
const DEFAULT_CONFIG_PATH: &str = "/etc/dragonfly/scheduler.yaml";

/// Flags win over the config file; unset flags leave the file (or the defaults) alone.
#[derive(Debug, Parser)]
#[command(
    name = "dfscheduler",
    version,
    about = "Damselfly P2P scheduler (Dragonfly v2 compatible)"
)]
struct Args {
    /// gRPC listen address [default: 0.0.0.0:8002, or server.listen / listenIP:port from --config]
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// YAML config file with Dragonfly scheduler keys [default: /etc/dragonfly/scheduler.yaml
    /// when it exists]
    #[arg(short = 'c', long, value_name = "FILE", env = "DFSCHEDULER_CONFIG")]
    config: Option<PathBuf>,
    /// Metrics + /healthy address, `:PORT`, or `none` [default: <listen ip>:8000]
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// JSON API address (preheat jobs, hosts, tasks), `:PORT`, or `none`
    /// [default: <listen ip>:8080, or server.http.addr from --config]
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    #[command(flatten)]
    log: LogArgs,
}

impl Args {
    /// The configuration, and the keys of its file that Damselfly ignores.
    fn load_config(&self) -> anyhow::Result<(SchedulerConfig, Vec<String>)> {
        let default = PathBuf::from(DEFAULT_CONFIG_PATH);
        let file = self
            .config
            .clone()
            .or_else(|| default.exists().then_some(default));
        let (mut config, ignored) = match &file {
            Some(path) => {
                tracing::info!(file = %path.display(), "reading the configuration");
                SchedulerConfig::load(path)?
            }
            None => (SchedulerConfig::default(), Vec::new()),
        };
        if let Some(listen) = self.listen {
            config.server.listen = Some(listen);
        }
        if let Some(metrics) = &self.metrics {
            let listen_ip = config.listen_addr().ip();
            match parse_metrics_addr(metrics, listen_ip)? {
                Some(addr) => {
                    config.metrics.enable = true;
                    config.metrics.addr = Some(addr.to_string());
                }
                None => config.metrics.enable = false,
            }
        }
        if let Some(http) = &self.http {
            let listen_ip = config.listen_addr().ip();
            match parse_metrics_addr(http, listen_ip)? {
                Some(addr) => {
                    config.server.http.enable = true;
                    config.server.http.addr = Some(addr.to_string());
                }
                None => config.server.http.enable = false,
            }
        }
        config.validate()?;
        Ok((config, ignored))
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.log.init("dfscheduler")?;
    let (config, ignored) = args.load_config().context("loading the configuration")?;
    for key in ignored {
        tracing::warn!(%key, "config key not implemented by Damselfly; ignored");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(config))
}

async fn run(config: SchedulerConfig) -> anyhow::Result<()> {
    let listen = config.listen_addr();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the scheduler to {listen}"))?;
    let metrics_addr = config.metrics_addr()?;
    let api = bind_optional(config.http_addr()?, "the JSON API", "JSON API at /api/v1").await?;
    let (stop_tx, stop_rx) = watch::channel(false);

    let metrics = bind_optional(
        metrics_addr,
        "the metrics server",
        "metrics at /metrics, health at /healthy",
    )
    .await?
    .map(|listener| {
        tokio::spawn(damselfly_scheduler::serve_metrics(
            listener,
            wait_stop(stop_rx.clone()),
        ))
    });

    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
        let _ = stop_tx.send(true);
    });

    tracing::info!(%listen, "dfscheduler starting");
    let served =
        damselfly_scheduler::serve_with_api(config, listener, api, wait_stop(stop_rx)).await;
    if let Err(e) = served {
        // Without this, /healthy kept answering while nothing served gRPC, so probes passed.
        if let Some(metrics) = metrics {
            metrics.abort();
        }
        return Err(e).context("scheduler failed");
    }
    if let Some(metrics) = metrics {
        if let Err(e) = metrics.await {
            tracing::warn!(error = %e, "metrics server task ended abnormally");
        }
    }
    tracing::info!("dfscheduler stopped");
    Ok(())
}

/// Binds `addr` when one is configured, logging what it serves.
async fn bind_optional(
    addr: Option<std::net::SocketAddr>,
    what: &str,
    serves: &str,
) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {what} to {addr}"))?;
    tracing::info!(%addr, "{serves}");
    Ok(Some(listener))
}

async fn wait_stop(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
