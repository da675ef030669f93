//! The fast path for ranged piece GETs from plain `http://` origins: a blocking HTTP/1.1
//! exchange on a pooled keep-alive connection that reads the body straight into a reused
//! buffer and writes it to the content file, as curl does.
//!
//! Why: going through reqwest/hyper costs an extra copy of every byte, chunk allocations and
//! several task hand-offs; on loopback that was a third of the daemon's CPU per GiB. Anything
//! this path does not handle exactly (redirects, a 200 to a ranged request, chunked bodies,
//! odd headers, proxies, TLS) answers "not handled" before a byte is written, and the caller
//! uses the general reqwest path instead.

use crate::error::TransferError;
use crate::file_copy::{copy_span, CopyFailure, FileSink};
use crate::metrics::{result_label, BACKEND_REQUEST_TOTAL};
use damselfly_core::PieceSpan;
use damselfly_storage::{PieceHasher, PieceSums, StorageError};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::Duration;

/// Largest response head we accept; bigger ones go to the general path.
const MAX_HEAD: usize = 64 * 1024;
/// Most response headers parsed.
const MAX_HEADERS: usize = 64;
/// Idle keep-alive connections kept per origin.
const MAX_IDLE_PER_ORIGIN: usize = 16;

/// Where to send a request: parsed once from an `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// `host:port` to connect to; also the pool key.
    connect: String,
    /// The Host header value.
    host_header: String,
    /// Path and query.
    path: String,
}

impl Target {
    /// None for anything but a plain `http://` URL without credentials.
    pub(crate) fn parse(url: &str) -> Option<Target> {
        let parsed = reqwest::Url::parse(url).ok()?;
        if parsed.scheme() != "http" || !parsed.username().is_empty() {
            return None;
        }
        let host = parsed.host_str()?;
        let port = parsed.port_or_known_default()?;
        let host_header = match parsed.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let mut path = parsed.path().to_string();
        if let Some(query) = parsed.query() {
            path.push('?');
            path.push_str(query);
        }
        Some(Target {
            connect: format!("{host}:{port}"),
            host_header,
            path,
        })
    }
}

/// Keep-alive connections to plain-http origins.
#[derive(Debug)]
pub(crate) struct PlainHttp {
    idle: Mutex<HashMap<String, Vec<TcpStream>>>,
    connect_timeout: Duration,
    read_timeout: Duration,
    user_agent: String,
}

/// One ranged GET.
pub(crate) struct RangeRequest<'a> {
    pub url: &'a str,
    pub target: &'a Target,
    pub headers: &'a [(String, String)],
    pub span: PieceSpan,
}

impl PlainHttp {
    pub(crate) fn new(connect_timeout: Duration, read_timeout: Duration, user_agent: &str) -> Self {
        Self {
            idle: Mutex::new(HashMap::new()),
            connect_timeout,
            read_timeout,
            user_agent: user_agent.to_string(),
        }
    }

    /// Fetches `request.span` into `sink`'s file at the span's offset, every byte through
    /// `hasher`. Blocking: run it on the blocking pool. Returns the piece's sums, or None when
    /// this path does not handle the response (nothing was written then).
    pub(crate) fn fetch_range(
        &self,
        request: &RangeRequest<'_>,
        sink: &FileSink<'_>,
        mut hasher: PieceHasher,
    ) -> Result<Option<PieceSums>, TransferError> {
        let Some(head) = request_head(request, &self.user_agent) else {
            return Ok(None);
        };
        let (mut stream, mut pending) = self.send_head(request, head.as_bytes())?;
        let Some(response) = read_head(&mut stream, &mut pending, request.url)? else {
            return Ok(None);
        };
        match check_response(&response, request) {
            Ok(true) => {}
            // Not counted: the general path repeats the request and counts it.
            Ok(false) => return Ok(None),
            Err(error) => {
                count(false);
                return Err(error);
            }
        }
        copy_span(&stream, &pending, request.span, sink, &mut hasher)
            .map_err(|failure| copy_error(failure, request))?;
        count(true);
        if response.keep_alive {
            self.give_back(&request.target.connect, stream);
        }
        Ok(Some(hasher.finish()))
    }

    /// Writes the request on an idle connection, or on a new one if the idle one is gone.
    fn send_head(
        &self,
        request: &RangeRequest<'_>,
        head: &[u8],
    ) -> Result<(TcpStream, Vec<u8>), TransferError> {
        if let Some(mut stream) = self.take_idle(&request.target.connect) {
            // A pooled connection the origin has meanwhile closed fails here or answers
            // nothing; either way a fresh connection gets the request.
            if stream.write_all(head).is_ok() {
                let mut first = Vec::new();
                if peek_some(&mut stream, &mut first).unwrap_or(false) {
                    return Ok((stream, first));
                }
            }
        }
        let mut stream = self.connect(request)?;
        stream
            .write_all(head)
            .map_err(|e| unreachable_error(request.url, &e))?;
        Ok((stream, Vec::new()))
    }

    fn connect(&self, request: &RangeRequest<'_>) -> Result<TcpStream, TransferError> {
        let addrs = request
            .target
            .connect
            .to_socket_addrs()
            .map_err(|e| unreachable_error(request.url, &e))?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, self.connect_timeout) {
                Ok(stream) => {
                    stream
                        .set_read_timeout(Some(self.read_timeout))
                        .and_then(|()| stream.set_write_timeout(Some(self.read_timeout)))
                        .and_then(|()| stream.set_nodelay(true))
                        .map_err(|e| unreachable_error(request.url, &e))?;
                    return Ok(stream);
                }
                Err(e) => last = e,
            }
        }
        Err(unreachable_error(request.url, &last))
    }

    fn take_idle(&self, key: &str) -> Option<TcpStream> {
        self.idle.lock().ok()?.get_mut(key)?.pop()
    }

    fn give_back(&self, key: &str, stream: TcpStream) {
        if let Ok(mut idle) = self.idle.lock() {
            let list = idle.entry(key.to_string()).or_default();
            if list.len() < MAX_IDLE_PER_ORIGIN {
                list.push(stream);
            }
        }
    }
}

fn count(ok: bool) {
    BACKEND_REQUEST_TOTAL
        .with_label_values(&[result_label(ok)])
        .inc();
}

/// Reads at least one byte into `into`; false when the peer closed the connection.
fn peek_some(stream: &mut TcpStream, into: &mut Vec<u8>) -> io::Result<bool> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk)?;
    into.extend_from_slice(&chunk[..n]);
    Ok(n > 0)
}

/// The request head, or None when a caller header cannot be sent verbatim on this path.
fn request_head(request: &RangeRequest<'_>, user_agent: &str) -> Option<String> {
    let span = request.span;
    let mut head = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nRange: bytes={}-{}\r\nAccept-Encoding: identity\r\n",
        request.target.path,
        request.target.host_header,
        span.offset,
        span.end().checked_sub(1)?,
    );
    let mut has_agent = false;
    for (name, value) in request.headers {
        let unsafe_text = |t: &str| t.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0);
        if name.is_empty() || unsafe_text(name) || unsafe_text(value) || name.contains(':') {
            return None;
        }
        let lower = name.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "host"
                | "range"
                | "connection"
                | "content-length"
                | "transfer-encoding"
                | "accept-encoding"
                | "te"
                | "upgrade"
        ) {
            continue;
        }
        has_agent |= lower == "user-agent";
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !has_agent {
        head.push_str(&format!("User-Agent: {user_agent}\r\n"));
    }
    head.push_str("\r\n");
    Some(head)
}

/// What we need from a response head.
struct ResponseHead {
    status: u16,
    content_range: Option<(u64, u64)>,
    content_length: Option<u64>,
    chunked_or_encoded: bool,
    keep_alive: bool,
}

/// Reads until the end of the head; `buffered` holds what was read so far and keeps the
/// body bytes that came after the head. None: head too large or not HTTP/1.1 we understand.
fn read_head(
    stream: &mut TcpStream,
    buffered: &mut Vec<u8>,
    url: &str,
) -> Result<Option<ResponseHead>, TransferError> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(buffered) {
            Ok(httparse::Status::Complete(length)) => {
                let head = summarize(&response);
                buffered.drain(..length);
                return Ok(head);
            }
            Ok(httparse::Status::Partial) if buffered.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) | Err(_) => return Ok(None),
        }
        match peek_some(stream, buffered) {
            Ok(true) => {}
            Ok(false) => {
                return Err(TransferError::OriginUnreachable {
                    url: url.to_string(),
                    reason: "connection closed before the response head".into(),
                })
            }
            Err(e) => return Err(read_error(url, &e)),
        }
    }
}

fn summarize(response: &httparse::Response<'_, '_>) -> Option<ResponseHead> {
    let status = response.code?;
    let mut head = ResponseHead {
        status,
        content_range: None,
        content_length: None,
        chunked_or_encoded: false,
        keep_alive: response.version == Some(1),
    };
    for header in response.headers.iter() {
        let value = std::str::from_utf8(header.value).ok()?.trim();
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            head.content_length = Some(value.parse().ok()?);
        } else if name.eq_ignore_ascii_case("content-range") {
            head.content_range = parse_content_range(value);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || (name.eq_ignore_ascii_case("content-encoding")
                && !value.eq_ignore_ascii_case("identity"))
        {
            head.chunked_or_encoded = true;
        } else if name.eq_ignore_ascii_case("connection") {
            head.keep_alive = !value.eq_ignore_ascii_case("close");
        }
    }
    Some(head)
}

/// `bytes FIRST-LAST/TOTAL` → (FIRST, LAST).
fn parse_content_range(value: &str) -> Option<(u64, u64)> {
    let range = value.strip_prefix("bytes ")?.split('/').next()?;
    let (first, last) = range.split_once('-')?;
    Some((first.trim().parse().ok()?, last.trim().parse().ok()?))
}

/// Ok(true): a 206 with exactly our range; Ok(false): leave it to the general path;
/// Err: the origin refused (4xx/5xx), which the general path would report the same way.
fn check_response(head: &ResponseHead, request: &RangeRequest<'_>) -> Result<bool, TransferError> {
    let span = request.span;
    if head.status >= 400 {
        return Err(TransferError::OriginStatus {
            status: head.status,
            url: request.url.to_string(),
        });
    }
    let exact = head.status == 206
        && !head.chunked_or_encoded
        && head.content_range == Some((span.offset, span.end() - 1))
        && head.content_length.is_none_or(|l| l == span.length);
    Ok(exact)
}

/// A body that stopped early: a short read is worth a retry, like a broken connection.
fn copy_error(failure: CopyFailure, request: &RangeRequest<'_>) -> TransferError {
    match failure {
        CopyFailure::Closed { received } => TransferError::Storage(StorageError::ShortRead {
            task_id: request.url.to_string(),
            number: request.span.number,
            expected: request.span.length,
            received,
        }),
        CopyFailure::Read(e) => read_error(request.url, &e),
        CopyFailure::Write(e) => TransferError::Storage(StorageError::from(e)),
    }
}

fn unreachable_error(url: &str, error: &io::Error) -> TransferError {
    TransferError::OriginUnreachable {
        url: url.to_string(),
        reason: error.to_string(),
    }
}

fn read_error(url: &str, error: &io::Error) -> TransferError {
    match error.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
            TransferError::Timeout(format!("reading from {url}: {error}"))
        }
        _ => TransferError::Storage(StorageError::SourceRead(io::Error::new(
            error.kind(),
            format!("{url}: {error}"),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use damselfly_storage::WriteProgress;

    #[test]
    fn targets_only_plain_http() {
        let t = Target::parse("http://example.com/a/b?x=1&y=2").unwrap();
        assert_eq!(t.connect, "example.com:80");
        assert_eq!(t.host_header, "example.com");
        assert_eq!(t.path, "/a/b?x=1&y=2");
        let t = Target::parse("http://127.0.0.1:8080/f").unwrap();
        assert_eq!(t.host_header, "127.0.0.1:8080");
        assert_eq!(Target::parse("https://example.com/f"), None);
        assert_eq!(Target::parse("http://user:pw@example.com/f"), None);
        assert_eq!(Target::parse("not a url"), None);
    }

    #[test]
    fn request_head_refuses_header_injection() {
        let target = Target::parse("http://h:1/p").unwrap();
        let span = PieceSpan {
            number: 0,
            offset: 10,
            length: 5,
        };
        let ok = vec![("X-Token".to_string(), "abc".to_string())];
        let request = RangeRequest {
            url: "http://h:1/p",
            target: &target,
            headers: &ok,
            span,
        };
        let head = request_head(&request, "ua").unwrap();
        assert!(head.starts_with("GET /p HTTP/1.1\r\nHost: h:1\r\nRange: bytes=10-14\r\n"));
        assert!(head.contains("X-Token: abc\r\nUser-Agent: ua\r\n\r\n"));
        let bad = vec![("X".to_string(), "a\r\nInjected: 1".to_string())];
        let request = RangeRequest {
            headers: &bad,
            ..request
        };
        assert_eq!(request_head(&request, "ua"), None);
    }

    #[test]
    fn content_range_parsing() {
        assert_eq!(parse_content_range("bytes 0-99/1000"), Some((0, 99)));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, 9)));
        assert_eq!(parse_content_range("items 0-1/2"), None);
        assert_eq!(parse_content_range("bytes x-1/2"), None);
    }

    /// An origin on 127.0.0.1 that answers every connection with `reply` and closes.
    fn one_shot_origin(reply: &'static [u8]) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                let _ = stream.write_all(reply);
            }
        });
        format!("http://{addr}/f")
    }

    fn fetch(url: &str) -> Result<Option<PieceSums>, TransferError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let file = tempfile::tempfile().unwrap();
        let target = Target::parse(url).unwrap();
        let request = RangeRequest {
            url,
            target: &target,
            headers: &[],
            span: PieceSpan {
                number: 0,
                offset: 0,
                length: 4,
            },
        };
        let plain = PlainHttp::new(Duration::from_secs(2), Duration::from_secs(2), "ua");
        let sink = FileSink {
            file: &file,
            limiters: &[],
            runtime: runtime.handle(),
            progress: &WriteProgress::default(),
        };
        let trusted = Some(damselfly_core::digest::DigestAlgorithm::Blake3);
        plain.fetch_range(&request, &sink, PieceHasher::new(trusted))
    }

    #[test]
    fn garbage_and_odd_answers_fall_back_or_fail_clearly() {
        // Not HTTP at all: left to the general path, nothing written.
        assert!(matches!(
            fetch(&one_shot_origin(b"\x00\xffgarbage\r\n\r\n")),
            Ok(None)
        ));
        // A 200 to a ranged request: the general path skips to the piece.
        let whole = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabcd";
        assert!(matches!(fetch(&one_shot_origin(whole)), Ok(None)));
        // A refusal is an origin status.
        let refused = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(
            fetch(&one_shot_origin(refused)),
            Err(TransferError::OriginStatus { status: 404, .. })
        ));
        // A body that ends early is a short read, worth a retry.
        let short = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-3/9\r\n\r\nab";
        let error = fetch(&one_shot_origin(short)).unwrap_err();
        assert!(error.is_transient(), "{error}");
        // A good answer yields the CRC and the trusted digest of the bytes.
        let good = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-3/9\r\nContent-Length: 4\r\n\r\nabcd";
        let sums = fetch(&one_shot_origin(good)).unwrap().expect("handled");
        assert_eq!(sums.crc32, crc32fast::hash(b"abcd"));
        assert_eq!(
            sums.trusted.map(|d| d.to_string()),
            Some(damselfly_core::digest::trusted_piece_digest(b"abcd"))
        );
    }
}
