//! dfdaemon's command line. Flags override the config file, which overrides the defaults.

use crate::config::DaemonConfig;
use crate::error::DaemonError;
use bytesize::ByteSize;
use clap::Parser;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "dfdaemon",
    version,
    about = "Damselfly peer daemon: P2P downloads, piece server, local gRPC API"
)]
pub struct DaemonArgs {
    /// YAML config file (Dragonfly dfdaemon.yaml keys).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Scheduler addresses, IP:PORT, comma separated.
    #[arg(long, value_name = "ADDR[,ADDR]", value_delimiter = ',')]
    pub scheduler: Vec<SocketAddr>,

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

    /// Log level or tracing filter (error, warn, info, debug, trace).
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: String,

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

impl DaemonArgs {
    /// The config file (if any) with the flags applied.
    pub fn load_config(&self) -> Result<DaemonConfig, DaemonError> {
        let mut config = match &self.config {
            Some(path) => DaemonConfig::load(path)?,
            None => DaemonConfig::default(),
        };
        self.apply(&mut config);
        config.validate()?;
        Ok(config)
    }

    pub fn apply(&self, config: &mut DaemonConfig) {
        if !self.scheduler.is_empty() {
            config.scheduler.addrs = self.scheduler.clone();
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
        let c = args.load_config().unwrap();
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
        assert!(missing.load_config().is_err());
    }
}
