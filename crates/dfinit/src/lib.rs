//! dfinit: points container runtimes at dfdaemon's registry mirror. It writes containerd's
//! `certs.d/<registry>/hosts.toml`, docker's `daemon.json` `registry-mirrors` and CRI-O/podman's
//! `registries.conf` mirror entries, keeping the rest of each file as it was (comments, key
//! order, other mirrors), and can print the change as a diff instead (`--dry-run`).

pub mod change;
pub mod cli;
pub mod containerd;
pub mod docker;
pub mod error;
pub mod registries_conf;
pub mod registry;

pub use change::FileChange;
pub use cli::{DfinitArgs, Runtime};
pub use error::DfinitError;
pub use registry::Registry;
