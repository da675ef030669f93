//! dfdaemon's HTTP proxy (default `127.0.0.1:4001`): a registry mirror for container runtimes
//! and an HTTP(S) forward proxy. GETs matching `proxy.rules` (default: OCI blobs) go through the
//! download engine, so each layer leaves the registry about once per cluster; everything else
//! passes straight through, streamed, headers intact.
//!
//! Request forms (Dragonfly's behaviour):
//! - origin-form (`GET /v2/...`): a registry-mirror request; the upstream comes from
//!   `X-Dragonfly-Registry`, else containerd's `?ns=`, else `proxy.registryMirror.addr`;
//! - absolute-form (`GET http://host/...`): a forward-proxy request (`HTTP_PROXY`);
//! - `CONNECT host:port`: tunnelled, or TLS-terminated for `proxy.hijackHTTPS.hosts`.

mod access;
mod blob;
mod body;
pub mod config;
mod connect;
mod guard;
mod hedge;
mod multipart;
// Public only for the fuzz targets (`fuzz/`): the parsers of what a client sends.
#[doc(hidden)]
pub mod headers;
mod passthrough;
#[doc(hidden)]
pub mod range;
#[doc(hidden)]
pub mod route;
pub mod tls;

use crate::engine::Engine;
use crate::error::DaemonError;
use crate::lifecycle::Lifecycle;
use body::ProxyBody;
use config::{BasicAuth, ProxyConfig};
use damselfly_core::admission::ConnectionLimits;
use guard::{Kind, RequestLimiter};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use regex::Regex;
use route::{Route, Router};
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tracing::{debug, info, warn, Instrument};

#[doc(hidden)]
pub use blob::BlobSettings;
pub use blob::TASK_ID_HEADER;
pub use route::REGISTRY_HEADER;

/// The shared state of every proxy connection.
pub struct Proxy {
    engine: Arc<Engine>,
    router: Router,
    upstream: passthrough::Upstream,
    limiter: RequestLimiter,
    basic_auth: Option<BasicAuth>,
    blob: blob::BlobSettings,
    access: access::AccessCheck,
    authority: Option<tls::Authority>,
    /// CONNECT targets to terminate, with whether their origin's certificate is unchecked.
    hijack: Vec<(Regex, bool)>,
    /// The daemon's: the accept loop ends at its stop, open connections at its abort.
    life: Lifecycle,
}

impl Proxy {
    pub fn new(engine: Arc<Engine>, config: &ProxyConfig) -> Result<Arc<Self>, DaemonError> {
        config.validate()?;
        let hijack = config
            .hijack_https
            .hosts
            .iter()
            .map(|h| {
                Regex::new(&h.regx)
                    .map(|r| (r, h.insecure))
                    .map_err(|e| DaemonError::Config(format!("proxy.hijackHTTPS: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let authority = match (&config.server.ca_cert, &config.server.ca_key) {
            (Some(cert), Some(key)) => Some(tls::Authority::load_or_generate(cert, key)?),
            _ if !hijack.is_empty() => {
                warn!("proxy.hijackHTTPS without proxy.server.caCert/caKey: using a throwaway CA that clients cannot verify");
                Some(ephemeral_authority()?)
            }
            _ => None,
        };
        guard::init_metrics();
        let mirror_cas = match &config.registry_mirror.cert {
            Some(path) => damselfly_transfer::OriginTrust::pem_file_cas(path)?,
            None => Vec::new(),
        };
        let trusted =
            engine
                .context()
                .backend
                .with_trust(&damselfly_transfer::OriginTrust::with_cas(
                    mirror_cas.clone(),
                ))?;
        Ok(Arc::new(Self {
            router: Router::new(config)?,
            upstream: passthrough::Upstream::new(&trusted)?,
            access: access::AccessCheck::new(trusted),
            limiter: RequestLimiter::new(config.request_rate_limit()),
            basic_auth: config.server.basic_auth.clone(),
            blob: blob::BlobSettings {
                enable_task_id_based_blob_digest: config
                    .registry_mirror
                    .enable_task_id_based_blob_digest,
                disable_back_to_source: config.disable_back_to_source,
                certificate_chain: mirror_cas,
                prefetch: config.prefetch,
                range_hedge: config.range_hedge,
            },
            authority,
            hijack,
            life: engine.context().lifecycle.clone(),
            engine,
        }))
    }

    /// `Some(insecure)` when TLS to this CONNECT target is terminated.
    fn hijacks(&self, authority: &str) -> Option<bool> {
        self.authority.as_ref()?;
        self.hijack
            .iter()
            .find(|(regex, _)| regex.is_match(authority))
            .map(|(_, insecure)| *insecure)
    }

    /// Serves one request; `tls_authority` is set inside a terminated CONNECT tunnel.
    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        tls_authority: Option<Arc<str>>,
    ) -> Response<ProxyBody> {
        if let Some(refusal) = self.refuse(&request, tls_authority.is_some()) {
            return refusal;
        }
        if request.method() == Method::CONNECT {
            return connect::handle(self, request).await;
        }
        let (parts, body) = request.into_parts();
        let route = match self.router.route(&parts, tls_authority.as_deref()) {
            Ok(route) => route,
            Err(route::BadTarget(reason)) => {
                guard::count(Kind::BadRequest);
                return body::text(StatusCode::BAD_REQUEST, "bad_request", &reason);
            }
        };
        let insecure = tls_authority
            .as_deref()
            .and_then(|a| self.hijacks(a))
            .unwrap_or(false);
        match route {
            Route::Pass { url } => {
                self.upstream
                    .forward(parts, body, url, insecure, Kind::Passthrough)
                    .await
            }
            Route::P2p {
                url,
                filtered_query_params,
            } => {
                self.p2p(parts, body, url, filtered_query_params, insecure)
                    .await
            }
        }
    }

    /// Through the swarm; what the engine could not start goes to the origin as it is.
    async fn p2p(
        &self,
        parts: http::request::Parts,
        body: Incoming,
        url: url::Url,
        filtered_query_params: Vec<String>,
        insecure: bool,
    ) -> Response<ProxyBody> {
        let served = blob::serve(
            &self.engine,
            &self.blob,
            &self.access,
            &parts,
            &url,
            filtered_query_params,
        )
        .await;
        match served {
            Ok(response) => {
                guard::count(Kind::P2p);
                response
            }
            Err(blob::NotServed::Answer(response, kind)) => {
                guard::count(kind);
                *response
            }
            Err(blob::NotServed::Fallback(reason)) => {
                info!(%url, %reason, "not served through the swarm; passing through");
                self.upstream
                    .forward(parts, body, url, insecure, Kind::Fallback)
                    .await
            }
        }
    }

    /// 429 over the rate limit, 401 without the configured credentials. Inside a terminated
    /// tunnel the CONNECT itself was authenticated.
    fn refuse(&self, request: &Request<Incoming>, in_tunnel: bool) -> Option<Response<ProxyBody>> {
        if !self.limiter.try_acquire() {
            guard::count(Kind::RateLimited);
            return Some(body::text(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit",
                "over the proxy's request rate limit",
            ));
        }
        if in_tunnel || guard::authorized(self.basic_auth.as_ref(), request.headers()) {
            return None;
        }
        guard::count(Kind::Unauthorized);
        let mut response = body::text(
            StatusCode::UNAUTHORIZED,
            "auth",
            "proxy authentication required",
        );
        response.headers_mut().insert(
            http::header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"dfdaemon\""),
        );
        Some(response)
    }
}

fn ephemeral_authority() -> Result<tls::Authority, DaemonError> {
    let dir = std::env::temp_dir().join(format!("damselfly-ca-{}", std::process::id()));
    let (cert, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    tls::generate_ca(&cert, &key)?;
    let authority = tls::Authority::load_or_generate(&cert, &key);
    let _ = std::fs::remove_dir_all(&dir);
    authority
}

/// Binds the proxy. With the default port a busy address only disables the proxy: dfget
/// users of this daemon need its other servers more.
pub async fn bind(
    config: &ProxyConfig,
    host_ip: IpAddr,
) -> Result<Option<TcpListener>, DaemonError> {
    let addr = config.addr(host_ip);
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(Some(listener)),
        Err(error) if config.server.port.is_none() => {
            warn!(%addr, %error, "proxy disabled: cannot bind its default address (set proxy.server.port)");
            Ok(None)
        }
        Err(source) => Err(DaemonError::Bind {
            what: "proxy",
            addr: addr.to_string(),
            source,
        }),
    }
}

/// Sockets one client address may hold on the proxy. A node's container runtime pulls
/// many layers at once from one address (loopback), so the cap is wide; it still stops one
/// client from taking every socket.
const MAX_CONNECTIONS_PER_ADDRESS: usize = 512;
/// Sockets held on the proxy over all clients.
const MAX_CONNECTIONS: usize = 2048;
/// Time a client gets to send a request's headers; idle keep-alive and slowloris clients
/// are closed. Bodies (long layer downloads) are not bounded by it.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Accepts proxy connections until shutdown.
pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener) {
    let limits = ConnectionLimits::new(MAX_CONNECTIONS_PER_ADDRESS, MAX_CONNECTIONS);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    debug!(%error, "proxy accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            _ = proxy.life.stopping() => return,
        };
        let Ok(slot) = limits.admit(peer.ip()) else {
            debug!(%peer, "too many proxy connections; closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let span = tracing::debug_span!("proxy_connection", %peer);
        let connection = serve_connection(proxy.clone(), stream, None);
        // Tracked: a response in flight at shutdown gets the grace to finish.
        proxy.life.spawn(
            async move {
                connection.await;
                drop(slot);
            }
            .instrument(span),
        );
    }
}

type HandleFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>,
>;

/// HTTP/1.1 on one connection (plain, or TLS inside a hijacked tunnel). Returns a boxed
/// `Send` future: handle → CONNECT → serve_connection → handle is a cycle that auto-trait
/// inference cannot see through.
fn serve_connection<I>(
    proxy: Arc<Proxy>,
    io: I,
    tls_authority: Option<Arc<str>>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(async move {
        let life = proxy.life.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let proxy = proxy.clone();
            let tls_authority = tls_authority.clone();
            let span = tracing::info_span!(
                "proxy_request",
                method = %request.method(),
                uri = %request.uri(),
            );
            let future: HandleFuture = Box::pin(
                async move { Ok(proxy.handle(request, tls_authority).await) }.instrument(span),
            );
            future
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        let mut connection = std::pin::pin!(connection);
        // At the stop, an idle connection closes and a busy one ends after its response; at
        // the abort, whatever is left is cut.
        let result = tokio::select! {
            result = connection.as_mut() => Some(result),
            _ = life.stopping() => {
                connection.as_mut().graceful_shutdown();
                tokio::select! {
                    result = connection.as_mut() => Some(result),
                    _ = life.aborting() => None,
                }
            }
        };
        // Garbage, a TLS hello on the plain port, or a client that hung up: not our error.
        if let Some(Err(error)) = result {
            debug!(%error, "proxy connection ended with an error");
        }
    })
}
