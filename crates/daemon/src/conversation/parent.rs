//! One candidate parent of a round, as the scheduler described it, and what its SyncPieces
//! stream told us so far.

use crate::dispatch::ParentLoad;
use dragonfly_api::common::v2::Peer;
use std::net::{IpAddr, SocketAddr};

/// Where a parent's SyncPieces stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParentState {
    /// Stream asked for; nothing heard yet.
    Connecting,
    /// The stream is open and announcing pieces.
    Syncing,
    /// The stream ended cleanly: the parent still serves what it announced, nothing more.
    Ended,
    /// Failed us (stream error, too many failed pieces): out of this round.
    Dropped,
}

/// What kind of parent: seeds are spared (see [`crate::dispatch::SeedGrace`]), except for
/// the pieces a rationing seed offers us alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParentKind {
    Normal,
    Seed,
    /// A Damselfly seed that rations its announcements (see `crate::ration`).
    RationingSeed,
}

/// Failed pieces after which a parent is dropped for the rest of the round.
pub(super) const MAX_PARENT_FAILURES: u32 = 2;

#[derive(Debug)]
pub(super) struct Parent {
    pub peer: Peer,
    /// Its gRPC upload server, for SyncPieces.
    pub grpc: SocketAddr,
    /// Its Vortex piece server, learned from SyncPieces (`ip` + `tcp_port` or `quic_port`).
    pub vortex: Option<damselfly_transfer::PieceServer>,
    pub load: ParentLoad,
    pub kind: ParentKind,
    pub state: ParentState,
    pub failures: u32,
}

impl Parent {
    /// The parent, or `None` when the scheduler gave no usable address for it.
    pub fn from_peer(peer: &Peer) -> Option<Self> {
        let host = peer.host.as_ref()?;
        let ip: IpAddr = host.ip.parse().ok()?;
        let port = u16::try_from(host.port).ok().filter(|&p| p != 0)?;
        let network = host.network.as_ref();
        let seed = host.r#type != 0;
        Some(Self {
            peer: peer.clone(),
            grpc: SocketAddr::new(ip, port),
            vortex: None,
            load: ParentLoad {
                seed,
                offers: false,
                max_tx_bandwidth: network.map_or(0, |n| n.max_tx_bandwidth),
                tx_bandwidth: network.and_then(|n| n.tx_bandwidth).unwrap_or(0),
                in_flight: 0,
                delivered: None,
                writing: None,
                forwarded: None,
            },
            kind: if seed {
                ParentKind::Seed
            } else {
                ParentKind::Normal
            },
            state: ParentState::Connecting,
            failures: 0,
        })
    }

    /// Not dropped: may still serve pieces.
    pub fn is_alive(&self) -> bool {
        self.state != ParentState::Dropped
    }

    /// May still tell us about more pieces.
    pub fn is_streaming(&self) -> bool {
        matches!(self.state, ParentState::Connecting | ParentState::Syncing)
    }

    /// Reported to the scheduler as failed when the round ends.
    pub fn failed_us(&self) -> bool {
        self.state == ParentState::Dropped || self.failures > 0
    }

    /// The stream spoke: it is open.
    pub fn heard_from(&mut self) {
        if self.state == ParentState::Connecting {
            self.state = ParentState::Syncing;
        }
    }
}
