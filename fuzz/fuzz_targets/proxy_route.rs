//! A request the proxy receives, as text: `METHOD URI` on the first line, then `name: value`
//! header lines; a line `@authority` makes it the inner request of a terminated CONNECT
//! tunnel. Three routers (default rules, mirror with registry map, rewriting rules) route it,
//! and a P2P route is turned into its download, as the proxy does for every GET.
#![no_main]
use damselfly_core::id::blob_digest_string;
use damselfly_daemon::proxy::config::ProxyConfig;
use damselfly_daemon::proxy::headers::download;
use damselfly_daemon::proxy::route::{Route, Router};
use damselfly_daemon::proxy::BlobSettings;
use http::request::Parts;
use http::Method;
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

const CONFIGS: &[&str] = &[
    "",
    "registryMirror: {addr: 'http://127.0.0.1:5000', registries: [{regx: 'local\\.test', schema: http, host: '127.0.0.1:6000'}]}",
    "rules: [{regex: 'files/.*', useTLS: true}, {regex: 'moved/.*', redirect: '127.0.0.1:9'}, {regex: 'plain/.*', direct: true}, {regex: 'blobs/sha256.*', filteredQueryParams: [sig]}]",
];

static ROUTERS: LazyLock<Vec<Router>> = LazyLock::new(|| {
    CONFIGS
        .iter()
        .map(|yaml| {
            let config: ProxyConfig = serde_yaml::from_str(yaml).expect("fixed config parses");
            Router::new(&config).expect("fixed config compiles")
        })
        .collect()
});

const SETTINGS: BlobSettings = BlobSettings {
    enable_task_id_based_blob_digest: true,
    disable_back_to_source: false,
    certificate_chain: Vec::new(),
    prefetch: false,
};

/// The request the text describes, and its tunnel authority; None if http would not build it
/// (hyper refuses such requests before the proxy sees them).
fn request(text: &str) -> Option<(Parts, Option<&str>)> {
    let mut lines = text.lines();
    let (method, uri) = lines.next()?.split_once(' ')?;
    let mut builder = http::Request::builder()
        .method(Method::from_bytes(method.as_bytes()).ok()?)
        .uri(uri);
    let mut authority = None;
    for line in lines {
        if let Some(rest) = line.strip_prefix('@') {
            authority = Some(rest);
        } else if let Some((name, value)) = line.split_once(':') {
            builder = builder.header(name, value.trim_start());
        }
    }
    Some((builder.body(()).ok()?.into_parts().0, authority))
}

fn check(router: &Router, parts: &Parts, authority: Option<&str>) {
    let Ok(route) = router.route(parts, authority) else {
        return;
    };
    let url = match &route {
        Route::P2p { url, .. } | Route::Pass { url } => url,
    };
    assert!(matches!(url.scheme(), "http" | "https"), "routed to {url}");
    assert!(url.host().is_some(), "routed to {url} without a host");
    let Route::P2p {
        url,
        filtered_query_params,
    } = route
    else {
        return;
    };
    assert_eq!(parts.method, Method::GET, "only GETs go through the swarm");
    let digest = blob_digest_string(url.as_str());
    if let Some(digest) = &digest {
        assert!(
            url.as_str().contains(digest.as_str()),
            "{digest} not in {url}"
        );
    }
    if let Ok(download) = download(parts, &url, digest, filtered_query_params, &SETTINGS) {
        assert_eq!(download.url, url.as_str());
        for name in ["range", "x-dragonfly-tag", "x-dragonfly-registry"] {
            assert!(
                !download.request_header.contains_key(name),
                "{name} reached the origin"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some((parts, authority)) = request(text) else {
        return;
    };
    for router in ROUTERS.iter() {
        check(router, &parts, authority);
    }
});
