//! Who may call what on the upload port (issue 10, "who may ask for what").
//!
//! - `DownloadTask` makes this daemon fetch from the origin and store the result under a task
//!   ID; only schedulers (seed triggers, preheat) may ask. With mTLS the caller's certificate
//!   must carry role `scheduler`; without, the caller's address must be one of the
//!   schedulers this daemon currently uses (official Dragonfly schedulers keep working).
//! - A remote caller never chooses the task ID: `content_for_calculating_task_id` would let
//!   it store bytes of one URL under the task ID of another content, so it is refused; the
//!   engine computes the task ID from URL, tag, application, filtered params and piece length.
//! - Destructive calls (`DeleteTask`) are for the local unix socket only.

use crate::context::Context;
use damselfly_tls::{grpc::peer_identity, Role};
use dragonfly_api::common::v2::Download;
use tonic::{Request, Status};

/// Refuses a `DownloadTask` that does not come from a scheduler or that picks its task ID.
pub fn check_download_task<T>(
    ctx: &Context,
    request: &Request<T>,
    download: &Download,
) -> Result<(), Status> {
    check_scheduler_caller(ctx, request)?;
    if download.content_for_calculating_task_id.is_some() {
        return Err(Status::permission_denied(
            "DownloadTask from a remote caller may not set content_for_calculating_task_id: \
             the task ID is computed from the URL and its parameters",
        ));
    }
    Ok(())
}

fn check_scheduler_caller<T>(ctx: &Context, request: &Request<T>) -> Result<(), Status> {
    match peer_identity(request) {
        Some(Ok(identity)) if identity.role == Role::Scheduler => Ok(()),
        Some(Ok(identity)) => Err(Status::permission_denied(format!(
            "DownloadTask is accepted only from schedulers; the caller's certificate ({identity}) has role {}",
            identity.role
        ))),
        Some(Err(e)) => Err(Status::permission_denied(format!(
            "DownloadTask refused: client certificate unreadable: {e}"
        ))),
        None => {
            let caller = request.remote_addr().map(|addr| addr.ip());
            let schedulers = ctx.schedulers.addrs();
            match caller {
                Some(ip) if schedulers.iter().any(|s| s.ip() == ip) => Ok(()),
                _ => Err(Status::permission_denied(format!(
                    "DownloadTask is accepted only from this daemon's schedulers; caller {} is not one of them",
                    caller.map_or_else(|| "unknown".to_string(), |ip| ip.to_string())
                ))),
            }
        }
    }
}

/// Deleting is for the local socket; the upload port is reachable by every host.
pub fn refuse_destructive(method: &str) -> Status {
    Status::permission_denied(format!(
        "{method} is not allowed on the upload port; use the daemon's local unix socket"
    ))
}
