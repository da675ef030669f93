//! dfget: download a URL through the local dfdaemon. The program lives in `damselfly-dfget`;
//! this is only the process entry: flags, logging, runtime.

use clap::Parser as _;
use damselfly_dfget::{run, Args};
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => return usage_error(&e),
    };
    init_logging(&args.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("dfget: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

/// Help and version go to stdout with exit 0; usage errors are `dfget: error: …` on stderr
/// with exit 2, before anything contacts a daemon.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        // `print` reports a closed stdout (`dfget --help | head -1`) instead of panicking.
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    eprint!("dfget: {e}");
    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
}

/// dfget's own logs at the chosen level; libraries (hyper, h2, tonic) stay at warn so
/// `-l debug` shows the download, not HTTP/2 frames.
fn init_logging(level: &str) {
    let filter = EnvFilter::try_new(format!(
        "warn,damselfly_dfget={level},damselfly_core={level}"
    ))
    .unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: daemons usually log to files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
