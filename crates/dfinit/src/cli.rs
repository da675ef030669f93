//! dfinit's command line: which runtimes to point at which mirror, and a dry run.

use crate::change::FileChange;
use crate::error::DfinitError;
use crate::registry::{parse_http_url, Registry};
use crate::{containerd, docker, registries_conf};
use clap::{Parser, ValueEnum};
use std::path::{Path, PathBuf};

/// dfdaemon's proxy on this machine (Dragonfly's default address).
pub const DEFAULT_MIRROR: &str = "http://127.0.0.1:4001";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Runtime {
    /// `certs.d/<registry>/hosts.toml` (+ `config_path` with --containerd-config).
    Containerd,
    /// `daemon.json` `registry-mirrors` (Docker Hub only, a Docker limit).
    Docker,
    /// `registries.conf` mirror entries (CRI-O and podman read the same file).
    Crio,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "dfinit",
    version,
    about = "Point container runtimes at dfdaemon's registry mirror, keeping the rest of their configuration"
)]
pub struct DfinitArgs {
    /// The mirror (dfdaemon's proxy).
    #[arg(long, value_name = "URL", default_value = DEFAULT_MIRROR)]
    pub mirror: String,

    /// A registry to mirror: HOST or HOST=SERVER_URL (repeatable).
    #[arg(
        long = "registry",
        value_name = "HOST[=URL]",
        default_value = "docker.io"
    )]
    pub registries: Vec<String>,

    /// Runtimes to configure (repeatable); default: those whose config directory exists.
    #[arg(long = "runtime", value_enum)]
    pub runtimes: Vec<Runtime>,

    #[arg(long, value_name = "DIR", default_value = containerd::DEFAULT_CERTS_DIR)]
    pub containerd_certs_dir: PathBuf,

    /// Also set the CRI plugin's `config_path` in this containerd config.toml.
    #[arg(long, value_name = "FILE")]
    pub containerd_config: Option<PathBuf>,

    #[arg(long, value_name = "FILE", default_value = docker::DEFAULT_DAEMON_JSON)]
    pub docker_config: PathBuf,

    #[arg(long, value_name = "FILE", default_value = registries_conf::DEFAULT_REGISTRIES_CONF)]
    pub registries_conf: PathBuf,

    /// Print the changes as a diff and write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl DfinitArgs {
    /// Every file change the arguments ask for (no-ops included).
    pub fn plan(&self) -> Result<Vec<FileChange>, DfinitError> {
        let mirror = parse_http_url(&self.mirror)?;
        let registries = self
            .registries
            .iter()
            .map(|spec| Registry::parse(spec))
            .collect::<Result<Vec<_>, _>>()?;
        let mut changes = Vec::new();
        for runtime in self.runtimes_to_configure()? {
            match runtime {
                Runtime::Containerd => {
                    for registry in &registries {
                        changes.push(containerd::hosts_toml(
                            &self.containerd_certs_dir,
                            registry,
                            &mirror,
                        )?);
                    }
                    if let Some(config) = &self.containerd_config {
                        changes.push(containerd::config_path(config, &self.containerd_certs_dir)?);
                    }
                }
                Runtime::Docker => changes.push(docker::daemon_json(&self.docker_config, &mirror)?),
                Runtime::Crio => changes.push(registries_conf::registries_conf(
                    &self.registries_conf,
                    &registries,
                    &mirror,
                )?),
            }
        }
        Ok(changes)
    }

    fn runtimes_to_configure(&self) -> Result<Vec<Runtime>, DfinitError> {
        if !self.runtimes.is_empty() {
            return Ok(self.runtimes.clone());
        }
        let parent_exists = |p: &Path| p.parent().is_some_and(Path::exists);
        let found: Vec<Runtime> = [
            (
                Runtime::Containerd,
                parent_exists(&self.containerd_certs_dir),
            ),
            (Runtime::Docker, parent_exists(&self.docker_config)),
            (Runtime::Crio, parent_exists(&self.registries_conf)),
        ]
        .into_iter()
        .filter_map(|(runtime, present)| present.then_some(runtime))
        .collect();
        if found.is_empty() {
            return Err(DfinitError::InvalidArgument(
                "no container runtime configuration found; name one with --runtime".into(),
            ));
        }
        Ok(found)
    }

    /// Plans, then prints (dry run) or writes each change; returns what it said.
    pub fn run(&self) -> Result<String, DfinitError> {
        let mut report = String::new();
        for change in self.plan()? {
            if change.is_noop() {
                report.push_str(&format!("unchanged {}\n", change.path.display()));
            } else if self.dry_run {
                report.push_str(&change.diff());
            } else {
                change.apply()?;
                report.push_str(&format!("updated {}\n", change.path.display()));
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dry_run_writes_nothing_then_a_run_writes_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = |p: &str| dir.path().join(p).display().to_string();
        let base = [
            "dfinit",
            "--registry",
            "docker.io",
            "--registry",
            "127.0.0.1:5000=http://127.0.0.1:5000",
            "--runtime",
            "containerd",
            "--runtime",
            "docker",
            "--runtime",
            "crio",
        ];
        let files = [
            "--containerd-certs-dir".to_string(),
            path("certs.d"),
            "--containerd-config".to_string(),
            path("config.toml"),
            "--docker-config".to_string(),
            path("daemon.json"),
            "--registries-conf".to_string(),
            path("registries.conf"),
        ];
        let args = |dry: bool| {
            let mut all: Vec<String> = base.iter().map(|s| s.to_string()).collect();
            all.extend(files.iter().cloned());
            if dry {
                all.push("--dry-run".into());
            }
            DfinitArgs::parse_from(all)
        };
        let preview = args(true).run().unwrap();
        assert!(preview.contains("+++"), "{preview}");
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
        let report = args(false).run().unwrap();
        assert_eq!(report.matches("updated").count(), 5, "{report}");
        assert!(dir
            .path()
            .join("certs.d/127.0.0.1:5000/hosts.toml")
            .exists());
        let again = args(false).run().unwrap();
        assert_eq!(again.matches("unchanged").count(), 5, "{again}");
    }

    #[test]
    fn bad_arguments() {
        let bad = DfinitArgs::parse_from(["dfinit", "--mirror", "nope", "--runtime", "docker"]);
        assert!(bad.plan().is_err());
        let none = DfinitArgs::parse_from([
            "dfinit",
            "--containerd-certs-dir",
            "/nonexistent/a/b",
            "--docker-config",
            "/nonexistent/c/d",
            "--registries-conf",
            "/nonexistent/e/f",
        ]);
        assert!(none.plan().is_err());
    }
}
