//! dfctl's node and cluster commands (the `cert` commands live in the binary):
//!
//! - `task ls` / `task rm ID` talk to the local dfdaemon over its unix socket, as dfget does;
//! - `task ls --scheduler URL`, `host ls` and `preheat` talk to the scheduler's JSON API
//!   (`server.http`).
//!
//! Tables for people, `-o json` for scripts.

pub mod cluster;
pub mod local;
pub mod preheat;
pub mod table;

use std::path::PathBuf;

use clap::ValueEnum;

/// How results are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

/// The daemon socket when `-e` is not given: the system one if it exists, else the per-user
/// one (where a dfget-started daemon listens).
pub fn default_socket() -> PathBuf {
    let system = PathBuf::from(damselfly_daemon::config::DEFAULT_SOCKET_PATH);
    if system.exists() {
        system
    } else {
        damselfly_dfget::daemon::user_socket()
    }
}

/// `http://host:port` for an address given as `host:port`.
pub fn api_base(scheduler: &str) -> String {
    let trimmed = scheduler.trim_end_matches('/');
    if trimmed.contains("://") {
        trimmed.to_string()
    } else {
        format!("http://{trimmed}")
    }
}
