//! Bad input gets clear statuses and the server keeps serving; expiry; health; metrics.

mod common;

use std::time::Duration;

use common::*;
use dragonfly_api::scheduler::v2::announce_peer_request::Request as PeerRequest;
use dragonfly_api::scheduler::v2::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

const URL: &str = "http://origin.example/file.bin";
const SIZE: u64 = 2 * PIECE_LENGTH;

#[tokio::test]
async fn garbage_and_bad_order_get_clear_errors() {
    let scheduler = TestScheduler::start(fast_config()).await;
    let mut client = scheduler.client().await;

    // Register for a host that never announced.
    let mut s = PeerStream::register(&mut client, "ghost", "t", "p0", download(URL, SIZE)).await;
    let status = s.expect_error().await;
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status.message().contains("AnnounceHost"),
        "{}",
        status.message()
    );

    announce(&mut client, host("h1", "127.0.0.1", 4000, 0)).await;

    // First message is not a register.
    let mut s = PeerStream::open(&mut client, "h1", "t", "p1").await;
    s.started().await;
    let status = s.expect_error().await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("RegisterPeerRequest"));

    // A message without any request.
    let mut s = PeerStream::open(&mut client, "h1", "t", "p2").await;
    s.send_raw(AnnouncePeerRequest::default()).await;
    assert_eq!(s.expect_error().await.code(), Code::InvalidArgument);

    // Register with empty ids / without download.
    let mut s = PeerStream::open(&mut client, "", "", "").await;
    s.send(PeerRequest::RegisterPeerRequest(RegisterPeerRequest {
        download: None,
    }))
    .await;
    assert_eq!(s.expect_error().await.code(), Code::InvalidArgument);
    let mut s = PeerStream::open(&mut client, "h1", "t", "p3").await;
    s.send(PeerRequest::RegisterPeerRequest(RegisterPeerRequest {
        download: None,
    }))
    .await;
    assert_eq!(s.expect_error().await.code(), Code::InvalidArgument);

    // A second register, and a message about another peer, on a registered stream.
    let mut s = PeerStream::register(&mut client, "h1", "t", "p4", download(URL, SIZE)).await;
    assert!(is_back_to_source(&s.next().await));
    s.send(PeerRequest::RegisterPeerRequest(RegisterPeerRequest {
        download: Some(download(URL, SIZE)),
    }))
    .await;
    assert_eq!(s.expect_error().await.code(), Code::InvalidArgument);
    let mut s = PeerStream::register(&mut client, "h1", "t2", "p5", download(URL, SIZE)).await;
    assert!(is_back_to_source(&s.next().await));
    s.send_raw(AnnouncePeerRequest {
        host_id: "h1".into(),
        task_id: "t2".into(),
        peer_id: "someone-else".into(),
        request: Some(PeerRequest::DownloadPeerStartedRequest(
            DownloadPeerStartedRequest {},
        )),
    })
    .await;
    assert_eq!(s.expect_error().await.code(), Code::InvalidArgument);

    // Piece report without a piece.
    let mut s = PeerStream::register(&mut client, "h1", "t3", "p6", download(URL, SIZE)).await;
    assert!(is_back_to_source(&s.next().await));
    s.send(PeerRequest::DownloadPieceFinishedRequest(
        DownloadPieceFinishedRequest { piece: None },
    ))
    .await;
    assert_eq!(s.expect_error().await.code(), Code::InvalidArgument);

    // Unary garbage.
    let status = client
        .announce_host(AnnounceHostRequest {
            host: None,
            interval: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .announce_host(AnnounceHostRequest {
            host: Some(host("bad", "", 4000, 0)),
            interval: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .stat_task(StatTaskRequest {
            host_id: "h1".into(),
            task_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .stat_peer(StatPeerRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .stat_cache_task(StatCacheTaskRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    let status = client
        .preheat_image(PreheatImageRequest::default())
        .await
        .unwrap_err();
    // Preheat is implemented: an empty request is refused for what it lacks.
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("no image URL"), "{status:?}");

    // The server still serves a whole download.
    announce(&mut client, host("h2", "127.0.0.2", 4000, 0)).await;
    let s = PeerStream::register(&mut client, "h2", "fresh", "ok", download(URL, SIZE)).await;
    let mut s = s;
    assert!(is_back_to_source(&s.next().await));
    s.complete_from_source(2).await;
    scheduler.shutdown().await;
}

#[tokio::test]
async fn deletes_and_list_hosts() {
    let scheduler = TestScheduler::start(fast_config()).await;
    let mut client = scheduler.client().await;
    announce(&mut client, host("h1", "127.0.0.1", 4000, 0)).await;
    announce(&mut client, host("s1", "127.0.0.2", 4000, 1)).await;
    let hosts = client
        .list_hosts(ListHostsRequest { r#type: None })
        .await
        .unwrap()
        .into_inner()
        .hosts;
    assert_eq!(hosts.len(), 2);
    let seeds = client
        .list_hosts(ListHostsRequest { r#type: Some(1) })
        .await
        .unwrap()
        .into_inner()
        .hosts;
    assert_eq!(seeds.len(), 1);
    assert_eq!(seeds[0].id, "s1");

    let mut p = PeerStream::register(&mut client, "h1", "t", "p1", download(URL, SIZE)).await;
    assert!(is_back_to_source(&p.next().await));
    p.complete_from_source(2).await;
    client
        .delete_task(DeleteTaskRequest {
            host_id: "h1".into(),
            task_id: "t".into(),
        })
        .await
        .unwrap();
    let status = client
        .stat_peer(StatPeerRequest {
            host_id: "h1".into(),
            task_id: "t".into(),
            peer_id: "p1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    client
        .delete_host(DeleteHostRequest {
            host_id: "h1".into(),
        })
        .await
        .unwrap();
    let status = client
        .delete_host(DeleteHostRequest {
            host_id: "h1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    scheduler.shutdown().await;
}

#[tokio::test]
async fn hosts_peers_and_tasks_expire() {
    let mut config = fast_config();
    config.scheduler.gc.host_ttl = Duration::from_millis(400);
    config.scheduler.gc.peer_ttl = Duration::from_millis(200);
    config.scheduler.gc.host_gc_interval = Duration::from_millis(50);
    config.scheduler.gc.peer_gc_interval = Duration::from_millis(50);
    config.scheduler.gc.task_gc_interval = Duration::from_millis(50);
    let scheduler = TestScheduler::start(config).await;
    let mut client = scheduler.client().await;
    announce(&mut client, host("h1", "127.0.0.1", 4000, 0)).await;
    announce(&mut client, host("h2", "127.0.0.2", 4000, 0)).await;
    let mut p = PeerStream::register(&mut client, "h1", "t", "p1", download(URL, SIZE)).await;
    assert!(is_back_to_source(&p.next().await));
    p.complete_from_source(2).await;

    // Keep h1 alive by announcing; its peer still expires after peerTTL, then the task.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        announce(&mut client, host("h1", "127.0.0.1", 4000, 0)).await;
    }
    let status = client
        .stat_peer(StatPeerRequest {
            host_id: "h1".into(),
            task_id: "t".into(),
            peer_id: "p1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .stat_task(StatTaskRequest {
            host_id: "h1".into(),
            task_id: "t".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    // h2 never re-announced: gone after hostTTL; h1 stays.
    let hosts = client
        .list_hosts(ListHostsRequest { r#type: None })
        .await
        .unwrap()
        .into_inner()
        .hosts;
    let ids: Vec<&str> = hosts.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids, vec!["h1"]);
    scheduler.shutdown().await;
}

#[tokio::test]
async fn health_is_serving() {
    let scheduler = TestScheduler::start(fast_config()).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", scheduler.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let response = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        response.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let response = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "scheduler.v2.Scheduler".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        response.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    scheduler.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let scheduler = TestScheduler::start(fast_config()).await;
    let mut client = scheduler.client().await;
    announce(&mut client, host("h1", "127.0.0.1", 4000, 0)).await;
    let mut p = PeerStream::register(&mut client, "h1", "t", "p1", download(URL, SIZE)).await;
    assert!(is_back_to_source(&p.next().await));
    // The stream is open and idle; shutdown must not hang on it.
    scheduler.shutdown().await;
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn metrics_server_exposes_scheduler_series() {
    let scheduler = TestScheduler::start(fast_config()).await;
    let mut client = scheduler.client().await;
    announce(&mut client, host("h1", "127.0.0.1", 4000, 0)).await;
    let mut p = PeerStream::register(&mut client, "h1", "t", "p1", download(URL, SIZE)).await;
    assert!(is_back_to_source(&p.next().await));
    p.complete_from_source(2).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(damselfly_scheduler::serve_metrics(listener, async {
        let _ = stopped.await;
    }));
    let text = http_get(addr, "/metrics").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for series in [
        "damselfly_scheduler_announce_host_total",
        "damselfly_scheduler_announce_peer_total",
        "damselfly_scheduler_register_peer_total",
        "damselfly_scheduler_schedule_total{decision=\"back_to_source\"}",
        "damselfly_scheduler_traffic_bytes_total{type=\"back_to_source\"}",
        "damselfly_scheduler_hosts",
        "damselfly_scheduler_peers",
        "damselfly_scheduler_tasks",
    ] {
        assert!(text.contains(series), "missing {series} in\n{text}");
    }
    assert!(http_get(addr, "/healthy").await.starts_with("HTTP/1.1 200"));
    assert!(http_get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
    let _ = stop.send(());
    server.await.unwrap();
    scheduler.shutdown().await;
}
