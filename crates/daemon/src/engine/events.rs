//! What the engine tells one caller about its download, in the engine's own terms. Each edge
//! translates: the gRPC services into `DownloadTaskResponse`s and status codes, the proxy
//! into an HTTP response whose body follows the landed pieces.

use crate::error::DownloadError;
use damselfly_core::OriginReason;
use damselfly_storage::PieceMetadata;
use futures::Stream;
use std::pin::Pin;

/// The task's size and origin headers, known once the origin was asked.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskShape {
    pub content_length: u64,
    pub piece_length: u64,
    pub response_header: Vec<(String, String)>,
}

/// Where a piece this caller sees came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceSource {
    /// Already complete on this host before the caller asked.
    Cache,
    /// Fetched from a parent peer.
    Parent,
    /// Fetched from the origin (back-to-source).
    Origin,
}

impl PieceSource {
    /// A stored piece records its parent; none means the origin.
    pub fn of(piece: &PieceMetadata) -> Self {
        if piece.parent_id.is_some() {
            PieceSource::Parent
        } else {
            PieceSource::Origin
        }
    }
}

/// The download has a shape: bytes can flow from here on.
#[derive(Debug, Clone)]
pub struct Started {
    pub task_id: String,
    /// This host's peer for the task (shared by every caller of one job).
    pub peer_id: String,
    pub shape: TaskShape,
    /// Pieces already on disk when the caller joined; each is also sent as a `Piece` event.
    pub landed: Vec<PieceMetadata>,
    /// The whole task was already here (a cache hit): no origin, no scheduler.
    pub cached: bool,
    /// Why the bytes come from the origin, when that was decided before the start (a small
    /// file); later decisions arrive as [`EngineEvent::Origin`].
    pub origin: Option<OriginReason>,
}

#[derive(Debug, Clone)]
pub enum EngineEvent {
    /// Always first.
    Started(Started),
    /// Why the job went to the origin: at most once per caller, before the first piece from
    /// the origin, unless `Started` already said it. A range's caller hears it as soon as the
    /// job decides, before any of its pieces.
    Origin(OriginReason),
    /// A piece is on disk and readable; each piece is reported once per caller.
    Piece(PieceMetadata, PieceSource),
    /// Every piece landed, the digest matched and the output (if any) is written. Last.
    Finished,
}

/// A download as its caller sees it; an `Err` item is the last one.
pub type EngineEvents =
    Pin<Box<dyn Stream<Item = Result<EngineEvent, DownloadError>> + Send + 'static>>;
