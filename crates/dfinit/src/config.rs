//! dfinit.yaml in Dragonfly's format, so an operator's existing file works unchanged:
//!
//! ```yaml
//! proxy: {addr: http://127.0.0.1:4001}
//! containerRuntime:        # Dragonfly configures one: containerd > docker > crio > podman
//!   containerd: {configPath, registries: [{hostNamespace, serverAddr, capabilities,
//!                skipVerify, ca}], proxyAllRegistries}
//!   docker: {configPath}
//!   crio: {configPath, unqualifiedSearchRegistries, registries: [{prefix, location}]}
//!   podman: {same as crio}
//! ```
//!
//! Every field is optional here; the defaults live beside the code that uses them. A key that
//! dfinit does not read is reported by its dotted path, never dropped silently.

use crate::containerd::{HostOptions, MirroredRegistry};
use crate::error::DfinitError;
use crate::registries_conf::{
    ConfRegistry, SearchRegistries, DEFAULT_UNQUALIFIED_SEARCH_REGISTRIES,
};
use crate::registry::Registry;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Where Dragonfly's dfinit reads its config, read here too when it exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/dragonfly/dfinit.yaml";
/// Dragonfly's default for `proxyAllRegistries`: send every registry through the mirror.
pub const DEFAULT_PROXY_ALL_REGISTRIES: bool = true;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DfinitFile {
    pub proxy: Option<ProxySection>,
    pub container_runtime: Option<RuntimeSections>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ProxySection {
    /// dfdaemon's proxy, the mirror.
    pub addr: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RuntimeSections {
    pub containerd: Option<ContainerdSection>,
    pub docker: Option<DockerSection>,
    pub crio: Option<RegistriesConfSection>,
    pub podman: Option<RegistriesConfSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerdSection {
    /// config.toml (default `containerd::DEFAULT_CONFIG`).
    pub config_path: Option<PathBuf>,
    pub registries: Option<Vec<ContainerdRegistrySection>>,
    /// Also write `_default/hosts.toml` (default [`DEFAULT_PROXY_ALL_REGISTRIES`]).
    pub proxy_all_registries: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerdRegistrySection {
    pub host_namespace: Option<String>,
    pub server_addr: Option<String>,
    pub capabilities: Option<Vec<String>>,
    pub skip_verify: Option<bool>,
    pub ca: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DockerSection {
    /// daemon.json (default `docker::DEFAULT_DAEMON_JSON`).
    pub config_path: Option<PathBuf>,
}

/// CRI-O's and podman's section: both read `registries.conf`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistriesConfSection {
    /// registries.conf (default `registries_conf::DEFAULT_REGISTRIES_CONF`).
    pub config_path: Option<PathBuf>,
    pub unqualified_search_registries: Option<Vec<String>>,
    pub registries: Option<Vec<ConfRegistrySection>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ConfRegistrySection {
    pub prefix: Option<String>,
    pub location: Option<String>,
}

/// A read dfinit.yaml and the warnings it gave.
#[derive(Debug)]
pub struct LoadedConfig {
    pub path: PathBuf,
    pub file: DfinitFile,
    /// One line per key dfinit does not implement, naming its dotted path.
    pub warnings: Vec<String>,
}

/// Reads and parses `path`; an empty file (or one of comments only) is all defaults.
pub fn load(path: &Path) -> Result<LoadedConfig, DfinitError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| config_error(path, format!("cannot read it: {e}")))?;
    parse(path, &text)
}

/// [`load`] on the file's text; `path` names it in errors and warnings.
pub fn parse(path: &Path, text: &str) -> Result<LoadedConfig, DfinitError> {
    let mut ignored = Vec::new();
    let parsed: Option<DfinitFile> =
        serde_ignored::deserialize(serde_yaml::Deserializer::from_str(text), |key| {
            ignored.push(dotted(&key))
        })
        .map_err(|e| config_error(path, format!("not a valid dfinit config: {e}")))?;
    let warnings = ignored
        .iter()
        .map(|key| {
            format!(
                "{}: ignoring `{key}`: dfinit does not implement it",
                path.display()
            )
        })
        .collect();
    Ok(LoadedConfig {
        path: path.to_path_buf(),
        file: parsed.unwrap_or_default(),
        warnings,
    })
}

/// `containerRuntime.containerd.foo`: map keys and list indexes joined by dots. serde_ignored's
/// own rendering writes `?` for every `Option`, which would name no key an operator wrote.
fn dotted(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    let (parent, own) = match path {
        Path::Root => return String::new(),
        Path::Seq { parent, index } => (parent, index.to_string()),
        Path::Map { parent, key } => (parent, key.clone()),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => return dotted(parent),
    };
    match dotted(parent) {
        head if head.is_empty() => own,
        head => format!("{head}.{own}"),
    }
}

/// A bad value in the file at `key`.
pub fn config_error(path: &Path, reason: impl Into<String>) -> DfinitError {
    DfinitError::Config {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Re-labels an error about a value as one about `key` of the file.
fn at_key(path: &Path, key: &str) -> impl Fn(DfinitError) -> DfinitError {
    let (path, key) = (path.to_path_buf(), key.to_string());
    move |e| config_error(&path, format!("{key}: {e}"))
}

impl LoadedConfig {
    pub fn sections(&self) -> Option<&RuntimeSections> {
        self.file.container_runtime.as_ref()
    }

    /// `proxy.addr`, as written.
    pub fn proxy_addr(&self) -> Option<&str> {
        self.file.proxy.as_ref()?.addr.as_deref()
    }

    /// `e` as an error about `key` of this file.
    pub fn error_at(&self, key: &str, e: DfinitError) -> DfinitError {
        at_key(&self.path, key)(e)
    }
}

impl ContainerdSection {
    /// `registries` (none when absent, as in Dragonfly: `proxyAllRegistries` covers them).
    pub fn registries(&self, path: &Path) -> Result<Vec<MirroredRegistry>, DfinitError> {
        let entries = self.registries.as_deref().unwrap_or_default();
        entries
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                let key = format!("containerRuntime.containerd.registries.{i}");
                entry.mirrored().map_err(at_key(path, &key))
            })
            .collect()
    }
}

impl ContainerdRegistrySection {
    fn mirrored(&self) -> Result<MirroredRegistry, DfinitError> {
        let host = self.host_namespace.as_deref().unwrap_or_default();
        let registry = Registry::new(host, self.server_addr.as_deref())?;
        let mut options = HostOptions::default();
        if let Some(capabilities) = &self.capabilities {
            options.capabilities = capabilities.clone();
        }
        options.skip_verify = self.skip_verify;
        options.ca = self.ca.clone().unwrap_or_default();
        Ok(MirroredRegistry { registry, options })
    }
}

impl RegistriesConfSection {
    /// `registries` under `section` (`containerRuntime.crio`); none when absent, as in Dragonfly.
    pub fn registries(&self, path: &Path, section: &str) -> Result<Vec<ConfRegistry>, DfinitError> {
        let entries = self.registries.as_deref().unwrap_or_default();
        entries
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                let key = format!("{section}.registries.{i}");
                entry.conf_registry().map_err(at_key(path, &key))
            })
            .collect()
    }

    /// The file's list replaces the one in registries.conf; without one, Dragonfly's default
    /// fills in only where registries.conf has none.
    pub fn search(&self) -> SearchRegistries {
        match &self.unqualified_search_registries {
            Some(list) => SearchRegistries::Replace(list.clone()),
            None => SearchRegistries::IfMissing(
                DEFAULT_UNQUALIFIED_SEARCH_REGISTRIES
                    .iter()
                    .map(|r| r.to_string())
                    .collect(),
            ),
        }
    }
}

impl ConfRegistrySection {
    fn conf_registry(&self) -> Result<ConfRegistry, DfinitError> {
        let prefix = non_empty(&self.prefix);
        let location = non_empty(&self.location)
            .or_else(|| prefix.clone())
            .ok_or_else(|| {
                DfinitError::InvalidArgument("needs a `location` or a `prefix`".into())
            })?;
        Ok(ConfRegistry { prefix, location })
    }
}

/// The trimmed text, `None` for an absent or blank value (Dragonfly's default is "").
fn non_empty(text: &Option<String>) -> Option<String> {
    let text = text.as_deref()?.trim();
    (!text.is_empty()).then(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<LoadedConfig, DfinitError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dfinit.yaml");
        std::fs::write(&path, text).unwrap();
        load(&path)
    }

    #[test]
    fn unknown_keys_are_named_by_their_dotted_path() {
        let loaded = load_text(
            "proxy:\n  addr: http://127.0.0.1:4001\n  timeout: 3s\n\
             containerRuntime:\n  containerd:\n    foo: 1\n    registries:\n\
             \x20     - hostNamespace: docker.io\n        mirrors: []\nverbose: true\n",
        )
        .unwrap();
        let keys: Vec<&str> = loaded
            .warnings
            .iter()
            .map(|w| w.split('`').nth(1).unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "proxy.timeout",
                "containerRuntime.containerd.foo",
                "containerRuntime.containerd.registries.0.mirrors",
                "verbose"
            ]
        );
        assert!(loaded.warnings[1].contains("dfinit.yaml"));
    }

    #[test]
    fn empty_files_are_defaults_and_bad_ones_errors_naming_the_file() {
        for text in ["", "# nothing yet\n"] {
            let loaded = load_text(text).unwrap();
            assert!(loaded.sections().is_none() && loaded.warnings.is_empty());
        }
        for bad in [
            "proxy: [",
            "containerRuntime:\n  containerd:\n    proxyAllRegistries: maybe\n",
            "containerRuntime: 3\n",
        ] {
            let err = load_text(bad).unwrap_err();
            assert!(matches!(err, DfinitError::Config { .. }), "{err}");
            assert!(err.to_string().contains("dfinit.yaml"), "{err}");
            assert_eq!(err.exit_code(), crate::error::exit::USAGE);
        }
    }

    #[test]
    fn bad_entries_name_their_key() {
        let loaded = load_text(
            "containerRuntime:\n  containerd:\n    registries:\n      - hostNamespace: a/b\n",
        )
        .unwrap();
        let section = loaded.sections().unwrap().containerd.as_ref().unwrap();
        let err = section.registries(&loaded.path).unwrap_err();
        assert!(
            err.to_string()
                .contains("containerRuntime.containerd.registries.0"),
            "{err}"
        );
        let entry = ConfRegistrySection::default();
        assert!(entry.conf_registry().is_err());
    }
}
