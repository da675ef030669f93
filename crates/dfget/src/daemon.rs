//! The embedded default (docs/DESIGN.md): when no dfdaemon answers, dfget starts one with an
//! in-process scheduler in the background and uses it. The daemon outlives dfget (it exits by
//! itself after `--idle-exit`), so the next dfget finds it warm with its cache.

use crate::client::{probe, Probe};
use crate::error::DfgetError;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

use crate::args::DEFAULT_ENDPOINT;

/// How long a started (or starting) daemon gets to answer on its socket.
const START_TIMEOUT: Duration = Duration::from_secs(15);
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Lines of the daemon's log shown when it fails to start.
const LOG_TAIL_LINES: usize = 10;

/// How to start a daemon if none answers.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub idle_exit: Duration,
    pub dfdaemon: Option<PathBuf>,
    pub storage_dir: Option<PathBuf>,
}

/// A channel to a daemon that answers, started if needed. Returns the socket actually used.
pub async fn ensure(
    endpoint: Option<&Path>,
    options: &StartOptions,
) -> Result<(PathBuf, Channel), DfgetError> {
    if let Some(socket) = endpoint {
        return ensure_at(socket, options)
            .await
            .map(|c| (socket.to_path_buf(), c));
    }
    // A system daemon on the standard socket serves every user, so it comes first.
    let default = PathBuf::from(DEFAULT_ENDPOINT);
    if let Probe::Alive(channel) = probe(&default).await {
        return Ok((default, channel));
    }
    let socket = if socket_dir_writable(&default) {
        default
    } else {
        user_socket()
    };
    tracing::debug!(socket = %socket.display(), "no dfdaemon on the standard socket");
    ensure_at(&socket, options).await.map(|c| (socket, c))
}

async fn ensure_at(socket: &Path, options: &StartOptions) -> Result<Channel, DfgetError> {
    if let Probe::Alive(channel) = probe(socket).await {
        return Ok(channel);
    }
    prepare_socket_dir(socket)?;
    // Two dfgets starting at once must not start two daemons on one socket: the second
    // waits for the first's lock, then finds its daemon alive.
    let _lock = lock(socket).await?;
    match probe(socket).await {
        Probe::Alive(channel) => Ok(channel),
        Probe::Unusable(reason) => Err(DfgetError::NoDaemon(reason)),
        Probe::Unresponsive => wait_for(socket, None).await,
        Probe::Absent => start(socket, options).await,
    }
}

async fn start(socket: &Path, options: &StartOptions) -> Result<Channel, DfgetError> {
    remove_stale_socket(socket)?;
    let storage_dir = options
        .storage_dir
        .clone()
        .unwrap_or_else(default_storage_dir);
    std::fs::create_dir_all(&storage_dir).map_err(|e| {
        DfgetError::NoDaemon(format!(
            "no dfdaemon on {}; cannot create its storage directory {}: {e}",
            socket.display(),
            storage_dir.display()
        ))
    })?;
    let program = match &options.dfdaemon {
        Some(path) => path.clone(),
        None => find_dfdaemon().ok_or_else(|| {
            DfgetError::NoDaemon(format!(
                "no dfdaemon on {} and no dfdaemon program next to dfget or on PATH",
                socket.display()
            ))
        })?,
    };
    let log = storage_dir.join("dfdaemon.log");
    let idle = humantime::format_duration(options.idle_exit).to_string();
    let child = spawn(&program, socket, &storage_dir, &idle, &log)?;
    eprintln!(
        "dfget: no dfdaemon on {}; started a local one (pid {}, scheduler in-process, exits after {idle} idle); log: {}",
        socket.display(),
        child.id(),
        log.display()
    );
    wait_for(socket, Some((child, log))).await
}

/// Address every server of an embedded-default daemon binds to.
const EMBEDDED_DAEMON_IP: &str = "127.0.0.1";

/// `dfdaemon --embedded-scheduler --idle-exit D --socket S --storage-dir DIR`, detached.
fn spawn(
    program: &Path,
    socket: &Path,
    storage_dir: &Path,
    idle: &str,
    log: &Path,
) -> Result<Child, DfgetError> {
    let cannot = |what: &str, e: std::io::Error| {
        DfgetError::NoDaemon(format!(
            "no dfdaemon on {}; cannot {what}: {e}",
            socket.display()
        ))
    };
    let log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| cannot(&format!("open {}", log.display()), e))?;
    let log_err = log_file
        .try_clone()
        .map_err(|e| cannot("duplicate the log file", e))?;
    let mut command = Command::new(program);
    command
        .args(embedded_args(socket, storage_dir, idle))
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .current_dir("/");
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent. A new session
    // keeps the daemon alive when dfget's terminal sends SIGINT (Ctrl-C) or SIGHUP.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
        .spawn()
        .map_err(|e| cannot(&format!("run {}", program.display()), e))
}

/// The embedded daemon's command line.
fn embedded_args(socket: &Path, storage_dir: &Path, idle: &str) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = [
        // An empty config: the node's /etc/dragonfly/dfdaemon.yaml belongs to the cluster daemon.
        "--config",
        "/dev/null",
        "--embedded-scheduler",
        "--idle-exit",
        idle,
        // A private daemon: loopback only, any free ports, so it never collides with (or is
        // reachable like) a real node's dfdaemon.
        "--ip",
        EMBEDDED_DAEMON_IP,
        "--upload-port",
        "0",
        "--piece-port",
        "0",
        "--quic-port",
        "0",
        "--metrics-port",
        "0",
        "--health-port",
        "0",
    ]
    .iter()
    .map(Into::into)
    .collect();
    args.extend(["--socket".into(), socket.into()]);
    args.extend(["--storage-dir".into(), storage_dir.into()]);
    args
}

/// Polls until the socket answers; fails early if our child exits, late after the timeout.
async fn wait_for(
    socket: &Path,
    mut child: Option<(Child, PathBuf)>,
) -> Result<Channel, DfgetError> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Probe::Alive(channel) = probe(socket).await {
            return Ok(channel);
        }
        if let Some((process, log)) = child.as_mut() {
            if let Ok(Some(status)) = process.try_wait() {
                return Err(DfgetError::NoDaemon(format!(
                    "the dfdaemon dfget started exited ({status}) before answering on {}; log: {}{}",
                    socket.display(),
                    log.display(),
                    log_tail(log)
                )));
            }
        }
        if Instant::now() >= deadline {
            return Err(DfgetError::NoDaemon(match &child {
                Some((process, log)) => format!(
                    "the dfdaemon dfget started (pid {}) did not answer on {} within {}s; log: {}",
                    process.id(),
                    socket.display(),
                    START_TIMEOUT.as_secs(),
                    log.display()
                ),
                None => format!(
                    "something accepts connections on {} but does not answer as a dfdaemon (waited {}s)",
                    socket.display(),
                    START_TIMEOUT.as_secs()
                ),
            }));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The end of the daemon's log, so a failed start explains itself without opening a file.
fn log_tail(log: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(log) else {
        return String::new();
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
    if tail.is_empty() {
        return String::new();
    }
    format!("\n  {}", tail.join("\n  "))
}

/// An exclusive `flock` on `<socket>.lock`, held until the returned file is dropped. Polled
/// rather than blocking, so Ctrl-C is not stuck behind another dfget's daemon start.
async fn lock(socket: &Path) -> Result<File, DfgetError> {
    let mut path = socket.as_os_str().to_owned();
    path.push(".lock");
    let path = PathBuf::from(path);
    let cannot =
        |e: std::io::Error| DfgetError::NoDaemon(format!("cannot lock {}: {e}", path.display()));
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(cannot)?;
    // The holder gives up after START_TIMEOUT plus a few probes.
    let deadline = Instant::now() + 2 * START_TIMEOUT;
    loop {
        if try_flock(&file).map_err(cannot)? {
            return Ok(file);
        }
        if Instant::now() >= deadline {
            return Err(DfgetError::NoDaemon(format!(
                "another dfget has been starting a dfdaemon on {} for too long",
                socket.display()
            )));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// `Ok(false)` while another process holds the lock.
fn try_flock(file: &File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor that `file` keeps open for the duration of the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.kind() == std::io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Creates the socket's directory. The per-user socket directory must be ours and private:
/// under /tmp another user could create it first, plant a socket and receive our downloads.
fn prepare_socket_dir(socket: &Path) -> Result<(), DfgetError> {
    let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    let private = Some(dir) == user_socket().parent();
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    if private {
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| {
        DfgetError::NoDaemon(format!(
            "cannot create {} for the dfdaemon socket: {e}",
            dir.display()
        ))
    })?;
    if private {
        let meta = std::fs::metadata(dir)
            .map_err(|e| DfgetError::NoDaemon(format!("cannot stat {}: {e}", dir.display())))?;
        // SAFETY: geteuid cannot fail and has no side effects.
        let uid = unsafe { libc::geteuid() };
        if meta.uid() != uid || meta.mode() & 0o022 != 0 {
            return Err(DfgetError::NoDaemon(format!(
                "{} is not a private directory of this user; refusing to put a dfdaemon socket there",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Removes a socket file nobody listens on, so the new daemon can bind the path.
fn remove_stale_socket(socket: &Path) -> Result<(), DfgetError> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(socket).map_err(|e| {
            DfgetError::NoDaemon(format!(
                "cannot remove the stale socket {}: {e}",
                socket.display()
            ))
        }),
        Ok(_) => Err(DfgetError::NoDaemon(format!(
            "{} exists and is not a socket",
            socket.display()
        ))),
        Err(_) => Ok(()),
    }
}

/// Can this user create the socket: is its directory, or the closest existing ancestor,
/// writable?
fn socket_dir_writable(socket: &Path) -> bool {
    let mut dir = socket.parent();
    while let Some(d) = dir {
        if d.exists() {
            return access_writable(d);
        }
        dir = d.parent();
    }
    false
}

fn access_writable(dir: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: c_path is a valid NUL-terminated string for the duration of the call.
    unsafe { libc::access(c_path.as_ptr(), libc::W_OK) == 0 }
}

/// Per-user socket for non-root users: `$XDG_RUNTIME_DIR/damselfly/dfdaemon.sock`, else
/// `/tmp/damselfly-$UID/dfdaemon.sock`.
pub fn user_socket() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir.join("damselfly").join("dfdaemon.sock"),
        _ => user_tmp_dir().join("dfdaemon.sock"),
    }
}

fn user_tmp_dir() -> PathBuf {
    // SAFETY: getuid cannot fail and has no side effects.
    let uid = unsafe { libc::getuid() };
    PathBuf::from(format!("/tmp/damselfly-{uid}"))
}

/// `/var/lib/dragonfly` for root (like the official daemon), a per-user cache otherwise.
pub fn default_storage_dir() -> PathBuf {
    // SAFETY: geteuid cannot fail and has no side effects.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/dragonfly");
    }
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    if let Some(cache) = std::env::var_os("XDG_CACHE_HOME").and_then(absolute) {
        return cache.join("damselfly");
    }
    // Service accounts often have a HOME that does not exist (/nonexistent).
    if let Some(home) = std::env::var_os("HOME")
        .and_then(absolute)
        .filter(|h| h.is_dir())
    {
        return home.join(".cache").join("damselfly");
    }
    user_tmp_dir().join("storage")
}

/// `dfdaemon` next to the running dfget (an unpacked release or `target/debug`), else on PATH.
fn find_dfdaemon() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("dfdaemon")));
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("dfdaemon"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    beside.into_iter().chain(on_path).find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writable_checks_the_closest_existing_ancestor() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(socket_dir_writable(&dir.path().join("a/b/c/d.sock")));
        assert!(socket_dir_writable(&dir.path().join("d.sock")));
    }

    #[test]
    fn user_socket_is_per_user() {
        let socket = user_socket();
        assert!(socket.is_absolute());
        assert!(socket.ends_with("dfdaemon.sock"));
    }

    #[test]
    fn storage_dir_is_absolute() {
        assert!(default_storage_dir().is_absolute());
    }

    #[test]
    fn stale_socket_is_removed_but_other_files_are_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("s.sock");
        drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
        assert!(remove_stale_socket(&socket).is_ok());
        assert!(!socket.exists());
        assert!(remove_stale_socket(&socket).is_ok(), "missing is fine");
        std::fs::write(&socket, b"not a socket").expect("write");
        assert!(remove_stale_socket(&socket).is_err());
    }

    #[tokio::test]
    async fn the_start_lock_is_exclusive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("d.sock");
        let held = lock(&socket).await.expect("the first lock");
        let other = File::options()
            .write(true)
            .open(dir.path().join("d.sock.lock"))
            .expect("open the lock file");
        assert!(!try_flock(&other).expect("flock works"), "held elsewhere");
        drop(held);
        assert!(try_flock(&other).expect("flock works"), "released");
    }

    #[test]
    fn log_tail_shows_the_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("d.log");
        let text: String = (0..30).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&log, text).expect("write");
        let tail = log_tail(&log);
        assert!(tail.contains("line 29") && tail.contains("line 20"));
        assert!(!tail.contains("line 19"));
        assert_eq!(log_tail(&dir.path().join("missing")), "");
    }
}
