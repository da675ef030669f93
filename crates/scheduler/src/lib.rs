//! `damselfly-scheduler`: a `scheduler.v2.Scheduler` (Dragonfly v2, `dragonfly-api` 2.3.8)
//! that official dfdaemons can use.
//!
//! - hosts, tasks and peers ([`model`]) live in memory ([`state`]), with typed state machines
//!   ([`fsm`]);
//! - parents are picked by a load-aware, pure scoring function ([`scoring`]) that follows each
//!   host's measured upload ([`upload`]);
//! - new tasks are fetched once: by a triggered seed peer (`seed` module) when a seed host is
//!   known, else by the first peer, which then serves the others;
//! - [`serve`] runs the gRPC service (plus `grpc.health.v1`) on a listener and is embeddable;
//!   [`serve_metrics`] serves `/metrics` and `/healthy`;
//! - [`preheat`] jobs fetch files or images onto seed peers ahead of a rollout, started over
//!   gRPC or the JSON HTTP API ([`api`]), which also lists hosts and tasks;
//! - the [`console`] page, on the same listener, shows the swarm live and why peers went to
//!   the origin.

pub mod api;
pub mod auth;
pub mod config;
pub mod console;
mod error;
pub mod fsm;
pub mod metrics;
pub mod model;
pub mod parents;
pub mod piece_set;
pub mod preheat;
pub mod scoring;
mod seed;
mod server;
pub mod service;
pub mod state;
pub mod task_peers;
pub mod upload;
pub mod wake;

pub use config::SchedulerConfig;
pub use error::SchedulerError;
pub use metrics::serve_metrics;
pub use server::{serve, serve_with_api};
