//! Flags and dfinit.yaml into one [`Plan`]: a flag given on the command line wins over the
//! file, the file wins over the built-in defaults.

use crate::cli::{DfinitArgs, DEFAULT_MIRROR};
use crate::config::{LoadedConfig, RegistriesConfSection, DEFAULT_PROXY_ALL_REGISTRIES};
use crate::containerd::{HostOptions, MirroredRegistry};
use crate::error::DfinitError;
use crate::plan::{
    ContainerdTarget, Plan, RegistriesConfTarget, Runtime, Target, RUNTIME_PRECEDENCE,
};
use crate::registries_conf::ConfRegistry;
use crate::registry::{parse_http_url, Registry, DOCKER_HUB};
use crate::{containerd, docker, registries_conf};
use std::path::{Path, PathBuf};
use url::Url;

/// The plan, and notes for the operator (sections of the file that go unused).
pub fn plan(
    args: &DfinitArgs,
    file: Option<&LoadedConfig>,
) -> Result<(Plan, Vec<String>), DfinitError> {
    let mirror = mirror(args, file)?;
    let (runtimes, notes) = runtimes(args, file)?;
    let targets = runtimes
        .into_iter()
        .map(|runtime| target(runtime, args, file))
        .collect::<Result<_, _>>()?;
    Ok((Plan { mirror, targets }, notes))
}

fn mirror(args: &DfinitArgs, file: Option<&LoadedConfig>) -> Result<Url, DfinitError> {
    if let Some(mirror) = &args.mirror {
        return parse_http_url(mirror);
    }
    match file.and_then(|f| f.proxy_addr().map(|addr| (f, addr))) {
        Some((file, addr)) => parse_http_url(addr).map_err(|e| file.error_at("proxy.addr", e)),
        None => parse_http_url(DEFAULT_MIRROR),
    }
}

/// `--runtime`, else the file's one runtime (Dragonfly's precedence), else those whose
/// configuration directory exists.
fn runtimes(
    args: &DfinitArgs,
    file: Option<&LoadedConfig>,
) -> Result<(Vec<Runtime>, Vec<String>), DfinitError> {
    if !args.runtimes.is_empty() {
        return Ok((args.runtimes.clone(), Vec::new()));
    }
    let Some(file) = file else {
        return Ok((detect(args)?, Vec::new()));
    };
    let present: Vec<Runtime> = RUNTIME_PRECEDENCE
        .into_iter()
        .filter(|runtime| has_section(file, *runtime))
        .collect();
    let Some((&chosen, rest)) = present.split_first() else {
        let note = format!(
            "{}: no containerRuntime section, nothing to configure (--runtime names one)",
            file.path.display()
        );
        return Ok((Vec::new(), vec![note]));
    };
    let notes = rest
        .iter()
        .map(|unused| {
            format!(
                "{}: ignoring `containerRuntime.{}`: only one runtime is configured from the file, and `containerRuntime.{}` comes first (--runtime picks others)",
                file.path.display(),
                name(*unused),
                name(chosen)
            )
        })
        .collect();
    Ok((vec![chosen], notes))
}

fn has_section(file: &LoadedConfig, runtime: Runtime) -> bool {
    let Some(sections) = file.sections() else {
        return false;
    };
    match runtime {
        Runtime::Containerd => sections.containerd.is_some(),
        Runtime::Docker => sections.docker.is_some(),
        Runtime::Crio => sections.crio.is_some(),
        Runtime::Podman => sections.podman.is_some(),
    }
}

/// The runtime's key in dfinit.yaml (and its `--runtime` value).
fn name(runtime: Runtime) -> &'static str {
    match runtime {
        Runtime::Containerd => "containerd",
        Runtime::Docker => "docker",
        Runtime::Crio => "crio",
        Runtime::Podman => "podman",
    }
}

/// Runtimes whose config directory exists (podman is covered by CRI-O's: one file).
fn detect(args: &DfinitArgs) -> Result<Vec<Runtime>, DfinitError> {
    let parent_exists = |p: &Path| p.parent().is_some_and(Path::exists);
    let certs_dir = or_default(&args.containerd_certs_dir, containerd::DEFAULT_CERTS_DIR);
    let found: Vec<Runtime> = [
        (Runtime::Containerd, parent_exists(&certs_dir)),
        (Runtime::Docker, parent_exists(&daemon_json(args, None))),
        (
            Runtime::Crio,
            parent_exists(&registries_conf_path(args, None)),
        ),
    ]
    .into_iter()
    .filter_map(|(runtime, present)| present.then_some(runtime))
    .collect();
    if found.is_empty() {
        return Err(DfinitError::InvalidArgument(
            "no container runtime configuration found; name one with --runtime or -c".into(),
        ));
    }
    Ok(found)
}

fn or_default(flag: &Option<PathBuf>, default: &str) -> PathBuf {
    flag.clone().unwrap_or_else(|| PathBuf::from(default))
}

fn target(
    runtime: Runtime,
    args: &DfinitArgs,
    file: Option<&LoadedConfig>,
) -> Result<Target, DfinitError> {
    let sections = file.and_then(LoadedConfig::sections);
    Ok(match runtime {
        Runtime::Containerd => Target::Containerd(containerd_target(args, file)?),
        Runtime::Docker => {
            let section = sections.and_then(|s| s.docker.as_ref());
            let path = section.and_then(|s| s.config_path.clone());
            Target::Docker {
                daemon_json: daemon_json(args, path),
            }
        }
        Runtime::Crio | Runtime::Podman => {
            let section = sections.and_then(|s| match runtime {
                Runtime::Podman => s.podman.as_ref(),
                _ => s.crio.as_ref(),
            });
            let section = file.zip(section);
            Target::RegistriesConf(registries_conf_target(args, section, name(runtime))?)
        }
    })
}

fn daemon_json(args: &DfinitArgs, from_file: Option<PathBuf>) -> PathBuf {
    args.docker_config
        .clone()
        .or(from_file)
        .unwrap_or_else(|| PathBuf::from(docker::DEFAULT_DAEMON_JSON))
}

fn registries_conf_path(args: &DfinitArgs, from_file: Option<PathBuf>) -> PathBuf {
    args.registries_conf
        .clone()
        .or(from_file)
        .unwrap_or_else(|| PathBuf::from(registries_conf::DEFAULT_REGISTRIES_CONF))
}

/// `--registry` values; `None` when none was given.
fn flag_registries(args: &DfinitArgs) -> Result<Option<Vec<Registry>>, DfinitError> {
    if args.registries.is_empty() {
        return Ok(None);
    }
    let parsed = args.registries.iter().map(|spec| Registry::parse(spec));
    parsed.collect::<Result<_, _>>().map(Some)
}

/// Mirrored when neither a flag nor the file lists registries.
fn default_registry() -> Result<Registry, DfinitError> {
    Registry::new(DOCKER_HUB, None)
}

fn containerd_target(
    args: &DfinitArgs,
    file: Option<&LoadedConfig>,
) -> Result<ContainerdTarget, DfinitError> {
    let section = file.zip(file.and_then(|f| f.sections()?.containerd.as_ref()));
    let plain = |registry| MirroredRegistry {
        registry,
        options: HostOptions::default(),
    };
    let registries = match (flag_registries(args)?, section) {
        (Some(registries), _) => registries.into_iter().map(plain).collect(),
        (None, Some((file, section))) => section.registries(&file.path)?,
        (None, None) => vec![plain(default_registry()?)],
    };
    // With a section, config.toml always takes part (Dragonfly's configPath has a default);
    // from flags alone only when --containerd-config names it.
    let config = args.containerd_config.clone().or_else(|| {
        let (_, section) = section?;
        Some(or_default(&section.config_path, containerd::DEFAULT_CONFIG))
    });
    let catch_all = section.is_some_and(|(_, s)| {
        s.proxy_all_registries
            .unwrap_or(DEFAULT_PROXY_ALL_REGISTRIES)
    });
    Ok(ContainerdTarget {
        config,
        certs_dir: args.containerd_certs_dir.clone(),
        registries,
        catch_all,
    })
}

fn registries_conf_target(
    args: &DfinitArgs,
    section: Option<(&LoadedConfig, &RegistriesConfSection)>,
    runtime: &str,
) -> Result<RegistriesConfTarget, DfinitError> {
    let registries = match (flag_registries(args)?, section) {
        (Some(registries), _) => registries.iter().map(ConfRegistry::from).collect(),
        (None, Some((file, section))) => {
            let key = format!("containerRuntime.{runtime}");
            section.registries(&file.path, &key)?
        }
        (None, None) => vec![ConfRegistry::from(&default_registry()?)],
    };
    let from_file = section.and_then(|(_, s)| s.config_path.clone());
    Ok(RegistriesConfTarget {
        path: registries_conf_path(args, from_file),
        registries,
        search: section.map(|(_, s)| s.search()),
    })
}
