//! The conversation of one download with its scheduler and its parents, as a pure state
//! machine: [`Event`]s in, [`Action`]s out. No sockets, no tokio, no clock: every event comes
//! with the `now` it happened at, and the machine asks to be woken with [`Action::WakeAt`].
//! The async shell in `engine::p2p` moves events and actions between this core, the network
//! (scheduler session, SyncPieces streams, Vortex fetches) and storage; the tests in
//! `tests.rs` drive it in virtual time.
//!
//! A tour:
//! - [`Conversation`] (`machine.rs`): the AnnouncePeer side. It waits for a scheduling
//!   decision, starts a round of parents, and when a round ends decides between finishing,
//!   failing, asking for a reschedule and going back to source (after `maxScheduleCount`
//!   decisions, on the scheduler's word, or when the scheduler is gone). Between a round's
//!   end and a reschedule it first reads what the scheduler already sent, so a pushed
//!   parent is kept for the next round rather than mistaken for the answer.
//! - `Round` (`round.rs`): one round of downloading from the parents of one decision. It
//!   learns who holds which piece, keeps `concurrentPieceCount` pieces in flight through the
//!   policy of [`crate::dispatch`], drops parents that fail, lets pushed parents join, and
//!   ends when nothing is missing, nobody can serve what is, nobody offered a piece within
//!   `collectedPieceTimeout`, or a seed-only round should ask for better parents.
//! - `Parent` (`parent.rs`): one candidate parent and the state of its SyncPieces stream.

mod machine;
mod parent;
mod round;
#[cfg(test)]
mod tests;

pub use machine::Conversation;
pub use parent::{ParentKind, ParentState};

use crate::scheduler_client::Decision;
use damselfly_core::{OriginReason, PieceSpan};
use damselfly_transfer::{Delivery, PieceServer};
use dragonfly_api::common::v2::Peer;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A parent of the current round. Keys are handed out by the core and are only valid until
/// the round's [`Action::EndRound`]; the shell forgets the round's streams and fetches then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ParentKey(pub usize);

/// The limits a download works within (from the daemon configuration and the request).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Pieces in flight from parents at once (`concurrentPieceCount`, at least 1).
    pub concurrency: usize,
    /// A round in which no parent offers a missing piece for this long ends
    /// (`collectedPieceTimeout`).
    pub collected_piece_timeout: Duration,
    /// How long to wait for each scheduling decision (`scheduler.scheduleTimeout`).
    pub schedule_timeout: Duration,
    /// Decisions after which missing pieces come from the origin (`maxScheduleCount`).
    pub max_schedule_count: u32,
}

/// Whose fault a failed piece was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The parent (refused, reset, timed out): another parent may do better.
    Parent,
    /// The parent's bytes failed a digest check (a liar, or a corrupted disk): it is
    /// reported as a bad parent and kept out of this download.
    Forged,
    /// Our own disk or storage: no other parent can fix it, the download fails.
    Local,
    /// The parent stopped forwarding a piece still arriving there (cut-through): its own
    /// fetch of it failed or moved. Not its fault: the piece goes to another holder, and the
    /// parent is a holder again when it announces the piece whole.
    Withdrawn,
}

/// How a parent failed a piece, as reported to the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceFailure {
    /// It may serve it later (`temporary: true`).
    Temporary,
    /// It sent bytes that failed a digest check (`temporary: false`: the scheduler blocklists
    /// the parent for this peer).
    Forged,
}

/// Something that happened; fed to [`Conversation::on`] with the instant it happened at.
#[derive(Debug)]
pub enum Event {
    /// A message from the scheduler: an answer to our register or reschedule, or, during a
    /// round, a parent the mesh pushed (a `Normal` decision) or a change of mind.
    Scheduler(Decision),
    /// Every message the scheduler had already sent when [`Action::DrainScheduler`] was asked
    /// for has been fed.
    SchedulerDrained,
    /// The scheduler session broke or closed.
    SchedulerLost { reason: String },
    /// A seed's SyncPieces stream said it rations: what it offers was given to us alone.
    RationExclusive { parent: ParentKey },
    /// A parent announced a piece, served from `vortex`.
    PieceAvailable {
        parent: ParentKey,
        number: u32,
        vortex: PieceServer,
    },
    /// A parent's SyncPieces stream ended, cleanly or with an error.
    SyncEnded {
        parent: ParentKey,
        error: Option<String>,
    },
    /// A piece from `parent` is stored; `delivery` says what its `cost` measured.
    PieceFetched {
        parent: ParentKey,
        number: u32,
        cost: Duration,
        delivery: Delivery,
    },
    /// A piece from `parent` failed.
    PieceFailed {
        parent: ParentKey,
        number: u32,
        fault: Fault,
        error: String,
    },
    /// How far the write of each piece in flight has come: its piece number and the content
    /// file offset written up to, 0 for a fetch that wrote nothing yet (sampled by the shell
    /// before each [`Event::Tick`]).
    FetchProgress { written_to: Vec<(u32, u64)> },
    /// A deadline asked for with [`Action::WakeAt`] passed (or any other reason to look).
    Tick,
    /// The daemon is shutting down.
    Shutdown,
}

/// Whether the scheduler can still hear us when the download goes back to source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulerLink {
    /// Report back-to-source on the session.
    Reachable,
    /// The session is gone: fetch from the origin without reports.
    Lost,
}

/// Something the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Tell the scheduler the download started (`DownloadPeerStartedRequest`).
    ReportStarted,
    /// Open the parent's SyncPieces stream, asking for `interested` pieces.
    OpenParent {
        parent: ParentKey,
        grpc: SocketAddr,
        interested: Vec<u32>,
    },
    /// Close the parent's SyncPieces stream: it failed us (a rationing seed must stop
    /// handing it pieces we will never fetch). Its fetches in flight may still land.
    DropParent { parent: ParentKey },
    /// Fetch a piece from a parent's Vortex server.
    Fetch {
        parent: ParentKey,
        parent_id: String,
        seed: bool,
        span: PieceSpan,
        vortex: PieceServer,
    },
    /// Abort the fetch of a piece: it moves to a faster holder. A result that still comes
    /// from it is not ours any more and is ignored.
    AbortFetch { number: u32 },
    /// Tell the scheduler a piece is stored (`DownloadPieceFinishedRequest`).
    ReportPieceFinished { number: u32 },
    /// Tell the scheduler a parent failed a piece (`DownloadPieceFailedRequest`).
    ReportPieceFailed {
        number: u32,
        parent_id: String,
        failure: PieceFailure,
    },
    /// The round is over: close every SyncPieces stream and abort the fetches still running.
    EndRound,
    /// Feed every message the scheduler already sent (without waiting for more), then
    /// [`Event::SchedulerDrained`]: parents pushed while the round ended must not be taken
    /// for the answer to the reschedule that may follow.
    DrainScheduler,
    /// Ask for other parents (`ReschedulePeerRequest`).
    Reschedule {
        failed: Vec<Peer>,
        description: String,
    },
    /// Fetch what is missing from the origin. Terminal.
    BackToSource {
        reason: OriginReason,
        link: SchedulerLink,
    },
    /// Every piece is stored (`DownloadPeerFinishedRequest`). Terminal.
    Finish,
    /// A local failure no parent can fix (`DownloadPeerFailedRequest`). Terminal.
    Fail { description: String },
    /// Send [`Event::Tick`] at this instant. Each batch of actions carries at most one, last;
    /// a batch without one means no deadline is pending.
    WakeAt(Instant),
}

impl Action {
    /// Whether the conversation is over after this action.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Action::BackToSource { .. } | Action::Finish | Action::Fail { .. }
        )
    }
}
