//! Where a parent serves pieces (SyncPieces' `ip` with `tcp_port` or `quic_port`,
//! dragonfly-v2.md §3.3) and fetching one piece over the transport chosen for it.

use crate::error::TransferError;
use crate::frame::RequestKind;
use crate::limiter::RateLimiter;
use crate::quic::QuicPieceClient;
use crate::vortex::{fetch_piece_from, Delivery, FetchedPiece, PieceSource};
use damselfly_core::PieceSpan;
use damselfly_storage::Storage;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// A parent's piece server and the transport it speaks there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PieceServer {
    Tcp(SocketAddr),
    /// A Damselfly parent's TCP server that also forwards pieces still arriving there.
    TcpCutThrough(SocketAddr),
    Quic(SocketAddr),
}

impl PieceServer {
    pub fn addr(&self) -> SocketAddr {
        match self {
            PieceServer::Tcp(addr) | PieceServer::TcpCutThrough(addr) | PieceServer::Quic(addr) => {
                *addr
            }
        }
    }

    /// The request this server is asked for a piece with.
    fn request(&self) -> RequestKind {
        match self {
            PieceServer::TcpCutThrough(_) => RequestKind::CutThrough,
            PieceServer::Tcp(_) | PieceServer::Quic(_) => RequestKind::Recorded,
        }
    }
}

/// How this daemon fetches from parents: Vortex over TCP only, or over QUIC from every
/// parent that advertises a QUIC port (TCP from the others).
#[derive(Debug, Clone)]
pub enum PieceFetcher {
    Tcp,
    Quic(QuicPieceClient),
}

impl PieceFetcher {
    /// The server to fetch from, given what the parent advertised and whether it offered
    /// cut-through; `None` when it offers no port this fetcher can use. A parent that offered
    /// cut-through announces pieces still arriving, which only its TCP server forwards, so
    /// those go to TCP whatever the fetcher prefers (a daemon fetching over QUIC does not ask
    /// for cut-through, so it meets this only from a parent that offers it unasked).
    pub fn choose(
        &self,
        ip: IpAddr,
        tcp_port: Option<u16>,
        quic_port: Option<u16>,
        cut_through: bool,
    ) -> Option<PieceServer> {
        let usable = |port: Option<u16>| port.filter(|p| *p != 0);
        match (self, usable(quic_port), usable(tcp_port)) {
            (_, _, Some(port)) if cut_through => {
                Some(PieceServer::TcpCutThrough(SocketAddr::new(ip, port)))
            }
            (PieceFetcher::Quic(_), Some(port), _) => {
                Some(PieceServer::Quic(SocketAddr::new(ip, port)))
            }
            (_, _, Some(port)) => Some(PieceServer::Tcp(SocketAddr::new(ip, port))),
            _ => None,
        }
    }

    /// Fetches one piece from `server` into storage, recorded only if it matches
    /// `trusted_digest` when given, else the parent's crc32 (parent recorded).
    #[allow(clippy::too_many_arguments)]
    pub async fn download_piece(
        &self,
        server: PieceServer,
        parent_id: &str,
        trusted_digest: Option<&str>,
        task_id: &str,
        span: PieceSpan,
        storage: &Storage,
        limiters: &[RateLimiter],
        timeout: Duration,
    ) -> Result<FetchedPiece, TransferError> {
        let source = PieceSource {
            addr: server.addr(),
            parent_id,
            trusted_digest,
            request: server.request(),
        };
        match (server, self) {
            (PieceServer::Tcp(_) | PieceServer::TcpCutThrough(_), _) => {
                fetch_piece_from(source, task_id, span, storage, limiters, timeout).await
            }
            (PieceServer::Quic(_), PieceFetcher::Quic(client)) => client
                .download_piece_from(source, task_id, span, storage, limiters, timeout)
                .await
                .map(|piece| FetchedPiece {
                    piece,
                    delivery: Delivery::Whole,
                }),
            // `choose` never picks QUIC for a TCP-only fetcher.
            (PieceServer::Quic(addr), PieceFetcher::Tcp) => Err(TransferError::Quic(format!(
                "{addr} is a QUIC piece server and download.protocol is tcp"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quic::QuicSecurity;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::new(IP, port)
    }

    #[test]
    fn a_tcp_fetcher_uses_cut_through_only_when_offered() {
        let tcp = PieceFetcher::Tcp;
        assert_eq!(
            tcp.choose(IP, Some(65000), Some(65001), true),
            Some(PieceServer::TcpCutThrough(addr(65000)))
        );
        assert_eq!(
            tcp.choose(IP, Some(65000), Some(65001), false),
            Some(PieceServer::Tcp(addr(65000)))
        );
        assert_eq!(tcp.choose(IP, None, Some(65001), false), None);
        assert_eq!(tcp.choose(IP, Some(0), None, true), None);
    }

    #[tokio::test]
    async fn pieces_still_arriving_are_never_asked_of_a_quic_server() {
        let quic = PieceFetcher::Quic(
            QuicPieceClient::new(&QuicSecurity::DragonflyCompatible).expect("client"),
        );
        assert_eq!(
            quic.choose(IP, Some(65000), Some(65001), false),
            Some(PieceServer::Quic(addr(65001)))
        );
        // A parent that offered cut-through announces pieces whose writes have only
        // started; its QUIC server answers those "not found".
        assert_eq!(
            quic.choose(IP, Some(65000), Some(65001), true),
            Some(PieceServer::TcpCutThrough(addr(65000)))
        );
        assert_eq!(
            quic.choose(IP, None, Some(65001), false),
            Some(PieceServer::Quic(addr(65001)))
        );
        assert_eq!(
            quic.choose(IP, Some(65000), None, false),
            Some(PieceServer::Tcp(addr(65000)))
        );
    }
}
