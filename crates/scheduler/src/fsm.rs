//! Peer and task state machines. States are enums and every transition goes through `on`, so an
//! impossible report (say, a piece after the peer failed) is refused in one place.

use dragonfly_api::common::v2::SizeScope as PbSizeScope;

/// How large a task is, decided at registration from the reported content length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeScope {
    Empty,
    Tiny,
    Small,
    Normal,
}

/// Content up to this many bytes is "tiny" (Dragonfly's threshold).
pub const TINY_FILE_SIZE: u64 = 128;

impl SizeScope {
    /// Empty when the length is 0, tiny up to [`TINY_FILE_SIZE`], small for one piece.
    pub fn classify(content_length: Option<u64>, piece_count: Option<u32>) -> Self {
        match (content_length, piece_count) {
            (Some(0), _) => Self::Empty,
            (Some(len), _) if len <= TINY_FILE_SIZE => Self::Tiny,
            (_, Some(1)) => Self::Small,
            _ => Self::Normal,
        }
    }

    pub fn to_pb(self) -> PbSizeScope {
        match self {
            Self::Empty => PbSizeScope::Empty,
            Self::Tiny => PbSizeScope::Tiny,
            Self::Small => PbSizeScope::Small,
            Self::Normal => PbSizeScope::Normal,
        }
    }
}

/// Peer states (Dragonfly's peer FSM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    Pending,
    Received(SizeScope),
    Running,
    BackToSource,
    Succeeded,
    Failed,
    Leave,
}

/// What can happen to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEvent {
    Register(SizeScope),
    Download,
    DownloadBackToSource,
    Succeed,
    Fail,
    Leave,
}

/// A report that does not fit the peer's current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("peer in state {from} cannot take event {event:?}")]
pub struct InvalidTransition {
    pub from: &'static str,
    pub event: PeerEvent,
}

impl PeerState {
    /// The next state, or why the event is refused. Repeated events are accepted where the
    /// official client may legitimately send them twice (e.g. `DownloadPeerStarted` right after
    /// the scheduler already sent the peer back to source).
    pub fn on(self, event: PeerEvent) -> Result<PeerState, InvalidTransition> {
        use PeerEvent as E;
        use PeerState as S;
        let next = match (self, event) {
            (S::Pending, E::Register(scope)) => S::Received(scope),
            (S::Received(_) | S::Running, E::Download) => S::Running,
            (S::BackToSource, E::Download) => S::BackToSource,
            (S::Received(_) | S::Running | S::BackToSource, E::DownloadBackToSource) => {
                S::BackToSource
            }
            (S::Received(_) | S::Running | S::BackToSource | S::Succeeded, E::Succeed) => {
                S::Succeeded
            }
            (S::Leave, E::Fail) => return Err(self.refuse(event)),
            (_, E::Fail) => S::Failed,
            (_, E::Leave) => S::Leave,
            _ => return Err(self.refuse(event)),
        };
        Ok(next)
    }

    fn refuse(self, event: PeerEvent) -> InvalidTransition {
        InvalidTransition {
            from: self.name(),
            event,
        }
    }

    /// Dragonfly's state names, as shown in `Peer.state`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Received(SizeScope::Empty) => "ReceivedEmpty",
            Self::Received(SizeScope::Tiny) => "ReceivedTiny",
            Self::Received(SizeScope::Small) => "ReceivedSmall",
            Self::Received(SizeScope::Normal) => "ReceivedNormal",
            Self::Running => "Running",
            Self::BackToSource => "BackToSource",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::Leave => "Leave",
        }
    }

    /// States in which a peer can never serve pieces (Dragonfly's bad-parent states).
    pub fn cannot_serve(self) -> bool {
        matches!(
            self,
            Self::Pending | Self::Received(_) | Self::Failed | Self::Leave
        )
    }

    /// Done with downloading, one way or the other.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Leave)
    }
}

/// Task states (Dragonfly's task FSM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Leave,
}

/// What can happen to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEvent {
    /// A peer registered and is going to download.
    Download,
    /// A peer finished the whole content.
    Succeed,
    /// The back-to-source download failed.
    Fail,
    /// The last peer went away.
    Leave,
}

impl TaskState {
    /// Every event is meaningful in every state, so this is total. A failure after some peer
    /// already holds the content does not un-succeed the task.
    pub fn on(self, event: TaskEvent) -> TaskState {
        match (self, event) {
            (_, TaskEvent::Download) => Self::Running,
            (_, TaskEvent::Succeed) => Self::Succeeded,
            (Self::Succeeded, TaskEvent::Fail) => Self::Succeeded,
            (_, TaskEvent::Fail) => Self::Failed,
            (_, TaskEvent::Leave) => Self::Leave,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::Leave => "Leave",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_peer_life() {
        let s = PeerState::Pending;
        let s = s.on(PeerEvent::Register(SizeScope::Normal)).unwrap();
        assert_eq!(s.name(), "ReceivedNormal");
        let s = s.on(PeerEvent::Download).unwrap();
        assert_eq!(s, PeerState::Running);
        let s = s.on(PeerEvent::Succeed).unwrap();
        assert_eq!(s, PeerState::Succeeded);
        assert!(s.on(PeerEvent::Download).is_err());
        assert_eq!(s.on(PeerEvent::Leave).unwrap(), PeerState::Leave);
    }

    #[test]
    fn back_to_source_tolerates_started() {
        let s = PeerState::Received(SizeScope::Normal)
            .on(PeerEvent::DownloadBackToSource)
            .unwrap();
        assert_eq!(s.on(PeerEvent::Download).unwrap(), PeerState::BackToSource);
        assert_eq!(s.on(PeerEvent::Fail).unwrap(), PeerState::Failed);
    }

    #[test]
    fn refused_transitions() {
        assert!(PeerState::Pending.on(PeerEvent::Download).is_err());
        assert!(PeerState::Failed.on(PeerEvent::Succeed).is_err());
        assert!(PeerState::Leave.on(PeerEvent::Fail).is_err());
        assert!(PeerState::Running
            .on(PeerEvent::Register(SizeScope::Normal))
            .is_err());
    }

    #[test]
    fn size_scope() {
        assert_eq!(SizeScope::classify(Some(0), Some(0)), SizeScope::Empty);
        assert_eq!(SizeScope::classify(Some(100), Some(1)), SizeScope::Tiny);
        assert_eq!(SizeScope::classify(Some(1000), Some(1)), SizeScope::Small);
        assert_eq!(
            SizeScope::classify(Some(1 << 30), Some(256)),
            SizeScope::Normal
        );
        assert_eq!(SizeScope::classify(None, None), SizeScope::Normal);
    }

    #[test]
    fn task_life() {
        let t = TaskState::Pending.on(TaskEvent::Download);
        assert_eq!(t, TaskState::Running);
        assert_eq!(t.on(TaskEvent::Fail), TaskState::Failed);
        assert_eq!(
            t.on(TaskEvent::Succeed).on(TaskEvent::Fail),
            TaskState::Succeeded
        );
    }
}
