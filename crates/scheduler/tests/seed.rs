//! Seed peer triggering against a small fake `DfdaemonUpload` server that records DownloadTask
//! calls and then registers a seed peer with the scheduler, like a real seed dfdaemon.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use dragonfly_api::common::v2 as pb;
use dragonfly_api::dfdaemon::v2::dfdaemon_upload_server::{DfdaemonUpload, DfdaemonUploadServer};
use dragonfly_api::dfdaemon::v2::*;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

const URL: &str = "http://origin.example/big.bin";
const SIZE: u64 = 4 * PIECE_LENGTH;

type Unsupported<T> = futures::stream::Empty<Result<T, Status>>;

/// Records DownloadTask requests; on each, registers seed peer `seed-peer` with the scheduler
/// after `delay` and holds the stream open until the seed "finished".
struct FakeSeed {
    scheduler: SocketAddr,
    seed_host_id: String,
    delay: Duration,
    calls: Arc<Mutex<Vec<pb::Download>>>,
}

fn no() -> Status {
    Status::unimplemented("fake seed")
}

#[tonic::async_trait]
impl DfdaemonUpload for FakeSeed {
    type DownloadTaskStream = ReceiverStream<Result<DownloadTaskResponse, Status>>;

    async fn download_task(
        &self,
        request: Request<DownloadTaskRequest>,
    ) -> Result<Response<Self::DownloadTaskStream>, Status> {
        let download = request.into_inner().download.unwrap();
        self.calls.lock().unwrap().push(download.clone());
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (scheduler, host_id, delay) = (self.scheduler, self.seed_host_id.clone(), self.delay);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let mut client =
                dragonfly_api::scheduler::v2::scheduler_client::SchedulerClient::connect(format!(
                    "http://{scheduler}"
                ))
                .await
                .unwrap();
            let mut peer =
                PeerStream::register(&mut client, &host_id, "t", "seed-peer", download).await;
            assert!(is_back_to_source(&peer.next().await));
            peer.started().await;
            peer.back_to_source_started().await;
            peer.piece_from_source(0, Duration::from_millis(5)).await;
            // Stay "downloading" a while so children are scheduled while it runs.
            tokio::time::sleep(Duration::from_millis(300)).await;
            for n in 1..4 {
                peer.piece_from_source(n, Duration::from_millis(5)).await;
            }
            peer.back_to_source_finished().await;
            peer.expect_closed().await;
            let _ = tx
                .send(Ok(DownloadTaskResponse {
                    host_id,
                    task_id: "t".into(),
                    peer_id: "seed-peer".into(),
                    response: None,
                }))
                .await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn stat_task(&self, _: Request<StatTaskRequest>) -> Result<Response<pb::Task>, Status> {
        Err(no())
    }
    async fn stat_local_task(
        &self,
        _: Request<StatLocalTaskRequest>,
    ) -> Result<Response<StatLocalTaskResponse>, Status> {
        Err(no())
    }
    async fn list_task_entries(
        &self,
        _: Request<ListTaskEntriesRequest>,
    ) -> Result<Response<ListTaskEntriesResponse>, Status> {
        Err(no())
    }
    async fn delete_task(&self, _: Request<DeleteTaskRequest>) -> Result<Response<()>, Status> {
        Err(no())
    }
    type SyncPiecesStream = Unsupported<SyncPiecesResponse>;
    async fn sync_pieces(
        &self,
        _: Request<SyncPiecesRequest>,
    ) -> Result<Response<Self::SyncPiecesStream>, Status> {
        Err(no())
    }
    type DownloadCacheTaskStream = Unsupported<DownloadCacheTaskResponse>;
    async fn download_cache_task(
        &self,
        _: Request<DownloadCacheTaskRequest>,
    ) -> Result<Response<Self::DownloadCacheTaskStream>, Status> {
        Err(no())
    }
    async fn stat_cache_task(
        &self,
        _: Request<StatCacheTaskRequest>,
    ) -> Result<Response<pb::CacheTask>, Status> {
        Err(no())
    }
    async fn delete_cache_task(
        &self,
        _: Request<DeleteCacheTaskRequest>,
    ) -> Result<Response<()>, Status> {
        Err(no())
    }
    type SyncCachePiecesStream = Unsupported<SyncCachePiecesResponse>;
    async fn sync_cache_pieces(
        &self,
        _: Request<SyncCachePiecesRequest>,
    ) -> Result<Response<Self::SyncCachePiecesStream>, Status> {
        Err(no())
    }
    async fn download_cache_piece(
        &self,
        _: Request<DownloadCachePieceRequest>,
    ) -> Result<Response<DownloadCachePieceResponse>, Status> {
        Err(no())
    }
    type DownloadPersistentTaskStream = Unsupported<DownloadPersistentTaskResponse>;
    async fn download_persistent_task(
        &self,
        _: Request<DownloadPersistentTaskRequest>,
    ) -> Result<Response<Self::DownloadPersistentTaskStream>, Status> {
        Err(no())
    }
    type SyncPersistentPiecesStream = Unsupported<SyncPersistentPiecesResponse>;
    async fn sync_persistent_pieces(
        &self,
        _: Request<SyncPersistentPiecesRequest>,
    ) -> Result<Response<Self::SyncPersistentPiecesStream>, Status> {
        Err(no())
    }
    async fn update_persistent_task(
        &self,
        _: Request<UpdatePersistentTaskRequest>,
    ) -> Result<Response<()>, Status> {
        Err(no())
    }
    async fn stat_persistent_task(
        &self,
        _: Request<StatPersistentTaskRequest>,
    ) -> Result<Response<pb::PersistentTask>, Status> {
        Err(no())
    }
    async fn delete_persistent_task(
        &self,
        _: Request<DeletePersistentTaskRequest>,
    ) -> Result<Response<()>, Status> {
        Err(no())
    }
    type DownloadPersistentCacheTaskStream = Unsupported<DownloadPersistentCacheTaskResponse>;
    async fn download_persistent_cache_task(
        &self,
        _: Request<DownloadPersistentCacheTaskRequest>,
    ) -> Result<Response<Self::DownloadPersistentCacheTaskStream>, Status> {
        Err(no())
    }
    async fn update_persistent_cache_task(
        &self,
        _: Request<UpdatePersistentCacheTaskRequest>,
    ) -> Result<Response<()>, Status> {
        Err(no())
    }
    async fn stat_persistent_cache_task(
        &self,
        _: Request<StatPersistentCacheTaskRequest>,
    ) -> Result<Response<pb::PersistentCacheTask>, Status> {
        Err(no())
    }
    async fn delete_persistent_cache_task(
        &self,
        _: Request<DeletePersistentCacheTaskRequest>,
    ) -> Result<Response<()>, Status> {
        Err(no())
    }
    type SyncPersistentCachePiecesStream = Unsupported<SyncPersistentCachePiecesResponse>;
    async fn sync_persistent_cache_pieces(
        &self,
        _: Request<SyncPersistentCachePiecesRequest>,
    ) -> Result<Response<Self::SyncPersistentCachePiecesStream>, Status> {
        Err(no())
    }
    type SyncHostStream = Unsupported<pb::Host>;
    async fn sync_host(
        &self,
        _: Request<SyncHostRequest>,
    ) -> Result<Response<Self::SyncHostStream>, Status> {
        Err(no())
    }
}

async fn start_fake_seed(
    scheduler: SocketAddr,
    seed_host_id: &str,
    delay: Duration,
) -> (SocketAddr, Arc<Mutex<Vec<pb::Download>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let service = FakeSeed {
        scheduler,
        seed_host_id: seed_host_id.into(),
        delay,
        calls: calls.clone(),
    };
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(DfdaemonUploadServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (addr, calls)
}

#[tokio::test]
async fn seed_peer_is_triggered_once_and_becomes_the_parent() {
    let scheduler = TestScheduler::start(fast_config()).await;
    let mut client = scheduler.client().await;
    let (seed_addr, calls) =
        start_fake_seed(scheduler.addr, "seed-host", Duration::from_millis(400)).await;
    announce(
        &mut client,
        host("seed-host", "127.0.0.1", i32::from(seed_addr.port()), 1),
    )
    .await;
    announce(&mut client, host("h1", "127.0.0.2", 4000, 0)).await;
    announce(&mut client, host("h2", "127.0.0.3", 4000, 0)).await;

    let started = Instant::now();
    let mut first = PeerStream::register(&mut client, "h1", "t", "p1", download(URL, SIZE)).await;
    let mut second = PeerStream::register(&mut client, "h2", "t", "p2", download(URL, SIZE)).await;
    // Both wait for the seed (well past retryBackToSourceLimit × retryInterval). Both are
    // woken when the seed registers: whichever is decided first gets the seed, the other
    // gets that peer and the seed (the mesh gives every peer the seed on top of its normal
    // parents), or the seed alone if it came first.
    let first_parents = parents(&first.next().await);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let second_parents = parents(&second.next().await);
    let seed_only = vec!["seed-peer".to_string()];
    let decided = [
        (first_parents.clone(), second_parents.clone(), "p1"),
        (second_parents.clone(), first_parents.clone(), "p2"),
    ];
    assert!(
        decided.iter().any(|(a, b, a_id)| *a == seed_only
            && (*b == seed_only || *b == vec![a_id.to_string(), "seed-peer".to_string()])),
        "{first_parents:?} {second_parents:?}"
    );

    let recorded = calls.lock().unwrap().clone();
    assert_eq!(
        recorded.len(),
        1,
        "the seed must be triggered once per task"
    );
    assert!(recorded[0].need_back_to_source);
    assert_eq!(recorded[0].output_path, None);
    assert_eq!(recorded[0].url, URL);

    let first_parent = first_parents[0].clone();
    let second_parent = second_parents[0].clone();
    first.complete_from_parent(&first_parent, 4).await;
    second.complete_from_parent(&second_parent, 4).await;
    scheduler.shutdown().await;
}

#[tokio::test]
async fn unreachable_seed_sends_the_first_peer_to_the_origin() {
    let scheduler = TestScheduler::start(fast_config()).await;
    let mut client = scheduler.client().await;
    // Nothing listens there: bind and drop to get a free port.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    announce(
        &mut client,
        host("seed-host", "127.0.0.1", i32::from(dead_port), 1),
    )
    .await;
    announce(&mut client, host("h1", "127.0.0.2", 4000, 0)).await;
    announce(&mut client, host("h2", "127.0.0.3", 4000, 0)).await;

    let started = Instant::now();
    let mut first = PeerStream::register(&mut client, "h1", "t", "p1", download(URL, SIZE)).await;
    assert!(is_back_to_source(&first.next().await));
    // Far below seedPeerWaitTimeout (10 s): the failed trigger ends the wait.
    assert!(started.elapsed() < Duration::from_secs(5));
    first.back_to_source_started().await;
    let mut second = PeerStream::register(&mut client, "h2", "t", "p2", download(URL, SIZE)).await;
    assert_eq!(parents(&second.next().await), vec!["p1"]);
    scheduler.shutdown().await;
}

#[tokio::test]
async fn seed_wait_timeout_falls_back_to_the_origin() {
    let mut config = fast_config();
    config.scheduler.seed_peer_wait_timeout = Duration::from_millis(300);
    let scheduler = TestScheduler::start(config).await;
    let mut client = scheduler.client().await;
    // The seed accepts the trigger but registers far too late.
    let (seed_addr, calls) =
        start_fake_seed(scheduler.addr, "seed-host", Duration::from_secs(30)).await;
    announce(
        &mut client,
        host("seed-host", "127.0.0.1", i32::from(seed_addr.port()), 1),
    )
    .await;
    announce(&mut client, host("h1", "127.0.0.2", 4000, 0)).await;
    let started = Instant::now();
    let mut first = PeerStream::register(&mut client, "h1", "t", "p1", download(URL, SIZE)).await;
    assert!(is_back_to_source(&first.next().await));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert_eq!(calls.lock().unwrap().len(), 1);
    scheduler.shutdown().await;
}

#[tokio::test]
async fn seed_host_registering_itself_goes_to_the_origin() {
    let scheduler = TestScheduler::start(fast_config()).await;
    let mut client = scheduler.client().await;
    announce(&mut client, host("seed-host", "127.0.0.1", 4000, 1)).await;
    let mut seed =
        PeerStream::register(&mut client, "seed-host", "t", "s", download(URL, SIZE)).await;
    assert!(is_back_to_source(&seed.next().await));
    scheduler.shutdown().await;
}
