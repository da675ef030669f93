//! After the last piece: whole-file digest check, then the output file.

use super::request::TaskRequest;
use crate::context::Context;
use crate::error::{DaemonError, DownloadError};
use damselfly_core::digest::digest_file;
use damselfly_core::{Digest, DigestAlgorithm};
use tracing::{info, warn};

/// Refuses up front an output that exists without `overwrite`, before any byte is fetched.
pub fn check_output(request: &TaskRequest) -> Result<(), DaemonError> {
    match &request.output {
        Some(path) if !request.overwrite && path.exists() => {
            Err(damselfly_storage::StorageError::OutputExists(path.clone()).into())
        }
        _ => Ok(()),
    }
}

/// Verifies the caller's digest (a mismatch deletes the task and leaves no output), then
/// exports. `checked` is the digest the job already verified before it recorded the task
/// finished: the same digest is not hashed twice. A caller that joined with another digest,
/// and a local hit (whose content file may have changed on disk since), are checked here.
pub async fn complete(
    ctx: &Context,
    request: &TaskRequest,
    checked: Option<&Digest>,
) -> Result<(), DownloadError> {
    let already_checked = request.digest.is_some() && request.digest.as_ref() == checked;
    if !already_checked {
        if let Err(error) = verify_content(ctx, request).await {
            discard(ctx, &request.task_id).await;
            return Err(DownloadError::output(error));
        }
    }
    if let Some(output) = &request.output {
        let method = ctx
            .storage
            .export(
                &request.task_id,
                output,
                request.overwrite,
                request.force_hard_link,
            )
            .await
            .map_err(DownloadError::output)?;
        info!(output = %output.display(), ?method, "output written");
    }
    if let Err(error) = ctx.storage.touch_task(&request.task_id) {
        warn!(%error, "cannot update the task's access time");
    }
    Ok(())
}

/// A range's end: its bytes `[start, end)` written to the output, if the caller named one.
pub async fn complete_range(
    ctx: &Context,
    request: &TaskRequest,
    (start, end): (u64, u64),
) -> Result<(), DownloadError> {
    if let Some(output) = &request.output {
        write_range(ctx, &request.task_id, output, start, end)
            .await
            .map_err(DownloadError::output)?;
        info!(output = %output.display(), start, end, "range written");
    }
    if let Err(error) = ctx.storage.touch_task(&request.task_id) {
        warn!(%error, "cannot update the task's access time");
    }
    Ok(())
}

/// Bytes read from the content file per write of a range output.
const RANGE_COPY_CHUNK: u64 = 4 * 1024 * 1024;

async fn write_range(
    ctx: &Context,
    task_id: &str,
    output: &std::path::Path,
    start: u64,
    end: u64,
) -> Result<(), DaemonError> {
    use tokio::io::AsyncWriteExt;
    let mut reader = ctx.storage.content_reader(task_id);
    let mut file = tokio::fs::File::create(output)
        .await
        .map_err(|e| DaemonError::io(format!("creating {}", output.display()), e))?;
    let mut at = start;
    while at < end {
        let len = (end - at).min(RANGE_COPY_CHUNK) as usize;
        let bytes = reader.read_at(at, len).await?;
        file.write_all(&bytes)
            .await
            .map_err(|e| DaemonError::io(format!("writing {}", output.display()), e))?;
        at += len as u64;
    }
    file.sync_all()
        .await
        .map_err(|e| DaemonError::io(format!("writing {}", output.display()), e))
}

/// Checks the assembled content against the request's whole-file digest, if it names one;
/// `DigestMismatch` otherwise. The content is left as it is: the caller reports who supplied
/// it before [`discard`]ing it.
pub async fn verify_content(ctx: &Context, request: &TaskRequest) -> Result<(), DaemonError> {
    let Some(expected) = &request.digest else {
        return Ok(());
    };
    let path = ctx.storage.content_path(&request.task_id);
    let algorithm = expected.algorithm;
    let actual = tokio::task::spawn_blocking(move || digest_file(&path, algorithm))
        .await
        .map_err(|e| DaemonError::io("hashing the content", std::io::Error::other(e)))?
        .map_err(|e| DaemonError::io("reading the downloaded content for its digest", e))?;
    if same_digest(expected, &actual) {
        return Ok(());
    }
    Err(DaemonError::DigestMismatch {
        url: request.url.clone(),
        expected: expected.to_string(),
        actual: actual.to_string(),
    })
}

/// Drops content that failed its digest, so nobody is served it and the next attempt
/// fetches afresh.
pub async fn discard(ctx: &Context, task_id: &str) {
    if let Err(error) = ctx.storage.delete_task(task_id).await {
        warn!(%error, "cannot delete the task with the wrong digest");
    }
}

/// The parents that supplied the task's stored pieces, each with one piece it sent: whom to
/// report when the whole file fails its digest.
pub fn suppliers(ctx: &Context, task_id: &str) -> Vec<(String, u32)> {
    let mut seen = std::collections::BTreeMap::new();
    for piece in ctx.storage.pieces(task_id).unwrap_or_default() {
        if let Some(parent) = piece.parent_id {
            seen.entry(parent).or_insert(piece.number);
        }
    }
    seen.into_iter().collect()
}

/// crc32 values may be written with or without leading zeros.
fn same_digest(expected: &Digest, actual: &Digest) -> bool {
    if expected.algorithm != actual.algorithm {
        return false;
    }
    match expected.algorithm {
        DigestAlgorithm::Crc32 => {
            expected.encoded.parse::<u64>().ok() == actual.encoded.parse::<u64>().ok()
        }
        _ => expected.encoded.eq_ignore_ascii_case(&actual.encoded),
    }
}
