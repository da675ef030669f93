//! Moving piece bytes: the Vortex TCP and QUIC piece servers and clients, the origin HTTP backend,
//! bandwidth limits, and the SyncPieces server stream.

mod backend;
mod error;
mod file_copy;
mod frame;
mod limiter;
pub mod metrics;
mod pace;
mod piece_server;
mod plain_http;
mod quic;
mod sync;
mod trust;
mod uplink;
mod upload_slots;
mod vortex;

pub use backend::{
    Backend, BackendConfig, BodyChunks, ObjectStat, OriginPiece, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_RETRIES, DEFAULT_READ_TIMEOUT, DEFAULT_RETRY_BACKOFF, DEFAULT_USER_AGENT,
};
pub use error::TransferError;
pub use file_copy::SOCKET_READ_BUFFER;
pub use frame::MAX_FRAME_VALUE_LENGTH;
#[doc(hidden)]
pub use frame::{
    decode_answer_frame, decode_request_frame, Answer, BadRequest, PieceRequest, RequestKind,
    ARRIVING_CONTENT_TAG, CUT_THROUGH_REQUEST_TAG,
};
pub use limiter::{acquire_all, RateLimiter, ThrottledReader, RATE_LIMIT_BURST};
pub use metrics::register_metrics;
pub use pace::{FlowClock, Pace, PACE_MARGINAL_SHARE, PACE_MEMORY, PACE_MIN_SAMPLES};
pub use piece_server::{PieceFetcher, PieceServer};
pub use quic::{
    bind_quic, serve_quic, QuicListener, QuicPieceClient, QuicSecurity, UnverifiedPeers,
    CLIENT_STREAM_WINDOW, DRAGONFLY_SERVER_NAME, MAX_STREAMS_PER_CONNECTION, QUIC_IDLE_TIMEOUT,
};
pub use sync::{sync_pieces_stream, Announce, PiecePorts};
pub use trust::{OriginTrust, CLIENT_CACHE_LIMIT, SSL_CERT_FILE_ENV, SYSTEM_CA_FILES};
pub use uplink::{UplinkMeter, THIN_BUSY_UPLOADS, THIN_UPLINK_RATIO, THIN_WINDOWS, UPLINK_WINDOW};
pub use upload_slots::{UploadSlot, UploadSlots, COPIES_REMEMBERED, REPEAT_WAIT};
pub use vortex::{
    download_piece_from, download_piece_vortex, fetch_piece_from, serve_vortex, serve_vortex_with,
    Delivery, FetchedPiece, PieceSource, UploadHook, VortexServerConfig, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_ADDRESS, DEFAULT_MAX_OPEN_CONNECTIONS, DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_SEND_TIMEOUT, DELIVERY_WAIT, SEND_CHUNK_SIZE, UPLOAD_UNSENT_LIMIT,
};
