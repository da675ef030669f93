//! `dfctl task ls` and `dfctl task rm`: the local daemon's tasks, over its unix socket
//! (`DfdaemonDownload.ListLocalTasks`, `StatTask` for the URL, `DeleteTask`).

use std::path::Path;
use std::time::SystemTime;

use anyhow::Context as _;
use dragonfly_api::dfdaemon::v2::dfdaemon_download_client::DfdaemonDownloadClient;
use dragonfly_api::dfdaemon::v2::{DeleteTaskRequest, ListLocalTasksRequest, StatTaskRequest};
use serde::Serialize;
use tonic::transport::Channel;

use super::table::{render, size};
use super::Output;

/// One task as `dfctl task ls` shows it.
#[derive(Debug, Serialize)]
pub struct LocalTask {
    pub id: String,
    pub url: String,
    pub content_length: u64,
    pub piece_length: u64,
    pub pieces: u64,
    /// `Succeeded`, `Failed` or `Running`.
    pub state: &'static str,
    pub created_at: Option<String>,
    /// When the task was last read or written on this host.
    pub last_access: Option<String>,
}

async fn client(socket: &Path) -> anyhow::Result<DfdaemonDownloadClient<Channel>> {
    let channel = damselfly_dfget::client::connect(socket)
        .await
        .with_context(|| format!("cannot reach dfdaemon at {}", socket.display()))?;
    Ok(DfdaemonDownloadClient::new(channel))
}

fn time(ts: Option<prost_wkt_types::Timestamp>) -> Option<String> {
    let ts = ts?;
    let secs = u64::try_from(ts.seconds).ok()?;
    let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    Some(humantime::format_rfc3339_seconds(at).to_string())
}

/// The daemon's tasks, by ID.
pub async fn list(socket: &Path) -> anyhow::Result<Vec<LocalTask>> {
    let mut client = client(socket).await?;
    let listed = client
        .list_local_tasks(ListLocalTasksRequest::default())
        .await
        .context("ListLocalTasks")?
        .into_inner()
        .tasks;
    let mut tasks = Vec::new();
    for t in listed {
        // The URL is not in the local listing; StatTask has it (the scheduler's view, or the
        // daemon's own record).
        let url = client
            .stat_task(StatTaskRequest {
                task_id: t.task_id.clone(),
                remote_ip: None,
            })
            .await
            .map(|r| r.into_inner().url)
            .unwrap_or_default();
        let content_length = t.content_length.unwrap_or(0);
        let piece_length = t.piece_length.unwrap_or(0);
        let state = if t.finished_at.is_some() {
            "Succeeded"
        } else if t.failed_at.is_some() {
            "Failed"
        } else {
            "Running"
        };
        tasks.push(LocalTask {
            id: t.task_id,
            url,
            content_length,
            piece_length,
            pieces: content_length.div_ceil(piece_length.max(1)),
            state,
            created_at: time(t.created_at),
            last_access: time(t.updated_at),
        });
    }
    tasks.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(tasks)
}

pub fn print(tasks: &[LocalTask], output: Output) -> anyhow::Result<String> {
    if output == Output::Json {
        return Ok(serde_json::to_string_pretty(tasks)?);
    }
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.url.clone(),
                size(t.content_length),
                t.state.to_string(),
                t.pieces.to_string(),
                t.last_access.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    Ok(render(
        &["ID", "URL", "SIZE", "STATE", "PIECES", "LAST ACCESS"],
        &rows,
    ))
}

/// Deletes the task on this host; the daemon tells its scheduler.
pub async fn remove(socket: &Path, task_id: &str) -> anyhow::Result<()> {
    client(socket)
        .await?
        .delete_task(DeleteTaskRequest {
            task_id: task_id.to_string(),
            remote_ip: None,
        })
        .await
        .with_context(|| format!("DeleteTask {task_id}"))?;
    Ok(())
}
