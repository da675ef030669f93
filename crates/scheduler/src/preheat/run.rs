//! Running a preheat job: resolve what to fetch, pick the hosts, then call
//! `DfdaemonUpload.DownloadTask` for every (task, host) pair, a bounded number at a time, and
//! record the progress in the job. One failure does not cancel the others.

use std::sync::Arc;
use std::time::Instant;

use dragonfly_api::common::v2::{Download, TaskType};
use dragonfly_api::dfdaemon::v2::download_task_response::Response as Update;
use futures::StreamExt;
use tracing::Instrument;

use super::jobs::{JobState, JobTask, Progress, TargetHost};
use super::registry::{self, ManifestUrl};
use super::spec::{PreheatSpec, Scope, Selection, Target, TaskOptions};
use crate::seed;
use crate::service::Shared;
use crate::state::host_endpoint;
use crate::SchedulerError;
use damselfly_core::id::TaskIdSpec;

/// What one task of a job downloads.
struct Planned {
    url: String,
    digest: Option<String>,
}

/// Resolves the request (for an image: the manifest, as Dragonfly does before it answers),
/// creates the job and starts it in the background. Returns the job ID.
pub async fn start(shared: Arc<Shared>, spec: PreheatSpec) -> Result<String, SchedulerError> {
    let (kind, label, planned, authorization) = match &spec.target {
        Target::Files(urls) => {
            let planned: Vec<Planned> = urls
                .iter()
                .map(|url| Planned {
                    url: url.clone(),
                    digest: None,
                })
                .collect();
            ("file", urls.join(" "), planned, None)
        }
        Target::Image { url, platforms } => {
            let image = ManifestUrl::parse(url)?;
            let resolved = registry::resolve(&image, platforms, &spec.task, &spec.secrets).await?;
            let planned = resolved
                .blobs
                .into_iter()
                .map(|(url, digest)| Planned {
                    url,
                    digest: Some(digest),
                })
                .collect();
            let label = image.manifest(&image.reference);
            ("image", label, planned, resolved.authorization)
        }
    };
    let hosts = shared.with_state(|s| s.list_hosts(None, Instant::now()));
    let candidates = candidates(&hosts, spec.scope, &spec.selection)?;
    let mut tasks = Vec::new();
    let mut downloads = Vec::new();
    for p in planned {
        let download = download_for(&p, &spec, authorization.as_deref());
        let task_id = task_id_of(&download, &spec.task)?;
        let targets = match spec.scope {
            Scope::SingleSeedPeer => vec![pick_one(&candidates, &task_id)],
            _ => candidates.clone(),
        };
        tasks.push(JobTask::new(p.url, task_id, targets));
        downloads.push(download);
    }
    let id = shared.preheat.create(kind, &label, tasks.clone())?;
    tracing::info!(job_id = %id, kind, tasks = tasks.len(), "preheat job created");
    let span = tracing::info_span!("preheat_job", job_id = %id);
    let job = id.clone();
    tokio::spawn(execute(shared, job, tasks, downloads, spec).instrument(span));
    Ok(id)
}

/// The hosts a job may use, sorted by host ID (ListHosts' order).
fn candidates(
    hosts: &[dragonfly_api::common::v2::Host],
    scope: Scope,
    selection: &Selection,
) -> Result<Vec<TargetHost>, SchedulerError> {
    let pool: Vec<TargetHost> = hosts
        .iter()
        .filter(|h| scope == Scope::AllPeers || h.r#type != 0)
        .map(|h| TargetHost {
            host_id: h.id.clone(),
            hostname: h.hostname.clone(),
            ip: h.ip.clone(),
            endpoint: host_endpoint(&h.ip, h.port),
        })
        .collect();
    let chosen: Vec<TargetHost> = match (scope, selection) {
        (Scope::SingleSeedPeer, _) | (_, Selection::All) => pool,
        (_, Selection::Ips(ips)) => pool.into_iter().filter(|h| ips.contains(&h.ip)).collect(),
        (_, Selection::Count(n)) => pool.into_iter().take(*n as usize).collect(),
        (_, Selection::Percentage(p)) => {
            let n = (pool.len() * *p as usize / 100).max(1);
            pool.into_iter().take(n).collect()
        }
    };
    if chosen.is_empty() {
        let what = match scope {
            Scope::AllPeers => "host",
            _ => "seed peer",
        };
        return Err(SchedulerError::NoPreheatHost(format!(
            "no {what} matches (scope {scope:?}, {selection:?}); {} host(s) announced",
            hosts.len()
        )));
    }
    Ok(chosen)
}

/// One seed per task, by a stable hash of the task ID, so a task sticks to one seed.
fn pick_one(candidates: &[TargetHost], task_id: &str) -> TargetHost {
    let hash = task_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let index = usize::try_from(hash % candidates.len() as u64).unwrap_or(0);
    candidates[index].clone()
}

fn download_for(planned: &Planned, spec: &PreheatSpec, authorization: Option<&str>) -> Download {
    let t = &spec.task;
    let mut request_header = spec.secrets.headers.clone();
    if let Some(auth) = authorization {
        request_header.retain(|k, _| !k.eq_ignore_ascii_case("authorization"));
        request_header.insert("Authorization".into(), auth.to_string());
    }
    Download {
        url: planned.url.clone(),
        digest: planned.digest.clone(),
        r#type: TaskType::Standard as i32,
        tag: t.tag.clone(),
        application: t.application.clone(),
        priority: t.priority,
        filtered_query_params: t.filtered_query_params.clone(),
        request_header,
        piece_length: t.piece_length,
        certificate_chain: t.certificate_chain.clone(),
        enable_task_id_based_blob_digest: t.blob_digest_task_id,
        ..Default::default()
    }
}

/// The ID the host will compute for this download (the proxy's rule for blobs).
fn task_id_of(download: &Download, options: &TaskOptions) -> Result<String, SchedulerError> {
    TaskIdSpec {
        url: &download.url,
        tag: download.tag.as_deref(),
        application: download.application.as_deref(),
        revision: None,
        piece_length: download.piece_length,
        filtered_query_params: &download.filtered_query_params,
        content_for_calculating_task_id: None,
        enable_task_id_based_blob_digest: options.blob_digest_task_id,
    }
    .task_id()
    .map_err(|e| SchedulerError::InvalidPreheat(e.to_string()))
}

async fn execute(
    shared: Arc<Shared>,
    job: String,
    tasks: Vec<JobTask>,
    downloads: Vec<Download>,
    spec: PreheatSpec,
) {
    shared.preheat.set_state(&job, JobState::Started);
    let pairs: Vec<(usize, usize, TargetHost)> = tasks
        .iter()
        .enumerate()
        .flat_map(|(t, task)| {
            task.hosts()
                .into_iter()
                .enumerate()
                .map(move |(h, host)| (t, h, host))
        })
        .collect();
    let all = futures::stream::iter(pairs).for_each_concurrent(
        spec.concurrent_task_count,
        |(t, h, host)| {
            let shared = shared.clone();
            let job = job.clone();
            let download = downloads[t].clone();
            async move { fetch_on(&shared, &job, (t, h), &host, download).await }
        },
    );
    if tokio::time::timeout(spec.timeout, all).await.is_err() {
        tracing::warn!(timeout = ?spec.timeout, "preheat job timed out");
    }
    match shared.preheat.finish(&job) {
        Some(JobState::Failed(e)) => tracing::warn!(error = %e, "preheat job failed"),
        _ => tracing::info!("preheat job succeeded"),
    }
}

async fn fetch_on(
    shared: &Shared,
    job: &str,
    (task, target): (usize, usize),
    host: &TargetHost,
    download: Download,
) {
    let jobs = &shared.preheat;
    let on_update = |update: &Update| match update {
        Update::DownloadTaskStartedResponse(started) => jobs.progress(
            job,
            task,
            target,
            Progress::Started {
                content_length: started.content_length,
            },
        ),
        Update::DownloadPieceFinishedResponse(done) => {
            let length = done.piece.as_ref().map_or(0, |p| p.length);
            jobs.progress(job, task, target, Progress::Piece { length });
        }
    };
    let span = tracing::info_span!("preheat_download", url = %download.url, ip = %host.ip);
    let result = seed::download_task(
        &host.endpoint,
        download,
        shared.seed_tls.as_ref(),
        on_update,
    )
    .instrument(span)
    .await
    .map(|_| ());
    if let Err(e) = &result {
        tracing::warn!(ip = %host.ip, error = %e, "preheat download failed");
    }
    jobs.progress(job, task, target, Progress::Finished(result));
}
