//! `dfdaemon.v2.DfdaemonDownload` on the unix socket: what dfget and other local CLIs call.

use super::progress;
use super::{delete_task, local_task, stat_local, task_from_local, unsupported, BoxStream};
use crate::context::Context;
use crate::engine::Engine;
use crate::error::DaemonError;
use damselfly_core::extensions::{STAT_VIEW_LOCAL, STAT_VIEW_METADATA_KEY};
use dragonfly_api::common::v2::{CacheTask, PersistentCacheTask, PersistentTask, Task};
use dragonfly_api::dfdaemon::v2::dfdaemon_download_server::DfdaemonDownload;
use dragonfly_api::dfdaemon::v2::*;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::{info_span, Instrument};

pub struct DownloadService {
    engine: Arc<Engine>,
}

impl DownloadService {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }

    fn ctx(&self) -> &Context {
        self.engine.context()
    }
}

#[tonic::async_trait]
impl DfdaemonDownload for DownloadService {
    type DownloadTaskStream = BoxStream<DownloadTaskResponse>;

    async fn download_task(
        &self,
        request: Request<DownloadTaskRequest>,
    ) -> Result<Response<Self::DownloadTaskStream>, Status> {
        let (metadata, _, message) = request.into_parts();
        let download = message
            .download
            .ok_or_else(|| Status::invalid_argument("DownloadTaskRequest.download is missing"))?;
        let rate_limit = progress::rate_limit(&metadata).map_err(Status::from)?;
        let range = download.range;
        let request = match progress::task_request(download, rate_limit) {
            Ok(request) => request,
            Err(refusal) => return Ok(Response::new(refusal)),
        };
        let events = self.engine.download(request);
        let host_id = self.ctx().host.id.clone();
        Ok(Response::new(progress::responses(host_id, range, events)))
    }

    /// The scheduler's view of the task when it answers, else ours.
    async fn stat_task(&self, request: Request<StatTaskRequest>) -> Result<Response<Task>, Status> {
        let local_view = request
            .metadata()
            .get(STAT_VIEW_METADATA_KEY)
            .is_some_and(|v| v.as_bytes() == STAT_VIEW_LOCAL.as_bytes());
        let task_id = request.into_inner().task_id;
        let span = info_span!("download.StatTask", %task_id, local_view);
        let ctx = self.ctx();
        async {
            if local_view {
                let task = local_task(ctx, &task_id)?;
                return Ok(Response::new(task_from_local(ctx, &task)));
            }
            match ctx.schedulers.stat_task(&ctx.host.id, &task_id).await {
                Ok(task) => Ok(Response::new(task)),
                Err(_) => {
                    let task = local_task(ctx, &task_id)?;
                    Ok(Response::new(task_from_local(ctx, &task)))
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn stat_local_task(
        &self,
        request: Request<StatLocalTaskRequest>,
    ) -> Result<Response<StatLocalTaskResponse>, Status> {
        let task_id = request.into_inner().task_id;
        let _span = info_span!("download.StatLocalTask", %task_id).entered();
        Ok(Response::new(stat_local(&local_task(
            self.ctx(),
            &task_id,
        )?)))
    }

    async fn list_local_tasks(
        &self,
        _request: Request<ListLocalTasksRequest>,
    ) -> Result<Response<ListLocalTasksResponse>, Status> {
        let _span = info_span!("download.ListLocalTasks").entered();
        let tasks = self
            .ctx()
            .storage
            .list_tasks()
            .map_err(|e| Status::from(DaemonError::from(e)))?;
        Ok(Response::new(ListLocalTasksResponse {
            tasks: tasks.iter().map(stat_local).collect(),
        }))
    }

    unsupported!(
        list_task_entries,
        ListTaskEntriesRequest,
        ListTaskEntriesResponse
    );

    async fn delete_task(
        &self,
        request: Request<DeleteTaskRequest>,
    ) -> Result<Response<()>, Status> {
        let task_id = request.into_inner().task_id;
        let span = info_span!("download.DeleteTask", %task_id);
        delete_task(self.ctx(), &task_id).instrument(span).await?;
        Ok(Response::new(()))
    }

    async fn delete_local_task(
        &self,
        request: Request<DeleteLocalTaskRequest>,
    ) -> Result<Response<()>, Status> {
        let task_id = request.into_inner().task_id;
        let span = info_span!("download.DeleteLocalTask", %task_id);
        let ctx = self.ctx();
        async {
            local_task(ctx, &task_id)?;
            ctx.storage
                .delete_task(&task_id)
                .await
                .map_err(|e| Status::from(DaemonError::from(e)))
        }
        .instrument(span)
        .await?;
        Ok(Response::new(()))
    }

    /// Leaves the schedulers' view (they forget this host and its peers); the next download
    /// announces the host again.
    async fn delete_host(&self, _request: Request<()>) -> Result<Response<()>, Status> {
        let ctx = self.ctx();
        ctx.schedulers
            .delete_host_all(&ctx.host.id)
            .instrument(info_span!("download.DeleteHost"))
            .await;
        Ok(Response::new(()))
    }

    type DownloadCacheTaskStream = BoxStream<DownloadCacheTaskResponse>;
    async fn download_cache_task(
        &self,
        _request: Request<DownloadCacheTaskRequest>,
    ) -> Result<Response<Self::DownloadCacheTaskStream>, Status> {
        Err(super::unsupported_rpc("download_cache_task"))
    }

    unsupported!(stat_cache_task, StatCacheTaskRequest, CacheTask);
    unsupported!(delete_cache_task, DeleteCacheTaskRequest, ());

    type DownloadPersistentTaskStream = BoxStream<DownloadPersistentTaskResponse>;
    async fn download_persistent_task(
        &self,
        _request: Request<DownloadPersistentTaskRequest>,
    ) -> Result<Response<Self::DownloadPersistentTaskStream>, Status> {
        Err(super::unsupported_rpc("download_persistent_task"))
    }

    unsupported!(
        upload_persistent_task,
        UploadPersistentTaskRequest,
        PersistentTask
    );
    unsupported!(
        stat_persistent_task,
        StatPersistentTaskRequest,
        PersistentTask
    );
    unsupported!(
        stat_local_persistent_task,
        StatLocalPersistentTaskRequest,
        StatLocalPersistentTaskResponse
    );
    unsupported!(
        list_local_persistent_tasks,
        ListLocalPersistentTasksRequest,
        ListLocalPersistentTasksResponse
    );

    type DownloadPersistentCacheTaskStream = BoxStream<DownloadPersistentCacheTaskResponse>;
    async fn download_persistent_cache_task(
        &self,
        _request: Request<DownloadPersistentCacheTaskRequest>,
    ) -> Result<Response<Self::DownloadPersistentCacheTaskStream>, Status> {
        Err(super::unsupported_rpc("download_persistent_cache_task"))
    }

    unsupported!(
        upload_persistent_cache_task,
        UploadPersistentCacheTaskRequest,
        PersistentCacheTask
    );
    unsupported!(
        stat_persistent_cache_task,
        StatPersistentCacheTaskRequest,
        PersistentCacheTask
    );
    unsupported!(
        stat_local_persistent_cache_task,
        StatLocalPersistentCacheTaskRequest,
        StatLocalPersistentCacheTaskResponse
    );
    unsupported!(
        list_local_persistent_cache_tasks,
        ListLocalPersistentCacheTasksRequest,
        ListLocalPersistentCacheTasksResponse
    );
}
