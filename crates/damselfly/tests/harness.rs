//! Checks of the test support itself (the origin and the metrics parser), so that an end-to-end
//! failure points at the programs, not at the harness.

mod common;

use common::*;

fn client_get(
    url: &str,
    method: reqwest::Method,
    range: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut req = reqwest::Client::new().request(method, url);
        if let Some(r) = range {
            req = req.header("range", r);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.expect("body").to_vec();
        (status, headers, body)
    })
}

#[test]
fn origin_serves_head_ranges_404_and_counts() {
    let origin = Origin::start();
    let file = origin.add_random("a/b.bin", 300_000);

    let (status, headers, body) = client_get(&file.url, reqwest::Method::HEAD, None);
    assert_eq!(status, 200);
    assert_eq!(headers["content-length"], "300000");
    assert_eq!(headers["accept-ranges"], "bytes");
    assert!(body.is_empty());
    assert_eq!(origin.served(), 0);

    let (status, _, body) = client_get(&file.url, reqwest::Method::GET, None);
    assert_eq!(status, 200);
    assert_eq!(sha256_hex(&body), file.sha256);
    assert_eq!(origin.served(), 300_000);

    let (status, headers, body) =
        client_get(&file.url, reqwest::Method::GET, Some("bytes=100-199"));
    assert_eq!(status, 206);
    assert_eq!(headers["content-range"], "bytes 100-199/300000");
    assert_eq!(body, &file.data[100..200]);

    let (status, headers, body) =
        client_get(&file.url, reqwest::Method::GET, Some("bytes=299990-"));
    assert_eq!(status, 206);
    assert_eq!(headers["content-range"], "bytes 299990-299999/300000");
    assert_eq!(body, &file.data[299_990..]);

    let (status, _, body) = client_get(&file.url, reqwest::Method::GET, Some("bytes=-5"));
    assert_eq!(status, 206);
    assert_eq!(body, &file.data[299_995..]);

    let (status, _, _) = client_get(&file.url, reqwest::Method::GET, Some("bytes=300000-"));
    assert_eq!(status, 416);
    assert_eq!(origin.served(), 300_000 + 100 + 10 + 5);

    let (status, _, _) = client_get(&origin.url("nope"), reqwest::Method::GET, None);
    assert_eq!(status, 404);
    let (status, _, _) = client_get(&origin.url("status/503"), reqwest::Method::GET, None);
    assert_eq!(status, 503);

    origin.set_tamper(true);
    let (_, _, body) = client_get(&file.url, reqwest::Method::GET, None);
    assert_eq!(body.len(), 300_000);
    assert_ne!(sha256_hex(&body), file.sha256);
    origin.set_tamper(false);

    origin.set_rate(1_000_000);
    let start = std::time::Instant::now();
    let (_, _, body) = client_get(&file.url, reqwest::Method::GET, None);
    assert_eq!(sha256_hex(&body), file.sha256);
    assert!(start.elapsed() >= std::time::Duration::from_millis(200));
    assert!(origin.requests().iter().any(|r| r.method == "HEAD"));
}

#[test]
fn metrics_parser_sums_by_label() {
    let text = r#"# HELP damselfly_download_traffic_bytes_total x
# TYPE damselfly_download_traffic_bytes_total counter
damselfly_download_traffic_bytes_total{parent_type="",type="back_to_source"} 100
damselfly_download_traffic_bytes_total{parent_type="normal",type="remote_peer"} 250
damselfly_download_traffic_bytes_total{parent_type="seed",type="remote_peer"} 50
damselfly_download_traffic_bytes_total{parent_type="",type="local_peer"} 7
damselfly_upload_traffic_bytes_total 3.5e3
weird{a="x\"y,z",b="2"} 1
"#;
    let m = Metrics {
        samples: parse_metrics(text),
        raw: text.into(),
    };
    let t = Traffic::from(&m);
    assert_eq!(t.back_to_source, 100.0);
    assert_eq!(t.remote_normal, 250.0);
    assert_eq!(t.remote_seed, 50.0);
    assert_eq!(t.local, 7.0);
    assert_eq!(t.network(), 400.0);
    assert_eq!(m.sum("damselfly_upload_traffic_bytes_total", &[]), 3500.0);
    assert_eq!(m.sum("weird", &[("a", "x\"y,z"), ("b", "2")]), 1.0);
    assert_eq!(m.sum("absent", &[]), 0.0);
}
