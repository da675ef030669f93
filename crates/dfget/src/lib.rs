//! dfget: downloads one URL through the local dfdaemon (`DfdaemonDownload.DownloadTask` on
//! its unix socket), starting a daemon with an in-process scheduler when none answers.
//!
//! [`run`] is the whole program for the thin `main`; [`execute`] is the same without the
//! printing, for tests.

pub mod args;
pub mod client;
pub mod daemon;
pub mod error;
pub mod progress;

pub use args::Args;
pub use error::{exit_code_for_status, DfgetError};

use client::DownloadSpec;
use progress::{Progress, Traffic};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Extra time the daemon gets past `--timeout` to report its own `DeadlineExceeded`, which
/// says more than dfget's guard can.
const TIMEOUT_GRACE: Duration = Duration::from_secs(10);

/// What a successful download did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub output: PathBuf,
    pub socket: PathBuf,
    pub traffic: Traffic,
    pub elapsed: Duration,
}

/// Runs dfget: the download, then a summary line or `dfget: error: …` on stderr.
pub async fn run(args: Args) -> ExitCode {
    match execute(args).await {
        Ok(outcome) => {
            eprintln!(
                "{}",
                outcome.traffic.summary(outcome.elapsed, &outcome.output)
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("dfget: error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

/// The download without the final printing. Ctrl-C drops the download future, which drops the
/// response stream and so cancels the download in the daemon.
pub async fn execute(args: Args) -> Result<Outcome, DfgetError> {
    let spec = download_spec(&args)?;
    let options = start_options(&args)?;
    let endpoint = args
        .endpoint
        .as_deref()
        .map(|p| absolute_arg(p, "--endpoint"))
        .transpose()?;
    log_task_id(&spec);
    let show_progress = !args.no_progress && std::io::stderr().is_terminal();
    tokio::select! {
        result = fetch(endpoint.as_deref(), &options, &spec, show_progress) => result,
        () = interrupted() => Err(DfgetError::Interrupted),
    }
}

async fn fetch(
    endpoint: Option<&Path>,
    options: &daemon::StartOptions,
    spec: &DownloadSpec,
    show_progress: bool,
) -> Result<Outcome, DfgetError> {
    let (socket, channel) = daemon::ensure(endpoint, options).await?;
    tracing::debug!(socket = %socket.display(), "dfdaemon answers");
    let progress = Progress::new(show_progress);
    let started = Instant::now();
    let download = client::download(channel, &socket, spec, &progress);
    let traffic = tokio::time::timeout(spec.timeout.saturating_add(TIMEOUT_GRACE), download)
        .await
        .map_err(|_| DfgetError::Timeout(spec.timeout))??;
    progress.clear();
    Ok(Outcome {
        output: spec.output.clone(),
        socket,
        traffic,
        elapsed: started.elapsed(),
    })
}

/// Resolves when Ctrl-C arrives; never, if the handler cannot be installed.
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Paths handed to a started daemon must be absolute: it runs in `/`, not in our directory.
fn start_options(args: &Args) -> Result<daemon::StartOptions, DfgetError> {
    let absolute =
        |p: &Option<PathBuf>, flag| p.as_deref().map(|p| absolute_arg(p, flag)).transpose();
    Ok(daemon::StartOptions {
        idle_exit: args.idle_exit,
        dfdaemon: absolute(&args.dfdaemon_path, "--dfdaemon-path")?,
        storage_dir: absolute(&args.daemon_storage_dir, "--daemon-storage-dir")?,
    })
}

/// An absolute form of a path flag; an empty value (say, `DFGET_ENDPOINT=`) is a usage error.
fn absolute_arg(path: &Path, flag: &str) -> Result<PathBuf, DfgetError> {
    if path.as_os_str().is_empty() {
        return Err(DfgetError::Usage(format!("{flag} is empty")));
    }
    std::path::absolute(path)
        .map_err(|e| DfgetError::Usage(format!("cannot resolve {flag} {}: {e}", path.display())))
}

/// Checks what can be checked locally and builds the request's inputs.
pub fn download_spec(args: &Args) -> Result<DownloadSpec, DfgetError> {
    let output = output_path(&args.output, args.overwrite)?;
    let filtered_query_params = if args.filtered_query_params.is_empty() {
        damselfly_core::id::default_filtered_query_params()
    } else {
        args.filtered_query_params.clone()
    };
    Ok(DownloadSpec {
        url: args.url.to_string(),
        output,
        digest: args.digest.as_ref().map(ToString::to_string),
        range: args.range,
        headers: args.headers.clone(),
        tag: args.tag.clone(),
        application: args.application.clone(),
        filtered_query_params,
        content_for_calculating_task_id: args.content_for_calculating_task_id.clone(),
        piece_length: args.piece_length,
        priority: args.priority,
        disable_back_to_source: args.disable_back_to_source,
        insecure_skip_verify: args.storage_insecure_skip_verify,
        timeout: args.timeout,
        rate_limit: args.rate_limit,
        overwrite: args.overwrite,
        force_hard_link: args.force_hard_link,
    })
}

/// The absolute output path (the daemon has another working directory), after checking that
/// its directory exists and that it does not clobber a file unasked.
pub fn output_path(output: &Path, overwrite: bool) -> Result<PathBuf, DfgetError> {
    let usage = DfgetError::Usage;
    let path = std::path::absolute(output).map_err(|e| {
        usage(format!(
            "cannot resolve the output path {}: {e}",
            output.display()
        ))
    })?;
    if path.to_str().is_none() {
        return Err(usage(format!(
            "the output path {} is not valid UTF-8",
            path.display()
        )));
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    if !dir.is_dir() {
        return Err(usage(format!(
            "the output directory {} does not exist",
            dir.display()
        )));
    }
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_dir() => Err(usage(format!(
            "the output path {} is a directory; -O takes a file name",
            path.display()
        ))),
        Ok(_) if !overwrite => Err(DfgetError::OutputExists(path)),
        _ => Ok(path),
    }
}

/// The task ID the daemon will compute, logged so a user can find the task in daemon logs.
fn log_task_id(spec: &DownloadSpec) {
    let id_spec = damselfly_core::TaskIdSpec {
        url: &spec.url,
        tag: spec.tag.as_deref(),
        application: spec.application.as_deref(),
        piece_length: spec.piece_length,
        filtered_query_params: &spec.filtered_query_params,
        content_for_calculating_task_id: spec.content_for_calculating_task_id.as_deref(),
        ..Default::default()
    };
    match id_spec.task_id() {
        Ok(task_id) => tracing::info!(%task_id, url = %spec.url, "downloading"),
        Err(e) => tracing::debug!("cannot compute the task ID locally: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn relative_output_becomes_absolute() {
        let path = output_path(Path::new("some-new-file.bin"), false).expect("cwd exists");
        assert!(path.is_absolute());
        assert!(path.ends_with("some-new-file.bin"));
    }

    #[test]
    fn output_checks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("no/such/dir/f");
        let err = output_path(&missing, false).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("does not exist"), "{err}");

        let err = output_path(dir.path(), true).unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");

        let existing = dir.path().join("f");
        std::fs::write(&existing, b"x").expect("write");
        let err = output_path(&existing, false).unwrap_err();
        assert_eq!(err.exit_code(), 1);
        assert!(err.to_string().contains("--overwrite"), "{err}");
        assert_eq!(output_path(&existing, true).ok(), Some(existing));
    }

    #[test]
    fn path_flags_become_absolute_and_must_not_be_empty() {
        let path = absolute_arg(Path::new("run/d.sock"), "--endpoint").expect("resolvable");
        assert!(path.is_absolute() && path.ends_with("run/d.sock"));
        let err = absolute_arg(Path::new(""), "--endpoint").unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--endpoint"), "{err}");
    }

    #[test]
    fn default_filtered_query_params_apply() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("f");
        let out = out.to_str().expect("utf-8 tempdir");
        let args = Args::try_parse_from(["dfget", "http://h/f", "-O", out]).expect("parses");
        let spec = download_spec(&args).expect("valid");
        assert_eq!(
            spec.filtered_query_params,
            damselfly_core::id::default_filtered_query_params()
        );
        let args = Args::try_parse_from([
            "dfget",
            "http://h/f",
            "-O",
            out,
            "--filtered-query-param",
            "x",
        ])
        .expect("parses");
        assert_eq!(
            download_spec(&args).map(|s| s.filtered_query_params).ok(),
            Some(vec!["x".into()])
        );
    }
}
