//! The scheduler's JSON HTTP API (`server.http`), for dfctl, CI pipelines, registry webhooks
//! and a console:
//!
//! | route | what |
//! |---|---|
//! | `POST /api/v1/jobs` | start a preheat job (Dragonfly manager's body); token required |
//! | `GET /api/v1/jobs` | every kept job, newest first |
//! | `GET /api/v1/jobs/{id}` | one job: state, progress, result |
//! | `GET /api/v1/hosts` | announced hosts, with the bytes their peers moved |
//! | `GET /api/v1/tasks` | known tasks with their peers, byte sources and origin reasons |
//! | `GET /api/v1/tasks/{id}` | one task with its flow: parent → child edges with bytes |
//! | `DELETE /api/v1/tasks/{id}` | forget the task in the scheduler (nodes keep their caches); token required |
//! | `GET /api/v1/console` | `{"writable": bool}`: whether a token is configured |
//! | `GET /api/v1/events` | server-sent events for the console (`console::events`) |
//! | `GET /`, `/console`, `/console/*` | the console page (`console`) |
//! | `GET /healthy` | 200 |
//!
//! Reads are open. Routes that change something need `Authorization: Bearer <server.http.token>`,
//! and are refused outright when no token is configured (read-only by default).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::console::{self, views, Change};
use crate::preheat::{self, spec::JobRequest};
use crate::service::Shared;
use crate::SchedulerError;

/// Largest request body accepted (a preheat job is a few hundred bytes).
pub const MAX_API_BODY_BYTES: usize = 1024 * 1024;
/// Route prefix, Dragonfly manager's.
pub const API_PREFIX: &str = "/api/v1";

type ApiResponse = Response<UnsyncBoxBody<Bytes, Infallible>>;

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
        let asset = console::asset(&path).filter(|_| method == Method::GET);
        if let Some((content_type, body)) = asset {
            return asset_response(content_type, body);
        }
        let route = path.strip_prefix(API_PREFIX).unwrap_or(&path);
        let result = match (&method, route) {
            (&Method::GET, "/healthy") => Ok(text(StatusCode::OK, "OK")),
            (&Method::GET, "/hosts") => Ok(ok(shared.with_state(|s| views::hosts_json(s)))),
            (&Method::GET, "/tasks") => Ok(ok(shared.with_state(|s| views::tasks_json(s)))),
            (&Method::GET, "/console") => Ok(ok(json!({ "writable": token(shared).is_some() }))),
            (&Method::GET, "/events") => Ok(event_stream(shared)),
            (&Method::GET, r) if r.starts_with("/tasks/") => {
                let id = &r["/tasks/".len()..];
                match shared.with_state(|s| views::task_flow_json(s, id)) {
                    Some(view) => Ok(ok(view)),
                    None => Err(error(StatusCode::NOT_FOUND, format!("no task {id}"))),
                }
            }
            (&Method::DELETE, r) if r.starts_with("/tasks/") => {
                forget_task(shared, &request, &r["/tasks/".len()..])
            }
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

/// The console's live updates, until the scheduler stops.
fn event_stream(shared: &Shared) -> ApiResponse {
    let body = console::events::stream(shared.console.subscribe(), shared.stop_signal())
        .map(|bytes| Ok::<_, Infallible>(Frame::data(bytes)));
    let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(body)));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The scheduler forgets the task (its peers and flow): the next download starts it anew.
fn forget_task(
    shared: &Shared,
    request: &Request<Incoming>,
    task_id: &str,
) -> Result<ApiResponse, ApiError> {
    authorize(shared, request)?;
    let removed = shared.with_state(|s| s.forget_task(task_id));
    if !removed {
        return Err(error(StatusCode::NOT_FOUND, format!("no task {task_id}")));
    }
    tracing::info!(%task_id, "task forgotten on request");
    shared.console.publish(Change::Task(task_id.to_string()));
    Ok(ok(json!({ "removed": task_id })))
}

/// The configured token, if any (an empty one is none).
fn token(shared: &Shared) -> Option<&str> {
    shared
        .config
        .server
        .http
        .token
        .as_deref()
        .filter(|t| !t.is_empty())
}

/// Mutations need the configured token; without one the API is read-only.
fn authorize(shared: &Shared, request: &Request<Incoming>) -> Result<(), ApiError> {
    let Some(token) = token(shared) else {
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

fn ok(value: Value) -> ApiResponse {
    json_response(StatusCode::OK, &value)
}

fn error(status: StatusCode, message: String) -> ApiError {
    ApiError { status, message }
}

fn json_response(status: StatusCode, value: &Value) -> ApiResponse {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn text(status: StatusCode, body: &'static str) -> ApiResponse {
    let mut response = Response::new(full(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

fn asset_response(content_type: &'static str, body: &'static str) -> ApiResponse {
    let mut response = text(StatusCode::OK, body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn full(bytes: Bytes) -> UnsyncBoxBody<Bytes, Infallible> {
    BodyExt::boxed_unsync(Full::new(bytes))
}
