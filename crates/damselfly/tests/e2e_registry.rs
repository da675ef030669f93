//! End-to-end: container images through dfdaemon's registry mirror and HTTP proxy, with real
//! components: Debian's `docker-registry` (distribution) as the origin, images the test writes
//! as OCI layouts and pushes with `skopeo`, pulls with `skopeo` (registries.conf mirror and
//! `HTTP_PROXY`) and containerd's `ctr`. A front in the test process sits between the daemons
//! and the registry to count layer bytes, tamper with blobs or demand a bearer token.
//! Missing tools make a test skip with a `SKIP:` line, or fail under CI (`registry::skip`).

mod common;
mod registry;

use common::*;
use registry::*;
use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Proxy port of every daemon in these tests (Dragonfly's default; each daemon has its own IP).
const PROXY_PORT: u16 = 4001;
/// Host name the HTTP_PROXY test pulls from; only the proxy knows where it is (Go clients skip
/// the proxy for loopback addresses, so the test cannot name 127.0.0.1).
const PROXIED_REGISTRY: &str = "registry.damselfly.test";
/// Names the upstream of a mirror request.
const REGISTRY_HEADER_NAME: &str = "x-dragonfly-registry";

struct Env {
    cluster: Cluster,
    registry: Registry,
    front: Front,
    image: Image,
    skopeo: PathBuf,
}

/// Registry + front + pushed image + scheduler; None (test skipped) without the tools.
fn setup(name: &str, require_token: bool, layer_sizes: &[usize]) -> Option<Env> {
    setup_with(name, require_token, layer_sizes, None)
}

/// [`setup`] with a scheduler config file holding `scheduler_yaml`.
fn setup_with(
    name: &str,
    require_token: bool,
    layer_sizes: &[usize],
    scheduler_yaml: Option<&str>,
) -> Option<Env> {
    let registry_bin = tool("docker-registry")?;
    let skopeo_bin = tool("skopeo")?;
    let mut cluster = Cluster::new(name);
    let registry = Registry::start(&registry_bin, &cluster.root);
    let front = Front::start(registry.addr, require_token);
    let image = build_image(&cluster.path("layout"), layer_sizes);
    push(&skopeo_bin, &cluster.root, &image, registry.addr, REPO);
    match scheduler_yaml {
        Some(yaml) => {
            let config = cluster.path("scheduler.yaml");
            fs::write(&config, yaml).unwrap();
            cluster.start_scheduler_with(&["--config".into(), config.display().to_string()]);
        }
        None => {
            cluster.start_scheduler();
        }
    }
    Some(Env {
        cluster,
        registry,
        front,
        image,
        skopeo: skopeo_bin,
    })
}

impl Env {
    /// A daemon whose mirror defaults to the front and whose rules map PROXIED_REGISTRY to it.
    fn daemon(&mut self) -> DaemonInfo {
        let front = self.front.url();
        self.daemon_for(&front)
    }

    /// [`Env::daemon`] logging at `level`.
    fn daemon_with_log_level(&mut self, level: &str) -> DaemonInfo {
        let front = self.front.url();
        self.daemon_opts(&front, level)
    }

    /// A daemon whose mirror defaults to `registry`.
    fn daemon_for(&mut self, registry: &str) -> DaemonInfo {
        let level = DaemonOpts::default().log_level;
        self.daemon_opts(registry, &level)
    }

    fn daemon_opts(&mut self, registry: &str, log_level: &str) -> DaemonInfo {
        let config = self
            .cluster
            .path(&format!("dfdaemon-{}.yaml", self.cluster.daemons.len()));
        let front = self.front.addr;
        let ca = self
            .cluster
            .path(&format!("ca-{}", self.cluster.daemons.len()));
        fs::write(
            &config,
            format!(
                r#"proxy:
  server:
    caCert: {ca}/ca.crt
    caKey: {ca}/ca.key
  hijackHTTPS:
    hosts: [{{regx: '^{host}:443$'}}]
  rules:
    - regex: '^https?://{host}(:\d+)?/.*blobs/sha256.*'
      redirect: 'http://{front}'
    - regex: '^https?://{host}(:\d+)?/'
      redirect: 'http://{front}'
      direct: true
    - regex: 'blobs/sha256.*'
"#,
                ca = ca.display(),
                host = PROXIED_REGISTRY.replace('.', "\\."),
            ),
        )
        .unwrap();
        self.cluster.start_daemon(DaemonOpts {
            extra: vec![
                "--registry".into(),
                registry.to_string(),
                "--config".into(),
                config.display().to_string(),
            ],
            log_level: log_level.to_string(),
            ..Default::default()
        })
    }

    fn image_ref(&self) -> String {
        format!("docker://{}/{REPO}:{TAG}", self.front.addr)
    }

    /// skopeo pull through `daemon`'s mirror into `out`.
    fn pull_via_mirror(&self, daemon: &DaemonInfo, out: &str) -> PathBuf {
        let conf = self.cluster.path(&format!("registries-{out}.conf"));
        // The first pull's registries.conf comes from dfinit, the others are written here.
        if daemon.name == self.cluster.daemons[0].name {
            self.dfinit(
                daemon,
                &[
                    "--runtime",
                    "crio",
                    "--registries-conf",
                    conf.to_str().unwrap(),
                ],
            );
        } else {
            registries_conf(&conf, &self.front.addr.to_string(), proxy_addr(daemon));
        }
        let out = self.cluster.path(out);
        let dst = format!("dir:{}", out.display());
        let result = skopeo(
            &self.skopeo,
            &self.cluster.root,
            &[
                "--registries-conf",
                conf.to_str().unwrap(),
                "copy",
                "--src-tls-verify=false",
                &self.image_ref(),
                &dst,
            ],
            &[],
        );
        assert!(
            result.status.success(),
            "skopeo pull through the mirror failed"
        );
        out
    }

    /// Runs dfinit for the front as registry and `daemon`'s proxy as mirror.
    fn dfinit(&self, daemon: &DaemonInfo, extra: &[&str]) {
        let registry = format!("{0}=http://{0}", self.front.addr);
        let mirror = format!("http://{}", proxy_addr(daemon));
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_dfinit"))
            .args(["--registry", &registry, "--mirror", &mirror])
            .args(extra)
            .output()
            .expect("run dfinit");
        eprintln!(
            "dfinit: {}\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "dfinit failed");
    }

    /// Layer GETs the registry answered so far (config and manifests not counted).
    fn layer_gets(&self) -> usize {
        let gets = self.front.state.blob_gets.lock().unwrap();
        gets.iter()
            .filter(|(path, _)| {
                self.image
                    .layers
                    .iter()
                    .any(|(d, _)| path.contains(d.as_str()))
            })
            .count()
    }
}

fn proxy_addr(daemon: &DaemonInfo) -> SocketAddr {
    SocketAddr::new(daemon.ip.into(), PROXY_PORT)
}

fn proxy_url(daemon: &DaemonInfo, path: &str) -> String {
    format!("http://{}{path}", proxy_addr(daemon))
}

fn blob_path(digest: &str) -> String {
    format!("/v2/{REPO}/blobs/{digest}")
}

fn proxy_requests(daemon: &DaemonInfo, kind: &str) -> f64 {
    daemon
        .metrics()
        .sum("damselfly_proxy_request_total", &[("kind", kind)])
}

/// Two daemons and a scheduler: the first pull takes the layers from the registry once, the
/// second host's pull takes none of them from it (they come from the first host), and a pull
/// through `HTTP_PROXY` works as well.
#[test]
fn skopeo_pulls_through_the_mirror_and_the_second_host_uses_the_swarm() {
    let Some(mut env) = setup("mirror", false, &[5 * MIB, 6 * MIB, 7 * MIB]) else {
        return;
    };
    let a = env.daemon();
    let b = env.daemon();

    let out_a = env.pull_via_mirror(&a, "pull-a");
    assert_pulled(&out_a, &env.image);
    let after_a = env.layer_gets();
    assert!(
        after_a > 0,
        "the first pull must take the layers from the registry"
    );
    let bytes_after_a = env.front.blob_bytes();
    assert!(
        bytes_after_a >= env.image.layer_bytes(),
        "first pull: {bytes_after_a} layer bytes from the registry"
    );
    assert!(
        bytes_after_a < 2 * env.image.layer_bytes(),
        "the registry served the layers more than once: {bytes_after_a}"
    );

    let out_b = env.pull_via_mirror(&b, "pull-b");
    assert_pulled(&out_b, &env.image);
    assert_eq!(
        env.layer_gets(),
        after_a,
        "the second host's pull took layer bytes from the registry"
    );
    let from_peers = b.metrics().sum(
        "damselfly_download_traffic_bytes_total",
        &[("type", "remote_peer")],
    );
    assert!(
        from_peers >= env.image.layer_bytes() as f64,
        "host b got only {from_peers} bytes from peers"
    );
    assert!(proxy_requests(&b, "p2p") >= 3.0);

    // The same image through HTTP_PROXY (absolute-form requests, CONNECT attempts first).
    let out_p = env.cluster.path("pull-proxy");
    let proxy = format!("http://{}", proxy_addr(&b));
    let src = format!(
        "docker://{PROXIED_REGISTRY}:{}/{REPO}:{TAG}",
        env.front.addr.port()
    );
    let dst = format!("dir:{}", out_p.display());
    let result = skopeo(
        &env.skopeo,
        &env.cluster.root,
        &["copy", "--src-tls-verify=false", &src, &dst],
        &[("HTTP_PROXY", proxy.clone()), ("HTTPS_PROXY", proxy)],
    );
    assert!(
        result.status.success(),
        "skopeo pull through HTTP_PROXY failed"
    );
    assert_pulled(&out_p, &env.image);
    assert_eq!(
        env.layer_gets(),
        after_a,
        "the proxied pull hit the registry for layers"
    );
    env.cluster.assert_no_panics();
    drop(env.registry);
}

/// A registry that demands a bearer token: an anonymous blob GET gets the registry's 401
/// challenge unchanged, and skopeo's authenticated pull through the mirror works, the
/// client's token reaching the registry on every layer request.
#[test]
fn private_registry_with_a_bearer_token() {
    let Some(mut env) = setup("private", true, &[5 * MIB, 5 * MIB]) else {
        return;
    };
    let a = env.daemon();
    let layer = env.image.layers[0].0.clone();
    let anonymous = request("GET", &proxy_url(&a, &blob_path(&layer)), &[]);
    assert_eq!(
        anonymous.status, 401,
        "an anonymous pull must be challenged"
    );
    let challenge = anonymous.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer realm="),
        "challenge: {challenge:?}"
    );

    let before = env.front.state.seen.lock().unwrap().len();
    let out = env.pull_via_mirror(&a, "pull-private");
    assert_pulled(&out, &env.image);
    let seen = env.front.state.seen.lock().unwrap().clone();
    let layer_requests: Vec<_> = seen[before..]
        .iter()
        .filter(|(m, p, _)| {
            m == "GET" && env.image.layers.iter().any(|(d, _)| p.contains(d.as_str()))
        })
        .collect();
    assert!(!layer_requests.is_empty());
    assert!(
        layer_requests
            .iter()
            .all(|(_, _, auth)| auth.as_deref() == Some(&format!("Bearer {TOKEN}"))),
        "layer requests without the client's token: {layer_requests:?}"
    );
    env.cluster.assert_no_panics();
}

/// Registry API details through the mirror: manifest passthrough, HEAD, Range, a whole blob
/// served from the task, a 404 blob, malformed requests (4xx, daemon alive), and a tampered
/// blob (an error to the client, nothing cached).
#[test]
fn registry_api_through_the_mirror() {
    let Some(mut env) = setup("api", false, &[5 * MIB, 6 * MIB, 5 * MIB]) else {
        return;
    };
    let a = env.daemon();
    let oci_manifest = "application/vnd.oci.image.manifest.v1+json";

    // Manifest by tag: passed through, headers and body intact.
    let manifest = request(
        "GET",
        &proxy_url(&a, &format!("/v2/{REPO}/manifests/{TAG}")),
        &[("accept", oci_manifest)],
    );
    assert_eq!(manifest.status, 200);
    assert_eq!(manifest.bytes(), env.image.manifest.as_slice());
    assert_eq!(
        manifest.header("docker-content-digest").as_deref(),
        Some(env.image.manifest_digest.as_str())
    );
    assert_eq!(
        manifest.header("content-type").as_deref(),
        Some(oci_manifest)
    );

    // HEAD of a blob: passed through, length and digest, no body.
    let (digest0, data0) = env.image.layers[0].clone();
    let head = request("HEAD", &proxy_url(&a, &blob_path(&digest0)), &[]);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some(data0.len().to_string()));
    assert_eq!(
        head.header("docker-content-digest").as_deref(),
        Some(digest0.as_str())
    );
    assert!(head.bytes().is_empty());

    // Range: 206 from the task's pieces.
    let (digest1, data1) = env.image.layers[1].clone();
    let ranged = request(
        "GET",
        &proxy_url(&a, &blob_path(&digest1)),
        &[("range", "bytes=1000-2999")],
    );
    assert_eq!(ranged.status, 206);
    assert_eq!(
        ranged.header("content-range"),
        Some(format!("bytes 1000-2999/{}", data1.len()))
    );
    assert_eq!(ranged.bytes(), &data1[1000..3000]);
    assert_eq!(
        ranged.header("x-dragonfly-task-id").as_deref(),
        Some(env.image.layer_hex(1))
    );

    // The whole blob (joining the download its range started), then again from the cache.
    for cached in [false, true] {
        let whole = request("GET", &proxy_url(&a, &blob_path(&digest1)), &[]);
        assert_eq!(whole.status, 200);
        let finished = whole.header("x-dragonfly-task-download-finished");
        assert!(
            !cached || finished.as_deref() == Some("true"),
            "{finished:?}"
        );
        assert_eq!(sha256_hex(whole.bytes()), sha256_hex(&data1));
        assert_eq!(
            whole.header("docker-content-digest").as_deref(),
            Some(digest1.as_str())
        );
    }
    let suffix = request(
        "GET",
        &proxy_url(&a, &blob_path(&digest1)),
        &[("range", "bytes=-10")],
    );
    assert_eq!(suffix.bytes(), &data1[data1.len() - 10..]);
    let beyond = request(
        "GET",
        &proxy_url(&a, &blob_path(&digest1)),
        &[("range", &format!("bytes={}-", data1.len()))],
    );
    assert_eq!(beyond.status, 416);

    // A blob the registry does not have: its own 404.
    let missing = format!("sha256:{}", sha256_hex(b"no such blob"));
    let not_found = request("GET", &proxy_url(&a, &blob_path(&missing)), &[]);
    assert_eq!(not_found.status, 404);
    assert!(String::from_utf8_lossy(not_found.bytes()).contains("BLOB_UNKNOWN"));

    // Malformed requests: clear 4xx, and the daemon stays up.
    let bad_digest = request("GET", &proxy_url(&a, &blob_path("sha256:zz")), &[]);
    assert_eq!(bad_digest.status, 400);
    let proxy = proxy_addr(&a);
    send_garbage(
        proxy,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage",
        Duration::from_secs(1),
    );
    send_garbage(proxy, b"NOT HTTP AT ALL\r\n\r\n", Duration::from_secs(1));
    send_garbage(
        proxy,
        b"CONNECT nohostport HTTP/1.1\r\n\r\n",
        Duration::from_secs(1),
    );
    assert!(a.is_healthy(), "the daemon died on malformed proxy input");

    // A tampered blob: the client sees an error, and nothing bad is cached.
    let (digest2, data2) = env.image.layers[2].clone();
    env.front.set_tamper(true);
    let tampered = request("GET", &proxy_url(&a, &blob_path(&digest2)), &[]);
    assert!(
        tampered.status != 200 || tampered.body.is_err(),
        "a tampered blob was served as complete"
    );
    env.front.set_tamper(false);
    let good = request("GET", &proxy_url(&a, &blob_path(&digest2)), &[]);
    assert_eq!(good.status, 200);
    assert_eq!(sha256_hex(good.bytes()), sha256_hex(&data2));

    for kind in [
        "p2p",
        "passthrough",
        "fallback",
        "bad_request",
        "p2p_failed",
    ] {
        assert!(
            proxy_requests(&a, kind) >= 1.0,
            "no {kind} proxy request counted"
        );
    }
    env.cluster.assert_no_panics();
}

/// An HTTPS registry through `HTTPS_PROXY`: the daemon terminates the CONNECT's TLS with its
/// own CA (printed by `dfdaemon --print-ca-cert`, trusted by skopeo through `--src-cert-dir`),
/// and the layers inside still go through the swarm.
#[test]
fn https_pull_through_a_terminated_connect() {
    let Some(mut env) = setup("mitm", false, &[5 * MIB, 5 * MIB]) else {
        return;
    };
    let a = env.daemon();
    let config = env.cluster.path("dfdaemon-0.yaml");
    let printed = std::process::Command::new(bin("dfdaemon"))
        .arg("--config")
        .arg(&config)
        .arg("--print-ca-cert")
        .output()
        .expect("run dfdaemon --print-ca-cert");
    assert!(printed.status.success(), "--print-ca-cert failed");
    let pem = String::from_utf8_lossy(&printed.stdout).to_string();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let cert_dir = env.cluster.path("trusted");
    fs::create_dir_all(&cert_dir).unwrap();
    fs::write(cert_dir.join("dfdaemon-ca.crt"), pem).unwrap();

    let out = env.cluster.path("pull-https");
    let proxy = format!("http://{}", proxy_addr(&a));
    let src = format!("docker://{PROXIED_REGISTRY}/{REPO}:{TAG}");
    let dst = format!("dir:{}", out.display());
    let result = skopeo(
        &env.skopeo,
        &env.cluster.root,
        &[
            "copy",
            "--src-cert-dir",
            cert_dir.to_str().unwrap(),
            &src,
            &dst,
        ],
        &[("HTTPS_PROXY", proxy.clone()), ("HTTP_PROXY", proxy)],
    );
    assert!(
        result.status.success(),
        "skopeo pull over a terminated CONNECT failed"
    );
    assert_pulled(&out, &env.image);
    assert!(proxy_requests(&a, "connect_tls") >= 1.0);
    assert!(
        proxy_requests(&a, "p2p") >= 2.0,
        "the layers did not go through the swarm"
    );
    env.cluster.assert_no_panics();
}

/// Concurrent GETs of one uncached layer share one download; with no scheduler reachable the
/// pull still works from the registry; basic auth (401 without it) and the request rate limit
/// (429 over it) guard the proxy.
#[test]
fn shared_downloads_no_scheduler_and_guards() {
    let Some(mut env) = setup("guards", false, &[8 * MIB]) else {
        return;
    };
    let config = env.cluster.path("guarded.yaml");
    fs::write(
        &config,
        "proxy:\n  server:\n    requestRateLimit: 5\n    basicAuth: {username: user, password: secret}\n",
    )
    .unwrap();
    let nothing = format!(
        "127.0.0.1:{}",
        free_port(std::net::Ipv4Addr::LOCALHOST.into())
    );
    let a = env.cluster.start_daemon(DaemonOpts {
        scheduler: Some(nothing),
        extra: vec![
            "--registry".into(),
            env.front.url(),
            "--config".into(),
            config.display().to_string(),
        ],
        ..Default::default()
    });
    // "user:secret"
    let auth = ("proxy-authorization", "Basic dXNlcjpzZWNyZXQ=");
    let (digest, data) = env.image.layers[0].clone();
    let url = proxy_url(&a, &blob_path(&digest));
    let refused = request("GET", &url, &[]);
    assert_eq!(refused.status, 401);
    assert!(refused.header("proxy-authenticate").is_some());

    let answers: Vec<Answer> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| request("GET", &url, &[auth])))
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    for answer in &answers {
        assert_eq!(answer.status, 200);
        assert_eq!(sha256_hex(answer.bytes()), sha256_hex(&data));
    }
    assert_eq!(
        env.front.blob_bytes(),
        data.len() as u64,
        "three concurrent GETs of one layer must fetch it from the registry once"
    );

    std::thread::sleep(Duration::from_millis(1100));
    let manifest = proxy_url(&a, &format!("/v2/{REPO}/manifests/{TAG}"));
    // A burst of 5 is allowed; 30 quick requests must go over it (each would need 200 ms
    // for the bucket to keep up).
    let statuses: Vec<u16> = (0..30)
        .map(|_| {
            let accept = ("accept", "application/vnd.oci.image.manifest.v1+json");
            request("HEAD", &manifest, &[auth, accept]).status
        })
        .collect();
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(
        statuses.contains(&429),
        "no 429 over the rate limit: {statuses:?}"
    );
    assert!(proxy_requests(&a, "rate_limited") >= 1.0);
    assert!(proxy_requests(&a, "unauthorized") >= 1.0);
    env.cluster.assert_no_panics();
}

/// A registry that redirects blob GETs to signed storage URLs (a new signature each time):
/// the pull works, the layer is fetched once, and the same layer asked for through another
/// upstream (the registry itself, named by `X-Dragonfly-Registry`) is the same task, served
/// from the cache.
#[test]
fn redirected_blobs_and_one_task_per_digest() {
    let Some(mut env) = setup("redirect", false, &[6 * MIB, 5 * MIB]) else {
        return;
    };
    env.front
        .state
        .redirect_blobs
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let a = env.daemon();
    let out = env.pull_via_mirror(&a, "pull-redirected");
    assert_pulled(&out, &env.image);
    let fetched = env.front.blob_bytes();
    assert!(
        fetched >= env.image.layer_bytes(),
        "layers not fetched: {fetched}"
    );
    assert!(
        fetched < 2 * env.image.layer_bytes(),
        "layers fetched twice: {fetched}"
    );

    let (digest, data) = env.image.layers[0].clone();
    let direct = format!("http://{}", env.registry.addr);
    let other = request(
        "GET",
        &proxy_url(&a, &blob_path(&digest)),
        &[(REGISTRY_HEADER_NAME, direct.as_str())],
    );
    assert_eq!(other.status, 200);
    assert_eq!(sha256_hex(other.bytes()), sha256_hex(&data));
    assert_eq!(
        other.header("x-dragonfly-task-id").as_deref(),
        Some(env.image.layer_hex(0))
    );
    assert_eq!(
        env.front.blob_bytes(),
        fetched,
        "the same layer via another registry was fetched again"
    );
    env.cluster.assert_no_panics();
}

/// A blob streams as its pieces land: with a registry that is slow for every piece but the
/// first, the first byte reaches the client long before the blob is complete.
#[test]
fn blob_streams_before_it_is_complete() {
    let Some(mut env) = setup("stream", false, &[12 * MIB]) else {
        return;
    };
    let a = env.daemon();
    env.front
        .state
        .slow_tail_ms
        .store(2000, std::sync::atomic::Ordering::SeqCst);
    let (digest, data) = env.image.layers[0].clone();
    let (first, total, sha) = timed_get(&proxy_url(&a, &blob_path(&digest)));
    assert_eq!(sha, sha256_hex(&data));
    assert!(total >= 2.0, "the slow pieces took only {total:.2}s");
    assert!(
        first < total - 1.0,
        "first byte after {first:.2}s of {total:.2}s: the response did not stream"
    );
    env.cluster.assert_no_panics();
}

/// containerd 1.6 (`ctr images pull --hosts-dir`) through the mirror: HEAD by tag, GETs by
/// digest, every request with `?ns=`. Needs root to start containerd; skips otherwise (fails
/// under CI, like a missing tool or a containerd that does not start).
#[test]
fn containerd_pulls_through_the_mirror() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip("containerd needs root");
        return;
    }
    let (Some(containerd), Some(ctr)) = (tool("containerd"), tool("ctr")) else {
        return;
    };
    let Some(mut env) = setup("containerd", false, &[5 * MIB, 5 * MIB]) else {
        return;
    };
    let a = env.daemon();
    let dir = env.cluster.path("containerd");
    let socket = dir.join("containerd.sock");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("config.toml"),
        format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{1}\"\n",
            dir.display(),
            socket.display()
        ),
    )
    .unwrap();
    let log = fs::File::create(dir.join("containerd.log")).unwrap();
    let mut child = Killed(
        std::process::Command::new(containerd)
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn containerd"),
    );
    let up = wait_until(Duration::from_secs(20), || socket.exists());
    if !up || child.0.try_wait().ok().flatten().is_some() {
        let log = fs::read_to_string(dir.join("containerd.log")).unwrap_or_default();
        skip(format!("containerd did not start here:\n{log}"));
        return;
    }
    let hosts = dir.join("certs.d");
    let registry = env.front.addr.to_string();
    env.dfinit(
        &a,
        &[
            "--runtime",
            "containerd",
            "--containerd-certs-dir",
            hosts.to_str().unwrap(),
        ],
    );
    let reference = format!("{registry}/{REPO}:{TAG}");
    let output = std::process::Command::new(&ctr)
        .args([
            "--address",
            socket.to_str().unwrap(),
            "images",
            "pull",
            "--snapshotter",
            "native",
            "--hosts-dir",
        ])
        .arg(&hosts)
        .arg(&reference)
        .output()
        .expect("run ctr");
    eprintln!(
        "ctr pull: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "ctr images pull through the mirror failed"
    );
    let content = std::process::Command::new(&ctr)
        .args(["--address", socket.to_str().unwrap(), "content", "ls", "-q"])
        .output()
        .expect("ctr content ls");
    let listed = String::from_utf8_lossy(&content.stdout);
    for (digest, _) in &env.image.layers {
        assert!(
            listed.contains(digest.as_str()),
            "containerd lacks layer {digest}"
        );
    }
    assert!(listed.contains(env.image.manifest_digest.as_str()));
    assert!(
        proxy_requests(&a, "p2p") >= 2.0,
        "containerd's layers did not go through the swarm"
    );
    let seen = env.front.state.seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|(m, p, _)| m == "HEAD" && p.contains("/manifests/")),
        "containerd resolves by HEAD on the manifest"
    );
    drop(child);
    env.cluster.assert_no_panics();
}

/// A child process killed (SIGKILL) and reaped when dropped, also when the test panics.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Timing, not a check (run by hand, ideally `--release`): pulls of a ~200 MiB image (4 layers
/// of 50 MiB) with skopeo, cold through the mirror (a new image each run, so the daemon's cache
/// is empty), warm (the same image again), and straight from the registry; medians of 3.
///
/// `cargo test --release -p damselfly --test e2e_registry -- --ignored --nocapture pull_time`
#[test]
#[ignore = "timing; run by hand"]
fn pull_time_of_a_200_mib_image() {
    const RUNS: usize = 3;
    let Some(mut env) = setup("timing", false, &[MIB]) else {
        return;
    };
    let a = env.daemon_for(&format!("http://{}", env.registry.addr));
    let images: Vec<Image> = (0..RUNS)
        .map(|i| {
            let image = build_image(
                &env.cluster.path(&format!("layout{i}")),
                &[50 * MIB, 50 * MIB, 50 * MIB, 50 * MIB],
            );
            push(
                &env.skopeo,
                &env.cluster.root,
                &image,
                env.registry.addr,
                &format!("timing/img{i}"),
            );
            image
        })
        .collect();
    let conf = env.cluster.path("registries-timing.conf");
    registries_conf(&conf, &env.registry.addr.to_string(), proxy_addr(&a));
    let pull = |label: &str, i: usize, mirror: bool| {
        let out = env.cluster.path(&format!("{label}{i}"));
        let src = format!("docker://{}/timing/img{i}:{TAG}", env.registry.addr);
        let dst = format!("dir:{}", out.display());
        let mut args = Vec::new();
        if mirror {
            args.extend(["--registries-conf", conf.to_str().unwrap()]);
        }
        args.extend(["copy", "--src-tls-verify=false", &src, &dst]);
        let started = std::time::Instant::now();
        let result = skopeo(&env.skopeo, &env.cluster.root, &args, &[]);
        let seconds = started.elapsed().as_secs_f64();
        assert!(result.status.success());
        assert_pulled(&out, &images[i]);
        fs::remove_dir_all(&out).unwrap();
        seconds
    };
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let mut direct = Vec::new();
    for i in 0..RUNS {
        direct.push(pull("direct", i, false));
        cold.push(pull("cold", i, true));
        warm.push(pull("warm", i, true));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|x, y| x.total_cmp(y));
        v[v.len() / 2]
    };
    println!("| pull of a 200 MiB image (4 x 50 MiB layers), skopeo, median of {RUNS} | seconds |");
    println!("|---|---|");
    println!("| straight from the registry | {:.2} |", median(direct));
    println!(
        "| through the mirror, cold (registry -> dfdaemon -> skopeo) | {:.2} |",
        median(cold)
    );
    println!(
        "| through the mirror, warm (dfdaemon's cache) | {:.2} |",
        median(warm)
    );
}

/// Private layers: client A (with the registry's token) pulls a blob through the mirror;
/// client B without a token, or with a wrong one, gets the registry's 401 and its challenge,
/// not the cached bytes; B with a valid token gets the bytes from the cache, and the registry
/// answers no further layer GET.
#[test]
fn private_layers_reach_only_clients_the_registry_admits() {
    let Some(mut env) = setup("private-layers", true, &[5 * MIB]) else {
        return;
    };
    let a = env.daemon_with_log_level("debug");
    let (layer, data) = env.image.layers[0].clone();
    let url = proxy_url(&a, &blob_path(&layer));
    let bearer = format!("Bearer {TOKEN}");
    let first = request("GET", &url, &[("authorization", &bearer)]);
    assert_eq!(first.status, 200);
    assert_eq!(sha256_hex(first.bytes()), sha256_hex(&data));
    let gets = env.layer_gets();
    assert!(gets > 0, "the first pull must reach the registry");

    for headers in [vec![], vec![("authorization", "Bearer not-the-token")]] {
        let refused = request("GET", &url, &headers);
        assert_eq!(refused.status, 401, "{headers:?} must be challenged");
        let challenge = refused.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer realm="),
            "challenge: {challenge:?}"
        );
        assert_ne!(
            sha256_hex(refused.bytes()),
            sha256_hex(&data),
            "cached layer served without credentials"
        );
    }

    let again = request("GET", &url, &[("authorization", &bearer)]);
    assert_eq!(again.status, 200);
    assert_eq!(sha256_hex(again.bytes()), sha256_hex(&data));
    assert_eq!(
        env.layer_gets(),
        gets,
        "the admitted client's second pull must come from the cache"
    );
    // The token went to the registry only: not into debug logs or metrics, on either side.
    let scheduler_log = env
        .cluster
        .scheduler
        .as_ref()
        .map(|s| fs::read_to_string(&s.log).unwrap_or_default())
        .unwrap_or_default();
    for (what, text) in [
        ("daemon log", a.log_text()),
        ("scheduler log", scheduler_log),
        ("daemon metrics", a.metrics().raw),
    ] {
        assert!(!text.contains(TOKEN), "the token is in the {what}");
    }
    env.cluster.assert_no_panics();
}

/// A test CA and a leaf certificate for 127.0.0.1, written as PEM files in `dir`.
fn private_ca(dir: &std::path::Path) -> (PathBuf, RegistryTls) {
    let ca = damselfly_testkit::TestCa::named("Damselfly test registry CA");
    let leaf = ca.leaf();
    fs::create_dir_all(dir).unwrap();
    let ca_path = dir.join("ca.pem");
    fs::write(&ca_path, &ca.pem).unwrap();
    let tls = RegistryTls {
        cert: dir.join("registry.pem"),
        key: dir.join("registry.key"),
    };
    fs::write(&tls.cert, &leaf.pem).unwrap();
    fs::write(&tls.key, &leaf.key_pem).unwrap();
    (ca_path, tls)
}

/// A registry over TLS signed by a private CA: without the CA a download fails with a
/// certificate error (dfget, and the mirror); with `proxy.registryMirror.cert` the mirror
/// serves the blob byte for byte; dfget's `--storage-insecure-skip-verify` works and the
/// daemon logs a warning.
#[test]
fn registry_behind_a_private_ca() {
    let (Some(registry_bin), Some(skopeo_bin)) = (tool("docker-registry"), tool("skopeo")) else {
        return;
    };
    let mut cluster = Cluster::new("private-ca");
    let (ca, tls) = private_ca(&cluster.path("pki"));
    let registry = Registry::start_with(&registry_bin, &cluster.root, Some(&tls));
    let image = build_image(&cluster.path("layout"), &[MIB, MIB + 1, MIB + 2]);
    push(&skopeo_bin, &cluster.root, &image, registry.addr, REPO);
    cluster.start_scheduler();
    let upstream = format!("https://{}", registry.addr);
    let blob_url = |i: usize| format!("{upstream}{}", blob_path(&image.layers[i].0));

    let plain = cluster.start_daemon(DaemonOpts::default());
    let out = cluster.path("refused.bin");
    let refused = cluster.dfget(&plain.socket, &blob_url(0), &out, &[]);
    assert!(!refused.success(), "an untrusted registry must be refused");
    assert!(
        refused.stderr.contains("not trusted"),
        "stderr: {}",
        refused.stderr
    );
    assert!(!out.exists());

    let out = cluster.path("insecure.bin");
    let insecure = cluster.dfget(
        &plain.socket,
        &blob_url(1),
        &out,
        &["--storage-insecure-skip-verify"],
    );
    assert!(insecure.success(), "stderr: {}", insecure.stderr);
    assert_eq!(sha256_file(&out), sha256_hex(&image.layers[1].1));
    assert!(
        plain.log_text().contains("insecure_skip_verify"),
        "the insecure download must be logged"
    );

    let through_plain = request(
        "GET",
        &proxy_url(&plain, &blob_path(&image.layers[2].0)),
        &[(REGISTRY_HEADER_NAME, upstream.as_str())],
    );
    assert_eq!(
        through_plain.status, 502,
        "a mirror without the CA must not serve the blob"
    );

    let config = cluster.path("dfdaemon-ca.yaml");
    fs::write(
        &config,
        format!(
            "proxy:\n  registryMirror:\n    addr: {upstream}\n    cert: {}\n",
            ca.display()
        ),
    )
    .unwrap();
    let trusting = cluster.start_daemon(DaemonOpts {
        extra: vec!["--config".into(), config.display().to_string()],
        ..Default::default()
    });
    let served = request(
        "GET",
        &proxy_url(&trusting, &blob_path(&image.layers[2].0)),
        &[],
    );
    assert_eq!(served.status, 200);
    assert_eq!(sha256_hex(served.bytes()), sha256_hex(&image.layers[2].1));
    drop(registry);
    cluster.assert_no_panics();
}

/// The JSON API's token in the preheat tests.
const API_TOKEN: &str = "preheat-test-token";

/// Runs dfctl with `args`; returns (success, stdout, stderr).
fn dfctl(args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_dfctl"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run dfctl");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    eprintln!("dfctl {args:?}: {}\n{stdout}{stderr}", output.status);
    (output.status.success(), stdout, stderr)
}

/// Waits until the scheduler lists `count` hosts (announces are asynchronous).
fn wait_for_hosts(api: &str, count: usize) {
    let listed = wait_until(Duration::from_secs(30), || {
        let (ok, out, _) = dfctl(&["host", "ls", "--scheduler", api, "-o", "json"]);
        ok && serde_json::from_str::<serde_json::Value>(&out)
            .ok()
            .and_then(|v| v.as_array().map(Vec::len))
            == Some(count)
    });
    assert!(listed, "the scheduler never listed {count} hosts");
}

/// The job succeeded with one task per layer plus the config, each layer named by its digest
/// (the mirror's task ID).
fn assert_job_covers_the_image(job: &serde_json::Value, image: &Image) {
    assert_eq!(job["state"], "SUCCESS", "{job:#}");
    let tasks = job["tasks"].as_array().unwrap();
    assert_eq!(
        tasks.len(),
        image.layers.len() + 1,
        "layers and config: {tasks:?}"
    );
    for (digest, _) in &image.layers {
        let task = tasks
            .iter()
            .find(|t| t["url"].as_str().unwrap().ends_with(digest.as_str()))
            .unwrap_or_else(|| panic!("{digest} not preheated"));
        assert_eq!(
            task["task_id"],
            digest.trim_start_matches("sha256:"),
            "blob task ID"
        );
    }
}

/// An image preheat on a registry with token auth: the scheduler resolves the tag with the
/// token dance and the seed fetches config and layers; then four daemons pull the image
/// through their mirrors and the registry serves none of the layer bytes again.
#[test]
fn image_preheat_then_four_mirror_pulls_take_no_layer_bytes_from_the_registry() {
    let yaml = format!("server:\n  http:\n    token: {API_TOKEN}\n");
    let Some(mut env) = setup_with(
        "preheat-image",
        true,
        &[5 * MIB, 6 * MIB, 7 * MIB],
        Some(&yaml),
    ) else {
        return;
    };
    let api = env.cluster.scheduler.as_ref().unwrap().http.to_string();
    env.cluster.start_daemon(DaemonOpts {
        seed: true,
        ..Default::default()
    });
    wait_for_hosts(&api, 1);
    let image = format!("http://{}/{REPO}:{TAG}", env.front.addr);

    // Mutations need the token.
    let (ok, _, stderr) = dfctl(&["preheat", "--image", &image, "--scheduler", &api]);
    assert!(
        !ok && stderr.contains("401"),
        "a preheat without the token: {stderr}"
    );

    let (ok, out, _) = dfctl(&[
        "preheat",
        "--image",
        &image,
        "--scheduler",
        &api,
        "--token",
        API_TOKEN,
        "--scope",
        "single_seed_peer",
        "--wait",
        "-o",
        "json",
    ]);
    assert!(ok, "the image preheat failed");
    let job: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_job_covers_the_image(&job, &env.image);
    let layers_before = env.layer_gets();
    let bytes_before = env.front.blob_bytes();
    assert!(
        bytes_before >= env.image.layer_bytes(),
        "the seed took only {bytes_before} blob bytes from the registry"
    );
    assert!(layers_before > 0);

    let daemons: Vec<DaemonInfo> = (0..4).map(|_| env.daemon()).collect();
    for (i, daemon) in daemons.iter().enumerate() {
        let out = env.pull_via_mirror(daemon, &format!("pull-{i}"));
        assert_pulled(&out, &env.image);
    }
    // Layers only: the config is a single piece, which a daemon fetches straight from the
    // registry.
    assert_eq!(
        env.layer_gets(),
        layers_before,
        "a pull took layers from the registry"
    );
    for daemon in &daemons {
        let t = daemon.traffic();
        let from_swarm = t.remote_seed + t.remote_normal;
        assert!(
            from_swarm >= env.image.layer_bytes() as f64,
            "{} took only {from_swarm} bytes from the swarm: {t:?}",
            daemon.name
        );
    }
    // The registry token never reaches the scheduler's log.
    let log = std::fs::read_to_string(&env.cluster.scheduler.as_ref().unwrap().log).unwrap();
    assert!(
        !log.contains(TOKEN),
        "the registry token is in the scheduler's log"
    );
    env.cluster.assert_no_panics();
}
