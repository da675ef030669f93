//! dfdaemon: the Damselfly peer daemon. All logic lives in `damselfly_daemon`.

use anyhow::Context as _;
use clap::Parser;
use damselfly::logging::LogArgs;
use damselfly_daemon::DaemonArgs;
use tokio::signal::unix::{signal, SignalKind};

/// The daemon's own flags and Dragonfly's logging flags.
#[derive(Debug, Parser)]
#[command(
    name = "dfdaemon",
    version,
    about = "Damselfly peer daemon: P2P downloads, piece server, registry mirror and proxy, local gRPC API"
)]
struct Cli {
    #[command(flatten)]
    daemon: DaemonArgs,
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.log.init("dfdaemon")?;
    let loaded = cli
        .daemon
        .load_config()
        .context("loading the configuration")?;
    if let Some(file) = &loaded.file {
        tracing::info!(file = %file.display(), "configuration read");
    }
    for key in &loaded.ignored_keys {
        tracing::warn!(%key, "config key not implemented by Damselfly; ignored");
    }
    let config = loaded.config;
    if cli.daemon.print_ca_cert {
        let pem =
            damselfly_daemon::proxy::tls::ca_cert_pem(&config.proxy).context("the proxy CA")?;
        print!("{pem}");
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let mut terminate =
            signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let mut quit = signal(SignalKind::quit()).context("installing SIGQUIT handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = terminate.recv() => tracing::info!("SIGTERM received"),
                _ = interrupt.recv() => tracing::info!("SIGINT received"),
                _ = quit.recv() => tracing::info!("SIGQUIT received"),
            }
        };
        damselfly_daemon::run(config, shutdown)
            .await
            .context("dfdaemon failed")
    })
}
