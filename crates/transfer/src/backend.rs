//! Origin access over HTTP(S): stat, ranged piece GETs and whole-body GETs, streamed into
//! storage.

use crate::error::TransferError;
use crate::file_copy::FileSink;
use crate::limiter::{RateLimiter, ThrottledReader};
use crate::metrics::{result_label, BACKEND_REQUEST_TOTAL};
use crate::plain_http::{PlainHttp, RangeRequest, Target};
use crate::trust::{self, ClientCache, OriginTrust};
use damselfly_core::digest::DigestAlgorithm;
use damselfly_core::PieceSpan;
use damselfly_storage::{PieceFrom, PieceMetadata, Storage, StorageError, WrittenPiece};
use futures::TryStreamExt;
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, RANGE,
};
use reqwest::{Method, Response, StatusCode};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::io::StreamReader;
use tracing::{debug, warn};

/// Time to establish a connection (TCP + TLS) to the origin.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest silence while waiting for response headers or body bytes; a stalled origin is
/// abandoned after this and the request retried.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Extra attempts after a transient failure (connect error, timeout, 5xx, broken body).
pub const DEFAULT_MAX_RETRIES: u32 = 1;
/// Wait before the first retry; doubles for each further one.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(200);
/// Sent to origins, so their operators can tell P2P traffic apart.
pub const DEFAULT_USER_AGENT: &str = concat!("damselfly/", env!("CARGO_PKG_VERSION"));

/// The body of an origin response, chunk by chunk.
pub type BodyChunks =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<bytes::Bytes, TransferError>> + Send>>;

#[derive(Clone, Debug)]
pub struct BackendConfig {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub max_retries: u32,
    pub retry_backoff: Duration,
    pub user_agent: String,
    /// Honour HTTP(S)_PROXY / NO_PROXY from the environment.
    pub use_env_proxy: bool,
    /// The system CA bundle; None: `SSL_CERT_FILE`, else the first of
    /// [`crate::SYSTEM_CA_FILES`] that exists.
    pub system_ca_file: Option<PathBuf>,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            max_retries: DEFAULT_MAX_RETRIES,
            retry_backoff: DEFAULT_RETRY_BACKOFF,
            user_agent: DEFAULT_USER_AGENT.to_string(),
            use_env_proxy: true,
            system_ca_file: None,
        }
    }
}

/// One piece to fetch from the origin with a ranged GET, and where it goes.
#[derive(Clone, Copy)]
pub struct OriginPiece<'a> {
    pub url: &'a str,
    pub headers: &'a [(String, String)],
    pub storage: &'a Storage,
    pub task_id: &'a str,
    pub span: PieceSpan,
    /// Applied to the body as it streams.
    pub limiters: &'a [RateLimiter],
    /// Hash the bytes with this too as they are written (a back-to-source peer's trusted
    /// digest for its report), besides the crc32 that is recorded.
    pub trusted: Option<DigestAlgorithm>,
}

/// What the origin says about an object.
#[derive(Clone, Debug)]
pub struct ObjectStat {
    /// None when the origin did not say (chunked responses).
    pub content_length: Option<u64>,
    pub status: u16,
    /// Headers describing the whole object (a range probe's Content-Range is dropped and its
    /// Content-Length replaced by the object's).
    pub headers: Vec<(String, String)>,
    pub supports_range: bool,
}

/// Origin (HTTP/HTTPS) access with one trust setting. Cheap to clone: the connection pools
/// are shared.
#[derive(Clone, Debug)]
pub struct Backend {
    client: reqwest::Client,
    trust: OriginTrust,
    shared: Arc<Shared>,
    config: BackendConfig,
    /// Ranged GETs from plain-http origins; None when a proxy is configured.
    plain: Option<Arc<PlainHttp>>,
}

/// What every trust setting's backend shares.
#[derive(Debug)]
struct Shared {
    /// The system CA bundle, read once.
    system_roots: Vec<reqwest::Certificate>,
    clients: ClientCache,
}

impl Backend {
    /// A backend trusting the system store and the web roots.
    pub fn new(config: BackendConfig) -> Result<Backend, TransferError> {
        let shared = Arc::new(Shared {
            system_roots: trust::system_roots(config.system_ca_file.as_deref()),
            clients: ClientCache::default(),
        });
        let trust = OriginTrust::System;
        let client = shared
            .clients
            .get_or_build(&trust, || build_client(&config, &shared, &trust))?;
        let proxied = config.use_env_proxy && proxy_in_environment();
        let plain = (!proxied).then(|| {
            Arc::new(PlainHttp::new(
                config.connect_timeout,
                config.read_timeout,
                &config.user_agent,
            ))
        });
        Ok(Backend {
            client,
            trust,
            shared,
            config,
            plain,
        })
    }

    /// The same backend with another trust setting; its client is built the first time that
    /// setting is asked for and shared from then on.
    pub fn with_trust(&self, trust: &OriginTrust) -> Result<Backend, TransferError> {
        if *trust == self.trust {
            return Ok(self.clone());
        }
        let client = self
            .shared
            .clients
            .get_or_build(trust, || build_client(&self.config, &self.shared, trust))?;
        Ok(Backend {
            client,
            trust: trust.clone(),
            ..self.clone()
        })
    }

    pub fn trust(&self) -> &OriginTrust {
        &self.trust
    }

    /// Gives another reqwest client (the proxy's pass-through) this backend's trust: the
    /// system roots and its own setting.
    pub fn trusting(
        &self,
        builder: reqwest::ClientBuilder,
    ) -> Result<reqwest::ClientBuilder, TransferError> {
        trust::apply(with_system_roots(builder, &self.shared), &self.trust)
    }

    pub fn config(&self) -> &BackendConfig {
        &self.config
    }

    /// Length, headers and range support: `HEAD`, falling back to `GET` with
    /// `Range: bytes=0-0` when HEAD fails or does not tell the length or range support.
    pub async fn stat(
        &self,
        url: &str,
        headers: &[(String, String)],
    ) -> Result<ObjectStat, TransferError> {
        self.with_retries(url, || self.stat_once(url, headers))
            .await
    }

    async fn stat_once(
        &self,
        url: &str,
        headers: &[(String, String)],
    ) -> Result<ObjectStat, TransferError> {
        // A transport failure ends here: HEAD and GET reach the same host, so only a refused
        // HEAD (a status) is worth a GET.
        let head = self.send(Method::HEAD, url, headers, None).await?;
        let status = head.status();
        if !status.is_success() {
            debug!(url, %status, "HEAD failed, probing with a ranged GET");
            return self.probe_range(url, headers).await;
        }
        let head_stat = ObjectStat {
            content_length: header_u64(head.headers(), &CONTENT_LENGTH),
            status: status.as_u16(),
            headers: header_pairs(head.headers()),
            supports_range: accepts_byte_ranges(head.headers()),
        };
        if head_stat.content_length.is_some() && head_stat.supports_range {
            return Ok(head_stat);
        }
        match self.probe_range(url, headers).await {
            Ok(probe) => Ok(merge_stats(head_stat, probe)),
            Err(e) => {
                debug!(url, error = %e, "range probe failed, keeping the HEAD answer");
                Ok(head_stat)
            }
        }
    }

    /// The status of one `HEAD` (redirects followed), for asking the origin whether these
    /// credentials may read the object; nothing is retried or read.
    pub async fn head_status(
        &self,
        url: &str,
        headers: &[(String, String)],
    ) -> Result<u16, TransferError> {
        let response = self.send(Method::HEAD, url, headers, None).await?;
        Ok(response.status().as_u16())
    }

    /// `GET` with `Range: bytes=0-0`: a 206 reveals the total length and range support.
    async fn probe_range(
        &self,
        url: &str,
        headers: &[(String, String)],
    ) -> Result<ObjectStat, TransferError> {
        let response = self
            .send(Method::GET, url, headers, Some("bytes=0-0".to_string()))
            .await?;
        let status = response.status();
        let mut pairs = header_pairs(response.headers());
        let (content_length, supports_range) = match status {
            StatusCode::PARTIAL_CONTENT => (content_range_total(response.headers()), true),
            // An empty object cannot satisfy bytes=0-0; its Content-Range says `*/0`.
            StatusCode::RANGE_NOT_SATISFIABLE => (content_range_total(response.headers()), true),
            s if s.is_success() => (header_u64(response.headers(), &CONTENT_LENGTH), false),
            s => return Err(origin_status(s, url)),
        };
        // The body is not needed; dropping the response closes or recycles the connection.
        drop(response);
        pairs.retain(|(k, _)| {
            !k.eq_ignore_ascii_case("content-range") && !k.eq_ignore_ascii_case("content-length")
        });
        if let Some(length) = content_length {
            pairs.push(("content-length".to_string(), length.to_string()));
        }
        Ok(ObjectStat {
            content_length,
            status: if supports_range {
                StatusCode::OK.as_u16()
            } else {
                status.as_u16()
            },
            headers: pairs,
            supports_range,
        })
    }

    /// Ranged GET of one piece, streamed into storage (parent_id None); the written piece
    /// carries the trusted digest of its bytes when `piece.trusted` asks for one.
    pub async fn fetch_piece(
        &self,
        piece: &OriginPiece<'_>,
    ) -> Result<WrittenPiece, TransferError> {
        self.with_retries(piece.url, || self.fetch_piece_once(piece))
            .await
    }

    async fn fetch_piece_once(
        &self,
        piece: &OriginPiece<'_>,
    ) -> Result<WrittenPiece, TransferError> {
        if let Some(written) = self.fetch_piece_plain(piece).await? {
            return Ok(written);
        }
        let (url, span) = (piece.url, piece.span);
        let started = Instant::now();
        let range = format!("bytes={}-{}", span.offset, span.end().saturating_sub(1));
        let response = self
            .send(Method::GET, url, piece.headers, Some(range))
            .await?;
        let skip = bytes_before_piece(&response, url, span)?;
        let mut body = ThrottledReader::new(body_reader(response), piece.limiters);
        if skip > 0 {
            skip_bytes(&mut body, skip, url).await?;
        }
        let written = piece
            .storage
            .write_origin_piece(
                piece.task_id,
                span,
                &mut body,
                piece.trusted,
                started.elapsed(),
            )
            .await;
        body.settle().await;
        let written = written.map_err(|e| body_error(e, url))?;
        debug!(
            task_id = piece.task_id,
            number = span.number,
            offset = span.offset,
            length = span.length,
            source = "origin",
            "piece fetched"
        );
        Ok(written)
    }

    /// The plain-http fast path; Ok(None) when it does not apply to this origin or answer.
    async fn fetch_piece_plain(
        &self,
        piece: &OriginPiece<'_>,
    ) -> Result<Option<WrittenPiece>, TransferError> {
        let (Some(plain), Some(target)) = (self.plain.clone(), Target::parse(piece.url)) else {
            return Ok(None);
        };
        let url = piece.url.to_string();
        let headers = piece.headers.to_vec();
        let limiters = piece.limiters.to_vec();
        let span = piece.span;
        let runtime = tokio::runtime::Handle::current();
        let from = PieceFrom::Origin {
            trusted: piece.trusted,
        };
        piece
            .storage
            .write_piece_with(
                piece.task_id,
                span,
                from,
                Duration::ZERO,
                move |file, progress, hasher| {
                    let request = RangeRequest {
                        url: &url,
                        target: &target,
                        headers: &headers,
                        span,
                    };
                    let sink = FileSink {
                        file,
                        limiters: &limiters,
                        runtime: &runtime,
                        progress,
                    };
                    plain.fetch_range(&request, &sink, hasher)
                },
            )
            .await
    }

    /// `GET` of the whole object, without Range, as a throttled reader: for origins that cannot
    /// serve ranges, whose pieces the caller cuts from the stream in order. Call
    /// [`ThrottledReader::settle`] when done.
    pub async fn open_body(
        &self,
        url: &str,
        headers: &[(String, String)],
        limiters: &[RateLimiter],
    ) -> Result<ThrottledReader<impl AsyncRead + Unpin + Send>, TransferError> {
        let response = self.send(Method::GET, url, headers, None).await?;
        let status = response.status();
        if !status.is_success() {
            return Err(origin_status(status, url));
        }
        Ok(ThrottledReader::new(body_reader(response), limiters))
    }

    /// Ranged `GET` of the object's bytes `[start, end)`, as a stream of body chunks: for a
    /// reader that wants exactly those bytes now (a cold byte range answered straight from
    /// the origin). Only a `206` of exactly that range is taken; anything else is an error,
    /// so a body is never misplaced.
    pub async fn open_range(
        &self,
        url: &str,
        headers: &[(String, String)],
        (start, end): (u64, u64),
    ) -> Result<BodyChunks, TransferError> {
        let last = end
            .checked_sub(1)
            .filter(|&last| last >= start)
            .ok_or_else(|| {
                TransferError::Protocol(format!("empty range {start}-{end} of {url}"))
            })?;
        let response = self
            .send(
                Method::GET,
                url,
                headers,
                Some(format!("bytes={start}-{last}")),
            )
            .await?;
        let status = response.status();
        if status != StatusCode::PARTIAL_CONTENT {
            return Err(match status {
                s if s.is_client_error() || s.is_server_error() => origin_status(s, url),
                s => TransferError::Protocol(format!("{url} answered {s} to a byte range")),
            });
        }
        match content_range(response.headers()) {
            Some((first, sent_last, _)) if first == start && sent_last == last => {}
            _ => {
                return Err(TransferError::Protocol(format!(
                    "{url} did not send bytes {start}-{last} as asked"
                )))
            }
        }
        let url = url.to_string();
        Ok(Box::pin(response.bytes_stream().map_err(move |e| {
            let kind = if e.is_timeout() {
                io::ErrorKind::TimedOut
            } else {
                io::ErrorKind::Other
            };
            body_io_error(io::Error::new(kind, e), &url)
        })))
    }

    /// Whole body without Range (unknown length / no range support), streamed into storage
    /// as consecutive pieces of `piece_length`; returns the pieces and total length.
    /// The task must be prepared (content_length 0 if unknown); its length is set at the end.
    pub async fn fetch_all(
        &self,
        url: &str,
        headers: &[(String, String)],
        storage: &Storage,
        task_id: &str,
        piece_length: u64,
        limiters: &[RateLimiter],
    ) -> Result<(u64, Vec<PieceMetadata>), TransferError> {
        self.with_retries(url, || {
            self.fetch_all_once(url, headers, storage, task_id, piece_length, limiters)
        })
        .await
    }

    async fn fetch_all_once(
        &self,
        url: &str,
        headers: &[(String, String)],
        storage: &Storage,
        task_id: &str,
        piece_length: u64,
        limiters: &[RateLimiter],
    ) -> Result<(u64, Vec<PieceMetadata>), TransferError> {
        let response = self.send(Method::GET, url, headers, None).await?;
        let status = response.status();
        if !status.is_success() {
            return Err(origin_status(status, url));
        }
        let mut body = ThrottledReader::new(body_reader(response), limiters);
        let streamed = stream_pieces(storage, task_id, piece_length, &mut body).await;
        body.settle().await;
        let (total, pieces) = streamed.map_err(|e| body_error(e, url))?;
        storage.set_content_length(task_id, total)?;
        debug!(task_id, total, pieces = pieces.len(), "whole body fetched");
        Ok((total, pieces))
    }

    /// Runs `attempt` once plus up to `max_retries` more times while it fails transiently.
    async fn with_retries<T, F, Fut>(&self, url: &str, mut attempt: F) -> Result<T, TransferError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, TransferError>>,
    {
        let mut backoff = self.config.retry_backoff;
        let mut tries = 0u32;
        loop {
            match attempt().await {
                Err(e) if e.is_transient() && tries < self.config.max_retries => {
                    tries += 1;
                    warn!(url, error = %e, attempt = tries, "origin request failed, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                }
                result => return result,
            }
        }
    }

    /// Sends one request; transport failures become clear errors, statuses are left to the
    /// caller.
    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(String, String)],
        range: Option<String>,
    ) -> Result<Response, TransferError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| TransferError::InvalidUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let mut request = self
            .client
            .request(method, parsed)
            .headers(to_header_map(headers, url)?);
        if let Some(range) = range {
            request = request.header(RANGE, range);
        }
        let result = request.send().await;
        let ok = matches!(&result, Ok(r) if r.status().is_success() || r.status() == StatusCode::RANGE_NOT_SATISFIABLE);
        BACKEND_REQUEST_TOTAL
            .with_label_values(&[result_label(ok)])
            .inc();
        result.map_err(|e| request_error(e, url))
    }
}

fn build_client(
    config: &BackendConfig,
    shared: &Shared,
    trust: &OriginTrust,
) -> Result<reqwest::Client, TransferError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(config.connect_timeout)
        .read_timeout(config.read_timeout)
        .user_agent(config.user_agent.clone())
        .tcp_nodelay(true);
    if !config.use_env_proxy {
        builder = builder.no_proxy();
    }
    trust::apply(with_system_roots(builder, shared), trust)?
        .build()
        .map_err(|e| TransferError::Client(error_chain(&e)))
}

fn with_system_roots(builder: reqwest::ClientBuilder, shared: &Shared) -> reqwest::ClientBuilder {
    shared.system_roots.iter().fold(builder, |builder, root| {
        builder.add_root_certificate(root.clone())
    })
}

/// reqwest honours these; the plain-http path does not speak to proxies, so it steps aside.
fn proxy_in_environment() -> bool {
    ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
}

/// Streams consecutive pieces from one body until it ends.
async fn stream_pieces<R: AsyncRead + Unpin>(
    storage: &Storage,
    task_id: &str,
    piece_length: u64,
    body: &mut R,
) -> Result<(u64, Vec<PieceMetadata>), StorageError> {
    let mut pieces = Vec::new();
    let mut total = 0u64;
    for number in 0..=u32::MAX {
        let Some(written) = storage
            .write_streamed_piece(task_id, number, &mut *body, None)
            .await?
        else {
            break;
        };
        let piece = written.piece;
        total += piece.length;
        let last = piece.length < piece_length;
        pieces.push(piece);
        if last {
            break;
        }
    }
    Ok((total, pieces))
}

/// How many body bytes precede the piece: 0 for a correct 206; the piece offset when the
/// origin ignored Range and sent the whole object (200).
fn bytes_before_piece(
    response: &Response,
    url: &str,
    span: PieceSpan,
) -> Result<u64, TransferError> {
    let status = response.status();
    match status {
        StatusCode::PARTIAL_CONTENT => {
            let range = content_range(response.headers()).ok_or_else(|| {
                TransferError::Protocol(format!("{url} answered 206 without a valid Content-Range"))
            })?;
            if range.0 != span.offset || range.1 != span.end() - 1 {
                return Err(TransferError::Protocol(format!(
                    "{url} sent bytes {}-{} for requested range {}-{}",
                    range.0,
                    range.1,
                    span.offset,
                    span.end() - 1
                )));
            }
            Ok(0)
        }
        StatusCode::OK => {
            if let Some(length) = header_u64(response.headers(), &CONTENT_LENGTH) {
                if length < span.end() {
                    return Err(TransferError::Protocol(format!(
                        "{url} ignored Range and sent {length} bytes, piece {} ends at {}",
                        span.number,
                        span.end()
                    )));
                }
            }
            if span.offset > 0 {
                warn!(
                    url,
                    number = span.number,
                    "origin ignored Range, skipping to the piece"
                );
            }
            Ok(span.offset)
        }
        s if s.is_client_error() || s.is_server_error() => Err(origin_status(s, url)),
        s => Err(TransferError::Protocol(format!(
            "{url} answered unexpected status {s}"
        ))),
    }
}

/// Reads and drops `count` bytes.
async fn skip_bytes<R: AsyncRead + Unpin>(
    reader: &mut R,
    count: u64,
    url: &str,
) -> Result<(), TransferError> {
    let skipped = tokio::io::copy(&mut reader.take(count), &mut tokio::io::sink())
        .await
        .map_err(|e| body_io_error(e, url))?;
    if skipped < count {
        return Err(TransferError::Protocol(format!(
            "{url} body ended after {skipped} bytes while skipping to offset {count}"
        )));
    }
    Ok(())
}

fn body_reader(response: Response) -> impl AsyncRead + Unpin + Send {
    let stream = response.bytes_stream().map_err(|e| {
        let kind = if e.is_timeout() {
            io::ErrorKind::TimedOut
        } else {
            io::ErrorKind::Other
        };
        io::Error::new(kind, e)
    });
    StreamReader::new(stream)
}

/// A broken body is the origin's fault (unreachable / timeout), not a storage error.
fn body_error(error: StorageError, url: &str) -> TransferError {
    match error {
        StorageError::SourceRead(e) => body_io_error(e, url),
        other => TransferError::Storage(other),
    }
}

fn body_io_error(error: io::Error, url: &str) -> TransferError {
    if error.kind() == io::ErrorKind::TimedOut {
        TransferError::Timeout(format!("reading the body of {url}"))
    } else {
        TransferError::OriginUnreachable {
            url: url.to_string(),
            reason: format!("response body interrupted: {error}"),
        }
    }
}

fn request_error(error: reqwest::Error, url: &str) -> TransferError {
    if error.is_timeout() {
        return TransferError::Timeout(format!("request to {url}"));
    }
    if error.is_builder() {
        return TransferError::InvalidUrl {
            url: url.to_string(),
            reason: error.to_string(),
        };
    }
    if trust::is_certificate_error(&error) {
        return TransferError::OriginCertificate {
            url: url.to_string(),
            reason: certificate_reason(&error),
        };
    }
    TransferError::OriginUnreachable {
        url: url.to_string(),
        reason: error_chain(&error),
    }
}

/// The innermost message: rustls's own words ("invalid peer certificate: UnknownIssuer").
fn certificate_reason(error: &dyn std::error::Error) -> String {
    let mut last = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        last = cause.to_string();
        source = cause.source();
    }
    last
}

/// reqwest's top-level message is generic ("error sending request"); the cause says why.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn origin_status(status: StatusCode, url: &str) -> TransferError {
    TransferError::OriginStatus {
        status: status.as_u16(),
        url: url.to_string(),
    }
}

fn to_header_map(headers: &[(String, String)], url: &str) -> Result<HeaderMap, TransferError> {
    let mut map = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let invalid = |reason: String| TransferError::InvalidUrl {
            url: url.to_string(),
            reason: format!("header {name}: {reason}"),
        };
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| invalid(e.to_string()))?;
        let value = HeaderValue::from_str(value).map_err(|e| invalid(e.to_string()))?;
        map.append(name, value);
    }
    Ok(map)
}

/// The origin's response headers worth keeping with the task: stored, answered to Stat and
/// handed to every later client, so a session cookie the origin set for one client stays out.
fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| !damselfly_core::is_secret_header(name.as_str()))
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_string(), v.to_string()))
        })
        .collect()
}

fn header_u64(headers: &HeaderMap, name: &HeaderName) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn accepts_byte_ranges(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT_RANGES)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|unit| unit.trim().eq_ignore_ascii_case("bytes"))
        })
}

/// `Content-Range: bytes start-end/total` → (start, end, total).
fn content_range(headers: &HeaderMap) -> Option<(u64, u64, Option<u64>)> {
    let value = headers.get(CONTENT_RANGE)?.to_str().ok()?;
    let spec = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = spec.split_once('/')?;
    let total = total.trim().parse().ok();
    let (start, end) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, end.trim().parse().ok()?, total))
}

/// The total in `bytes a-b/total` or `bytes */total`.
fn content_range_total(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(CONTENT_RANGE)?.to_str().ok()?;
    value.rsplit_once('/')?.1.trim().parse().ok()
}

fn merge_stats(head: ObjectStat, probe: ObjectStat) -> ObjectStat {
    ObjectStat {
        content_length: head.content_length.or(probe.content_length),
        status: head.status,
        headers: head.headers,
        supports_range: probe.supports_range,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        to_header_map(&owned, "http://x").unwrap()
    }

    #[test]
    fn parses_content_range() {
        let h = headers(&[("content-range", "bytes 100-199/1000")]);
        assert_eq!(content_range(&h), Some((100, 199, Some(1000))));
        assert_eq!(content_range_total(&h), Some(1000));
        let h = headers(&[("content-range", "bytes */0")]);
        assert_eq!(content_range(&h), None);
        assert_eq!(content_range_total(&h), Some(0));
        let h = headers(&[("content-range", "bytes 0-0/*")]);
        assert_eq!(content_range(&h), Some((0, 0, None)));
        assert_eq!(content_range_total(&h), None);
    }

    #[test]
    fn accept_ranges_lists() {
        assert!(accepts_byte_ranges(&headers(&[("accept-ranges", "bytes")])));
        assert!(accepts_byte_ranges(&headers(&[(
            "accept-ranges",
            "none, Bytes"
        )])));
        assert!(!accepts_byte_ranges(&headers(&[("accept-ranges", "none")])));
        assert!(!accepts_byte_ranges(&headers(&[])));
    }

    #[test]
    fn transient_statuses_are_retried() {
        let status = |s| TransferError::OriginStatus {
            status: s,
            url: String::new(),
        };
        assert!(status(503).is_transient());
        assert!(!status(404).is_transient());
        assert!(!status(403).is_transient());
    }
}
