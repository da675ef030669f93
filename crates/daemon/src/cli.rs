//! dfdaemon's command line. Flags override the config file, which overrides the defaults.

use crate::config::{DaemonConfig, SchedulerEndpoint};
use crate::error::DaemonError;
use bytesize::ByteSize;
use clap::Parser;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "dfdaemon",
    version,
    about = "Damselfly peer daemon: P2P downloads, piece server, local gRPC API"
)]
pub struct DaemonArgs {
    /// YAML config file with Dragonfly's dfdaemon.yaml keys [default: /etc/dragonfly/dfdaemon.yaml
    /// when it exists].
    #[arg(short = 'c', long, value_name = "FILE", env = "DFDAEMON_CONFIG")]
    pub config: Option<PathBuf>,

    /// Schedulers, IP:PORT or NAME:PORT (a name stands for all its addresses and is resolved
    /// again every dynconfig.refreshInterval), comma separated.
    #[arg(long, value_name = "ADDR[,ADDR]", value_delimiter = ',')]
    pub scheduler: Vec<SchedulerEndpoint>,

    /// Dragonfly's local dynconfig file (scheduler.addrs, scheduler.addr), read again every
    /// dynconfig.refreshInterval [default: /etc/dragonfly/dynconfig.yaml when it exists and
    /// nothing else names the schedulers].
    #[arg(long, value_name = "FILE", env = "DFDAEMON_DYNCONFIG")]
    pub dynconfig: Option<PathBuf>,

    /// IP to advertise; every server binds to it unless its own setting says otherwise.
    #[arg(long, value_name = "IP")]
    pub ip: Option<IpAddr>,

    /// Host name to advertise (default: the system's).
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,

    /// Cache directory.
    #[arg(long, value_name = "DIR")]
    pub storage_dir: Option<PathBuf>,

    /// Unix socket of the local gRPC API (dfget).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Run as a seed peer (the scheduler triggers it first for new tasks).
    #[arg(long)]
    pub seed_peer: bool,

    /// Upload gRPC port (0 = any free port).
    #[arg(long, value_name = "PORT")]
    pub upload_port: Option<u16>,

    /// Vortex TCP piece port (0 = any free port).
    #[arg(long, value_name = "PORT")]
    pub piece_port: Option<u16>,

    /// Vortex QUIC piece port, UDP (0 = any free port).
    #[arg(long, value_name = "PORT")]
    pub quic_port: Option<u16>,

    /// Prometheus metrics port (0 = any free port).
    #[arg(long, value_name = "PORT")]
    pub metrics_port: Option<u16>,

    /// /healthy port (0 = any free port).
    #[arg(long, value_name = "PORT")]
    pub health_port: Option<u16>,

    /// Run a scheduler in-process on 127.0.0.1 and use it as the only scheduler.
    #[arg(long)]
    pub embedded_scheduler: bool,

    /// Exit after this long without download or upload activity (e.g. 5m).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub idle_exit: Option<Duration>,

    /// Host-wide upload limit in bytes/s (e.g. 100MB, 1GiB, 1048576).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub upload_rate_limit: Option<ByteSize>,

    /// Host-wide download limit in bytes/s (e.g. 100MB, 1GiB, 1048576).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub download_rate_limit: Option<ByteSize>,

    /// Default upstream registry of the mirror (proxy.registryMirror.addr), e.g.
    /// http://127.0.0.1:5000, as Dragonfly 0.x/1.x's `--registry`.
    #[arg(long, value_name = "URL")]
    pub registry: Option<String>,

    /// Proxy / registry mirror port (proxy.server.port, default 4001; 0 = any free port).
    #[arg(long, value_name = "PORT")]
    pub proxy_port: Option<u16>,

    /// Print the proxy's CA certificate (generating the CA at proxy.server.caCert/caKey if
    /// neither file exists), for installing in clients' trust stores, and exit.
    #[arg(long)]
    pub print_ca_cert: bool,
}

fn labelled(path: &Path, keys: Vec<String>) -> Vec<String> {
    keys.into_iter()
        .map(|key| format!("{}: {key}", path.display()))
        .collect()
}

/// A byte rate: a plain integer or a size with a unit.
pub fn parse_rate(text: &str) -> Result<ByteSize, String> {
    let trimmed = text.trim().trim_end_matches("/s");
    if let Ok(bytes) = trimmed.parse::<u64>() {
        return Ok(ByteSize::b(bytes));
    }
    trimmed
        .parse::<ByteSize>()
        .map_err(|e| format!("invalid rate {text:?}: {e}"))
}

/// Dragonfly's dfdaemon config file, read when `--config` is not given and it exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/dragonfly/dfdaemon.yaml";

/// The configuration to run with, and what the operator should be told about it once
/// logging is up.
#[derive(Debug)]
pub struct LoadedConfig {
    pub config: DaemonConfig,
    /// The config file that was read, if any.
    pub file: Option<PathBuf>,
    /// `file: key` for every key of the config and dynconfig files that Damselfly ignores.
    pub ignored_keys: Vec<String>,
}

impl DaemonArgs {
    /// The config file (if any) with the flags applied, using Dragonfly's default paths.
    pub fn load_config(&self) -> Result<LoadedConfig, DaemonError> {
        self.load_config_with_defaults(
            Path::new(DEFAULT_CONFIG_PATH),
            Path::new(crate::dynconfig::DEFAULT_DYNCONFIG_PATH),
        )
    }

    /// As [`DaemonArgs::load_config`], with the default paths given (for tests).
    pub fn load_config_with_defaults(
        &self,
        default_config: &Path,
        default_dynconfig: &Path,
    ) -> Result<LoadedConfig, DaemonError> {
        let file = self.config.clone().or_else(|| {
            default_config
                .exists()
                .then(|| default_config.to_path_buf())
        });
        let (mut config, mut ignored_keys) = match &file {
            Some(path) => {
                let (config, ignored) = DaemonConfig::load(path)?;
                (config, labelled(path, ignored))
            }
            None => (DaemonConfig::default(), Vec::new()),
        };
        self.apply(&mut config);
        if config.dynconfig_path.is_none() && config.scheduler.addrs.is_empty() {
            config.dynconfig_path = default_dynconfig
                .exists()
                .then(|| default_dynconfig.to_path_buf());
        }
        if let Some(path) = &config.dynconfig_path {
            ignored_keys.extend(labelled(path, crate::dynconfig::ignored_keys(path)?));
        }
        config.validate()?;
        Ok(LoadedConfig {
            config,
            file,
            ignored_keys,
        })
    }

    /// Applies the flags: `--scheduler` wins over `--dynconfig`, which wins over the file's
    /// `scheduler.addrs`.
    pub fn apply(&self, config: &mut DaemonConfig) {
        if !self.scheduler.is_empty() {
            config.scheduler.addrs = self.scheduler.clone();
            config.dynconfig_path = None;
        } else if let Some(path) = &self.dynconfig {
            config.dynconfig_path = Some(path.clone());
        }
        if let Some(ip) = self.ip {
            config.host.ip = Some(ip);
        }
        if let Some(name) = &self.hostname {
            config.host.hostname = Some(name.clone());
        }
        if let Some(dir) = &self.storage_dir {
            config.storage.dir = dir.clone();
        }
        if let Some(socket) = &self.socket {
            config.download.server.socket_path = socket.clone();
        }
        if self.seed_peer {
            config.seed_peer.enable = true;
        }
        if let Some(port) = self.upload_port {
            config.upload.server.port = port;
        }
        if let Some(port) = self.piece_port {
            config.storage.server.tcp_port = port;
        }
        if let Some(port) = self.quic_port {
            config.storage.server.quic_port = port;
        }
        if let Some(port) = self.metrics_port {
            config.metrics.server.port = port;
        }
        if let Some(port) = self.health_port {
            config.health.server.port = port;
        }
        if self.embedded_scheduler {
            config.embedded_scheduler = true;
        }
        if let Some(idle) = self.idle_exit {
            config.idle_exit = Some(idle);
        }
        if let Some(rate) = self.upload_rate_limit {
            config.upload.bandwidth_limit = rate;
        }
        if let Some(rate) = self.download_rate_limit {
            config.download.bandwidth_limit = rate;
        }
        if let Some(registry) = &self.registry {
            config.proxy.registry_mirror.addr = registry.clone();
        }
        if let Some(port) = self.proxy_port {
            config.proxy.server.port = Some(port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn flags_override_the_file() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "scheduler:\n  addrs: ['10.0.0.1:8002']\nupload:\n  server:\n    port: 5000\nstorage:\n  dir: /from/file\nseedPeer:\n  type: normal\n"
        )
        .unwrap();
        let args = DaemonArgs::parse_from([
            "dfdaemon",
            "--config",
            file.path().to_str().unwrap(),
            "--scheduler",
            "127.0.0.1:8002,127.0.0.2:8002",
            "--ip",
            "127.0.0.5",
            "--storage-dir",
            "/from/flag",
            "--upload-port",
            "0",
            "--seed-peer",
            "--idle-exit",
            "5m",
            "--upload-rate-limit",
            "10MiB",
            "--download-rate-limit",
            "1048576",
            "--embedded-scheduler",
        ]);
        let c = load(&args).unwrap().config;
        assert_eq!(c.scheduler.addrs.len(), 2);
        assert_eq!(c.host.ip, Some("127.0.0.5".parse().unwrap()));
        assert_eq!(c.storage.dir, PathBuf::from("/from/flag"));
        assert_eq!(c.upload.server.port, 0);
        assert!(c.seed_peer.enable);
        assert_eq!(c.seed_peer.host_type(), 0, "type from the file is kept");
        assert_eq!(c.idle_exit, Some(Duration::from_secs(300)));
        assert_eq!(c.upload.bandwidth_limit, ByteSize::mib(10));
        assert_eq!(c.download.bandwidth_limit, ByteSize::b(1_048_576));
        assert!(c.embedded_scheduler);
        // Untouched by flags: from the file or the defaults.
        assert_eq!(c.metrics.server.port, crate::config::DEFAULT_METRICS_PORT);
        let ip: IpAddr = "127.0.0.5".parse().unwrap();
        assert_eq!(c.piece_addr(ip), "127.0.0.5:4005".parse().unwrap());
    }

    #[test]
    fn bad_flags_are_errors() {
        assert!(DaemonArgs::try_parse_from(["dfdaemon", "--scheduler", "nohost"]).is_err());
        assert!(DaemonArgs::try_parse_from(["dfdaemon", "--idle-exit", "soon"]).is_err());
        assert!(DaemonArgs::try_parse_from(["dfdaemon", "--upload-rate-limit", "fast"]).is_err());
        let missing = DaemonArgs {
            config: Some(PathBuf::from("/nonexistent/dfdaemon.yaml")),
            ..Default::default()
        };
        assert!(load(&missing).is_err());
    }

    fn load(args: &DaemonArgs) -> Result<LoadedConfig, DaemonError> {
        let none = Path::new("/nonexistent/default.yaml");
        args.load_config_with_defaults(none, none)
    }

    #[test]
    fn dragonfly_flags_and_default_files() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("dfdaemon.yaml");
        let dynconfig = dir.path().join("dynconfig.yaml");
        std::fs::write(&config, "manager:\n  addr: http://m:65003\n").unwrap();
        std::fs::write(&dynconfig, "scheduler:\n  addr: localhost:8002\n").unwrap();
        let args = DaemonArgs::parse_from(["dfdaemon"]);
        let loaded = args.load_config_with_defaults(&config, &dynconfig).unwrap();
        assert_eq!(loaded.file.as_deref(), Some(config.as_path()));
        assert_eq!(
            loaded.config.scheduler_source(),
            crate::config::SchedulerSource::File(dynconfig.clone())
        );
        assert_eq!(
            loaded.ignored_keys,
            [format!("{}: manager", config.display())]
        );
        let flagged = DaemonArgs::parse_from([
            "dfdaemon",
            "-c",
            config.to_str().unwrap(),
            "--scheduler",
            "sched:8002",
        ]);
        let loaded = flagged
            .load_config_with_defaults(&config, &dynconfig)
            .unwrap();
        assert_eq!(
            loaded.config.scheduler_source(),
            crate::config::SchedulerSource::Endpoints(vec!["sched:8002".parse().unwrap()]),
            "--scheduler wins over the default dynconfig"
        );
        let explicit = DaemonArgs::parse_from(["dfdaemon", "--dynconfig", "/nonexistent/d.yaml"]);
        assert!(load(&explicit).is_err(), "an explicit dynconfig must exist");
    }
}
