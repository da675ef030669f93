//! Server side of `DfdaemonUpload.SyncPieces`: tells a child which pieces we can serve, now and
//! as they land.

use crate::error::TransferError;
use damselfly_core::PieceSpan;
use damselfly_storage::{PieceEvent, Storage};
use dragonfly_api::dfdaemon::v2::SyncPiecesResponse;
use futures::Stream;
use std::collections::{HashSet, VecDeque};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;
use tracing::debug;

/// Yields a SyncPiecesResponse for each interested piece the task has (now, then as they
/// land), ends when all interested pieces were sent or the task finished/failed. Empty
/// `interested` means every piece. Err(TaskNotFound) if the task is unknown, Err(TaskFailed)
/// if it failed. Each answer carries our Vortex TCP port and, if we serve QUIC, its port.
/// With `announce` [`Announce::Arriving`] (a Damselfly child that asked for cut-through), a
/// piece is announced as soon as its write starts here, not when it is recorded, and again
/// once recorded: to such a child every piece is announced twice, the second time when it is
/// recorded here (a piece already recorded at its first announcement is announced twice at
/// once). The child tells a copy that may still be arriving from one recorded by that.
pub fn sync_pieces_stream(
    storage: Storage,
    task_id: String,
    interested: Vec<u32>,
    advertise_ip: String,
    ports: PiecePorts,
    announce: Announce,
) -> Result<
    impl Stream<Item = Result<SyncPiecesResponse, tonic::Status>> + Send + 'static,
    TransferError,
> {
    // Subscribing before listing: a piece recorded in between shows up in both, never in none.
    let events = storage.subscribe(&task_id);
    let task = storage
        .task(&task_id)?
        .ok_or_else(|| TransferError::TaskNotFound(task_id.clone()))?;
    if task.is_failed() {
        return Err(TransferError::TaskFailed(task_id));
    }
    let piece_count = (task.content_length > 0).then(|| task.layout().piece_count());
    let wanted = (!interested.is_empty()).then(|| {
        interested
            .into_iter()
            .filter(|n| piece_count.is_none_or(|count| *n < count))
            .collect::<HashSet<u32>>()
    });
    let mut state = SyncState {
        storage,
        task_id,
        events,
        wanted,
        piece_count,
        sent: HashSet::new(),
        awaiting_whole: HashSet::new(),
        backlog: VecDeque::new(),
        ended: task.is_finished(),
        advertise_ip,
        ports,
        announce,
    };
    state.relist()?;
    Ok(futures::stream::unfold(state, |mut state| async move {
        state.next().await.map(|item| (item, state))
    }))
}

struct SyncState {
    storage: Storage,
    task_id: String,
    events: Receiver<PieceEvent>,
    /// None = every piece.
    wanted: Option<HashSet<u32>>,
    /// None while the length is unknown.
    piece_count: Option<u32>,
    sent: HashSet<u32>,
    /// Announced while arriving, not yet again whole: a cut-through child that lost the write
    /// it followed takes us as a holder again only when it hears of the piece whole.
    awaiting_whole: HashSet<u32>,
    backlog: VecDeque<(PieceSpan, Stage)>,
    /// No more events will come (task finished, failed or deleted); drain the backlog and stop.
    ended: bool,
    advertise_ip: String,
    ports: PiecePorts,
    announce: Announce,
}

/// Where this daemon serves pieces: its Vortex TCP port and, if it serves QUIC, that port.
#[derive(Debug, Clone, Copy)]
pub struct PiecePorts {
    pub tcp: u16,
    pub quic: Option<u16>,
}

/// When a piece is announced to a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announce {
    /// Once it is recorded (what official children expect: they fetch it at once).
    Recorded,
    /// As soon as its write starts: the child asks for it by cut-through.
    Arriving,
}

/// What an announcement says of its piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Its write started here (cut-through children only).
    Arriving,
    /// It is recorded here.
    Whole,
}

impl SyncState {
    async fn next(&mut self) -> Option<Result<SyncPiecesResponse, tonic::Status>> {
        loop {
            if let Some((piece, stage)) = self.backlog.pop_front() {
                if self.first_or_now_whole(piece, stage) {
                    return Some(Ok(self.response(&piece)));
                }
                continue;
            }
            if self.ended || self.all_sent() {
                debug!(task_id = %self.task_id, sent = self.sent.len(), "sync pieces stream ends");
                return None;
            }
            if let Err(e) = self.wait_for_event().await {
                self.ended = true;
                return Some(Err(tonic::Status::internal(e.to_string())));
            }
        }
    }

    async fn wait_for_event(&mut self) -> Result<(), TransferError> {
        match self.events.recv().await {
            Ok(PieceEvent::Finished(piece)) => {
                self.queue(piece.span(), Stage::Whole);
                Ok(())
            }
            Ok(PieceEvent::Arriving(span)) => {
                if self.announce == Announce::Arriving {
                    self.queue(span, Stage::Arriving);
                }
                Ok(())
            }
            Ok(PieceEvent::TaskFailed) => {
                self.ended = true;
                self.backlog.clear();
                Ok(())
            }
            // Finished (or the channel is gone): whatever landed is in storage now.
            Ok(PieceEvent::TaskFinished) | Err(RecvError::Closed) => {
                self.ended = true;
                self.relist()
            }
            // Fell behind: storage has everything the missed events announced.
            Err(RecvError::Lagged(missed)) => {
                debug!(task_id = %self.task_id, missed, "sync pieces subscriber lagged, re-listing");
                self.relist()
            }
        }
    }

    /// Queues every recorded (or, to a cut-through child, arriving), wanted, unsent piece.
    fn relist(&mut self) -> Result<(), TransferError> {
        for piece in self.storage.pieces(&self.task_id)? {
            self.queue(piece.span(), Stage::Whole);
        }
        if self.announce == Announce::Arriving && !self.ended {
            for span in self.storage.arriving_pieces(&self.task_id)? {
                self.queue(span, Stage::Arriving);
            }
        }
        Ok(())
    }

    fn queue(&mut self, span: PieceSpan, stage: Stage) {
        let fresh = !self.sent.contains(&span.number)
            || (stage == Stage::Whole && self.awaiting_whole.contains(&span.number));
        if self.wants(span.number) && fresh {
            self.backlog.push_back((span, stage));
        }
    }

    /// Whether a queued announcement still goes out: the first of its piece, or the piece
    /// whole after it was announced arriving. To a cut-through child, a piece recorded at
    /// its first announcement goes out a second time right after it.
    fn first_or_now_whole(&mut self, span: PieceSpan, stage: Stage) -> bool {
        let number = span.number;
        let first = self.sent.insert(number);
        match stage {
            Stage::Arriving if first => {
                self.awaiting_whole.insert(number);
                true
            }
            Stage::Arriving => false,
            Stage::Whole if first && self.announce == Announce::Arriving => {
                self.awaiting_whole.insert(number);
                self.backlog.push_front((span, Stage::Whole));
                true
            }
            Stage::Whole => self.awaiting_whole.remove(&number) || first,
        }
    }

    fn wants(&self, number: u32) -> bool {
        self.wanted.as_ref().is_none_or(|w| w.contains(&number))
    }

    fn all_sent(&self) -> bool {
        if !self.awaiting_whole.is_empty() {
            return false;
        }
        match (&self.wanted, self.piece_count) {
            (Some(wanted), _) => wanted.iter().all(|n| self.sent.contains(n)),
            (None, Some(count)) => self.sent.len() >= count as usize,
            (None, None) => false,
        }
    }

    fn response(&self, piece: &PieceSpan) -> SyncPiecesResponse {
        SyncPiecesResponse {
            number: piece.number,
            offset: piece.offset,
            length: piece.length,
            ip: self.advertise_ip.clone(),
            tcp_port: Some(i32::from(self.ports.tcp)),
            quic_port: self.ports.quic.map(i32::from),
        }
    }
}
