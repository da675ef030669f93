//! Preheat: fetch files or an image's blobs onto seed peers (or every peer) before anyone asks
//! for them, so the first pull of a rollout finds them in the swarm.
//!
//! - [`spec`]: what a request asks for, from the gRPC messages or the JSON API's body;
//! - `registry`: resolving an image reference like a container runtime (token auth, indexes by
//!   platform) into one blob URL per layer and config;
//! - `run`: picking the hosts and calling `DfdaemonUpload.DownloadTask` on each;
//! - [`jobs`]: the jobs, their progress and results, in memory.

pub mod jobs;
pub mod registry;
mod run;
pub mod spec;
mod stat;

pub use jobs::{JobView, Jobs};
pub use run::start;
pub use spec::{PreheatSpec, Scope};
pub use stat::{stat_file, stat_image};
