//! `StatFile` and `StatImage`: which hosts hold a file or an image's blobs, from the
//! scheduler's own view of its peers (a peer that succeeded holds the task; one still
//! downloading holds part of it). Dragonfly asks every host with `StatLocalTask`; the
//! scheduler already knows, so no host is called.

use std::collections::BTreeMap;

use dragonfly_api::scheduler::v2::{
    File, Image, Layer, PeerFile, PeerImage, StatFileRequest, StatFileResponse, StatImageRequest,
    StatImageResponse,
};

use super::registry::{self, ManifestUrl};
use super::spec::{filtered, Platforms, Secrets, TaskOptions, DEFAULT_BLOB_DIGEST_TASK_ID};
use crate::fsm::PeerState;
use crate::service::Shared;
use crate::state::State;
use crate::SchedulerError;
use damselfly_core::id::TaskIdSpec;

/// A host that holds (part of) a task.
struct Holder {
    ip: String,
    hostname: String,
    finished: bool,
}

fn holders(state: &State, task_id: &str) -> Vec<Holder> {
    let Some(task) = state.task(task_id) else {
        return Vec::new();
    };
    task.peers
        .iter()
        .filter_map(|id| state.peer(id))
        .filter(|p| !matches!(p.state, PeerState::Failed | PeerState::Leave))
        .filter_map(|p| {
            let host = state.host(&p.host_id)?;
            Some(Holder {
                ip: host.announced.ip.clone(),
                hostname: host.announced.hostname.clone(),
                finished: p.state == PeerState::Succeeded,
            })
        })
        .collect()
}

fn url_task_id(
    url: &str,
    options: &TaskOptions,
    blob_digest: bool,
) -> Result<String, SchedulerError> {
    TaskIdSpec {
        url,
        tag: options.tag.as_deref(),
        application: options.application.as_deref(),
        revision: None,
        piece_length: options.piece_length,
        filtered_query_params: &options.filtered_query_params,
        content_for_calculating_task_id: None,
        enable_task_id_based_blob_digest: blob_digest,
    }
    .task_id()
    .map_err(|e| SchedulerError::InvalidPreheat(e.to_string()))
}

/// Which hosts hold the file.
pub fn stat_file(shared: &Shared, r: StatFileRequest) -> Result<StatFileResponse, SchedulerError> {
    let options = TaskOptions {
        piece_length: r.piece_length,
        tag: r.tag,
        application: r.application,
        filtered_query_params: filtered(r.filtered_query_params),
        ..Default::default()
    };
    let task_id = url_task_id(&r.url, &options, false)?;
    let peers = shared.with_state(|s| holders(s, &task_id));
    let peers = peers
        .into_iter()
        .map(|h| PeerFile {
            ip: h.ip,
            hostname: h.hostname,
            cached_files: vec![File {
                url: r.url.clone(),
                is_finished: Some(h.finished),
            }],
        })
        .collect();
    Ok(StatFileResponse { peers })
}

/// Resolves the image as a preheat would and reports, per blob, whether some host finished
/// it, and per host which blobs it holds.
pub async fn stat_image(
    shared: &Shared,
    r: StatImageRequest,
) -> Result<StatImageResponse, SchedulerError> {
    let options = TaskOptions {
        piece_length: r.piece_length,
        tag: r.tag,
        application: r.application,
        filtered_query_params: filtered(r.filtered_query_params),
        blob_digest_task_id: r.enable_task_id_based_blob_digest || DEFAULT_BLOB_DIGEST_TASK_ID,
        certificate_chain: r.certificate_chain,
        insecure_skip_verify: r.insecure_skip_verify,
        ..Default::default()
    };
    let secrets = Secrets {
        headers: r.header,
        username: r.username,
        password: r.password,
    };
    let image = ManifestUrl::parse(&r.url)?;
    let platforms = Platforms::parse(r.platform.as_deref().unwrap_or_default());
    let resolved = registry::resolve(&image, &platforms, &options, &secrets).await?;
    let mut layers = Vec::new();
    let mut by_host: BTreeMap<(String, String), Vec<Layer>> = BTreeMap::new();
    for (url, _) in resolved.blobs {
        let task_id = url_task_id(&url, &options, options.blob_digest_task_id)?;
        let found = shared.with_state(|s| holders(s, &task_id));
        for h in &found {
            by_host
                .entry((h.ip.clone(), h.hostname.clone()))
                .or_default()
                .push(Layer {
                    url: url.clone(),
                    is_finished: Some(h.finished),
                });
        }
        layers.push(Layer {
            is_finished: Some(found.iter().any(|h| h.finished)),
            url,
        });
    }
    let peers = by_host
        .into_iter()
        .map(|((ip, hostname), cached_layers)| PeerImage {
            ip,
            hostname,
            cached_layers,
        })
        .collect();
    Ok(StatImageResponse {
        image: Some(Image { layers }),
        peers,
    })
}
