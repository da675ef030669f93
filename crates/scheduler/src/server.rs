//! Running the scheduler: gRPC service + health on a listener, and the GC loop.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use dragonfly_api::scheduler::v2::scheduler_server::SchedulerServer;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::service::{stopped, SchedulerService, Shared};
use crate::{SchedulerConfig, SchedulerError};

/// Serves `scheduler.v2.Scheduler` and `grpc.health.v1.Health` (service `""` SERVING) on
/// `listener` until `shutdown` resolves. Open AnnouncePeer streams are ended at shutdown so the
/// graceful stop does not wait on them. Embeddable: dfdaemon runs this in-process.
pub async fn serve(
    config: SchedulerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SchedulerError> {
    serve_with_api(config, listener, None, shutdown).await
}

/// [`serve`], plus the JSON HTTP API ([`crate::api`]) on `api` when given; it shares the
/// scheduler's state and stops with it.
pub async fn serve_with_api(
    config: SchedulerConfig,
    listener: TcpListener,
    api: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SchedulerError> {
    config.validate()?;
    let server_tls = config.server_tls()?;
    let seed_tls = config.seed_peer_tls()?;
    let local = listener.local_addr().ok();
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared::new(config, stop_rx).with_seed_tls(seed_tls));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    health_reporter
        .set_serving::<SchedulerServer<SchedulerService>>()
        .await;

    let gc = tokio::spawn(gc_loop(shared.clone()));
    let api = api.map(|listener| spawn_api(&shared, listener));
    let scheduler = SchedulerServer::new(SchedulerService::new(shared.clone()))
        .max_decoding_message_size(damselfly_core::MAX_GRPC_MESSAGE_SIZE)
        .max_encoding_message_size(damselfly_core::MAX_GRPC_MESSAGE_SIZE);
    let mode = if server_tls.is_some() {
        "mTLS"
    } else {
        "plain text"
    };
    tracing::info!(addr = ?local, mode, "scheduler serving");

    let signal = async move {
        shutdown.await;
        tracing::info!("scheduler shutting down");
        // Ends sessions and the GC loop; the gRPC server then drains.
        let _ = stop_tx.send(true);
    };
    let router = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(scheduler);
    let result = match server_tls {
        Some(tls) => {
            let incoming = damselfly_tls::grpc::incoming(listener, tls);
            router.serve_with_incoming_shutdown(incoming, signal).await
        }
        None => {
            let incoming = damselfly_tls::grpc::plain_incoming(listener);
            router.serve_with_incoming_shutdown(incoming, signal).await
        }
    };
    gc.abort();
    if let Some(api) = api {
        api.abort();
    }
    result.map_err(SchedulerError::from)
}

/// The JSON API, stopped with the scheduler.
fn spawn_api(shared: &Arc<Shared>, listener: TcpListener) -> tokio::task::JoinHandle<()> {
    let mut stop = shared.stop_signal();
    let until_stop = async move { stopped(&mut stop).await };
    tokio::spawn(crate::api::serve_api(shared.clone(), listener, until_stop))
}

/// Host, peer and task expiry, each on its own interval.
async fn gc_loop(shared: Arc<Shared>) {
    let gc = shared.config.scheduler.gc.clone();
    let mut stop = shared.stop_signal();
    let mut hosts = tokio::time::interval(gc.host_gc_interval);
    let mut peers = tokio::time::interval(gc.peer_gc_interval);
    let mut tasks = tokio::time::interval(gc.task_gc_interval);
    for timer in [&mut hosts, &mut peers, &mut tasks] {
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        tokio::select! {
            _ = hosts.tick() => sweep(&shared, "host", |s, now| s.gc_hosts(now, gc.host_ttl)),
            _ = peers.tick() => sweep(&shared, "peer", |s, now| s.gc_peers(now, gc.peer_ttl)),
            _ = tasks.tick() => sweep(&shared, "task", |s, now| s.gc_tasks(now)),
            () = stopped(&mut stop) => return,
        }
    }
}

fn sweep(shared: &Shared, what: &str, f: impl FnOnce(&mut crate::state::State, Instant) -> usize) {
    let now = Instant::now();
    let removed = shared.with_state(|s| f(s, now));
    if removed > 0 {
        tracing::info!(removed, "{what} GC removed expired entries");
        shared.console.publish(crate::console::Change::All);
    }
}
