//! The scheduler's JSON HTTP API (`server.http`), for dfctl, CI pipelines, registry webhooks
//! and a console:
//!
//! | route | what |
//! |---|---|
//! | `POST /api/v1/jobs` | start a preheat job (Dragonfly manager's body); token required |
//! | `GET /api/v1/jobs` | every kept job, newest first |
//! | `GET /api/v1/jobs/{id}` | one job: state, progress, result |
//! | `GET /api/v1/hosts` | announced hosts |
//! | `GET /api/v1/tasks` | known tasks with their peers |
//! | `GET /healthy` | 200 |
//!
//! Reads are open. Routes that change something need `Authorization: Bearer <server.http.token>`,
//! and are refused outright when no token is configured (read-only by default).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::preheat::{self, spec::JobRequest};
use crate::service::Shared;
use crate::state::State;
use crate::SchedulerError;

/// Largest request body accepted (a preheat job is a few hundred bytes).
pub const MAX_API_BODY_BYTES: usize = 1024 * 1024;
/// Route prefix, Dragonfly manager's.
pub const API_PREFIX: &str = "/api/v1";

type ApiResponse = Response<Full<Bytes>>;

/// A refusal: its status and the message sent as `{"error": …}`.
struct ApiError {
    status: StatusCode,
    message: String,
}

/// Serves the API until `shutdown` fires.
pub async fn serve_api(
    shared: Arc<Shared>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(error = %e, "API accept failed");
                        continue;
                    }
                };
                let shared = shared.clone();
                let service = hyper::service::service_fn(move |request| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(handle(&shared, request).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "API connection ended");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
}

async fn handle(shared: &Arc<Shared>, request: Request<Incoming>) -> ApiResponse {
    let method = request.method().clone();
    let path = request.uri().path().trim_end_matches('/').to_string();
    let span = tracing::info_span!("api", %method, %path);
    async {
        let route = path.strip_prefix(API_PREFIX).unwrap_or(&path);
        let result = match (&method, route) {
            (&Method::GET, "/healthy") => Ok(text(StatusCode::OK, "OK")),
            (&Method::GET, "/hosts") => Ok(ok(shared.with_state(|s| hosts_json(s)))),
            (&Method::GET, "/tasks") => Ok(ok(shared.with_state(|s| tasks_json(s)))),
            (&Method::GET, "/jobs") => Ok(ok(json!(shared.preheat.list()))),
            (&Method::POST, "/jobs") => create_job(shared, request).await,
            (&Method::GET, r) if r.starts_with("/jobs/") => {
                let id = &r["/jobs/".len()..];
                match shared.preheat.view(id) {
                    Some(view) => Ok(ok(json!(view))),
                    None => Err(error(StatusCode::NOT_FOUND, format!("no job {id}"))),
                }
            }
            _ => Err(error(
                StatusCode::NOT_FOUND,
                format!("no route {method} {path}"),
            )),
        };
        let response =
            result.unwrap_or_else(|e| json_response(e.status, &json!({ "error": e.message })));
        tracing::debug!(status = %response.status(), "API answered");
        response
    }
    .instrument(span)
    .await
}

async fn create_job(
    shared: &Arc<Shared>,
    request: Request<Incoming>,
) -> Result<ApiResponse, ApiError> {
    authorize(shared, &request)?;
    let body = Limited::new(request.into_body(), MAX_API_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("reading the body: {e}")))?
        .to_bytes();
    let job: JobRequest = serde_json::from_slice(&body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
    let spec = job.into_spec().map_err(from_scheduler)?;
    let id = preheat::start(shared.clone(), spec)
        .await
        .map_err(from_scheduler)?;
    let view = shared
        .preheat
        .view(&id)
        .ok_or_else(|| error(StatusCode::INTERNAL_SERVER_ERROR, "job vanished".into()))?;
    Ok(json_response(StatusCode::CREATED, &json!(view)))
}

/// Mutations need the configured token; without one the API is read-only.
fn authorize(shared: &Shared, request: &Request<Incoming>) -> Result<(), ApiError> {
    let Some(token) = shared
        .config
        .server
        .http
        .token
        .as_deref()
        .filter(|t| !t.is_empty())
    else {
        return Err(error(
            StatusCode::FORBIDDEN,
            "the API is read-only: set server.http.token to allow changes".into(),
        ));
    };
    let given = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), token.as_bytes()) => Ok(()),
        _ => Err(error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong Authorization: Bearer token".into(),
        )),
    }
}

/// Compares without stopping at the first difference, so timing does not leak the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn from_scheduler(e: SchedulerError) -> ApiError {
    let status = match e {
        SchedulerError::InvalidPreheat(_) => StatusCode::BAD_REQUEST,
        SchedulerError::ImageResolve(_) => StatusCode::BAD_GATEWAY,
        SchedulerError::NoPreheatHost(_) => StatusCode::CONFLICT,
        SchedulerError::TooManyJobs(_) => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

fn hosts_json(state: &State) -> Value {
    let hosts: Vec<Value> = state
        .hosts()
        .into_iter()
        .map(|h| {
            let a = &h.announced;
            let disk = a.disk.as_ref();
            json!({
                "id": h.id,
                "type": if h.host_type.is_seed() { "seed" } else { "normal" },
                "hostname": a.hostname,
                "ip": a.ip,
                "port": a.port,
                "download_port": a.download_port,
                "idc": a.network.as_ref().and_then(|n| n.idc.clone()),
                "location": a.network.as_ref().and_then(|n| n.location.clone()),
                "max_tx_bandwidth": h.max_tx_bandwidth(),
                "assigned_tx_bandwidth": h.assigned_tx_bandwidth,
                "active_children": h.active_children,
                "disk_total": disk.map(|d| d.total),
                "disk_used": disk.map(|d| d.used),
                "peers": h.peers.len(),
                "seconds_since_announce": h.last_announce.elapsed().as_secs(),
            })
        })
        .collect();
    Value::Array(hosts)
}

fn tasks_json(state: &State) -> Value {
    let tasks: Vec<Value> = state
        .tasks()
        .into_iter()
        .map(|t| {
            let peers: Vec<Value> = t
                .peers
                .iter()
                .filter_map(|id| state.peer(id))
                .map(|p| {
                    let host = state.host(&p.host_id).map(|h| &h.announced);
                    json!({
                        "id": p.id,
                        "host_id": p.host_id,
                        "ip": host.map(|h| h.ip.clone()),
                        "hostname": host.map(|h| h.hostname.clone()),
                        "state": p.state.name(),
                        "back_to_source": t.back_to_source_peers.contains(&p.id),
                    })
                })
                .collect();
            json!({
                "id": t.id,
                "url": t.url,
                "state": t.state.name(),
                "content_length": t.content_length,
                "piece_length": t.piece_length,
                "piece_count": t.piece_count,
                "peers": peers,
                "created_at": rfc3339(t.created_at),
                "updated_at": rfc3339(t.updated_at),
            })
        })
        .collect();
    Value::Array(tasks)
}

fn ok(value: Value) -> ApiResponse {
    json_response(StatusCode::OK, &value)
}

fn error(status: StatusCode, message: String) -> ApiError {
    ApiError { status, message }
}

fn json_response(status: StatusCode, value: &Value) -> ApiResponse {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn text(status: StatusCode, body: &'static str) -> ApiResponse {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}
