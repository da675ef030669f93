//! End-to-end: every trip to the origin says why. dfget prints the reason in its summary,
//! the proxy names it in a response header, the daemon counts it by reason, and the
//! scheduler keeps it per peer for the console.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// The daemon's proxy port (its default).
const PROXY_PORT: u16 = 4001;
const BACK_TO_SOURCE_TOTAL: &str = "damselfly_download_back_to_source_total";

fn origin_count(daemon: &DaemonInfo, reason: &str) -> f64 {
    daemon
        .metrics()
        .sum(BACK_TO_SOURCE_TOTAL, &[("reason", reason)])
}

fn scheduler_json(c: &Cluster, path: &str) -> Value {
    let api = c.scheduler.as_ref().expect("scheduler").http;
    let (status, body) = http_get(api, path).expect("scheduler API");
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {body}"))
}

/// The scheduler's origin reason code for the task's peer on `daemon`.
fn reason_at_scheduler(c: &Cluster, url: &str, daemon: &DaemonInfo) -> Option<String> {
    let tasks = scheduler_json(c, "/api/v1/tasks");
    let task = tasks.as_array()?.iter().find(|t| t["url"] == url)?;
    let peer = task["peers"]
        .as_array()?
        .iter()
        .find(|p| p["ip"] == daemon.ip.to_string().as_str())?;
    peer["origin_reason"]["code"].as_str().map(str::to_string)
}

/// GET `url` through the daemon's proxy, forced through the swarm; the status, the origin
/// reason header and the body.
fn through_proxy(daemon: &DaemonInfo, url: &str) -> (u16, Option<String>, Vec<u8>) {
    let proxy = format!("http://{}:{PROXY_PORT}", daemon.ip);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .proxy(reqwest::Proxy::http(&proxy).unwrap())
            .build()
            .unwrap();
        let response = client
            .get(url)
            .header("X-Dragonfly-Use-P2P", "true")
            .send()
            .await
            .expect("request through the proxy");
        let status = response.status().as_u16();
        let reason = response
            .headers()
            .get("x-damselfly-origin-reason")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response.bytes().await.expect("body").to_vec();
        (status, reason, body)
    })
}

/// No seed: the first download of a file in the cluster goes to the origin and says so; the
/// second host takes it from the first and has no reason to print. A file of one piece
/// through the proxy is fetched directly, and the header says that.
#[test]
fn first_in_cluster_and_small_files_are_explained() {
    let origin = Origin::start();
    let big = origin.add_random("reason/big.bin", 9 * MIB + 5);
    let small = origin.add_random("reason/small.bin", MIB);
    let mut c = Cluster::new("origin-reason");
    c.start_scheduler();
    let first = c.start_daemon(DaemonOpts::default());
    let second = c.start_daemon(DaemonOpts::default());

    let out = c.path("first.bin");
    let result = c.dfget(&first.socket, &big.url, &out, &[]);
    assert_download_ok(&result, &out, &big);
    let summary = format!("{}{}", result.stdout, result.stderr);
    assert!(
        summary.contains("origin reason: first-in-cluster: no other peer holds the task yet"),
        "{summary}"
    );
    assert_eq!(origin_count(&first, "first-in-cluster"), 1.0);
    assert_eq!(
        reason_at_scheduler(&c, &big.url, &first).as_deref(),
        Some("first-in-cluster")
    );

    let served = origin.served();
    let out = c.path("second.bin");
    let result = c.dfget(&second.socket, &big.url, &out, &[]);
    assert_download_ok(&result, &out, &big);
    assert_eq!(
        origin.served(),
        served,
        "the second host went to the origin"
    );
    let summary = format!("{}{}", result.stdout, result.stderr);
    assert!(!summary.contains("origin reason"), "{summary}");

    let (status, reason, body) = through_proxy(&second, &small.url);
    assert_eq!(status, 200);
    assert_eq!(sha256_hex(&body), small.sha256);
    let reason = reason.expect("no X-Damselfly-Origin-Reason header");
    assert!(reason.starts_with("small-file: "), "{reason}");
    assert_eq!(origin_count(&second, "small-file"), 1.0);
    c.assert_no_panics();
}

/// A seed host the scheduler knows but that cannot be reached: the trigger fails and the
/// peer goes to the origin itself, saying the seed could not fetch the task.
#[test]
fn a_seed_that_cannot_fetch_is_named_as_the_reason() {
    let origin = Origin::start();
    let file = origin.add_random("reason/seedless.bin", 6 * MIB);
    let mut c = Cluster::new("origin-reason-seed");
    c.start_scheduler();
    let seed = c.start_daemon(DaemonOpts {
        seed: true,
        ..Default::default()
    });
    let peer = c.start_daemon(DaemonOpts::default());
    let hosts = wait_until(Duration::from_secs(30), || {
        scheduler_json(&c, "/api/v1/hosts").as_array().map(Vec::len) == Some(2)
    });
    assert!(hosts, "the scheduler never listed both hosts");
    // Killed, not stopped: it does not leave the scheduler, which still picks it.
    c.kill(seed.pid);

    let out = c.path("out.bin");
    let result = c.dfget(&peer.socket, &file.url, &out, &[]);
    assert_download_ok(&result, &out, &file);
    let summary = format!("{}{}", result.stdout, result.stderr);
    assert!(
        summary.contains("origin reason: no-seed-peer: "),
        "{summary}"
    );
    assert_eq!(origin_count(&peer, "no-seed-peer"), 1.0);
    assert_eq!(
        reason_at_scheduler(&c, &file.url, &peer).as_deref(),
        Some("no-seed-peer")
    );
    c.assert_no_panics();
}

/// A daemon whose scheduler does not answer fetches from the origin and says why.
#[test]
fn no_scheduler_is_named_as_the_reason() {
    let origin = Origin::start();
    let file = origin.add_random("reason/alone.bin", 6 * MIB);
    let mut c = Cluster::new("origin-reason-alone");
    let closed = std::net::SocketAddr::new([127, 0, 0, 1].into(), free_port([127, 0, 0, 1].into()));
    let daemon = c.start_daemon(DaemonOpts {
        scheduler: Some(closed.to_string()),
        ..Default::default()
    });
    let out = c.path("out.bin");
    let result = c.dfget(&daemon.socket, &file.url, &out, &[]);
    assert_download_ok(&result, &out, &file);
    let summary = format!("{}{}", result.stdout, result.stderr);
    assert!(
        summary.contains("origin reason: no-scheduler: no scheduler answered ("),
        "{summary}"
    );
    assert_eq!(origin_count(&daemon, "no-scheduler"), 1.0);
    c.assert_no_panics();
}
