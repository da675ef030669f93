//! dfdaemon: the Damselfly peer daemon, wire-compatible with Dragonfly v2's dfdaemon.
//!
//! [`run`] (or [`Daemon::start`]) brings up, on the configured IP: the `DfdaemonUpload` gRPC
//! service for peers and schedulers, the Vortex TCP and QUIC piece servers, the `DfdaemonDownload` gRPC
//! service on a unix socket for dfget, and the metrics and health HTTP servers (damselfly-monitor). Every
//! download, whoever asks for it, goes through the one [`Engine`].

pub mod cli;
pub mod config;
pub mod context;
pub mod conversation;
pub mod daemon;
pub mod dispatch;
pub mod dynconfig;
pub mod engine;
pub mod error;
pub mod held;
pub mod host;
pub mod lifecycle;
pub mod metrics;
pub mod proxy;
pub mod quic;
pub mod ration;
pub mod scheduler_client;
pub mod services;

pub use cli::{DaemonArgs, LoadedConfig};
pub use config::DaemonConfig;
pub use daemon::{run, BoundAddrs, Daemon};
pub use engine::{Engine, EngineEvent, EngineEvents, TaskRequest};
pub use error::DaemonError;
pub use services::RATE_LIMIT_METADATA;
