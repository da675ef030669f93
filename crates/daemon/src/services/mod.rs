//! The gRPC services: `DfdaemonUpload` for peers and the scheduler (TCP), `DfdaemonDownload`
//! for local CLIs (unix socket). Both drive the same engine. RPCs we do not support answer
//! `Unimplemented`; nothing here panics on a request.

pub mod access;
pub mod download;
pub mod progress;
pub mod upload;

pub use progress::RATE_LIMIT_METADATA;

use crate::context::Context;
use crate::error::DaemonError;
use damselfly_storage::TaskMetadata;
use dragonfly_api::common::v2::{Task, TrafficType};
use dragonfly_api::dfdaemon::v2::StatLocalTaskResponse;
use futures::Stream;
use std::pin::Pin;
use tonic::Status;

pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Stub for an unsupported unary RPC. Written in the shape `#[async_trait]` expands to,
/// because that attribute does not look inside macro invocations.
macro_rules! unsupported {
    ($name:ident, $req:ty, $resp:ty) => {
        fn $name<'life0, 'async_trait>(
            &'life0 self,
            _request: tonic::Request<$req>,
        ) -> std::pin::Pin<
            Box<
                dyn std::future::Future<Output = Result<tonic::Response<$resp>, tonic::Status>>
                    + Send
                    + 'async_trait,
            >,
        >
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async move { Err($crate::services::unsupported_rpc(stringify!($name))) })
        }
    };
}
pub(crate) use unsupported;

/// The one answer to an RPC Damselfly does not implement (cache and persistent tasks):
/// `Unimplemented`, naming the method, so a Dragonfly client can tell it from a failure.
pub(crate) fn unsupported_rpc(method: &str) -> Status {
    Status::unimplemented(format!("{method} is not supported by Damselfly"))
}

pub(crate) fn local_task(ctx: &Context, task_id: &str) -> Result<TaskMetadata, Status> {
    ctx.storage
        .task(task_id)
        .map_err(|e| Status::from(DaemonError::from(e)))?
        .ok_or_else(|| Status::not_found(format!("task {task_id} is not on this host")))
}

pub(crate) fn stat_local(task: &TaskMetadata) -> StatLocalTaskResponse {
    StatLocalTaskResponse {
        task_id: task.id.clone(),
        piece_length: Some(task.piece_length),
        content_length: Some(task.content_length),
        response_header: damselfly_core::without_secrets(task.response_header.iter().cloned())
            .collect(),
        uploading_count: 0,
        uploaded_count: 0,
        created_at: Some(task.created_at.into()),
        updated_at: Some(task.accessed_at.into()),
        prefetched_at: None,
        failed_at: task.failed_at.map(Into::into),
        finished_at: task.finished_at.map(Into::into),
    }
}

/// A `common.v2.Task` from what this host holds.
pub(crate) fn task_from_local(ctx: &Context, task: &TaskMetadata) -> Task {
    let pieces = ctx
        .storage
        .pieces(&task.id)
        .unwrap_or_default()
        .iter()
        .map(|p| crate::engine::piece_proto(p, TrafficType::LocalPeer))
        .collect();
    let state = if task.is_finished() {
        "Succeeded"
    } else if task.failed_at.is_some() {
        "Failed"
    } else {
        "Running"
    };
    Task {
        id: task.id.clone(),
        url: task.url.clone().unwrap_or_default(),
        content_length: task.content_length,
        piece_count: task.layout().piece_count(),
        pieces,
        state: state.to_string(),
        peer_count: 1,
        has_available_peer: task.is_finished(),
        created_at: Some(task.created_at.into()),
        updated_at: Some(task.accessed_at.into()),
        ..Default::default()
    }
}

/// Deletes a task from this host and tells its scheduler we no longer hold it.
pub(crate) async fn delete_task(ctx: &Context, task_id: &str) -> Result<(), Status> {
    local_task(ctx, task_id)?;
    ctx.storage
        .delete_task(task_id)
        .await
        .map_err(|e| Status::from(DaemonError::from(e)))?;
    ctx.schedulers.delete_task(&ctx.host.id, task_id).await;
    Ok(())
}
