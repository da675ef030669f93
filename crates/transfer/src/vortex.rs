//! Vortex TCP piece transport (dragonfly-v2.md §3.3): one `DownloadPiece` request per
//! connection, answered by a `PieceContent` frame followed by exactly `length` raw piece
//! bytes (the header's length covers only the frame value), or by an `Error` frame.
//!
//! The frame reading and writing here is shared with the QUIC transport (`crate::quic`),
//! which carries the same frames on one bidirectional stream per piece.

use crate::error::TransferError;
use crate::frame::{
    answer_value_length, decode_answer_value, decode_any_answer, decode_request_value,
    request_value_length, Answer, BadRequest, PieceRequest, RequestKind, ARRIVING_CONTENT_TAG,
};
use crate::limiter::{RateLimiter, ThrottledReader};
use crate::metrics::{UPLOAD_FORWARDED_PIECE_TOTAL, UPLOAD_PIECE_TOTAL, UPLOAD_TRAFFIC_BYTES};
use crate::upload_slots::{UploadSlot, UploadSlots};
use bytes::BytesMut;
use damselfly_core::admission::ConnectionLimits;
use damselfly_core::{PieceSpan, RelayPath};
use damselfly_storage::{
    ArrivingPiece, Forwarding, PieceCheck, PieceMetadata, PieceOrigin, Storage, StorageError,
    WriteState, Written,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use vortex_protocol::tlv::download_piece::DownloadPiece;
use vortex_protocol::tlv::error::{Code, Error as ErrorFrame};
use vortex_protocol::tlv::piece_content::PieceContent;
use vortex_protocol::tlv::piece_metadata::PieceMetadata as WireMetadata;
use vortex_protocol::tlv::{Tag, TASK_ID_SIZE};
use vortex_protocol::{Header, Message, HEADER_SIZE};

/// Pieces sent at once at most; further requests wait for a turn with their request read
/// (see [`UploadSlots`]).
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Sockets one address may hold open. A child fetches `concurrentPieceCount` (8) pieces per
/// download at once; 64 leave room for several downloads while one flooding address cannot
/// take the server's sockets from everyone else.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 64;
/// Sockets open at once over all addresses, idle ones included; past this a new
/// connection is closed at once.
pub const DEFAULT_MAX_OPEN_CONNECTIONS: usize = 1024;
/// Time a peer gets to send its whole request (about 100 bytes, sent right after connecting);
/// stops idle and slowloris peers from holding sockets.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a single send may make no progress before the peer is dropped.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes per send step: the granularity of the upload limiter and the traffic counter.
pub const SEND_CHUNK_SIZE: usize = 1024 * 1024;
/// How long and how much a refused peer's leftover input is read away before closing.
const DISCARD_TIMEOUT: Duration = Duration::from_millis(200);
const DISCARD_LIMIT: usize = 1024 * 1024;
/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Called with (task ID, piece number) after a piece was sent completely.
pub type UploadHook = Arc<dyn Fn(&str, u32) + Send + Sync>;

/// Tunables of the Vortex server.
#[derive(Clone)]
pub struct VortexServerConfig {
    /// Pieces being sent at once, at most; QUIC also bounds its streams per connection by it.
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    pub max_open_connections: usize,
    pub request_timeout: Duration,
    pub send_timeout: Duration,
    /// Told about every completed upload (a seed's rationing uses it).
    pub on_uploaded: Option<UploadHook>,
    /// Told about every request read, before it waits for its turn (a seed's rationing).
    pub on_requested: Option<UploadHook>,
    /// Turns to send a piece, shared by the TCP and QUIC servers of a host (one uplink).
    pub slots: Arc<UploadSlots>,
}

impl std::fmt::Debug for VortexServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VortexServerConfig")
            .field("max_connections", &self.max_connections)
            .field(
                "max_connections_per_address",
                &self.max_connections_per_address,
            )
            .field("max_open_connections", &self.max_open_connections)
            .field("request_timeout", &self.request_timeout)
            .field("send_timeout", &self.send_timeout)
            .field("on_uploaded", &self.on_uploaded.is_some())
            .field("on_requested", &self.on_requested.is_some())
            .field("upload_limit", &self.slots.limit())
            .finish()
    }
}

impl Default for VortexServerConfig {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            max_open_connections: DEFAULT_MAX_OPEN_CONNECTIONS,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            on_uploaded: None,
            on_requested: None,
            // Unpaced: every request up to the cap is sent at once.
            slots: UploadSlots::new(DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS),
        }
    }
}

/// Vortex TCP piece server: one request per connection, serves recorded pieces only.
pub async fn serve_vortex(
    listener: TcpListener,
    storage: Storage,
    upload_limiter: RateLimiter,
    shutdown: CancellationToken,
) {
    serve_vortex_with(
        listener,
        storage,
        upload_limiter,
        shutdown,
        VortexServerConfig::default(),
    )
    .await
}

/// [`serve_vortex`] with explicit limits. A connection is admitted (or closed at once) by
/// its address's and the server's socket caps, reads its request within the request
/// timeout without holding a sending turn, then waits for one of `max_connections` turns.
pub async fn serve_vortex_with(
    listener: TcpListener,
    storage: Storage,
    upload_limiter: RateLimiter,
    shutdown: CancellationToken,
    config: VortexServerConfig,
) {
    let limits = ConnectionLimits::new(
        config.max_connections_per_address,
        config.max_open_connections,
    );
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "vortex accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let slot = match limits.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(refused) => {
                debug!(%peer, ?refused, "vortex connection refused");
                UPLOAD_PIECE_TOTAL.with_label_values(&["refused"]).inc();
                continue;
            }
        };
        let connection = Connection {
            storage: storage.clone(),
            limiter: upload_limiter.clone(),
            config: config.clone(),
            peer,
        };
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = connection.serve(stream) => {}
            }
            drop(slot);
        });
    }
    debug!("vortex server stopped");
}

/// Why a request could not be answered with piece content.
pub(crate) enum Refusal {
    /// Answer with an Error frame.
    Frame(Code, String),
    /// The connection is unusable (closed, timed out): just drop it.
    Drop(String),
}

struct Connection {
    storage: Storage,
    limiter: RateLimiter,
    config: VortexServerConfig,
    peer: SocketAddr,
}

impl Connection {
    async fn serve(self, mut stream: TcpStream) {
        stream.set_nodelay(true).ok();
        limit_unsent(&stream, UPLOAD_UNSENT_LIMIT);
        let request = match tokio::time::timeout(
            self.config.request_timeout,
            read_request(&mut stream),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(Refusal::Drop("request not received in time".to_string())),
        };
        let outcome = match request {
            Ok(request) => self.send_in_turn(&mut stream, &request).await,
            Err(refusal) => Err(refusal),
        };
        let result = outcome_label(&outcome);
        match outcome {
            Ok(()) => {}
            Err(Refusal::Frame(code, message)) => {
                debug!(peer = %self.peer, ?code, message, "refusing vortex request");
                self.send_error(&mut stream, code, message).await;
                stream.shutdown().await.ok();
                discard_unread(&mut stream).await;
            }
            Err(Refusal::Drop(reason)) => {
                debug!(peer = %self.peer, reason, "dropping vortex connection");
            }
        }
        UPLOAD_PIECE_TOTAL.with_label_values(&[result]).inc();
        stream.shutdown().await.ok();
    }

    /// Waits for a turn to send (see [`UploadSlots`]), then sends; a peer that closes its
    /// connection meanwhile (its fetch moved to another parent) leaves the line.
    async fn send_in_turn(
        &self,
        stream: &mut TcpStream,
        request: &PieceRequest,
    ) -> Result<(), Refusal> {
        let piece = &request.piece;
        if let Some(hook) = &self.config.on_requested {
            hook(&piece.task_id, piece.piece_number);
        }
        let asked = Instant::now();
        // Biased: a request that can have a turn at once is served even if its peer already
        // half-closed its side (read sees end of file); only a request that waits in line
        // leaves it when its peer's side ends.
        let mut turn = tokio::select! {
            biased;
            turn = self.config.slots.acquire(&piece.task_id, piece.piece_number, self.peer.ip()) => turn,
            () = peer_gone(stream) => {
                debug!(peer = %self.peer, number = piece.piece_number, waited = ?asked.elapsed(), "peer left the upload line");
                return Err(Refusal::Drop("peer left while waiting for a turn".to_string()));
            }
        };
        let waited = asked.elapsed();
        let length = self.send_piece(stream, request, &mut turn).await?;
        delivered(stream, DELIVERY_WAIT).await;
        debug!(
            peer = %self.peer,
            number = piece.piece_number,
            ?waited,
            took = ?asked.elapsed() - waited,
            level = turn.level(),
            limit = self.config.slots.limit(),
            "upload delivered"
        );
        turn.finished(length);
        Ok(())
    }

    /// Sends the piece; returns its length.
    async fn send_piece(
        &self,
        stream: &mut TcpStream,
        request: &PieceRequest,
        turn: &mut UploadSlot,
    ) -> Result<u64, Refusal> {
        let task_id = request.piece.task_id.as_str();
        let number = request.piece.piece_number;
        let started = Instant::now();
        let piece = match self.storage.open_piece(task_id, number) {
            Ok((piece, file)) => self.send_recorded(stream, piece, &file, turn).await?,
            Err(StorageError::PieceNotFound { .. }) if request.kind == RequestKind::CutThrough => {
                self.forward_arriving(stream, task_id, number, turn).await?
            }
            Err(error) => return Err(storage_refusal(error)),
        };
        if let Some(hook) = &self.config.on_uploaded {
            hook(task_id, number);
        }
        debug!(peer = %self.peer, task_id, number, length = piece.length, elapsed = ?started.elapsed(), "piece uploaded");
        Ok(piece.length)
    }

    /// Cut-through: sends a piece that is still being written here as its bytes land, then
    /// the recorded piece as the trailer. A write abandoned after some bytes went out drops
    /// the connection (the child discards what it got); one abandoned after all of them
    /// ends with an Error frame instead of the trailer.
    async fn forward_arriving(
        &self,
        stream: &mut TcpStream,
        task_id: &str,
        number: u32,
        turn: &mut UploadSlot,
    ) -> Result<PieceMetadata, Refusal> {
        let arriving = match self.storage.open_arriving_piece(task_id, number) {
            Ok(Some(arriving)) => arriving,
            // Recorded since we looked, or never written: answer as DownloadPiece would.
            Ok(None) => return self.send_recorded_now(stream, task_id, number, turn).await,
            Err(error) => return Err(storage_refusal(error)),
        };
        let ArrivingPiece {
            span,
            mut state,
            path,
            file,
        } = arriving;
        let path = path.then(self.storage.store_id());
        self.timed(stream.write_all(&arriving_content_packet(span, &path)))
            .await?;
        let mut sent = span.offset;
        loop {
            let now = *state.borrow_and_update();
            let ready = now.written_to.min(span.end());
            if ready > sent {
                let from = sent - span.offset;
                self.send_range(stream, &file, (sent, ready - sent), from, turn)
                    .await?;
                sent = ready;
            }
            if now.recorded && sent == span.end() {
                break;
            }
            self.config.slots.awaits_arrival(turn, true);
            let moved = self.arrival_moves(&mut state).await;
            self.config.slots.awaits_arrival(turn, false);
            if !moved? {
                if sent < span.end() {
                    return Err(Refusal::Drop(format!(
                        "piece {number} stopped arriving after {} bytes",
                        sent - span.offset
                    )));
                }
                return Err(Refusal::Frame(
                    Code::Internal,
                    format!("piece {number} failed its check here"),
                ));
            }
        }
        let piece = self
            .storage
            .piece(task_id, number)
            .map_err(storage_refusal)?
            .ok_or_else(|| Refusal::Drop(format!("piece {number} recorded, then gone")))?;
        self.timed(stream.write_all(&piece_content_packet(&piece)))
            .await?;
        UPLOAD_FORWARDED_PIECE_TOTAL.inc();
        Ok(piece)
    }

    /// Waits for the arriving piece's next step; false when its writer ended unrecorded.
    async fn arrival_moves(
        &self,
        state: &mut tokio::sync::watch::Receiver<WriteState>,
    ) -> Result<bool, Refusal> {
        match tokio::time::timeout(self.config.send_timeout, state.changed()).await {
            Ok(Ok(())) => Ok(true),
            // The writer is gone; its last word says whether the piece was recorded.
            Ok(Err(_)) => Ok(state.borrow().recorded),
            Err(_) => Err(Refusal::Drop("arriving piece stalled".to_string())),
        }
    }

    /// A piece recorded between the first look and the cut-through one.
    async fn send_recorded_now(
        &self,
        stream: &mut TcpStream,
        task_id: &str,
        number: u32,
        turn: &mut UploadSlot,
    ) -> Result<PieceMetadata, Refusal> {
        let (piece, file) = self
            .storage
            .open_piece(task_id, number)
            .map_err(storage_refusal)?;
        self.send_recorded(stream, piece, &file, turn).await
    }

    /// A recorded piece: its PieceContent frame, then its bytes.
    async fn send_recorded(
        &self,
        stream: &mut TcpStream,
        piece: PieceMetadata,
        file: &std::fs::File,
        turn: &mut UploadSlot,
    ) -> Result<PieceMetadata, Refusal> {
        self.timed(stream.write_all(&piece_content_packet(&piece)))
            .await?;
        self.send_range(stream, file, (piece.offset, piece.length), 0, turn)
            .await?;
        Ok(piece)
    }

    /// Sends `length` bytes of the content file from `offset`, charging the upload limiter
    /// per chunk; `before` bytes of the piece went out already. Between writes the upload
    /// may have to wait for its turn again ([`UploadSlots::keep_turn`]).
    async fn send_range(
        &self,
        stream: &mut TcpStream,
        file: &std::fs::File,
        (offset, length): (u64, u64),
        before: u64,
        turn: &mut UploadSlot,
    ) -> Result<(), Refusal> {
        let mut sent = 0u64;
        while sent < length {
            self.config.slots.keep_turn(turn, before + sent).await;
            let chunk = (length - sent).min(SEND_CHUNK_SIZE as u64) as usize;
            let n = self
                .timed(send_file_chunk(stream, file, offset + sent, chunk))
                .await?;
            if n == 0 {
                return Err(Refusal::Drop(format!(
                    "content file ends at {}",
                    offset + sent
                )));
            }
            sent += n as u64;
            UPLOAD_TRAFFIC_BYTES.inc_by(n as u64);
            self.config.slots.uploaded(n as u64);
            self.limiter.acquire(n as u64).await;
        }
        Ok(())
    }

    async fn send_error(&self, stream: &mut TcpStream, code: Code, message: String) {
        let packet = error_packet(code, message);
        self.timed(stream.write_all(&packet)).await.ok();
    }

    /// Bounds one socket operation by the send timeout.
    async fn timed<T>(
        &self,
        operation: impl std::future::Future<Output = std::io::Result<T>>,
    ) -> Result<T, Refusal> {
        match tokio::time::timeout(self.config.send_timeout, operation).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Refusal::Drop(format!("send failed: {e}"))),
            Err(_) => Err(Refusal::Drop("send stalled".to_string())),
        }
    }
}

/// Resolves when the peer closes its connection (or sends anything: a Vortex request is its
/// connection's only message).
async fn peer_gone(stream: &mut TcpStream) {
    let mut byte = [0u8; 1];
    let _ = stream.read(&mut byte).await;
}

/// Closing a socket with unread input makes the kernel send RST, which can destroy the Error
/// frame before the peer reads it; so whatever the peer still sends is read away briefly.
async fn discard_unread(stream: &mut TcpStream) {
    let mut sink = [0u8; 4096];
    let mut left = DISCARD_LIMIT;
    let drain = async {
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    tokio::time::timeout(DISCARD_TIMEOUT, drain).await.ok();
}

/// The `UPLOAD_PIECE_TOTAL` label of a served request.
pub(crate) fn outcome_label(outcome: &Result<(), Refusal>) -> &'static str {
    match outcome {
        Ok(()) => "success",
        Err(Refusal::Frame(Code::NotFound, _)) => "not_found",
        Err(_) => "failure",
    }
}

/// An Error frame, header included.
pub(crate) fn error_packet(code: Code, message: String) -> BytesMut {
    let mut packet = BytesMut::new();
    ErrorFrame::new(code, message).encode_packet(&mut packet);
    packet
}

/// The PieceContent frame announcing `piece`, header included; the raw bytes follow it.
pub(crate) fn piece_content_packet(piece: &PieceMetadata) -> BytesMut {
    let mut packet = BytesMut::new();
    piece_content(piece).encode_packet(&mut packet);
    packet
}

/// Reads one DownloadPiece (or cut-through) request; anything else is refused without
/// reading further.
pub(crate) async fn read_request<R: AsyncRead + Unpin>(
    stream: &mut R,
) -> Result<PieceRequest, Refusal> {
    let refuse = |BadRequest(code, message)| Refusal::Frame(code, message);
    let mut header = [0u8; HEADER_SIZE];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|e| Refusal::Drop(format!("reading header: {e}")))?;
    let (kind, length) = request_value_length(&header).map_err(refuse)?;
    let mut value = vec![0u8; length];
    stream
        .read_exact(&mut value)
        .await
        .map_err(|e| Refusal::Drop(format!("reading request: {e}")))?;
    let piece = decode_request_value(&value).map_err(refuse)?;
    Ok(PieceRequest { piece, kind })
}

pub(crate) fn storage_refusal(error: StorageError) -> Refusal {
    match error {
        StorageError::TaskNotFound(_) | StorageError::PieceNotFound { .. } => {
            Refusal::Frame(Code::NotFound, error.to_string())
        }
        other => Refusal::Frame(Code::Internal, other.to_string()),
    }
}

/// The first frame of a cut-through answer for a piece still arriving: its span, no digest
/// yet, and in the parent ID the relay path of its bytes, ending with this store.
fn arriving_content_packet(span: PieceSpan, path: &RelayPath) -> BytesMut {
    let content = PieceContent {
        metadata: WireMetadata {
            number: span.number,
            offset: span.offset,
            length: span.length,
            digest: String::new(),
            parent_id: path.to_wire(),
            traffic_type: TRAFFIC_REMOTE_PEER,
            cost: Duration::ZERO,
            created_at: chrono::Utc::now().naive_utc(),
        },
    };
    let mut packet = BytesMut::new();
    Header::new(
        Tag::Reserved(ARRIVING_CONTENT_TAG),
        content.encoded_len() as u32,
    )
    .encode(&mut packet);
    content.encode(&mut packet);
    packet
}

/// Dragonfly's common.v2.TrafficType: where the piece's bytes originally came from.
const TRAFFIC_BACK_TO_SOURCE: u8 = 0;
const TRAFFIC_REMOTE_PEER: u8 = 1;

fn piece_content(piece: &PieceMetadata) -> PieceContent {
    let created_at = piece
        .created_at
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .and_then(|secs| chrono::DateTime::from_timestamp(secs, 0))
        .map(|t| t.naive_utc())
        .unwrap_or_default();
    PieceContent {
        metadata: WireMetadata {
            number: piece.number,
            offset: piece.offset,
            length: piece.length,
            digest: piece.digest.clone(),
            parent_id: piece.parent_id.clone().unwrap_or_default(),
            traffic_type: if piece.parent_id.is_some() {
                TRAFFIC_REMOTE_PEER
            } else {
                TRAFFIC_BACK_TO_SOURCE
            },
            cost: piece.cost,
            created_at,
        },
    }
}

/// Zero-copy send of up to `count` bytes at `offset`; returns the bytes sent (0 at EOF).
/// Reading a cold page blocks the worker briefly; pieces are usually hot in the page cache
/// because they were just downloaded.
#[cfg(target_os = "linux")]
async fn send_file_chunk(
    stream: &TcpStream,
    file: &std::fs::File,
    offset: u64,
    count: usize,
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let socket_fd = stream.as_raw_fd();
    let file_fd = file.as_raw_fd();
    let start =
        libc::off_t::try_from(offset).map_err(|_| std::io::Error::other("offset too large"))?;
    stream
        .async_io(tokio::io::Interest::WRITABLE, || {
            let mut position = start;
            // SAFETY: both descriptors are open for the duration of the call (borrowed from
            // live objects) and `position` is a valid off_t the kernel may update.
            let sent = unsafe { libc::sendfile(socket_fd, file_fd, &mut position, count) };
            if sent < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(sent as usize)
            }
        })
        .await
}

/// Bytes an upload socket holds unsent (`TCP_NOTSENT_LOWAT`): an upload that gives its turn
/// back ([`UploadSlots::keep_turn`]) stops taking the uplink once these are out. Without a
/// bound the kernel takes up to its send buffer, 4 MiB here (a whole piece), which a
/// 10 Mbit/s uplink shared by seven uploads sends in 24 s. One send step
/// ([`SEND_CHUNK_SIZE`]), so a fast sender wakes no more often than it writes: at 256 KiB
/// the parent's CPU per GiB sent on loopback rose from 0.21 to 0.31 s (bench/dfget-vs-curl.sh).
pub const UPLOAD_UNSENT_LIMIT: u32 = SEND_CHUNK_SIZE as u32;

/// Bounds the bytes `stream` holds unsent; best effort (the kernel may not support it).
#[cfg(target_os = "linux")]
fn limit_unsent(stream: &TcpStream, bytes: u32) {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: the descriptor is open (borrowed from a live socket), and the option value is a
    // valid c_int whose size is passed along.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result < 0 {
        debug!(error = %std::io::Error::last_os_error(), "TCP_NOTSENT_LOWAT not set");
    }
}

#[cfg(not(target_os = "linux"))]
fn limit_unsent(_stream: &TcpStream, _bytes: u32) {}

/// How long an upload's turn waits, after its last byte went to the socket, for the peer to
/// acknowledge every byte: the turn (and the pace's measure of the flow) covers the bytes in
/// flight, not only the write into the socket's send buffer, which holds up to 4 MiB here,
/// a whole piece. Without it a 10 Mbit/s uplink saw its writes end at once and kept taking
/// more uploads (bench/netns).
pub const DELIVERY_WAIT: Duration = Duration::from_secs(10);
/// How often the wait looks at the socket's unacknowledged bytes.
const DELIVERY_POLL: Duration = Duration::from_millis(10);

/// Waits until the peer acknowledged every byte sent on `stream`, or `limit` passed.
async fn delivered(stream: &TcpStream, limit: Duration) {
    let deadline = Instant::now() + limit;
    while unacknowledged(stream) > 0 && Instant::now() < deadline {
        tokio::time::sleep(DELIVERY_POLL).await;
    }
}

/// Bytes sent on `stream` and not yet acknowledged (queued ones included); 0 when unknown.
#[cfg(target_os = "linux")]
fn unacknowledged(stream: &TcpStream) -> i32 {
    use std::os::fd::AsRawFd;
    let mut queued: libc::c_int = 0;
    // SAFETY: the descriptor is open (borrowed from a live socket) and `queued` is a valid
    // c_int for the kernel to write; TIOCOUTQ (SIOCOUTQ) only reads the socket's state.
    let result = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    if result < 0 {
        0
    } else {
        queued
    }
}

#[cfg(not(target_os = "linux"))]
fn unacknowledged(_stream: &TcpStream) -> i32 {
    0
}

/// Portable fallback: positioned read into a buffer, then a socket write.
#[cfg(not(target_os = "linux"))]
async fn send_file_chunk(
    stream: &mut TcpStream,
    file: &std::fs::File,
    offset: u64,
    count: usize,
) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut buffer = vec![0u8; count];
    let n = file.read_at(&mut buffer, offset)?;
    stream.write_all(&buffer[..n]).await?;
    Ok(n)
}

/// Where a piece comes from: a parent's Vortex server, and the trusted digest it must match
/// when the child has one.
#[derive(Debug, Clone, Copy)]
pub struct PieceSource<'a> {
    pub addr: SocketAddr,
    pub parent_id: &'a str,
    /// Trusted (`blake3:`) digest from a source the child trusts; without one, the `crc32:`
    /// digest the parent itself sends is all there is to check.
    pub trusted_digest: Option<&'a str>,
    /// The parent forwards pieces still arriving there (it offered cut-through).
    pub request: RequestKind,
}

impl<'a> PieceSource<'a> {
    /// A parent with no trusted digest to hold it to: only its own crc32 claim is checked.
    pub fn untrusted(addr: SocketAddr, parent_id: &'a str) -> Self {
        Self {
            addr,
            parent_id,
            trusted_digest: None,
            request: RequestKind::Recorded,
        }
    }

    /// Where this source's answer for `span` of `task_id` goes.
    pub(crate) fn sink(
        self,
        task_id: &'a str,
        span: PieceSpan,
        storage: &'a Storage,
        limiters: &'a [RateLimiter],
    ) -> PieceSink<'a> {
        PieceSink {
            addr: self.addr,
            task_id,
            span,
            parent_id: self.parent_id,
            trusted_digest: self.trusted_digest,
            request: self.request,
            storage,
            limiters,
        }
    }
}

/// Fetches one piece from a parent's Vortex server into storage (verifies the crc32 digest
/// the parent sends, records parent_id).
pub async fn download_piece_vortex(
    addr: SocketAddr,
    task_id: &str,
    span: PieceSpan,
    parent_id: &str,
    storage: &Storage,
    limiters: &[RateLimiter],
    timeout: Duration,
) -> Result<PieceMetadata, TransferError> {
    let source = PieceSource::untrusted(addr, parent_id);
    download_piece_from(source, task_id, span, storage, limiters, timeout).await
}

/// Fetches one piece from `source` into storage. The piece is recorded only if it matches the
/// trusted digest when one is given, else the parent's crc32.
pub async fn download_piece_from(
    source: PieceSource<'_>,
    task_id: &str,
    span: PieceSpan,
    storage: &Storage,
    limiters: &[RateLimiter],
    timeout: Duration,
) -> Result<PieceMetadata, TransferError> {
    fetch_piece_from(source, task_id, span, storage, limiters, timeout)
        .await
        .map(|fetched| fetched.piece)
}

/// [`download_piece_from`], saying whether the parent held the piece whole or forwarded it
/// while it still arrived there.
pub async fn fetch_piece_from(
    source: PieceSource<'_>,
    task_id: &str,
    span: PieceSpan,
    storage: &Storage,
    limiters: &[RateLimiter],
    timeout: Duration,
) -> Result<FetchedPiece, TransferError> {
    let sink = source.sink(task_id, span, storage, limiters);
    sink.within(timeout, "", download_piece(&sink)).await
}

/// A piece fetched from a parent and stored.
#[derive(Debug, Clone)]
pub struct FetchedPiece {
    pub piece: PieceMetadata,
    pub delivery: Delivery,
}

/// How a parent sent a piece, and so what its time says about the parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// From its own copy: the time measures the parent's upload to us.
    Whole,
    /// Forwarded as it arrived at the parent: the time measures the slower of the parent's
    /// source and the parent's upload, so it only bounds the parent's upload from below.
    Forwarded,
}

impl FetchedPiece {
    fn whole(piece: PieceMetadata) -> Self {
        Self {
            piece,
            delivery: Delivery::Whole,
        }
    }
}

async fn download_piece(sink: &PieceSink<'_>) -> Result<FetchedPiece, TransferError> {
    let addr = sink.addr;
    check_task_id(sink.task_id)?;
    let started = Instant::now();
    let mut stream = connect_for_piece(addr, sink.span.length)
        .await
        .map_err(|e| TransferError::PeerUnreachable {
            addr,
            reason: e.to_string(),
        })?;
    stream.set_nodelay(true).ok();
    let request = PieceRequest {
        piece: DownloadPiece::new(sink.task_id.to_string(), sink.span.number),
        kind: sink.request,
    };
    let mut packet = BytesMut::new();
    request.encode_packet(&mut packet);
    stream
        .write_all(&packet)
        .await
        .map_err(|e| peer_io(addr, e))?;
    match sink.request {
        RequestKind::Recorded => sink
            .receive(&mut stream, started)
            .await
            .map(FetchedPiece::whole),
        RequestKind::CutThrough => sink.receive_cut_through(&mut stream, started).await,
    }
}

/// Connects for one piece of `length` bytes, with a receive buffer that holds the piece
/// where the system allows one that large (see [`piece_receive_buffer`]).
async fn connect_for_piece(addr: SocketAddr, length: u64) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if let Some(size) = piece_receive_buffer(length) {
        // Before connect, so the window scale offered in the SYN covers it.
        socket.set_recv_buffer_size(size).ok();
    }
    socket.connect(addr).await
}

/// Refuses a task ID the 64-byte Vortex field cannot carry.
pub(crate) fn check_task_id(task_id: &str) -> Result<(), TransferError> {
    if task_id.len() != TASK_ID_SIZE {
        return Err(TransferError::Protocol(format!(
            "vortex task IDs are {TASK_ID_SIZE} bytes, {task_id:?} is {}",
            task_id.len()
        )));
    }
    Ok(())
}

/// A DownloadPiece request, header included.
pub(crate) fn request_packet(task_id: &str, number: u32) -> BytesMut {
    let mut request = BytesMut::new();
    DownloadPiece::new(task_id.to_string(), number).encode_packet(&mut request);
    request
}

/// Where an answered request's piece goes: the span asked for, from whom, into which storage.
pub(crate) struct PieceSink<'a> {
    pub addr: SocketAddr,
    pub task_id: &'a str,
    pub span: PieceSpan,
    pub parent_id: &'a str,
    /// Trusted (`blake3:`) digest from a source the child trusts; without one, the parent's
    /// own `crc32:` claim is checked.
    pub trusted_digest: Option<&'a str>,
    /// The request sent, and so the answers to expect.
    pub request: RequestKind,
    pub storage: &'a Storage,
    pub limiters: &'a [RateLimiter],
}

impl PieceSink<'_> {
    /// Runs `fetch` (this sink's download over some transport) within `timeout`; `over`
    /// names the transport in the error (empty for TCP).
    pub(crate) async fn within<T>(
        &self,
        timeout: Duration,
        over: &str,
        fetch: impl std::future::Future<Output = Result<T, TransferError>>,
    ) -> Result<T, TransferError> {
        tokio::time::timeout(timeout, fetch)
            .await
            .unwrap_or_else(|_| {
                Err(TransferError::Timeout(format!(
                    "piece {} of task {} from parent {} at {}{over} after {timeout:?}",
                    self.span.number, self.task_id, self.parent_id, self.addr
                )))
            })
    }

    /// Reads the answer to a sent request and stores the piece (digest checked, parent
    /// recorded); the request was sent at `started`.
    pub(crate) async fn receive<R: AsyncRead + Unpin>(
        &self,
        stream: &mut R,
        started: Instant,
    ) -> Result<PieceMetadata, TransferError> {
        let metadata = read_piece_content(stream, self.addr, self.task_id, self.span).await?;
        self.store(stream, &metadata.digest, started).await
    }

    /// Reads the answer to a cut-through request: a recorded piece as [`Self::receive`] does,
    /// or a piece still arriving at the parent, whose bytes are written as they come and
    /// recorded only once they match the trusted digest (when the child has one) or the
    /// crc32 of the parent's recorded copy in the trailer. Anything else (the connection
    /// dropped, an Error trailer) leaves the bytes unrecorded, to be overwritten. A piece
    /// the parent no longer has (its write was abandoned after it announced it) is
    /// [`TransferError::ArrivalStopped`] too: the parent did not fail us.
    pub(crate) async fn receive_cut_through<R: AsyncRead + Unpin>(
        &self,
        stream: &mut R,
        started: Instant,
    ) -> Result<FetchedPiece, TransferError> {
        let (addr, task_id, span) = (self.addr, self.task_id, self.span);
        match read_answer(stream, addr, task_id, span).await {
            Ok(Answer::Recorded(metadata)) => self
                .store(stream, &metadata.digest, started)
                .await
                .map(FetchedPiece::whole),
            Ok(Answer::Arriving(path)) if path.passed(self.storage.store_id()) => {
                Err(TransferError::ArrivalStopped {
                    addr,
                    number: span.number,
                    reason: "its bytes would come from this host's own arriving copy".to_string(),
                })
            }
            Ok(Answer::Arriving(path)) => {
                let piece = self.store_arriving(stream, started, path).await?;
                Ok(FetchedPiece {
                    piece,
                    delivery: Delivery::Forwarded,
                })
            }
            Err(TransferError::PieceNotFound { .. }) => Err(TransferError::ArrivalStopped {
                addr,
                number: span.number,
                reason: "no longer arriving or recorded there".to_string(),
            }),
            Err(error) => Err(error),
        }
    }

    async fn store_arriving<R: AsyncRead + Unpin>(
        &self,
        stream: &mut R,
        started: Instant,
        path: RelayPath,
    ) -> Result<PieceMetadata, TransferError> {
        let (addr, task_id, span) = (self.addr, self.task_id, self.span);
        let trusted = self.trusted_digest.map(PieceCheck::Trusted);
        let mut body = ThrottledReader::new((&mut *stream).take(span.length), self.limiters);
        let origin = PieceOrigin {
            parent_id: Some(self.parent_id),
            cost: started.elapsed(),
            forwarding: Forwarding::Relayed(path),
        };
        let written = self
            .storage
            .write_piece_unrecorded(
                task_id,
                span,
                &mut body,
                trusted.and_then(PieceCheck::algorithm),
                origin,
            )
            .await;
        body.settle().await;
        let stopped = |reason: String| TransferError::ArrivalStopped {
            addr,
            number: span.number,
            reason,
        };
        let held = match written {
            Ok(Written::Recorded(piece)) => return Ok(piece),
            Ok(Written::Held(held)) => held,
            Err(StorageError::ShortRead { received, .. }) => {
                return Err(stopped(format!(
                    "the connection ended after {received} bytes"
                )))
            }
            Err(error) => return Err(self.storage_error(error)),
        };
        let trailer = match read_piece_content(stream, addr, task_id, span).await {
            Err(TransferError::PeerError { message, .. }) => return Err(stopped(message)),
            other => other?,
        };
        let check = trusted.unwrap_or(PieceCheck::Crc32(&trailer.digest));
        let piece = held
            .record(self.storage, check)
            .map_err(|e| self.storage_error(e))?;
        self.log_landed("piece forwarded by parent as it arrived");
        Ok(piece)
    }

    /// Writes the piece's bytes that follow the answer, checked against the trusted digest
    /// when the child has one, else `parent_digest`.
    async fn store<R: AsyncRead + Unpin>(
        &self,
        stream: &mut R,
        parent_digest: &str,
        started: Instant,
    ) -> Result<PieceMetadata, TransferError> {
        let (task_id, span, parent_id) = (self.task_id, self.span, self.parent_id);
        let check = match self.trusted_digest {
            Some(trusted) => PieceCheck::Trusted(trusted),
            None => PieceCheck::Crc32(parent_digest),
        };
        let mut body = ThrottledReader::new(stream.take(span.length), self.limiters);
        let written = self
            .storage
            .write_piece_checked(
                task_id,
                span,
                &mut body,
                check,
                Some(parent_id),
                started.elapsed(),
            )
            .await;
        body.settle().await;
        let piece = written.map_err(|e| self.storage_error(e))?;
        self.log_landed("piece downloaded from parent");
        Ok(piece)
    }

    /// A storage failure as the transfer sees it: a broken read is the parent's connection.
    fn storage_error(&self, error: StorageError) -> TransferError {
        match error {
            StorageError::SourceRead(io) => peer_io(self.addr, io),
            other => TransferError::Storage(other),
        }
    }

    fn log_landed(&self, what: &'static str) {
        debug!(
            task_id = self.task_id,
            number = self.span.number,
            offset = self.span.offset,
            length = self.span.length,
            source = self.parent_id,
            trusted = self.trusted_digest.is_some(),
            "{what}"
        );
    }
}

/// Reads the first frame of the answer to a cut-through request.
async fn read_answer<R: AsyncRead + Unpin>(
    stream: &mut R,
    addr: SocketAddr,
    task_id: &str,
    span: PieceSpan,
) -> Result<Answer, TransferError> {
    let (tag, value) = read_frame(stream, addr).await?;
    decode_any_answer(tag, &value, addr, task_id, span)
}

/// Reads the answer frame; returns the piece metadata, which must match the requested span.
async fn read_piece_content<R: AsyncRead + Unpin>(
    stream: &mut R,
    addr: SocketAddr,
    task_id: &str,
    span: PieceSpan,
) -> Result<WireMetadata, TransferError> {
    let (tag, value) = read_frame(stream, addr).await?;
    decode_answer_value(tag, &value, addr, task_id, span)
}

/// Reads one frame from a parent: its tag and value, the value's length bounded.
async fn read_frame<R: AsyncRead + Unpin>(
    stream: &mut R,
    addr: SocketAddr,
) -> Result<(Tag, Vec<u8>), TransferError> {
    let mut header = [0u8; HEADER_SIZE];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|e| peer_io(addr, e))?;
    let (tag, length) = answer_value_length(&header, addr)?;
    let mut value = vec![0u8; length];
    stream
        .read_exact(&mut value)
        .await
        .map_err(|e| peer_io(addr, e))?;
    Ok((tag, value))
}

pub(crate) fn peer_io(addr: SocketAddr, error: std::io::Error) -> TransferError {
    if error.kind() == std::io::ErrorKind::TimedOut {
        return TransferError::Timeout(format!("parent {addr}: {error}"));
    }
    TransferError::PeerUnreachable {
        addr,
        reason: error.to_string(),
    }
}

/// The receive buffer a piece connection starts with: the piece's length, when the system's
/// `net.core.rmem_max` allows that much; otherwise `None` (the kernel's autotuning).
///
/// A connection carries one piece and then closes, so the kernel's receive autotuning, which
/// grows the window over round trips from `tcp_rmem`'s default (128 KiB), never gets far: the
/// sender spends most of the piece ACK-clocked behind a small window. Setting the buffer turns
/// autotuning off for the socket, so it is only done where the setting is not capped below a
/// piece (Linux's stock `rmem_max` is 208 KiB, which would make the window smaller, not larger).
fn piece_receive_buffer(length: u64) -> Option<u32> {
    receive_buffer_within(length, receive_buffer_max())
}

/// `length` as a receive buffer size, if `max` (the system's cap) is known and allows it.
fn receive_buffer_within(length: u64, max: Option<u32>) -> Option<u32> {
    let wanted = u32::try_from(length).ok()?;
    (max? >= wanted).then_some(wanted)
}

/// `net.core.rmem_max`, read once.
fn receive_buffer_max() -> Option<u32> {
    static MAX: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|text| text.trim().parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_piece_sized_receive_buffer_only_where_the_system_allows_it() {
        // A host tuned for throughput (rmem_max 4 MiB and up): the window starts at a piece.
        assert_eq!(receive_buffer_within(4 * MIB, Some(4 << 20)), Some(4 << 20));
        assert_eq!(receive_buffer_within(MIB, Some(32 << 20)), Some(1 << 20));
        // Linux's stock cap (208 KiB) would shrink the window: autotuning stays on.
        assert_eq!(receive_buffer_within(4 * MIB, Some(212_992)), None);
        // No /proc (not Linux, or a sandbox), or a piece too large to name in a socket option.
        assert_eq!(receive_buffer_within(4 * MIB, None), None);
        assert_eq!(receive_buffer_within(8 << 30, Some(u32::MAX)), None);
    }
}
