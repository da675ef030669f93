//! dfinit: points container runtimes at dfdaemon's registry mirror. It writes containerd's
//! `certs.d/<registry>/hosts.toml`, docker's `daemon.json` `registry-mirrors` and CRI-O/podman's
//! `registries.conf` mirror entries, keeping the rest of each file as it was (comments, key
//! order, other mirrors), and can print the change as a diff instead (`--dry-run`). What to do
//! comes from flags or from Dragonfly's `/etc/dragonfly/dfinit.yaml`, both resolved to one plan.

pub mod change;
pub mod cli;
pub mod config;
pub mod containerd;
pub mod docker;
pub mod error;
pub mod plan;
pub mod registries_conf;
pub mod registry;
mod resolve;

pub use change::FileChange;
pub use cli::{main, DfinitArgs, LogLevel};
pub use error::DfinitError;
pub use plan::{Plan, Runtime};
pub use registry::Registry;
