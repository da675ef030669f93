//! Held tasks: telling a scheduler that (re)appeared what this host already holds, so that
//! after a scheduler restart new peers are sent here instead of to the origin.
//!
//! One watcher per scheduler keeps a gRPC health `Watch` stream open on the scheduler's
//! connection (official schedulers serve it too). When the stream breaks, the scheduler may
//! have restarted and lost its state, so once it answers again the watcher re-announces this
//! host and then, for every finished task the scheduler owns on the ring, registers a peer
//! with Dragonfly's `Download.metadata_only` flag ("the peer only reports the metadata of
//! what it holds, no need to schedule it"), reports its pieces and finishes it. The same
//! happens when the daemon starts, so a restarted daemon is known as a parent at once, and
//! when a registration finds that the scheduler no longer knows this host.

use crate::config::SchedulerSource;
use crate::context::Context;
use crate::engine::piece_proto;
use crate::error::DaemonError;
use crate::scheduler_client::PeerIds;
use damselfly_storage::{PieceMetadata, TaskMetadata};
use dragonfly_api::common::v2::{Download, TaskType, TrafficType};
use dragonfly_api::scheduler::v2::announce_peer_request::Request as PeerRequest;
use dragonfly_api::scheduler::v2::{
    DownloadPeerFinishedRequest, DownloadPeerStartedRequest, DownloadPieceFinishedRequest,
    RegisterPeerRequest,
};
use futures::StreamExt;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tracing::{debug, info, warn};

/// How often the scheduler list is checked for schedulers without a watcher.
pub const WATCH_REFRESH: Duration = Duration::from_secs(1);
/// First pause before reaching a scheduler again after its connection broke; it doubles up
/// to [`MAX_RECONNECT_BACKOFF`].
pub const RECONNECT_BACKOFF: Duration = Duration::from_millis(250);
pub const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(10);
/// Held tasks announced at the same time to one scheduler.
pub const HELD_ANNOUNCE_CONCURRENCY: usize = 8;
/// Wait for the scheduler's answer to a held peer's registration.
const REGISTER_ANSWER_WAIT: Duration = Duration::from_secs(10);
/// Wait for the scheduler to close a held peer's stream after the finish.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Keeps one watcher per scheduler on the ring until shutdown.
pub async fn watch_schedulers(ctx: Context) {
    if ctx.config.scheduler_source() == SchedulerSource::None {
        return;
    }
    let mut watchers: HashMap<SocketAddr, JoinHandle<()>> = HashMap::new();
    loop {
        let addrs = ctx.schedulers.addrs();
        watchers.retain(|addr, watcher| {
            let keep = addrs.contains(addr) && !watcher.is_finished();
            if !keep {
                watcher.abort();
            }
            keep
        });
        for addr in addrs {
            watchers
                .entry(addr)
                .or_insert_with(|| tokio::spawn(watch_one(ctx.clone(), addr)));
        }
        tokio::select! {
            _ = tokio::time::sleep(WATCH_REFRESH) => {}
            _ = ctx.lifecycle.stopping() => break,
        }
    }
    for watcher in watchers.into_values() {
        watcher.abort();
    }
}

/// How a health watch ended.
enum WatchEnd {
    /// The connection broke: the scheduler may have restarted.
    Broken,
    /// The scheduler has no health `Watch`; restarts cannot be seen on this link.
    Unsupported,
    Shutdown,
}

/// Announce the host and what it holds, watch until the link breaks, and again.
async fn watch_one(ctx: Context, addr: SocketAddr) {
    let mut backoff = RECONNECT_BACKOFF;
    loop {
        let interval = ctx.config.scheduler.announce_interval;
        match ctx
            .schedulers
            .announce_host_to(addr, ctx.host.to_proto(), interval)
            .await
        {
            Ok(()) => {
                backoff = RECONNECT_BACKOFF;
                announce_held_tasks(&ctx, addr).await;
                match watch_until_broken(&ctx, addr).await {
                    WatchEnd::Broken => {
                        ctx.schedulers.forget_announced(addr);
                        info!(scheduler = %addr, "scheduler connection broke; will tell it what this host holds when it is back");
                    }
                    WatchEnd::Unsupported => {
                        debug!(scheduler = %addr, "scheduler has no health Watch; only 'unknown host' answers reveal a restart");
                        if !host_lost_or_shutdown(&ctx, addr).await {
                            return;
                        }
                    }
                    WatchEnd::Shutdown => return,
                }
            }
            Err(error) => debug!(scheduler = %addr, %error, "scheduler not reachable yet"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = ctx.lifecycle.stopping() => return,
        }
        backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF);
    }
}

/// Waits until a registration finds that `addr` lost this host (true) or shutdown (false).
async fn host_lost_or_shutdown(ctx: &Context, addr: SocketAddr) -> bool {
    loop {
        if ctx.schedulers.take_host_lost(addr) {
            return true;
        }
        tokio::select! {
            _ = ctx.schedulers.host_lost() => {}
            _ = ctx.lifecycle.stopping() => return false,
        }
    }
}

async fn watch_until_broken(ctx: &Context, addr: SocketAddr) -> WatchEnd {
    let Ok(mut client) = ctx.schedulers.health_client(addr) else {
        return WatchEnd::Broken;
    };
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let opened = tokio::select! {
        opened = client.watch(request) => opened,
        _ = ctx.lifecycle.stopping() => return WatchEnd::Shutdown,
    };
    let mut stream = match opened {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == Code::Unimplemented => return WatchEnd::Unsupported,
        Err(_) => return WatchEnd::Broken,
    };
    loop {
        if ctx.schedulers.take_host_lost(addr) {
            return WatchEnd::Broken;
        }
        tokio::select! {
            message = stream.message() => match message {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return WatchEnd::Broken,
            },
            // A registration found the scheduler did not know this host: it restarted
            // behind a link that stayed up (a proxy, or a quick restart).
            _ = ctx.schedulers.host_lost() => continue,
            _ = ctx.lifecycle.stopping() => return WatchEnd::Shutdown,
        }
    }
}

/// Registers every finished task that `addr` owns on the ring as a held peer.
pub async fn announce_held_tasks(ctx: &Context, addr: SocketAddr) {
    let tasks = match ctx.storage.list_tasks() {
        Ok(tasks) => tasks,
        Err(error) => {
            warn!(%error, "cannot list the tasks this host holds");
            return;
        }
    };
    let held: Vec<TaskMetadata> = tasks
        .into_iter()
        .filter(|t| t.is_finished() && t.url.is_some())
        .filter(|t| ctx.schedulers.owner(&t.id) == Some(addr))
        .collect();
    if held.is_empty() {
        return;
    }
    info!(scheduler = %addr, tasks = held.len(), "telling the scheduler which tasks this host holds");
    futures::stream::iter(held)
        .for_each_concurrent(HELD_ANNOUNCE_CONCURRENCY, |task| async move {
            if let Err(error) = announce_task(ctx, &task).await {
                debug!(task_id = %task.id, %error, "announcing a held task failed");
            }
        })
        .await;
}

/// One held peer: register (metadata only), started, every piece, finished.
async fn announce_task(ctx: &Context, task: &TaskMetadata) -> Result<(), DaemonError> {
    let pieces = ctx.storage.pieces(&task.id)?;
    let ids = PeerIds {
        host_id: ctx.host.id.clone(),
        task_id: task.id.clone(),
        peer_id: ctx.host.new_peer_id(),
    };
    let register = RegisterPeerRequest {
        download: Some(held_download(task)),
    };
    let interval = ctx.config.scheduler.announce_interval;
    let mut session = ctx
        .schedulers
        .open_peer_session(ids, register, &ctx.host.to_proto(), interval)
        .await?;
    // Our scheduler answers MetadataOnly at once; any answer means it took the registration.
    session.next_decision(REGISTER_ANSWER_WAIT).await?;
    session
        .send(PeerRequest::DownloadPeerStartedRequest(
            DownloadPeerStartedRequest {},
        ))
        .await;
    for piece in &pieces {
        session.send(held_piece(piece)).await;
    }
    let finished = PeerRequest::DownloadPeerFinishedRequest(DownloadPeerFinishedRequest {});
    session.finish(finished, CLOSE_WAIT).await;
    debug!(task_id = %task.id, pieces = pieces.len(), "held task announced");
    Ok(())
}

/// What the task's downloader registered, as far as storage remembers it.
fn held_download(task: &TaskMetadata) -> Download {
    let layout = task.layout();
    Download {
        url: task.url.clone().unwrap_or_default(),
        r#type: TaskType::Standard as i32,
        piece_length: Some(task.piece_length),
        actual_content_length: Some(task.content_length),
        actual_piece_length: Some(task.piece_length),
        actual_piece_count: Some(u64::from(layout.piece_count())),
        filtered_query_params: damselfly_core::id::default_filtered_query_params(),
        metadata_only: true,
        ..Default::default()
    }
}

fn held_piece(piece: &PieceMetadata) -> PeerRequest {
    PeerRequest::DownloadPieceFinishedRequest(DownloadPieceFinishedRequest {
        piece: Some(piece_proto(piece, TrafficType::LocalPeer)),
    })
}
