//! dfdaemon: the Damselfly peer daemon. All logic lives in `damselfly_daemon`.

use anyhow::Context as _;
use clap::Parser;
use damselfly_daemon::DaemonArgs;
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let args = DaemonArgs::parse();
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&args.log_level))
        .context("invalid --log-level")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: daemons usually log to files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = args.load_config().context("loading the configuration")?;
    if args.print_ca_cert {
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
        let shutdown = async move {
            tokio::select! {
                _ = terminate.recv() => tracing::info!("SIGTERM received"),
                _ = interrupt.recv() => tracing::info!("SIGINT received"),
            }
        };
        damselfly_daemon::run(config, shutdown)
            .await
            .context("dfdaemon failed")
    })
}
