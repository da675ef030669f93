//! `dfdaemon.v2.DfdaemonUpload` on the upload port: what peers and the scheduler call.

use super::progress;
use super::{access, local_task, stat_local, task_from_local, unsupported, BoxStream};
use crate::context::Context;
use crate::engine::Engine;
use crate::error::DaemonError;
use damselfly_core::extensions::{
    has_feature, FEATURES_METADATA_KEY, FEATURE_CUT_THROUGH, RATION_EXCLUSIVE, RATION_METADATA_KEY,
};
use damselfly_transfer::{Announce, PiecePorts};
use dragonfly_api::common::v2::{CacheTask, Host, PersistentCacheTask, PersistentTask, Task};
use dragonfly_api::dfdaemon::v2::dfdaemon_upload_server::DfdaemonUpload;
use dragonfly_api::dfdaemon::v2::*;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};
use tracing::{debug, info_span, warn};

/// How often SyncHost sends our host statistics.
const SYNC_HOST_INTERVAL: Duration = Duration::from_secs(5);

pub struct UploadService {
    engine: Arc<Engine>,
}

impl UploadService {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }

    fn ctx(&self) -> &Context {
        self.engine.context()
    }
}

#[tonic::async_trait]
impl DfdaemonUpload for UploadService {
    type DownloadTaskStream = BoxStream<DownloadTaskResponse>;

    /// The scheduler's seed trigger (`need_back_to_source`), or a preheat: same engine, no
    /// output file.
    async fn download_task(
        &self,
        request: Request<DownloadTaskRequest>,
    ) -> Result<Response<Self::DownloadTaskStream>, Status> {
        let download =
            request.get_ref().download.clone().ok_or_else(|| {
                Status::invalid_argument("DownloadTaskRequest.download is missing")
            })?;
        if let Err(status) = access::check_download_task(self.ctx(), &request, &download) {
            warn!(url = %download.url, message = status.message(), "upload.DownloadTask refused");
            return Err(status);
        }
        let span = info_span!("upload.DownloadTask", url = %download.url, need_back_to_source = download.need_back_to_source);
        let _entered = span.enter();
        let mut download = download;
        download.output_path = None;
        let range = download.range;
        let request = match progress::task_request(download, None) {
            Ok(request) => request,
            Err(refusal) => return Ok(Response::new(refusal)),
        };
        let events = self.engine.download(request);
        let host_id = self.ctx().host.id.clone();
        Ok(Response::new(progress::responses(host_id, range, events)))
    }

    async fn stat_task(&self, request: Request<StatTaskRequest>) -> Result<Response<Task>, Status> {
        let task_id = request.into_inner().task_id;
        let _span = info_span!("upload.StatTask", %task_id).entered();
        let task = local_task(self.ctx(), &task_id)?;
        Ok(Response::new(task_from_local(self.ctx(), &task)))
    }

    async fn stat_local_task(
        &self,
        request: Request<StatLocalTaskRequest>,
    ) -> Result<Response<StatLocalTaskResponse>, Status> {
        let task_id = request.into_inner().task_id;
        let _span = info_span!("upload.StatLocalTask", %task_id).entered();
        Ok(Response::new(stat_local(&local_task(
            self.ctx(),
            &task_id,
        )?)))
    }

    unsupported!(
        list_task_entries,
        ListTaskEntriesRequest,
        ListTaskEntriesResponse
    );

    /// Refused: a remote host must not evict our tasks (the unix socket's DeleteTask does).
    async fn delete_task(
        &self,
        request: Request<DeleteTaskRequest>,
    ) -> Result<Response<()>, Status> {
        let task_id = request.into_inner().task_id;
        warn!(%task_id, "upload.DeleteTask refused");
        Err(access::refuse_destructive("DeleteTask"))
    }

    type SyncPiecesStream = BoxStream<SyncPiecesResponse>;

    async fn sync_pieces(
        &self,
        request: Request<SyncPiecesRequest>,
    ) -> Result<Response<Self::SyncPiecesStream>, Status> {
        let cut_through = asks_for_cut_through(request.metadata());
        let request = request.into_inner();
        let _span = info_span!("upload.SyncPieces", task_id = %request.task_id, child_host = %request.host_id, cut_through).entered();
        let ctx = self.ctx();
        ctx.activity.touch();
        debug!(
            pieces = request.interested_piece_numbers.len(),
            "sync pieces"
        );
        let task_id = request.task_id;
        let announce = match cut_through {
            true => Announce::Arriving,
            false => Announce::Recorded,
        };
        let ports = PiecePorts {
            tcp: ctx.host.piece_port,
            quic: Some(ctx.host.quic_port),
        };
        let stream = damselfly_transfer::sync_pieces_stream(
            ctx.storage.clone(),
            task_id.clone(),
            request.interested_piece_numbers,
            ctx.host.ip.to_string(),
            ports,
            announce,
        )
        .map_err(|e| Status::from(DaemonError::from(e)))?;
        let mut response = match &ctx.ration {
            Some(ration) => {
                let mut response =
                    Response::new(Box::pin(ration.wrap(task_id, request.host_id, stream))
                        as Self::SyncPiecesStream);
                // Tells a Damselfly child that what we show it is its own to fetch now.
                response.metadata_mut().insert(
                    RATION_METADATA_KEY,
                    tonic::metadata::MetadataValue::from_static(RATION_EXCLUSIVE),
                );
                response
            }
            None => Response::new(Box::pin(stream) as Self::SyncPiecesStream),
        };
        if cut_through {
            response.metadata_mut().insert(
                FEATURES_METADATA_KEY,
                tonic::metadata::MetadataValue::from_static(FEATURE_CUT_THROUGH),
            );
        }
        Ok(response)
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

    type SyncCachePiecesStream = BoxStream<SyncCachePiecesResponse>;
    async fn sync_cache_pieces(
        &self,
        _request: Request<SyncCachePiecesRequest>,
    ) -> Result<Response<Self::SyncCachePiecesStream>, Status> {
        Err(super::unsupported_rpc("sync_cache_pieces"))
    }

    unsupported!(
        download_cache_piece,
        DownloadCachePieceRequest,
        DownloadCachePieceResponse
    );

    type DownloadPersistentTaskStream = BoxStream<DownloadPersistentTaskResponse>;
    async fn download_persistent_task(
        &self,
        _request: Request<DownloadPersistentTaskRequest>,
    ) -> Result<Response<Self::DownloadPersistentTaskStream>, Status> {
        Err(super::unsupported_rpc("download_persistent_task"))
    }

    type SyncPersistentPiecesStream = BoxStream<SyncPersistentPiecesResponse>;
    async fn sync_persistent_pieces(
        &self,
        _request: Request<SyncPersistentPiecesRequest>,
    ) -> Result<Response<Self::SyncPersistentPiecesStream>, Status> {
        Err(super::unsupported_rpc("sync_persistent_pieces"))
    }

    unsupported!(update_persistent_task, UpdatePersistentTaskRequest, ());
    unsupported!(
        stat_persistent_task,
        StatPersistentTaskRequest,
        PersistentTask
    );
    unsupported!(delete_persistent_task, DeletePersistentTaskRequest, ());

    type DownloadPersistentCacheTaskStream = BoxStream<DownloadPersistentCacheTaskResponse>;
    async fn download_persistent_cache_task(
        &self,
        _request: Request<DownloadPersistentCacheTaskRequest>,
    ) -> Result<Response<Self::DownloadPersistentCacheTaskStream>, Status> {
        Err(super::unsupported_rpc("download_persistent_cache_task"))
    }

    unsupported!(
        update_persistent_cache_task,
        UpdatePersistentCacheTaskRequest,
        ()
    );
    unsupported!(
        stat_persistent_cache_task,
        StatPersistentCacheTaskRequest,
        PersistentCacheTask
    );
    unsupported!(
        delete_persistent_cache_task,
        DeletePersistentCacheTaskRequest,
        ()
    );

    type SyncPersistentCachePiecesStream = BoxStream<SyncPersistentCachePiecesResponse>;
    async fn sync_persistent_cache_pieces(
        &self,
        _request: Request<SyncPersistentCachePiecesRequest>,
    ) -> Result<Response<Self::SyncPersistentCachePiecesStream>, Status> {
        Err(super::unsupported_rpc("sync_persistent_cache_pieces"))
    }

    type SyncHostStream = BoxStream<Host>;

    /// Our live host statistics, every few seconds, until the child hangs up or we stop.
    async fn sync_host(
        &self,
        request: Request<SyncHostRequest>,
    ) -> Result<Response<Self::SyncHostStream>, Status> {
        let request = request.into_inner();
        debug!(child_host = %request.host_id, "sync host");
        let ctx = self.ctx().clone();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(SYNC_HOST_INTERVAL);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = ctx.lifecycle.stopping() => return,
                }
                if tx.send(Ok(ctx.host.to_proto())).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Whether a SyncPieces request came from a Damselfly child that takes pieces still arriving.
fn asks_for_cut_through(metadata: &tonic::metadata::MetadataMap) -> bool {
    metadata
        .get(FEATURES_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|list| has_feature(list, FEATURE_CUT_THROUGH))
}
