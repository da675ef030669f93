//! After the last piece: whole-file digest check, then the output file.

use super::request::TaskRequest;
use crate::context::Context;
use crate::error::DaemonError;
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

/// Verifies the digest (a mismatch deletes the task and leaves no output), then exports.
pub async fn complete(ctx: &Context, request: &TaskRequest) -> Result<(), DaemonError> {
    if let Some(expected) = &request.digest {
        verify(ctx, request, expected).await?;
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
            .await?;
        info!(output = %output.display(), ?method, "output written");
    }
    if let Err(error) = ctx.storage.touch_task(&request.task_id) {
        warn!(%error, "cannot update the task's access time");
    }
    Ok(())
}

async fn verify(
    ctx: &Context,
    request: &TaskRequest,
    expected: &Digest,
) -> Result<(), DaemonError> {
    let path = ctx.storage.content_path(&request.task_id);
    let algorithm = expected.algorithm;
    let actual = tokio::task::spawn_blocking(move || digest_file(&path, algorithm))
        .await
        .map_err(|e| DaemonError::Status(tonic::Status::internal(format!("digest task: {e}"))))?
        .map_err(|e| DaemonError::io("reading the downloaded content for its digest", e))?;
    if same_digest(expected, &actual) {
        return Ok(());
    }
    // The cached copy is bad: drop it so the next attempt fetches afresh.
    if let Err(error) = ctx.storage.delete_task(&request.task_id).await {
        warn!(%error, "cannot delete the task with the wrong digest");
    }
    Err(DaemonError::DigestMismatch {
        url: request.url.clone(),
        expected: expected.to_string(),
        actual: actual.to_string(),
    })
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
