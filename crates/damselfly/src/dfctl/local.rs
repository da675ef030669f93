//! `dfctl task ls`, `dfctl task show` and `dfctl task rm`: the local daemon's tasks, over its
//! unix socket (`DfdaemonDownload.ListLocalTasks`, `StatTask` for the URL and, with the
//! `x-damselfly-stat-view: local` metadata, the stored pieces; `DeleteTask`).

use std::path::Path;
use std::time::SystemTime;

use anyhow::Context as _;
use damselfly_core::extensions::{STAT_VIEW_LOCAL, STAT_VIEW_METADATA_KEY};
use dragonfly_api::common::v2::Piece;
use dragonfly_api::dfdaemon::v2::dfdaemon_download_client::DfdaemonDownloadClient;
use dragonfly_api::dfdaemon::v2::{
    DeleteTaskRequest, ListLocalTasksRequest, StatLocalTaskRequest, StatLocalTaskResponse,
    StatTaskRequest,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use tonic::metadata::MetadataValue;
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

/// A listed task with its URL.
fn local_task(t: StatLocalTaskResponse, url: String) -> LocalTask {
    let content_length = t.content_length.unwrap_or(0);
    let piece_length = t.piece_length.unwrap_or(0);
    let state = if t.finished_at.is_some() {
        "Succeeded"
    } else if t.failed_at.is_some() {
        "Failed"
    } else {
        "Running"
    };
    LocalTask {
        id: t.task_id,
        url,
        content_length,
        piece_length,
        pieces: content_length.div_ceil(piece_length.max(1)),
        state,
        created_at: time(t.created_at),
        last_access: time(t.updated_at),
    }
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
        tasks.push(local_task(t, url));
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

/// One task as `dfctl task show` shows it: the listing's fields and its pieces.
#[derive(Debug, Serialize)]
pub struct TaskDetail {
    #[serde(flatten)]
    pub task: LocalTask,
    pub pieces_done: u64,
    pub pieces_total: u64,
    pub pieces_from_peers: u64,
    pub pieces_from_origin: u64,
    /// Missing piece numbers as ranges, `0-3,7`; empty when none is missing.
    pub pieces_missing: String,
    /// The parents that gave pieces, most first.
    pub parents: Vec<ParentPieces>,
}

/// A parent peer and how many of the task's pieces it gave.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ParentPieces {
    pub peer_id: String,
    pub pieces: u64,
}

/// The daemon's record of one task with its pieces.
pub async fn show(socket: &Path, task_id: &str) -> anyhow::Result<TaskDetail> {
    let mut client = client(socket).await?;
    let stat = client
        .stat_local_task(StatLocalTaskRequest {
            task_id: task_id.to_string(),
            remote_ip: None,
        })
        .await
        .with_context(|| format!("StatLocalTask {task_id}"))?
        .into_inner();
    let mut request = tonic::Request::new(StatTaskRequest {
        task_id: task_id.to_string(),
        remote_ip: None,
    });
    request.metadata_mut().insert(
        STAT_VIEW_METADATA_KEY,
        MetadataValue::from_static(STAT_VIEW_LOCAL),
    );
    let task = client
        .stat_task(request)
        .await
        .with_context(|| format!("StatTask {task_id}"))?
        .into_inner();
    let listed = local_task(stat, task.url.clone());
    Ok(detail(listed, &task.pieces))
}

fn detail(task: LocalTask, pieces: &[Piece]) -> TaskDetail {
    let mut parents: BTreeMap<String, u64> = BTreeMap::new();
    for parent in pieces.iter().filter_map(|p| p.parent_id.as_ref()) {
        *parents.entry(parent.clone()).or_default() += 1;
    }
    let from_peers: u64 = parents.values().sum();
    let mut parents: Vec<ParentPieces> = parents
        .into_iter()
        .map(|(peer_id, pieces)| ParentPieces { peer_id, pieces })
        .collect();
    parents.sort_by(|a, b| {
        b.pieces
            .cmp(&a.pieces)
            .then_with(|| a.peer_id.cmp(&b.peer_id))
    });
    let have: BTreeSet<u64> = pieces.iter().map(|p| u64::from(p.number)).collect();
    let total = task.pieces;
    TaskDetail {
        pieces_done: have.len() as u64,
        pieces_total: total,
        pieces_from_peers: from_peers,
        pieces_from_origin: (pieces.len() as u64).saturating_sub(from_peers),
        pieces_missing: ranges((0..total).filter(|n| !have.contains(n))),
        parents,
        task,
    }
}

/// `0-3,7` for 0, 1, 2, 3, 7.
fn ranges(numbers: impl Iterator<Item = u64>) -> String {
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for n in numbers {
        match spans.last_mut() {
            Some((_, end)) if *end + 1 == n => *end = n,
            _ => spans.push((n, n)),
        }
    }
    let text: Vec<String> = spans
        .into_iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    text.join(",")
}

pub fn print_detail(task: &TaskDetail, output: Output) -> anyhow::Result<String> {
    if output == Output::Json {
        return Ok(serde_json::to_string_pretty(task)?);
    }
    let t = &task.task;
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let parents: Vec<String> = task
        .parents
        .iter()
        .map(|p| format!("{} ({})", p.peer_id, p.pieces))
        .collect();
    let rows = [
        ("ID", t.id.clone()),
        ("URL", t.url.clone()),
        ("SIZE", size(t.content_length)),
        ("PIECE LENGTH", size(t.piece_length)),
        ("STATE", t.state.to_string()),
        (
            "PIECES",
            format!("{}/{}", task.pieces_done, task.pieces_total),
        ),
        (
            "FROM",
            format!(
                "peers {} pieces, origin {} pieces",
                task.pieces_from_peers, task.pieces_from_origin
            ),
        ),
        ("MISSING", non_empty(&task.pieces_missing)),
        ("PARENTS", non_empty(&parents.join(", "))),
        ("CREATED AT", or_dash(&t.created_at)),
        ("LAST ACCESS", or_dash(&t.last_access)),
    ];
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|(k, v)| vec![k.to_string(), v])
        .collect();
    Ok(render(&["FIELD", "VALUE"], &rows))
}

fn non_empty(text: &str) -> String {
    if text.is_empty() {
        "none".into()
    } else {
        text.to_string()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_pieces_read_as_ranges() {
        assert_eq!(ranges([0, 1, 2, 3, 7, 9, 10].into_iter()), "0-3,7,9-10");
        assert_eq!(ranges(std::iter::empty()), "");
    }

    #[test]
    fn pieces_are_summed_by_source_and_parent() {
        let task = LocalTask {
            id: "t".into(),
            url: "http://o/f".into(),
            content_length: 40,
            piece_length: 10,
            pieces: 4,
            state: "Running",
            created_at: None,
            last_access: None,
        };
        let piece = |number, parent: Option<&str>| Piece {
            number,
            parent_id: parent.map(str::to_string),
            ..Default::default()
        };
        let pieces = [piece(0, Some("a")), piece(1, None), piece(3, Some("a"))];
        let d = detail(task, &pieces);
        assert_eq!((d.pieces_done, d.pieces_total), (3, 4));
        assert_eq!((d.pieces_from_peers, d.pieces_from_origin), (2, 1));
        assert_eq!(d.pieces_missing, "2");
        assert_eq!(
            d.parents,
            vec![ParentPieces {
                peer_id: "a".into(),
                pieces: 2
            }]
        );
        let table = print_detail(&d, Output::Table).unwrap();
        assert!(table.contains("PIECES        3/4"), "{table}");
    }
}
