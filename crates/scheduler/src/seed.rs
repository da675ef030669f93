//! Triggering a seed peer: `DfdaemonUpload.DownloadTask` on the seed host, with
//! `need_back_to_source = true`, run in the background so the registering peer is not held up
//! by the seed's download.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dragonfly_api::dfdaemon::v2::dfdaemon_upload_client::DfdaemonUploadClient;
use dragonfly_api::dfdaemon::v2::download_task_response::Response as Update;
use dragonfly_api::dfdaemon::v2::DownloadTaskRequest;
use futures::StreamExt;
use tonic::transport::Endpoint;
use tracing::Instrument;

use crate::metrics::metrics;
use crate::service::Shared;
use crate::state::SeedJob;

/// How long connecting to a seed host may take before the trigger counts as failed.
pub const SEED_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts the seed download in a background task; the outcome lands in the task's
/// [`crate::state::SeedTrigger`].
pub fn spawn_trigger(shared: Arc<Shared>, job: SeedJob, timeout: Duration) {
    let span = tracing::info_span!("seed_trigger", task_id = %job.task_id, host_id = %job.host_id);
    tokio::spawn(
        async move {
            let tls = shared.seed_tls.clone();
            let result = tokio::time::timeout(timeout, run(&job, tls.as_ref())).await;
            let outcome = match result {
                Ok(Ok(pieces)) => {
                    tracing::info!(pieces, "seed peer finished the task");
                    Ok(())
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(format!("seed download exceeded {timeout:?}")),
            };
            match outcome {
                Ok(()) => {
                    metrics().seed_trigger("finished");
                    shared.with_state(|s| s.seed_trigger_done(&job.task_id, &job.host_id));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "seed peer trigger failed");
                    metrics().seed_trigger("failed");
                    let now = Instant::now();
                    shared.with_state(|s| s.seed_trigger_failed(&job.task_id, &job.host_id, now));
                }
            }
        }
        .instrument(span),
    );
}

/// Calls DownloadTask and drains the response stream; returns the pieces reported.
/// `tls` is `seedPeer.tls`: the seed's certificate must name the address announced.
async fn run(job: &SeedJob, tls: Option<&Arc<rustls::ClientConfig>>) -> Result<u64, String> {
    tracing::info!(endpoint = %job.endpoint, "triggering seed peer");
    download_task(&job.endpoint, job.download.clone(), tls, |_| {}).await
}

/// `DfdaemonUpload.DownloadTask` on the host at `endpoint` (`http://ip:port`), drained to the
/// end; every update is shown to `on_update`. Returns the pieces reported. Shared by the
/// seed trigger and preheat jobs.
pub(crate) async fn download_task(
    endpoint: &str,
    download: dragonfly_api::common::v2::Download,
    tls: Option<&Arc<rustls::ClientConfig>>,
    mut on_update: impl FnMut(&Update),
) -> Result<u64, String> {
    let channel_endpoint = Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| format!("bad seed endpoint {endpoint}: {e}"))?
        .connect_timeout(SEED_CONNECT_TIMEOUT);
    let channel = damselfly_tls::grpc::channel(channel_endpoint, tls)
        .await
        .map_err(|e| format!("cannot connect to seed {endpoint}: {e}"))?;
    let mut client = DfdaemonUploadClient::new(channel)
        .max_decoding_message_size(damselfly_core::MAX_GRPC_MESSAGE_SIZE)
        .max_encoding_message_size(damselfly_core::MAX_GRPC_MESSAGE_SIZE);
    let request = DownloadTaskRequest {
        download: Some(download),
    };
    let mut stream = client
        .download_task(request)
        .await
        .map_err(|s| format!("seed DownloadTask refused: {}: {}", s.code(), s.message()))?
        .into_inner();
    let mut pieces = 0u64;
    while let Some(message) = stream.next().await {
        let message = message
            .map_err(|s| format!("seed DownloadTask failed: {}: {}", s.code(), s.message()))?;
        if let Some(update) = &message.response {
            if matches!(update, Update::DownloadPieceFinishedResponse(_)) {
                pieces += 1;
            }
            on_update(update);
        }
        tracing::debug!(peer_id = %message.peer_id, "seed progress");
    }
    Ok(pieces)
}
