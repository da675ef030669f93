//! dfinit's command line: Dragonfly's (`-c/--config`, `-l/--log-level`, `--console`, `-V`)
//! plus flags that say what to do without a config file, and a dry run.

use crate::change::FileChange;
use crate::config::{self, LoadedConfig, DEFAULT_CONFIG_PATH};
use crate::error::DfinitError;
use crate::plan::{Plan, Runtime};
use crate::resolve;
use crate::{containerd, docker, registries_conf};
use clap::{Parser, ValueEnum};
use std::path::{Path, PathBuf};

/// dfdaemon's proxy on this machine (Dragonfly's default address).
pub const DEFAULT_MIRROR: &str = "http://127.0.0.1:4001";

/// Dragonfly's `-l` values. dfinit's own messages go to stderr; warnings about the config
/// file are printed at every level, since an unread key must never pass unnoticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
#[value(rename_all = "lower")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "dfinit",
    version,
    about = "Point container runtimes at dfdaemon's registry mirror, keeping the rest of their configuration"
)]
pub struct DfinitArgs {
    /// dfinit.yaml in Dragonfly's format; without -c, the default is read when it exists and
    /// no --runtime is given. Flags given on the command line win over the file.
    #[arg(short = 'c', long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Below warn, dfinit names the config file it reads; warnings are printed at every level.
    #[arg(short = 'l', long, value_enum, ignore_case = true, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,

    /// Accepted for Dragonfly's command lines: dfinit always writes to the console (stderr).
    #[arg(long)]
    pub console: bool,

    #[arg(long, value_name = "URL", help = format!(
        "The mirror (dfdaemon's proxy) [default: proxy.addr of the config file, else {DEFAULT_MIRROR}]"
    ))]
    pub mirror: Option<String>,

    /// A registry to mirror: HOST or HOST=SERVER_URL (repeatable) [default: the config file's
    /// registries, else docker.io].
    #[arg(long = "registry", value_name = "HOST[=URL]")]
    pub registries: Vec<String>,

    /// Runtimes to configure (repeatable) [default: the config file's, else those whose
    /// config directory exists].
    #[arg(long = "runtime", value_enum)]
    pub runtimes: Vec<Runtime>,

    #[arg(long, value_name = "DIR", help = format!(
        "containerd's hosts directory [default: the one config.toml names, else {}]",
        containerd::DEFAULT_CERTS_DIR
    ))]
    pub containerd_certs_dir: Option<PathBuf>,

    /// Also point the CRI plugin of this containerd config.toml at the hosts directory
    /// (the config file's containerd section implies its configPath).
    #[arg(long, value_name = "FILE")]
    pub containerd_config: Option<PathBuf>,

    #[arg(long, value_name = "FILE", help = format!(
        "docker's daemon.json [default: the config file's, else {}]",
        docker::DEFAULT_DAEMON_JSON
    ))]
    pub docker_config: Option<PathBuf>,

    #[arg(long, value_name = "FILE", help = format!(
        "CRI-O's and podman's registries.conf [default: the config file's, else {}]",
        registries_conf::DEFAULT_REGISTRIES_CONF
    ))]
    pub registries_conf: Option<PathBuf>,

    /// Print the changes as a diff and write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// What the flags and the config file resolve to.
#[derive(Debug)]
pub struct Resolved {
    pub plan: Plan,
    /// The config file read, if any.
    pub config_file: Option<PathBuf>,
    /// Keys of the file dfinit does not implement, and sections it leaves unused.
    pub warnings: Vec<String>,
}

impl DfinitArgs {
    /// The config file to read: `-c`, else `default_config` if it exists and no `--runtime`
    /// says what to do instead.
    pub fn config_file(&self, default_config: &Path) -> Option<PathBuf> {
        match &self.config {
            Some(path) => Some(path.clone()),
            None if self.runtimes.is_empty() && default_config.exists() => {
                Some(default_config.to_path_buf())
            }
            None => None,
        }
    }

    /// Reads the config file (`default_config` standing for `/etc/dragonfly/dfinit.yaml`)
    /// and merges it with the flags.
    pub fn resolve(&self, default_config: &Path) -> Result<Resolved, DfinitError> {
        let loaded: Option<LoadedConfig> = self
            .config_file(default_config)
            .map(|path| config::load(&path))
            .transpose()?;
        let (plan, notes) = resolve::plan(self, loaded.as_ref())?;
        let (config_file, mut warnings) = match loaded {
            Some(loaded) => (Some(loaded.path), loaded.warnings),
            None => (None, Vec::new()),
        };
        warnings.extend(notes);
        Ok(Resolved {
            plan,
            config_file,
            warnings,
        })
    }

    /// Every file change the arguments ask for (no-ops included).
    pub fn plan(&self) -> Result<Vec<FileChange>, DfinitError> {
        self.resolve(Path::new(DEFAULT_CONFIG_PATH))?.plan.changes()
    }

    /// Plans, then prints (dry run) or writes each change; returns what it said.
    pub fn run(&self) -> Result<String, DfinitError> {
        self.run_with(Path::new(DEFAULT_CONFIG_PATH))
    }

    /// [`run`](Self::run) with another default config path.
    pub fn run_with(&self, default_config: &Path) -> Result<String, DfinitError> {
        let resolved = self.resolve(default_config)?;
        if let Some(path) = resolved.config_file.as_ref() {
            if self.log_level <= LogLevel::Info {
                // Say which file, since the default one is read without being named.
                eprintln!("dfinit: using {}", path.display());
            }
        }
        for warning in &resolved.warnings {
            eprintln!("dfinit: warning: {warning}");
        }
        let mut report = String::new();
        for change in resolved.plan.changes()? {
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

/// The whole program: parse, run, print; errors go to stderr with their exit code (2 for a
/// bad flag or config file, 1 for a file that cannot be read or written).
pub fn main() -> std::process::ExitCode {
    let args = DfinitArgs::parse();
    match args.run() {
        Ok(report) => {
            print!("{report}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dfinit: error: {e}");
            std::process::ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Target;

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
        let nowhere = Path::new("/nonexistent/dfinit.yaml");
        let bad = DfinitArgs::parse_from(["dfinit", "--mirror", "nope", "--runtime", "docker"]);
        assert!(bad.resolve(nowhere).is_err());
        let none = DfinitArgs::parse_from([
            "dfinit",
            "--containerd-certs-dir",
            "/nonexistent/a/b",
            "--docker-config",
            "/nonexistent/c/d",
            "--registries-conf",
            "/nonexistent/e/f",
        ]);
        let err = none.resolve(nowhere).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit::USAGE);
    }

    /// Dragonfly's example dfinit.yaml, one runtime section at a time, in `dir`.
    fn example(dir: &Path, runtime: &str) -> PathBuf {
        let at = |name: &str| dir.join(name).display().to_string();
        let sections = [
            format!(
                "  containerd:\n    configPath: {}\n    registries:\n\
                 \x20     - hostNamespace: docker.io\n        serverAddr: https://index.docker.io\n\
                 \x20       capabilities: [\"pull\", \"resolve\"]\n        skipVerify: true\n\
                 \x20       ca: [\"/etc/certs/ca.crt\"]\n\
                 \x20     - hostNamespace: ghcr.io\n        serverAddr: https://ghcr.io\n\
                 \x20       capabilities: [\"pull\"]\n    proxyAllRegistries: true\n",
                at("config.toml")
            ),
            format!("  docker:\n    configPath: {}\n", at("daemon.json")),
            format!(
                "  crio:\n    configPath: {}\n\
                 \x20   unqualifiedSearchRegistries: [\"registry.fedoraproject.org\", \"docker.io\"]\n\
                 \x20   registries:\n      - prefix: docker.io\n        location: docker.io\n",
                at("registries.conf")
            ),
        ];
        let chosen: String = sections
            .iter()
            .filter(|s| runtime == "all" || s.starts_with(&format!("  {runtime}:")))
            .cloned()
            .collect();
        let path = dir.join("dfinit.yaml");
        let text = format!("proxy:\n  addr: http://127.0.0.1:4001\ncontainerRuntime:\n{chosen}");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn run_config(config: &Path, extra: &[&str]) -> String {
        let mut args = vec!["dfinit", "-c", config.to_str().unwrap()];
        args.extend_from_slice(extra);
        DfinitArgs::parse_from(args)
            .run_with(Path::new("/nonexistent/dfinit.yaml"))
            .unwrap()
    }

    fn read(path: PathBuf) -> String {
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn dragonfly_example_containerd() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs.d");
        let config_toml = format!(
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"{}\"\n",
            certs.display()
        );
        std::fs::write(dir.path().join("config.toml"), &config_toml).unwrap();
        let report = run_config(&example(dir.path(), "containerd"), &[]);
        assert_eq!(report.matches("updated").count(), 3, "{report}");
        assert_eq!(
            read(certs.join("docker.io/hosts.toml")),
            "server = \"https://index.docker.io\"\n\n\
             [host.\"http://127.0.0.1:4001\"]\n\
             capabilities = [\"pull\", \"resolve\"]\n\
             skip_verify = true\n\
             ca = [\"/etc/certs/ca.crt\"]\n\n\
             [host.\"http://127.0.0.1:4001\".header]\n\
             X-Dragonfly-Registry = \"https://index.docker.io\"\n"
        );
        assert_eq!(
            read(certs.join("ghcr.io/hosts.toml")),
            "server = \"https://ghcr.io\"\n\n\
             [host.\"http://127.0.0.1:4001\"]\n\
             capabilities = [\"pull\"]\n\n\
             [host.\"http://127.0.0.1:4001\".header]\n\
             X-Dragonfly-Registry = \"https://ghcr.io\"\n"
        );
        assert_eq!(
            read(certs.join("_default/hosts.toml")),
            "[host.\"http://127.0.0.1:4001\"]\ncapabilities = [\"pull\", \"resolve\"]\n"
        );
        // config.toml already named the hosts directory: left as it was.
        assert_eq!(read(dir.path().join("config.toml")), config_toml);
    }

    #[test]
    fn containerd_config_without_config_path_gets_one() {
        let dir = tempfile::tempdir().unwrap();
        let config = example(dir.path(), "containerd");
        std::fs::write(dir.path().join("config.toml"), "version = 3\n").unwrap();
        // As in Dragonfly, containerd's usual hosts directory: planned, not written here.
        let args = DfinitArgs::parse_from(["dfinit", "-c", config.to_str().unwrap()]);
        let changes = args
            .resolve(Path::new("/none"))
            .unwrap()
            .plan
            .changes()
            .unwrap();
        let paths: Vec<&Path> = changes.iter().map(|c| c.path.as_path()).collect();
        assert!(paths.contains(&Path::new("/etc/containerd/certs.d/docker.io/hosts.toml")));
        assert!(paths.contains(&Path::new("/etc/containerd/certs.d/_default/hosts.toml")));
        let config_change = changes.last().unwrap();
        assert_eq!(
            config_change.after,
            "version = 3\n\n[plugins.\"io.containerd.cri.v1.images\".registry]\n\
             config_path = \"/etc/containerd/certs.d\"\n"
        );
    }

    #[test]
    fn dragonfly_example_docker() {
        let dir = tempfile::tempdir().unwrap();
        run_config(&example(dir.path(), "docker"), &[]);
        assert_eq!(
            read(dir.path().join("daemon.json")),
            "{\n  \"registry-mirrors\": [\n    \"http://127.0.0.1:4001\"\n  ]\n}\n"
        );
    }

    #[test]
    fn dragonfly_example_crio_and_podman() {
        let expected =
            "unqualified-search-registries = [\"registry.fedoraproject.org\", \"docker.io\"]\n\n\
             [[registry]]\nprefix = \"docker.io\"\nlocation = \"docker.io\"\n\n\
             [[registry.mirror]]\nlocation = \"127.0.0.1:4001\"\ninsecure = true\n";
        let dir = tempfile::tempdir().unwrap();
        run_config(&example(dir.path(), "crio"), &[]);
        assert_eq!(read(dir.path().join("registries.conf")), expected);
        let podman = tempfile::tempdir().unwrap();
        let config = example(podman.path(), "crio");
        let text = read(config.clone()).replace("  crio:", "  podman:");
        std::fs::write(&config, text).unwrap();
        run_config(&config, &[]);
        assert_eq!(read(podman.path().join("registries.conf")), expected);
    }

    #[test]
    fn one_runtime_from_the_file_and_a_warning_for_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let config = example(dir.path(), "all");
        let args = DfinitArgs::parse_from(["dfinit", "-c", config.to_str().unwrap()]);
        let resolved = args.resolve(Path::new("/none")).unwrap();
        assert_eq!(resolved.plan.targets.len(), 1);
        assert!(matches!(resolved.plan.targets[0], Target::Containerd(_)));
        let ignored: Vec<&String> = resolved.warnings.iter().collect();
        assert_eq!(ignored.len(), 2, "{ignored:?}");
        assert!(
            ignored[0].contains("`containerRuntime.docker`"),
            "{ignored:?}"
        );
        assert!(
            ignored[1].contains("`containerRuntime.crio`"),
            "{ignored:?}"
        );
    }

    #[test]
    fn unknown_key_gives_a_warning_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = example(dir.path(), "docker");
        let text = read(config.clone()) + "  containerd:\n    foo: bar\n";
        std::fs::write(&config, text).unwrap();
        let args = DfinitArgs::parse_from(["dfinit", "-c", config.to_str().unwrap()]);
        let warnings = args.resolve(Path::new("/none")).unwrap().warnings;
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("`containerRuntime.containerd.foo`")),
            "{warnings:?}"
        );
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = example(dir.path(), "all");
        let certs = dir.path().join("mine.d");
        let args = DfinitArgs::parse_from([
            "dfinit",
            "-c",
            config.to_str().unwrap(),
            "--mirror",
            "http://10.0.0.1:65001",
            "--registry",
            "quay.io",
            "--containerd-certs-dir",
            certs.to_str().unwrap(),
            "--runtime",
            "containerd",
            "--runtime",
            "docker",
        ]);
        let plan = args.resolve(Path::new("/none")).unwrap().plan;
        assert_eq!(plan.mirror.as_str(), "http://10.0.0.1:65001/");
        let Target::Containerd(containerd) = &plan.targets[0] else {
            panic!("{plan:?}")
        };
        assert_eq!(containerd.certs_dir.as_deref(), Some(certs.as_path()));
        let hosts: Vec<&str> = containerd
            .registries
            .iter()
            .map(|r| r.registry.host.as_str())
            .collect();
        assert_eq!(hosts, ["quay.io"]);
        assert!(
            containerd.catch_all,
            "the file's proxyAllRegistries still holds"
        );
        // The file's docker section still names daemon.json: no flag replaced it.
        assert_eq!(
            plan.targets[1],
            Target::Docker {
                daemon_json: dir.path().join("daemon.json")
            }
        );
        // An explicit hosts directory is written into config.toml.
        let changes = plan.changes().unwrap();
        let config_toml = changes.iter().find(|c| c.path.ends_with("config.toml"));
        assert!(config_toml.unwrap().after.contains(certs.to_str().unwrap()));
    }

    #[test]
    fn a_missing_explicit_config_is_an_error() {
        let args = DfinitArgs::parse_from(["dfinit", "-c", "/nonexistent/dfinit.yaml"]);
        let err = args.resolve(Path::new("/none")).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit::USAGE);
        assert!(
            err.to_string().contains("/nonexistent/dfinit.yaml"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_value_names_the_file_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("dfinit.yaml");
        std::fs::write(
            &config,
            "proxy:\n  addr: nope\ncontainerRuntime:\n  docker: {}\n",
        )
        .unwrap();
        let args = DfinitArgs::parse_from(["dfinit", "-c", config.to_str().unwrap()]);
        let err = args.resolve(Path::new("/none")).unwrap_err().to_string();
        assert!(
            err.contains(config.to_str().unwrap()) && err.contains("proxy.addr"),
            "{err}"
        );
    }

    #[test]
    fn the_default_config_is_read_only_when_present() {
        let dir = tempfile::tempdir().unwrap();
        let default = dir.path().join("dfinit.yaml");
        let plain = DfinitArgs::parse_from(["dfinit", "--docker-config", "/x/daemon.json"]);
        assert_eq!(plain.config_file(&default), None);
        example(dir.path(), "docker");
        assert_eq!(plain.config_file(&default), Some(default.clone()));
        let resolved = plain.resolve(&default).unwrap();
        assert_eq!(resolved.config_file.as_deref(), Some(default.as_path()));
        // --docker-config wins over the file's configPath.
        assert_eq!(
            resolved.plan.targets,
            [Target::Docker {
                daemon_json: PathBuf::from("/x/daemon.json")
            }]
        );
        let chosen = DfinitArgs::parse_from(["dfinit", "--runtime", "crio"]);
        assert_eq!(chosen.config_file(&default), None);
    }

    #[test]
    fn dragonfly_flags_are_accepted() {
        let args = DfinitArgs::parse_from(["dfinit", "-l", "DEBUG", "--console", "-c", "/x.yaml"]);
        assert_eq!(args.log_level, LogLevel::Debug);
        assert!(args.console);
        assert!(DfinitArgs::try_parse_from(["dfinit", "-l", "loud"]).is_err());
    }
}
