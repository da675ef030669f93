//! One plan, two front doors: the flags and dfinit.yaml both resolve to a [`Plan`] (the mirror
//! and what to write for each runtime), and only the plan turns into file changes.

use crate::change::FileChange;
use crate::containerd::{self, MirroredRegistry, DEFAULT_CERTS_DIR};
use crate::docker;
use crate::error::DfinitError;
use crate::registries_conf::{self, ConfRegistry, SearchRegistries};
use clap::ValueEnum;
use std::collections::HashSet;
use std::path::PathBuf;
use url::Url;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Runtime {
    /// `certs.d/<registry>/hosts.toml` (+ `config_path` in config.toml).
    Containerd,
    /// `daemon.json` `registry-mirrors` (Docker Hub only, a Docker limit).
    Docker,
    /// `registries.conf` mirror entries.
    Crio,
    /// `registries.conf` mirror entries (the same file format as CRI-O's).
    Podman,
}

/// Dragonfly configures the first runtime of dfinit.yaml in this order.
pub const RUNTIME_PRECEDENCE: [Runtime; 4] = [
    Runtime::Containerd,
    Runtime::Docker,
    Runtime::Crio,
    Runtime::Podman,
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub mirror: Url,
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Containerd(ContainerdTarget),
    Docker {
        daemon_json: PathBuf,
    },
    /// CRI-O or podman.
    RegistriesConf(RegistriesConfTarget),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdTarget {
    /// config.toml whose CRI plugin must name the hosts directory; `None`: leave it alone.
    pub config: Option<PathBuf>,
    /// The hosts directory; `None`: the one `config` names, else [`DEFAULT_CERTS_DIR`].
    pub certs_dir: Option<PathBuf>,
    pub registries: Vec<MirroredRegistry>,
    /// Also write `_default/hosts.toml` for every registry not listed.
    pub catch_all: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistriesConfTarget {
    pub path: PathBuf,
    pub registries: Vec<ConfRegistry>,
    pub search: Option<SearchRegistries>,
}

impl Plan {
    /// Every file change the plan asks for (no-ops included).
    pub fn changes(&self) -> Result<Vec<FileChange>, DfinitError> {
        let mut changes = Vec::new();
        for target in &self.targets {
            changes.extend(target.changes(&self.mirror)?);
        }
        // A second change of one file would be planned from the original text and undo the
        // first one when applied.
        let mut seen = HashSet::new();
        if let Some(twice) = changes.iter().find(|c| !seen.insert(&c.path)) {
            return Err(DfinitError::InvalidArgument(format!(
                "{} would be written twice (the same registry listed twice, or crio and podman sharing one file)",
                twice.path.display()
            )));
        }
        Ok(changes)
    }
}

impl Target {
    fn changes(&self, mirror: &Url) -> Result<Vec<FileChange>, DfinitError> {
        match self {
            Self::Containerd(target) => target.changes(mirror),
            Self::Docker { daemon_json } => Ok(vec![docker::daemon_json(daemon_json, mirror)?]),
            Self::RegistriesConf(target) => Ok(vec![registries_conf::registries_conf(
                &target.path,
                &target.registries,
                target.search.as_ref(),
                mirror,
            )?]),
        }
    }
}

impl ContainerdTarget {
    fn changes(&self, mirror: &Url) -> Result<Vec<FileChange>, DfinitError> {
        let (certs_dir, point_config) = self.certs_dir()?;
        let mut changes = Vec::new();
        for registry in &self.registries {
            changes.push(containerd::hosts_toml(&certs_dir, registry, mirror)?);
        }
        if self.catch_all {
            changes.push(containerd::catch_all_hosts_toml(&certs_dir, mirror)?);
        }
        if let Some(config) = self.config.as_ref().filter(|_| point_config) {
            changes.push(containerd::config_path(config, &certs_dir)?);
        }
        Ok(changes)
    }

    /// The hosts directory, and whether config.toml must be pointed at it. As in Dragonfly, a
    /// directory config.toml already names is used as it is; an explicit one is written in.
    fn certs_dir(&self) -> Result<(PathBuf, bool), DfinitError> {
        match (&self.certs_dir, &self.config) {
            (Some(dir), config) => Ok((dir.clone(), config.is_some())),
            (None, None) => Ok((PathBuf::from(DEFAULT_CERTS_DIR), false)),
            (None, Some(config)) => Ok(match containerd::configured_certs_dir(config)? {
                Some(dir) => (dir, false),
                None => (PathBuf::from(DEFAULT_CERTS_DIR), true),
            }),
        }
    }
}
