//! Helpers for the scheduler's integration tests: an in-process scheduler on 127.0.0.1:0 and a
//! real tonic client speaking the AnnouncePeer protocol the way dfdaemon does.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use damselfly_scheduler::{serve, SchedulerConfig};
use dragonfly_api::common::v2::{Download, Host, Network, Piece, TrafficType};
use dragonfly_api::scheduler::v2::announce_peer_request::Request as PeerRequest;
use dragonfly_api::scheduler::v2::announce_peer_response::Response as PeerResponse;
use dragonfly_api::scheduler::v2::scheduler_client::SchedulerClient;
use dragonfly_api::scheduler::v2::*;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

pub const WAIT: Duration = Duration::from_secs(10);
pub const PIECE_LENGTH: u64 = 4 << 20;

pub struct TestScheduler {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<()>,
}

impl TestScheduler {
    pub async fn start(config: SchedulerConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            serve(config, listener, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Self {
            addr,
            stop: Some(stop),
            handle,
        }
    }

    pub async fn client(&self) -> SchedulerClient<Channel> {
        SchedulerClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, &mut self.handle)
            .await
            .expect("scheduler did not shut down")
            .unwrap();
    }
}

/// Short retry interval so back-to-source after retries happens quickly in tests.
pub fn fast_config() -> SchedulerConfig {
    let mut config = SchedulerConfig::default();
    config.scheduler.retry_interval = Duration::from_millis(20);
    config
}

pub fn host(id: &str, ip: &str, port: i32, host_type: u32) -> Host {
    Host {
        id: id.to_string(),
        r#type: host_type,
        hostname: id.to_string(),
        ip: ip.to_string(),
        port,
        download_port: port,
        network: Some(Network {
            max_tx_bandwidth: 10_000_000_000,
            max_rx_bandwidth: 10_000_000_000,
            idc: Some("idc-a".into()),
            location: Some("cn|zj|hz".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub async fn announce(client: &mut SchedulerClient<Channel>, host: Host) {
    client
        .announce_host(AnnounceHostRequest {
            host: Some(host),
            interval: None,
        })
        .await
        .unwrap();
}

/// Announces normal hosts h1..=hn on 127.0.0.1..=n.
pub async fn announce_normal_hosts(client: &mut SchedulerClient<Channel>, n: u32) {
    for i in 1..=n {
        announce(
            client,
            host(&format!("h{i}"), &format!("127.0.0.{i}"), 4000, 0),
        )
        .await;
    }
}

pub fn download(url: &str, content_length: u64) -> Download {
    let piece_count = content_length.div_ceil(PIECE_LENGTH);
    Download {
        url: url.to_string(),
        actual_content_length: Some(content_length),
        actual_piece_length: Some(PIECE_LENGTH),
        actual_piece_count: Some(piece_count),
        concurrent_piece_count: Some(8),
        output_path: Some("/tmp/out".into()),
        ..Default::default()
    }
}

/// One AnnouncePeer stream from the client side.
pub struct PeerStream {
    pub host_id: String,
    pub task_id: String,
    pub peer_id: String,
    tx: mpsc::Sender<AnnouncePeerRequest>,
    pub responses: Streaming<AnnouncePeerResponse>,
}

impl PeerStream {
    /// Opens the stream without sending anything.
    pub async fn open(
        client: &mut SchedulerClient<Channel>,
        host_id: &str,
        task_id: &str,
        peer_id: &str,
    ) -> Self {
        Self::open_with(client, host_id, task_id, peer_id, None).await
    }

    /// Opens the stream with the AnnouncePeer feature metadata a Damselfly daemon sends.
    pub async fn open_with(
        client: &mut SchedulerClient<Channel>,
        host_id: &str,
        task_id: &str,
        peer_id: &str,
        features: Option<&'static str>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(64);
        let mut call = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(features) = features {
            call.metadata_mut().insert(
                damselfly_core::extensions::FEATURES_METADATA_KEY,
                tonic::metadata::MetadataValue::from_static(features),
            );
        }
        let responses = tokio::time::timeout(WAIT, client.announce_peer(call))
            .await
            .expect("AnnouncePeer must return its stream at once")
            .unwrap()
            .into_inner();
        Self {
            host_id: host_id.into(),
            task_id: task_id.into(),
            peer_id: peer_id.into(),
            tx,
            responses,
        }
    }

    /// Opens the stream and sends the register request.
    pub async fn register(
        client: &mut SchedulerClient<Channel>,
        host_id: &str,
        task_id: &str,
        peer_id: &str,
        download: Download,
    ) -> Self {
        let stream = Self::open(client, host_id, task_id, peer_id).await;
        stream.send_register(download).await;
        stream
    }

    async fn send_register(&self, download: Download) {
        self.send(PeerRequest::RegisterPeerRequest(RegisterPeerRequest {
            download: Some(download),
        }))
        .await;
    }

    /// Opens the stream as a daemon that takes pushed parents, and registers.
    pub async fn register_taking_pushes(
        client: &mut SchedulerClient<Channel>,
        host_id: &str,
        task_id: &str,
        peer_id: &str,
        download: Download,
    ) -> Self {
        let features = damselfly_core::extensions::FEATURE_PARENT_PUSH;
        let stream = Self::open_with(client, host_id, task_id, peer_id, Some(features)).await;
        stream.send_register(download).await;
        stream
    }

    /// Nothing arrives on the stream for `quiet`.
    pub async fn expect_quiet(&mut self, quiet: Duration) {
        if let Ok(message) = tokio::time::timeout(quiet, self.responses.message()).await {
            panic!("expected no message, got {message:?}");
        }
    }

    pub async fn send(&self, request: PeerRequest) {
        self.send_raw(AnnouncePeerRequest {
            host_id: self.host_id.clone(),
            task_id: self.task_id.clone(),
            peer_id: self.peer_id.clone(),
            request: Some(request),
        })
        .await;
    }

    pub async fn send_raw(&self, request: AnnouncePeerRequest) {
        self.tx.send(request).await.unwrap();
    }

    /// The next message; panics on timeout, error status or end of stream.
    pub async fn next(&mut self) -> PeerResponse {
        let message = tokio::time::timeout(WAIT, self.responses.message())
            .await
            .expect("no scheduler response in time")
            .expect("stream failed")
            .expect("stream ended");
        message.response.expect("empty response")
    }

    /// The stream ends with an error status: returns it.
    pub async fn expect_error(&mut self) -> tonic::Status {
        match tokio::time::timeout(WAIT, self.responses.message())
            .await
            .expect("no scheduler response in time")
        {
            Err(status) => status,
            Ok(other) => panic!("expected an error status, got {other:?}"),
        }
    }

    /// The stream ends cleanly (the close after a terminal request).
    pub async fn expect_closed(&mut self) {
        let end = tokio::time::timeout(WAIT, self.responses.message())
            .await
            .expect("the scheduler did not close the stream");
        assert!(
            matches!(end, Ok(None)),
            "expected a clean close, got {end:?}"
        );
    }

    pub async fn started(&self) {
        self.send(PeerRequest::DownloadPeerStartedRequest(
            DownloadPeerStartedRequest {},
        ))
        .await;
    }

    pub async fn back_to_source_started(&self) {
        self.send(PeerRequest::DownloadPeerBackToSourceStartedRequest(
            DownloadPeerBackToSourceStartedRequest { description: None },
        ))
        .await;
    }

    pub async fn piece_from_source(&self, number: u32, cost: Duration) {
        self.send(PeerRequest::DownloadPieceBackToSourceFinishedRequest(
            DownloadPieceBackToSourceFinishedRequest {
                piece: Some(piece(number, None, cost, TrafficType::BackToSource)),
            },
        ))
        .await;
    }

    pub async fn piece_from_parent(&self, number: u32, parent: &str, cost: Duration) {
        self.send(PeerRequest::DownloadPieceFinishedRequest(
            DownloadPieceFinishedRequest {
                piece: Some(piece(
                    number,
                    Some(parent.to_string()),
                    cost,
                    TrafficType::RemotePeer,
                )),
            },
        ))
        .await;
    }

    pub async fn finished(&self) {
        self.send(PeerRequest::DownloadPeerFinishedRequest(
            DownloadPeerFinishedRequest {},
        ))
        .await;
    }

    pub async fn back_to_source_finished(&self) {
        self.send(PeerRequest::DownloadPeerBackToSourceFinishedRequest(
            DownloadPeerBackToSourceFinishedRequest {},
        ))
        .await;
    }

    pub async fn reschedule(&self, give_up: &[&str]) {
        self.send(PeerRequest::ReschedulePeerRequest(ReschedulePeerRequest {
            candidate_parents: give_up
                .iter()
                .map(|id| dragonfly_api::common::v2::Peer {
                    id: id.to_string(),
                    ..Default::default()
                })
                .collect(),
            description: Some("parents too slow".into()),
        }))
        .await;
    }

    /// Runs the whole back-to-source download and waits for the close.
    pub async fn complete_from_source(mut self, pieces: u32) {
        self.started().await;
        self.back_to_source_started().await;
        for n in 0..pieces {
            self.piece_from_source(n, Duration::from_millis(10)).await;
        }
        self.back_to_source_finished().await;
        self.expect_closed().await;
    }

    /// Runs the whole P2P download from `parent` and waits for the close.
    pub async fn complete_from_parent(mut self, parent: &str, pieces: u32) {
        self.started().await;
        for n in 0..pieces {
            self.piece_from_parent(n, parent, Duration::from_millis(10))
                .await;
        }
        self.finished().await;
        self.expect_closed().await;
    }
}

pub fn piece(number: u32, parent: Option<String>, cost: Duration, traffic: TrafficType) -> Piece {
    Piece {
        number,
        parent_id: parent,
        offset: u64::from(number) * PIECE_LENGTH,
        length: PIECE_LENGTH,
        digest: "crc32:1".into(),
        content: None,
        traffic_type: Some(traffic as i32),
        cost: Some(cost.try_into().unwrap()),
        created_at: None,
    }
}

/// Parent ids of a NormalTaskResponse; panics on any other decision.
pub fn parents(response: &PeerResponse) -> Vec<String> {
    match response {
        PeerResponse::NormalTaskResponse(normal) => normal
            .candidate_parents
            .iter()
            .map(|p| p.id.clone())
            .collect(),
        other => panic!("expected NormalTaskResponse, got {other:?}"),
    }
}

pub fn is_back_to_source(response: &PeerResponse) -> bool {
    matches!(response, PeerResponse::NeedBackToSourceResponse(_))
}
