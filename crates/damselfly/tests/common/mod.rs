//! Shared support for the end-to-end tests: an HTTP origin served from the test process
//! (damselfly-testkit's), a process harness that runs `dfscheduler` / `dfdaemon` / `dfget` as
//! real child processes, and a Prometheus text scraper.
//!
//! Every test gets its own block of loopback addresses (`127.R.B.n`, `R` random per test process,
//! `B` per cluster), so daemons bind their default ports side by side and parallel tests, or
//! parallel `cargo test` runs, do not collide. Every child is killed by PID when its `Cluster` is
//! dropped; on a failing test the logs of every process are printed.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub const MIB: usize = 1024 * 1024;

/// Upper bound for any single wait in the harness (readiness, one dfget). Generous: CI is a
/// shared 2-core machine running debug builds.
pub const DEFAULT_DFGET_TIMEOUT: Duration = Duration::from_secs(300);
const READY_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

// Each test binary uses its own share of these re-exports.
#[allow(unused_imports)]
pub use damselfly_testkit::{random_bytes, sha256_hex};

pub fn sha256_file(path: &Path) -> String {
    let mut file = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; MIB];
    loop {
        let n = file.read(&mut buf).expect("read output file");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hex::encode(hasher.finalize())
}

/// A port that was free on `ip` a moment ago.
pub fn free_port(ip: IpAddr) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// `N` distinct free ports of `ip`: the listeners stay bound until all are picked, since the
/// kernel may hand the same ephemeral port to two binds that do not overlap.
pub fn free_ports<const N: usize>(ip: IpAddr) -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind((ip, 0)).expect("bind an ephemeral port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("local addr").port())
}

/// What dfscheduler logs once its gRPC port is bound (`damselfly_scheduler::server`).
const SCHEDULER_SERVING: &str = "scheduler serving";
/// Attempts to start a process on freshly picked ports when another process took one of them
/// between the pick and the bind.
const PORT_RACE_ATTEMPTS: u32 = 3;

/// Second octet of every address this test process uses: random, so two concurrent runs of the
/// suite (e.g. two engineers on one machine) do not collide.
fn process_octet() -> u8 {
    static OCTET: OnceLock<u8> = OnceLock::new();
    *OCTET.get_or_init(|| 100 + (rand::random::<u8>() % 150))
}

/// A fresh third octet per cluster within this process.
fn next_block() -> u8 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    assert!(n < 255, "too many clusters in one test process");
    n as u8
}

/// Minimal blocking HTTP/1.0 GET; returns (status, body). Used for /metrics and /healthy so the
/// tests need no HTTP client runtime of their own.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header end"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    Ok((status, body.to_string()))
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// One sample of the Prometheus text format.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub value: f64,
}

pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name_and_labels, rest) = match line.find('{') {
            Some(_) => {
                let Some(close) = line.rfind('}') else {
                    continue;
                };
                (&line[..close + 1], &line[close + 1..])
            }
            None => match line.split_once(' ') {
                Some((n, r)) => (n, r),
                None => continue,
            },
        };
        let Some(value) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        let (name, labels) = match name_and_labels.find('{') {
            Some(open) => (
                name_and_labels[..open].to_string(),
                parse_labels(&name_and_labels[open + 1..name_and_labels.len() - 1]),
            ),
            None => (name_and_labels.to_string(), HashMap::new()),
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

fn parse_labels(s: &str) -> HashMap<String, String> {
    let mut labels = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(',') | Some(' ')) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() || chars.next() != Some('=') || chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                other => value.push(other),
            }
        }
        labels.insert(key.trim().to_string(), value);
    }
    labels
}

/// A scrape of one /metrics endpoint.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    pub raw: String,
}

impl Metrics {
    pub fn scrape(addr: SocketAddr) -> Metrics {
        let (status, body) =
            http_get(addr, "/metrics").unwrap_or_else(|e| panic!("scrape {addr}/metrics: {e}"));
        assert_eq!(status, 200, "GET {addr}/metrics answered {status}: {body}");
        Metrics {
            samples: parse_metrics(&body),
            raw: body,
        }
    }

    /// Sum of every sample named `name` whose labels include all of `want`. A metric that is not
    /// exported yet counts as 0 (labelled counters appear only once touched).
    pub fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                want.iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

pub const DOWNLOAD_TRAFFIC: &str = "damselfly_download_traffic_bytes_total";
pub const TASK_TOTAL: &str = "damselfly_download_task_total";

/// Bytes a daemon downloaded, split the way the metric is.
#[derive(Debug, Clone, Copy, Default)]
pub struct Traffic {
    pub back_to_source: f64,
    pub remote_seed: f64,
    pub remote_normal: f64,
    pub local: f64,
}

impl Traffic {
    pub fn from(m: &Metrics) -> Traffic {
        Traffic {
            back_to_source: m.sum(DOWNLOAD_TRAFFIC, &[("type", "back_to_source")]),
            remote_seed: m.sum(
                DOWNLOAD_TRAFFIC,
                &[("type", "remote_peer"), ("parent_type", "seed")],
            ),
            remote_normal: m.sum(
                DOWNLOAD_TRAFFIC,
                &[("type", "remote_peer"), ("parent_type", "normal")],
            ),
            local: m.sum(DOWNLOAD_TRAFFIC, &[("type", "local_peer")]),
        }
    }

    /// Bytes that crossed the network (origin + peers).
    pub fn network(&self) -> f64 {
        self.back_to_source + self.remote_seed + self.remote_normal
    }
}

// ---------------------------------------------------------------------------------------------
// Origin (damselfly-testkit's: one file map on 127.0.0.1, counted, tamperable, throttled)
// ---------------------------------------------------------------------------------------------

#[allow(unused_imports)]
pub use damselfly_testkit::{Origin, OriginFile, OriginRequest};

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

/// The scheduler of a cluster.
#[derive(Debug, Clone)]
pub struct SchedulerInfo {
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    /// The JSON API (`--http`).
    pub http: SocketAddr,
    pub pid: u32,
    pub log: PathBuf,
}

/// One running dfdaemon.
#[derive(Debug, Clone)]
pub struct DaemonInfo {
    pub name: String,
    pub ip: Ipv4Addr,
    pub socket: PathBuf,
    pub storage: PathBuf,
    pub upload_port: u16,
    pub piece_port: u16,
    pub metrics_port: u16,
    pub health_port: u16,
    pub pid: u32,
    pub log: PathBuf,
    pub seed: bool,
    /// The command line it was started with (for restarts).
    pub args: Vec<String>,
}

impl DaemonInfo {
    pub fn metrics_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip.into(), self.metrics_port)
    }
    pub fn health_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip.into(), self.health_port)
    }
    pub fn upload_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip.into(), self.upload_port)
    }
    pub fn piece_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip.into(), self.piece_port)
    }
    pub fn metrics(&self) -> Metrics {
        Metrics::scrape(self.metrics_addr())
    }
    pub fn traffic(&self) -> Traffic {
        Traffic::from(&self.metrics())
    }
    /// Downloads started and not yet ended, whole tasks and the piece fills behind range
    /// reads alike (a range read is answered before its pieces are all in).
    pub fn jobs_running(&self) -> f64 {
        let metrics = self.metrics();
        let count = |result| metrics.sum(TASK_TOTAL, &[("result", result)]);
        count("started") - count("finished") - count("failed")
    }
    /// Whole tasks finished (the duration histogram times those alone; range fills are
    /// finished jobs too).
    pub fn whole_tasks_finished(&self) -> f64 {
        self.metrics()
            .sum("damselfly_download_task_duration_seconds_count", &[])
    }
    /// Like [`DaemonInfo::traffic`] but `None` when the endpoint does not answer.
    pub fn try_traffic(&self) -> Option<Traffic> {
        match http_get(self.metrics_addr(), "/metrics") {
            Ok((200, body)) => Some(Traffic::from(&Metrics {
                samples: parse_metrics(&body),
                raw: body,
            })),
            _ => None,
        }
    }
    pub fn is_healthy(&self) -> bool {
        matches!(http_get(self.health_addr(), "/healthy"), Ok((200, _)))
    }
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Options for one daemon.
#[derive(Debug, Clone)]
pub struct DaemonOpts {
    pub seed: bool,
    /// `--scheduler` value; `None` = the cluster's scheduler.
    pub scheduler: Option<String>,
    pub extra: Vec<String>,
    pub log_level: String,
    /// `--storage-dir`; `None` = `{name}-storage` in the cluster's directory.
    pub storage: Option<PathBuf>,
}

impl Default for DaemonOpts {
    fn default() -> Self {
        DaemonOpts {
            seed: false,
            scheduler: None,
            extra: Vec::new(),
            log_level: std::env::var("DAMSELFLY_E2E_LOG_LEVEL").unwrap_or_else(|_| "info".into()),
            storage: None,
        }
    }
}

/// The result of one finished dfget.
#[derive(Debug)]
pub struct DfgetResult {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    pub timed_out: bool,
}

impl DfgetResult {
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
    pub fn success(&self) -> bool {
        self.code() == Some(0)
    }
}

/// A dfget that is still running.
pub struct RunningDfget {
    child: Child,
    started: Instant,
    stdout: PathBuf,
    stderr: PathBuf,
    timeout: Duration,
}

impl RunningDfget {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn wait(mut self) -> DfgetResult {
        let deadline = self.started + self.timeout;
        let mut timed_out = false;
        let status = loop {
            match self.child.try_wait().expect("try_wait dfget") {
                Some(status) => break Some(status),
                None if Instant::now() >= deadline => {
                    timed_out = true;
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
                None => thread::sleep(Duration::from_millis(20)),
            }
        };
        DfgetResult {
            status,
            stdout: fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: fs::read_to_string(&self.stderr).unwrap_or_default(),
            elapsed: self.started.elapsed(),
            timed_out,
        }
    }
}

impl Drop for RunningDfget {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn bin(name: &str) -> PathBuf {
    match name {
        "dfscheduler" => PathBuf::from(env!("CARGO_BIN_EXE_dfscheduler")),
        "dfdaemon" => PathBuf::from(env!("CARGO_BIN_EXE_dfdaemon")),
        "dfget" => PathBuf::from(env!("CARGO_BIN_EXE_dfget")),
        "dfctl" => PathBuf::from(env!("CARGO_BIN_EXE_dfctl")),
        other => panic!("unknown binary {other}"),
    }
}

/// A set of processes belonging to one test. Dropping it kills every child by PID (and every
/// extra PID registered with [`Cluster::adopt_pid`]); a panicking test gets every log printed.
pub struct Cluster {
    pub name: String,
    dir: Option<tempfile::TempDir>,
    pub root: PathBuf,
    block: u8,
    next_host: u8,
    procs: Vec<Proc>,
    adopted: Vec<u32>,
    /// Extra environment for every dfget this cluster runs.
    pub dfget_env: Vec<(String, String)>,
    pub scheduler: Option<SchedulerInfo>,
    pub daemons: Vec<DaemonInfo>,
    dfget_runs: u32,
}

impl Cluster {
    pub fn new(name: &str) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix(&format!("damselfly-e2e-{name}-"))
            .tempdir()
            .expect("tempdir");
        let root = dir.path().to_path_buf();
        Cluster {
            name: name.to_string(),
            dir: Some(dir),
            root,
            block: next_block(),
            next_host: 2,
            procs: Vec::new(),
            adopted: Vec::new(),
            dfget_env: Vec::new(),
            scheduler: None,
            daemons: Vec::new(),
            dfget_runs: 0,
        }
    }

    /// `127.R.B.n` for this cluster.
    pub fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, process_octet(), self.block, host)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn spawn(&mut self, name: &str, program: &Path, args: &[String]) -> u32 {
        let log = self.root.join(format!("{name}.log"));
        let out = fs::File::create(&log).expect("create log");
        let err = out.try_clone().unwrap();
        fs::write(
            self.root.join(format!("{name}.cmd")),
            format!("{} {}\n", program.display(), args.join(" ")),
        )
        .unwrap();
        let child = Command::new(program)
            .args(args)
            .env("HOME", &self.root)
            .env("XDG_RUNTIME_DIR", &self.root)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        let pid = child.id();
        self.procs.push(Proc {
            name: name.to_string(),
            child,
            log,
        });
        pid
    }

    fn proc_exited(&mut self, pid: u32) -> Option<ExitStatus> {
        self.procs
            .iter_mut()
            .find(|p| p.child.id() == pid)
            .and_then(|p| p.child.try_wait().ok().flatten())
    }

    /// Starts dfscheduler on a free port of 127.0.0.1 and waits until it accepts connections.
    pub fn start_scheduler(&mut self) -> SchedulerInfo {
        self.start_scheduler_with(&[])
    }

    /// [`Cluster::start_scheduler`] with extra flags (e.g. `--config FILE`).
    pub fn start_scheduler_with(&mut self, extra: &[String]) -> SchedulerInfo {
        let mut attempt = 1;
        loop {
            match self.try_start_scheduler(extra) {
                Ok(info) => {
                    self.scheduler = Some(info.clone());
                    return info;
                }
                Err(log) if attempt < PORT_RACE_ATTEMPTS && log.contains("already in use") => {
                    attempt += 1
                }
                Err(log) => panic!("dfscheduler exited early with {log}"),
            }
        }
    }

    /// Starts dfscheduler on fresh ports; `Err` carries its log when it exited before listening.
    /// Ready once its log says it bound its gRPC port and that port accepts.
    fn try_start_scheduler(&mut self, extra: &[String]) -> Result<SchedulerInfo, String> {
        let ip: IpAddr = Ipv4Addr::LOCALHOST.into();
        let [grpc, metrics, http] = free_ports::<3>(ip);
        let (addr, metrics, http) = (
            SocketAddr::new(ip, grpc),
            SocketAddr::new(ip, metrics),
            SocketAddr::new(ip, http),
        );
        let mut args = vec![
            "--listen".to_string(),
            addr.to_string(),
            "--metrics".to_string(),
            metrics.to_string(),
            "--http".to_string(),
            http.to_string(),
        ];
        args.extend(extra.iter().cloned());
        let pid = self.spawn("dfscheduler", &bin("dfscheduler"), &args);
        let log = self.root.join("dfscheduler.log");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.proc_exited(pid) {
                let text = fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("{status}\n{text}"));
            }
            // Its own "serving" line, not only a connection: another test's process may hold
            // the port (this one then exits with "already in use", seen in `.ci/run`).
            let serving = fs::read_to_string(&log).is_ok_and(|t| t.contains(SCHEDULER_SERVING));
            if serving && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "dfscheduler did not listen on {addr}"
            );
            thread::sleep(Duration::from_millis(50));
        }
        Ok(SchedulerInfo {
            addr,
            metrics,
            http,
            pid,
            log,
        })
    }

    /// SIGKILLs the scheduler and starts it again on the same addresses, with no state.
    pub fn restart_scheduler(&mut self) -> SchedulerInfo {
        let old = self.scheduler.clone().expect("no scheduler");
        self.kill(old.pid);
        let args = vec![
            "--listen".to_string(),
            old.addr.to_string(),
            "--metrics".to_string(),
            old.metrics.to_string(),
            "--http".to_string(),
            old.http.to_string(),
        ];
        let n = self
            .procs
            .iter()
            .filter(|p| p.name.starts_with("dfscheduler-restart"))
            .count()
            + 1;
        let name = format!("dfscheduler-restart{n}");
        let pid = self.spawn(&name, &bin("dfscheduler"), &args);
        let ready = wait_until(READY_TIMEOUT, || {
            TcpStream::connect_timeout(&old.addr, Duration::from_millis(200)).is_ok()
        });
        assert!(
            ready,
            "restarted dfscheduler did not listen on {}",
            old.addr
        );
        let info = SchedulerInfo {
            pid,
            log: self.root.join(format!("{name}.log")),
            ..old
        };
        self.scheduler = Some(info.clone());
        info
    }

    pub fn scheduler_metrics(&self) -> Metrics {
        Metrics::scrape(self.scheduler.as_ref().expect("no scheduler").metrics)
    }

    /// Starts a dfdaemon on the next `127.R.B.n` with its own storage dir and socket, and waits
    /// for `/healthy` and the socket.
    pub fn start_daemon(&mut self, opts: DaemonOpts) -> DaemonInfo {
        let host = self.next_host;
        self.next_host += 1;
        let ip = self.ip(host);
        let name = if opts.seed {
            format!("seed{host}")
        } else {
            format!("peer{host}")
        };
        let storage = opts
            .storage
            .clone()
            .unwrap_or_else(|| self.root.join(format!("{name}-storage")));
        let socket = self.root.join(format!("{name}.sock"));
        fs::create_dir_all(&storage).unwrap();
        let scheduler = opts.scheduler.clone().unwrap_or_else(|| {
            self.scheduler
                .as_ref()
                .expect("start the scheduler first")
                .addr
                .to_string()
        });
        let (upload_port, metrics_port, health_port, piece_port) = (4000, 4002, 4003, 4005);
        let mut args = vec![
            "--scheduler".into(),
            scheduler,
            "--ip".into(),
            ip.to_string(),
            "--hostname".into(),
            format!("{}-{name}", self.name),
            "--storage-dir".into(),
            storage.display().to_string(),
            "--socket".into(),
            socket.display().to_string(),
            "--upload-port".into(),
            upload_port.to_string(),
            "--piece-port".into(),
            piece_port.to_string(),
            "--metrics-port".into(),
            metrics_port.to_string(),
            "--health-port".into(),
            health_port.to_string(),
            "--log-level".into(),
            opts.log_level.clone(),
        ];
        if opts.seed {
            args.push("--seed-peer".into());
        }
        args.extend(opts.extra.iter().cloned());
        let pid = self.spawn(&name, &bin("dfdaemon"), &args);
        let info = DaemonInfo {
            name: name.clone(),
            ip,
            socket,
            storage,
            upload_port,
            piece_port,
            metrics_port,
            health_port,
            pid,
            log: self.root.join(format!("{name}.log")),
            seed: opts.seed,
            args,
        };
        self.wait_daemon_ready(&info);
        self.daemons.push(info.clone());
        info
    }

    fn wait_daemon_ready(&mut self, info: &DaemonInfo) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.proc_exited(info.pid) {
                panic!("dfdaemon {} exited early with {status}", info.name);
            }
            if info.socket.exists() && info.is_healthy() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "dfdaemon {} not healthy in time",
                info.name
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs a daemon and starts it again with the same command line (same storage dir,
    /// socket and address); its new log goes to `{name}-restart{n}.log`.
    pub fn restart_daemon(&mut self, info: &DaemonInfo) -> DaemonInfo {
        self.kill(info.pid);
        let n = self
            .procs
            .iter()
            .filter(|p| p.name.starts_with(&format!("{}-restart", info.name)))
            .count()
            + 1;
        let name = format!("{}-restart{n}", info.name);
        // The ports of the killed process are free again at once (SO_REUSEADDR), but a unix
        // socket file may be left behind; the daemon must cope with that itself.
        let pid = self.spawn(&name, &bin("dfdaemon"), &info.args);
        let new = DaemonInfo {
            pid,
            log: self.root.join(format!("{name}.log")),
            ..info.clone()
        };
        self.wait_daemon_ready(&new);
        new
    }

    /// Starts `dfget URL -O out -e socket --no-progress extra...` in the background.
    pub fn spawn_dfget(
        &mut self,
        socket: &Path,
        url: &str,
        out: &Path,
        extra: &[&str],
    ) -> RunningDfget {
        self.dfget_runs += 1;
        let n = self.dfget_runs;
        let stdout = self.root.join(format!("dfget-{n}.stdout"));
        let stderr = self.root.join(format!("dfget-{n}.stderr"));
        let mut args: Vec<String> = vec![
            url.to_string(),
            "-O".into(),
            out.display().to_string(),
            "-e".into(),
            socket.display().to_string(),
            "--no-progress".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        fs::write(
            self.root.join(format!("dfget-{n}.cmd")),
            format!("dfget {}\n", args.join(" ")),
        )
        .unwrap();
        let child = Command::new(bin("dfget"))
            .args(&args)
            .env("HOME", &self.root)
            .env("XDG_RUNTIME_DIR", &self.root)
            .env("NO_COLOR", "1")
            .envs(self.dfget_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).unwrap())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn dfget");
        RunningDfget {
            child,
            started: Instant::now(),
            stdout,
            stderr,
            timeout: DEFAULT_DFGET_TIMEOUT,
        }
    }

    pub fn dfget(&mut self, socket: &Path, url: &str, out: &Path, extra: &[&str]) -> DfgetResult {
        self.spawn_dfget(socket, url, out, extra).wait()
    }

    /// SIGKILL one of this cluster's children by PID and reap it.
    pub fn kill(&mut self, pid: u32) {
        if let Some(p) = self.procs.iter_mut().find(|p| p.child.id() == pid) {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    /// SIGTERMs one of this cluster's children and waits up to `within` for it to exit;
    /// `None` if it is still running then (it is SIGKILLed at the cluster's end).
    pub fn terminate(&mut self, pid: u32, within: Duration) -> Option<ExitStatus> {
        let p = self.procs.iter_mut().find(|p| p.child.id() == pid)?;
        // SAFETY: plain kill(2) on our own child, which is not reaped yet.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + within;
        loop {
            match p.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => return None,
            }
        }
    }

    pub fn is_running(&mut self, pid: u32) -> bool {
        self.procs
            .iter_mut()
            .find(|p| p.child.id() == pid)
            .map(|p| matches!(p.child.try_wait(), Ok(None)))
            .unwrap_or(false)
    }

    /// Take responsibility for killing a process this test did not spawn itself (the embedded
    /// default daemon).
    pub fn adopt_pid(&mut self, pid: u32) {
        if !self.adopted.contains(&pid) {
            self.adopted.push(pid);
        }
    }

    /// Ends a test: no process this cluster started may have logged a panic (a task that
    /// panicked inside a daemon that stayed up is still a bug).
    pub fn assert_no_panics(&self) {
        let mut found = Vec::new();
        for p in &self.procs {
            let text = fs::read_to_string(&p.log).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains("panicked at")) {
                found.push(format!("{}: {line}", p.name));
            }
        }
        assert!(
            found.is_empty(),
            "panics in the logs:\n  {}",
            found.join("\n  ")
        );
    }

    /// Everything worth reading when a test failed: every log and dfget output in the dir.
    pub fn dump_logs(&self) {
        let mut files = Vec::new();
        let mut dirs = vec![(self.root.clone(), 0)];
        while let Some((dir, depth)) = dirs.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for path in entries.flatten().map(|e| e.path()) {
                if path.is_dir() && depth < 2 {
                    dirs.push((path, depth + 1));
                } else if matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("log" | "stdout" | "stderr" | "cmd")
                ) {
                    files.push(path);
                }
            }
        }
        files.sort();
        for file in files {
            let text = fs::read_to_string(&file).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let skip = lines.len().saturating_sub(300);
            eprintln!(
                "===== {} ({} lines{}) =====",
                file.display(),
                lines.len(),
                if skip > 0 { ", last 300" } else { "" }
            );
            for line in &lines[skip..] {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in self.procs.iter_mut() {
            if let Ok(None) = p.child.try_wait() {
                let _ = p.child.kill();
            }
            let _ = p.child.wait();
        }
        for &pid in &self.adopted {
            kill_pid(pid);
        }
        if thread::panicking() {
            eprintln!(
                "===== test cluster {} failed; logs from {} =====",
                self.name,
                self.root.display()
            );
            for p in &self.procs {
                eprintln!(
                    "process {} pid {} log {}",
                    p.name,
                    p.child.id(),
                    p.log.display()
                );
            }
            self.dump_logs();
        }
        if std::env::var_os("DAMSELFLY_E2E_KEEP").is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!("keeping {}", dir.keep().display());
            }
        }
    }
}

/// SIGKILL a PID that is not our child, after checking it is still a dfdaemon (PIDs get reused).
pub fn kill_pid(pid: u32) {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "dfdaemon" {
        return;
    }
    // SAFETY: plain kill(2) on a specific PID.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // A killed orphan is reaped by init; a zombie counts as gone.
        if state
            .split(") ")
            .nth(1)
            .map(|s| s.starts_with('Z'))
            .unwrap_or(true)
        {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// PIDs of processes that hold the listening unix socket bound at `path` (from /proc/net/unix
/// and /proc/*/fd), plus dfdaemon processes whose command line names `path`.
pub fn pids_for_socket(path: &Path) -> Vec<u32> {
    let path_str = path.display().to_string();
    let mut inodes = Vec::new();
    if let Ok(table) = fs::read_to_string("/proc/net/unix") {
        for line in table.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() >= 8 && cols[7] == path_str {
                inodes.push(format!("socket:[{}]", cols[6]));
            }
        }
    }
    let mut pids = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return pids;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_daemon = args
            .first()
            .map(|a| a.ends_with("dfdaemon"))
            .unwrap_or(false);
        if is_daemon
            && args
                .iter()
                .any(|a| a == &path_str || a.ends_with(&format!("={path_str}")))
        {
            pids.push(pid);
            continue;
        }
        if inodes.is_empty() {
            continue;
        }
        if let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) {
            for fd in fds.flatten() {
                if let Ok(target) = fs::read_link(fd.path()) {
                    if inodes.iter().any(|i| target.as_os_str() == i.as_str()) {
                        pids.push(pid);
                        break;
                    }
                }
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Waits until `cond` holds, polling every 50 ms, up to `timeout`. Returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts a dfget succeeded and wrote exactly the origin's bytes.
pub fn assert_download_ok(result: &DfgetResult, out: &Path, file: &OriginFile) {
    assert!(
        result.success(),
        "dfget {} -> {} failed: code {:?} (timed out: {})\nstdout: {}\nstderr: {}",
        file.url,
        out.display(),
        result.code(),
        result.timed_out,
        result.stdout,
        result.stderr
    );
    let meta = fs::metadata(out).unwrap_or_else(|e| panic!("output {}: {e}", out.display()));
    assert_eq!(
        meta.len() as usize,
        file.len(),
        "output {} has the wrong size",
        out.display()
    );
    assert_eq!(
        sha256_file(out),
        file.sha256,
        "output {} differs from the origin",
        out.display()
    );
}

/// Sends `payload` to `addr`, half-closes, and reads whatever comes back for up to `wait`.
pub fn send_garbage(addr: SocketAddr, payload: &[u8], wait: Duration) {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(3)) else {
        return;
    };
    let _ = stream.set_write_timeout(Some(Duration::from_secs(3)));
    let _ = stream.set_read_timeout(Some(wait));
    let _ = stream.write_all(payload);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 4096];
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}
