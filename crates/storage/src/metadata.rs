//! Records kept per task and per piece, and the events published when they change.

use damselfly_core::PieceLayout;
use damselfly_core::PieceSpan;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskMetadata {
    pub id: String,
    /// 0 while unknown (a streamed download without Content-Length).
    pub content_length: u64,
    pub piece_length: u64,
    pub response_header: Vec<(String, String)>,
    pub created_at: SystemTime,
    pub accessed_at: SystemTime,
    pub finished_at: Option<SystemTime>,
    pub failed_at: Option<SystemTime>,
    /// The URL the task was downloaded from, so a scheduler that restarted can be told what
    /// this host holds; None for records written before it was kept.
    #[serde(default)]
    pub url: Option<String>,
}

impl TaskMetadata {
    pub fn layout(&self) -> PieceLayout {
        PieceLayout {
            content_length: self.content_length,
            piece_length: self.piece_length,
        }
    }

    pub fn is_finished(&self) -> bool {
        self.finished_at.is_some()
    }

    pub fn is_failed(&self) -> bool {
        self.failed_at.is_some()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PieceMetadata {
    pub number: u32,
    pub offset: u64,
    pub length: u64,
    /// `crc32:<decimal>`.
    pub digest: String,
    /// The parent peer the bytes came from; None = origin.
    pub parent_id: Option<String>,
    pub cost: Duration,
    pub created_at: SystemTime,
}

impl PieceMetadata {
    /// Where the piece sits in the task.
    pub fn span(&self) -> PieceSpan {
        PieceSpan {
            number: self.number,
            offset: self.offset,
            length: self.length,
        }
    }
}

#[derive(Clone, Debug)]
pub enum PieceEvent {
    /// A write of this piece started (from the origin or a parent); it is recorded only when
    /// `Finished` follows. A piece server may forward it as it arrives (cut-through).
    Arriving(PieceSpan),
    Finished(PieceMetadata),
    TaskFinished,
    /// Also sent when the task is deleted, so waiting streams end.
    TaskFailed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportMethod {
    HardLink,
    Copy,
}
