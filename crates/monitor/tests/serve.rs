//! The metrics and health server on loopback: each listener answers only its paths, metrics
//! come from the default registry, and the token stops the server.

use damselfly_monitor::{serve, Endpoints};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The status code and body of one HTTP/1.0 request.
async fn ask(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("{method} {path} HTTP/1.0\r\nHost: x\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

async fn start(
    endpoints: Endpoints,
) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(listener, endpoints, stop.clone()));
    (addr, stop, server)
}

#[tokio::test]
async fn each_listener_answers_its_own_paths() {
    let counter = prometheus::IntCounter::new("monitor_test_total", "a test counter").unwrap();
    prometheus::register(Box::new(counter.clone())).unwrap();
    counter.inc_by(7);

    let (metrics, stop_metrics, metrics_server) = start(Endpoints::Metrics).await;
    let (health, stop_health, health_server) = start(Endpoints::Health).await;
    let (both, stop_both, both_server) = start(Endpoints::MetricsAndHealth).await;

    let (status, body) = ask(metrics, "GET", "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("monitor_test_total 7"), "{body}");
    assert_eq!(ask(metrics, "GET", "/healthy").await.0, 404);
    assert_eq!(
        ask(health, "GET", "/healthy").await,
        (200, "OK".to_string())
    );
    assert_eq!(ask(health, "GET", "/metrics").await.0, 404);
    assert!(ask(both, "GET", "/metrics")
        .await
        .1
        .contains("monitor_test_total 7"));
    assert_eq!(ask(both, "GET", "/healthy").await.0, 200);
    assert_eq!(ask(both, "GET", "/nope").await.0, 404);
    assert_eq!(ask(both, "POST", "/metrics").await.0, 405);

    for (stop, server) in [
        (stop_metrics, metrics_server),
        (stop_health, health_server),
        (stop_both, both_server),
    ] {
        stop.cancel();
        server.await.unwrap();
    }
    assert!(
        TcpStream::connect(both).await.is_err(),
        "the listener is closed"
    );
}
