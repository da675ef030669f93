//! Real registry components for the registry-mirror tests: Debian's `docker-registry`
//! (distribution) as the origin, a counting / tampering / token-guarding front in the test
//! process between the daemons and that registry, OCI images written by the test, and `skopeo`
//! as the pulling client. A missing tool makes a test skip with a `SKIP:` line, except under CI
//! (see [`skip`]), where it fails.

#![allow(dead_code)]

use crate::common::*;
use bytes::Bytes;
use hyper::{Request, Response, StatusCode};
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The token the front's token endpoint hands out when it guards the registry.
pub const TOKEN: &str = "damselfly-test-token";
pub const REPO: &str = "test/img";
pub const TAG: &str = "v1";

/// Whether a test that cannot run here must fail instead of skipping: `DAMSELFLY_REQUIRE_TOOLS=1`
/// (`=0` opts out), else whenever `CI` is set to anything but `false` or `0` (`.ci/run` runs
/// with `CI=true` and installs the tools).
pub fn tools_required() -> bool {
    let set = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| !matches!(v.trim(), "0" | "false"))
    };
    set("DAMSELFLY_REQUIRE_TOOLS")
        .or_else(|| set("CI"))
        .unwrap_or(false)
}

/// The one rule for a test that cannot run here: prints `SKIP: <reason>` (the caller then
/// returns and the test passes), or panics with the reason when [`tools_required`].
pub fn skip(reason: impl std::fmt::Display) {
    if tools_required() {
        panic!(
            "{reason}\n(a skip is a failure under CI or with DAMSELFLY_REQUIRE_TOOLS=1; \
             set DAMSELFLY_REQUIRE_TOOLS=0 to skip)"
        );
    }
    eprintln!("SKIP: {reason}");
}

/// Path of a tool on PATH (or in /usr/sbin), or [`skip`] when it is not installed.
pub fn tool(name: &str) -> Option<PathBuf> {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain([
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
    ]) {
        let path = Path::new(dir).join(name);
        if path.is_file() {
            return Some(path);
        }
    }
    skip(format!(
        "`{name}` is not installed (.ci/run installs it with apt-get)"
    ));
    None
}

/// `docker-registry` (distribution) on 127.0.0.1, storage in `dir`.
pub struct Registry {
    pub addr: SocketAddr,
    pub log: PathBuf,
    child: std::process::Child,
}

/// PEM files for a registry served over TLS.
pub struct RegistryTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Registry {
    pub fn start(binary: &Path, dir: &Path) -> Registry {
        Self::start_with(binary, dir, None)
    }

    /// Over TLS with `tls` when given (readiness is then a listening port: the test's plain
    /// HTTP probe cannot speak to it).
    pub fn start_with(binary: &Path, dir: &Path, tls: Option<&RegistryTls>) -> Registry {
        let ip: IpAddr = Ipv4Addr::LOCALHOST.into();
        let addr = SocketAddr::new(ip, free_port(ip));
        let storage = dir.join("registry-storage");
        fs::create_dir_all(&storage).unwrap();
        let config = dir.join("registry.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{}",
                storage.display(),
                tls.map(|t| format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    t.cert.display(),
                    t.key.display()
                ))
                .unwrap_or_default()
            ),
        )
        .unwrap();
        let log = dir.join("registry.log");
        let out = fs::File::create(&log).unwrap();
        let child = Command::new(binary)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start docker-registry");
        let registry = Registry { addr, log, child };
        let ready = wait_until(Duration::from_secs(30), || match tls {
            None => matches!(http_get(addr, "/v2/"), Ok((200, _))),
            Some(_) => listening(addr),
        });
        assert!(ready, "docker-registry did not come up on {addr}");
        registry
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // SIGKILL: on SIGTERM the registry waits for idle keep-alive connections to drain.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the front saw and what it does.
#[derive(Default)]
pub struct FrontState {
    upstream: String,
    /// Body bytes of successful blob GETs (what "layer bytes from the registry" means).
    pub blob_bytes: AtomicU64,
    /// Blob GETs by path, with their Range header.
    pub blob_gets: Mutex<Vec<(String, Option<String>)>>,
    pub tamper: AtomicBool,
    /// Answer blob GETs and HEADs with a 307 to a signed-looking `/storage/` URL, as registries
    /// backed by object storage do.
    pub redirect_blobs: AtomicBool,
    /// Delay, in milliseconds, of blob GETs for ranges that do not start at byte 0 (a slow
    /// registry whose first piece arrives long before the rest).
    pub slow_tail_ms: AtomicU64,
    /// Require `Authorization: Bearer TOKEN` on /v2/ requests.
    pub require_token: bool,
    /// Every request line with its Authorization header (for checks).
    pub seen: Mutex<Vec<(String, String, Option<String>)>>,
    /// Requests being answered: a blob GET is counted only once its body is in.
    requests_open: AtomicU64,
    addr: Mutex<Option<SocketAddr>>,
}

/// Counts a request as open until its answer is made or the client goes away.
struct OpenRequest<'a>(&'a AtomicU64);

impl<'a> OpenRequest<'a> {
    fn new(open: &'a AtomicU64) -> Self {
        open.fetch_add(1, Ordering::SeqCst);
        OpenRequest(open)
    }
}

impl Drop for OpenRequest<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An HTTP front for the registry inside the test process: counts blob bytes, can tamper with
/// blobs, and can demand a bearer token (with its own token endpoint).
pub struct Front {
    pub addr: SocketAddr,
    pub state: Arc<FrontState>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Front {
    pub fn start(registry: SocketAddr, require_token: bool) -> Front {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("front")
            .enable_all()
            .build()
            .unwrap();
        let state = Arc::new(FrontState {
            upstream: format!("http://{registry}"),
            require_token,
            ..Default::default()
        });
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        *state.addr.lock().unwrap() = Some(addr);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .unwrap();
        runtime.spawn(front_accept(listener, state.clone(), client));
        Front {
            addr,
            state,
            runtime: Some(runtime),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn blob_bytes(&self) -> u64 {
        self.state.blob_bytes.load(Ordering::SeqCst)
    }

    /// Requests still being answered (their bytes not yet counted).
    pub fn requests_open(&self) -> u64 {
        self.state.requests_open.load(Ordering::SeqCst)
    }

    pub fn set_tamper(&self, on: bool) {
        self.state.tamper.store(on, Ordering::SeqCst);
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Accepts front connections forever (the runtime is dropped with the front).
async fn front_accept(
    listener: tokio::net::TcpListener,
    state: Arc<FrontState>,
    client: reqwest::Client,
) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(front_connection(stream, state.clone(), client.clone()));
    }
}

async fn front_connection(
    stream: tokio::net::TcpStream,
    state: Arc<FrontState>,
    client: reqwest::Client,
) {
    let handler = move |req| front_serve(state.clone(), client.clone(), req);
    let service = hyper::service::service_fn(move |req| {
        let answer = handler(req);
        async move { Ok::<_, std::convert::Infallible>(answer.await) }
    });
    let io = hyper_util::rt::TokioIo::new(stream);
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await;
}

type FrontBody = http_body_util::Full<Bytes>;

fn front_response(
    status: StatusCode,
    headers: &[(&'static str, String)],
    body: Bytes,
) -> Response<FrontBody> {
    let mut response = Response::new(http_body_util::Full::new(body));
    *response.status_mut() = status;
    for (name, value) in headers {
        response.headers_mut().insert(*name, value.parse().unwrap());
    }
    response
}

async fn front_serve(
    state: Arc<FrontState>,
    client: reqwest::Client,
    req: Request<hyper::body::Incoming>,
) -> Response<FrontBody> {
    let _open = OpenRequest::new(&state.requests_open);
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    state
        .seen
        .lock()
        .unwrap()
        .push((req.method().to_string(), path.clone(), auth.clone()));
    if path.starts_with("/token") {
        let body =
            format!("{{\"token\":\"{TOKEN}\",\"access_token\":\"{TOKEN}\",\"expires_in\":300}}");
        return front_response(
            StatusCode::OK,
            &[("content-type", "application/json".into())],
            Bytes::from(body),
        );
    }
    let authorized = auth.as_deref() == Some(&format!("Bearer {TOKEN}"));
    if state.require_token && path.starts_with("/v2") && !authorized {
        let addr = state.addr.lock().unwrap().unwrap();
        let challenge = format!(
            "Bearer realm=\"http://{addr}/token\",service=\"front\",scope=\"repository:{REPO}:pull\""
        );
        return front_response(
            StatusCode::UNAUTHORIZED,
            &[
                ("www-authenticate", challenge),
                ("content-type", "application/json".into()),
            ],
            Bytes::from_static(
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            ),
        );
    }
    if let Some(answer) = storage_redirect(&state, &path) {
        return answer;
    }
    let path = storage_target(&path).unwrap_or(path);
    let method = req.method().clone();
    let range = req
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut upstream = client.request(method.clone(), format!("{}{path}", state.upstream));
    for (name, value) in req.headers() {
        if name != "host" && name != "authorization" {
            upstream = upstream.header(name, value);
        }
    }
    let delay = state.slow_tail_ms.load(Ordering::SeqCst);
    let tail = range.as_deref().is_some_and(|r| !r.starts_with("bytes=0-"));
    if delay > 0 && tail && path.contains("/blobs/") {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let Ok(answer) = upstream.send().await else {
        return front_response(StatusCode::BAD_GATEWAY, &[], Bytes::new());
    };
    let status = answer.status();
    let headers: Vec<(String, String)> = answer
        .headers()
        .iter()
        .filter(|(n, _)| *n != "transfer-encoding" && *n != "connection")
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let mut body = answer.bytes().await.unwrap_or_default().to_vec();
    let is_blob_get = method == hyper::Method::GET && path.contains("/blobs/");
    if is_blob_get && status.is_success() {
        state
            .blob_bytes
            .fetch_add(body.len() as u64, Ordering::SeqCst);
        state.blob_gets.lock().unwrap().push((path.clone(), range));
        if state.tamper.load(Ordering::SeqCst) && !body.is_empty() {
            let last = body.len() - 1;
            body[last] ^= 0xff;
        }
    }
    let mut response = Response::new(http_body_util::Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status.as_u16()).unwrap();
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(&value),
        ) {
            response.headers_mut().append(n, v);
        }
    }
    response
}

/// A 307 to `/storage/<repo>/<digest>?X-Amz-Signature=<random>` for a blob, when redirecting.
fn storage_redirect(state: &FrontState, path: &str) -> Option<Response<FrontBody>> {
    if !state.redirect_blobs.load(Ordering::SeqCst) || !path.starts_with("/v2/") {
        return None;
    }
    let (repo, digest) = path.trim_start_matches("/v2/").split_once("/blobs/")?;
    let addr = state.addr.lock().unwrap().unwrap();
    let signature: u64 = rand::random();
    let location = format!(
        "http://{addr}/storage/{repo}/{digest}?X-Amz-Signature={signature:x}&X-Amz-Expires=60"
    );
    Some(front_response(
        StatusCode::TEMPORARY_REDIRECT,
        &[("location", location)],
        Bytes::new(),
    ))
}

/// The registry path a `/storage/` URL stands for.
fn storage_target(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/storage/")?;
    let rest = rest.split('?').next()?;
    let (repo, digest) = rest.rsplit_once('/')?;
    Some(format!("/v2/{repo}/blobs/{digest}"))
}

/// An OCI image layout written by the test: random layers, a config, a manifest.
pub struct Image {
    pub layout: PathBuf,
    pub layers: Vec<(String, Vec<u8>)>,
    pub config_digest: String,
    pub manifest_digest: String,
    pub manifest: Vec<u8>,
}

impl Image {
    pub fn layer_hex(&self, i: usize) -> &str {
        self.layers[i].0.trim_start_matches("sha256:")
    }
    pub fn layer_bytes(&self) -> u64 {
        self.layers.iter().map(|(_, d)| d.len() as u64).sum()
    }
}

fn write_blob(layout: &Path, data: &[u8]) -> String {
    let hex = sha256_hex(data);
    fs::write(layout.join("blobs/sha256").join(&hex), data).unwrap();
    format!("sha256:{hex}")
}

/// A tar archive holding one regular file (containerd unpacks layers, so they must be tars).
pub fn tar_with_file(name: &str, data: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    let mut put =
        |offset: usize, field: &[u8]| header[offset..offset + field.len()].copy_from_slice(field);
    put(0, name.as_bytes());
    put(100, b"0000644\0");
    put(108, b"0000000\0");
    put(116, b"0000000\0");
    put(124, format!("{:011o}\0", data.len()).as_bytes());
    put(136, b"00000000000\0");
    put(156, b"0");
    put(257, b"ustar\0");
    put(263, b"00");
    // The checksum is computed with its own field as spaces.
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut tar = header.to_vec();
    tar.extend_from_slice(data);
    tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);
    tar
}

/// Writes an OCI layout with layers of the given sizes (random bytes) under `dir`.
pub fn build_image(dir: &Path, layer_sizes: &[usize]) -> Image {
    let layout = dir.to_path_buf();
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let layers: Vec<(String, Vec<u8>)> = layer_sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let data = tar_with_file(&format!("layer{i}.bin"), &random_bytes(size));
            (write_blob(&layout, &data), data)
        })
        .collect();
    let diff_ids: Vec<String> = layers.iter().map(|(d, _)| format!("\"{d}\"")).collect();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids.join(",")
    );
    let config_digest = write_blob(&layout, config.as_bytes());
    let layer_json: Vec<String> = layers
        .iter()
        .map(|(d, data)| {
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{}}}"#,
                data.len()
            )
        })
        .collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{}]}}"#,
        config.len(),
        layer_json.join(",")
    );
    let manifest_digest = write_blob(&layout, manifest.as_bytes());
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"{TAG}"}}}}]}}"#,
        manifest.len()
    );
    fs::write(layout.join("index.json"), index).unwrap();
    Image {
        layout,
        layers,
        config_digest,
        manifest_digest,
        manifest: manifest.into_bytes(),
    }
}

/// Runs skopeo with a timeout; `HOME` points into the test dir so no user config leaks in.
pub fn skopeo(skopeo: &Path, home: &Path, args: &[&str], env: &[(&str, String)]) -> Output {
    let mut command = Command::new(skopeo);
    command
        .arg("--insecure-policy")
        .args(args)
        .env("HOME", home)
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .stdin(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    let started = Instant::now();
    let output = command.output().expect("run skopeo");
    eprintln!(
        "skopeo {} -> {} in {:.2}s\n{}",
        args.join(" "),
        output.status,
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Pushes the image to `registry` with skopeo.
pub fn push(skopeo_bin: &Path, home: &Path, image: &Image, registry: SocketAddr, repo: &str) {
    let src = format!("oci:{}:{TAG}", image.layout.display());
    let dst = format!("docker://{registry}/{repo}:{TAG}");
    let out = skopeo(
        skopeo_bin,
        home,
        &[
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &src,
            &dst,
        ],
        &[],
    );
    assert!(out.status.success(), "skopeo push failed");
}

/// A registries.conf sending pulls of `registry` to the mirror at `mirror`.
pub fn registries_conf(path: &Path, registry: &str, mirror: SocketAddr) {
    fs::write(
        path,
        format!(
            "[[registry]]\nlocation = \"{registry}\"\ninsecure = true\n\n[[registry.mirror]]\nlocation = \"{mirror}\"\ninsecure = true\n"
        ),
    )
    .unwrap();
}

/// Every layer of `image` is in the skopeo `dir:` output with the right content.
pub fn assert_pulled(out: &Path, image: &Image) {
    for (digest, data) in &image.layers {
        let hex = digest.trim_start_matches("sha256:");
        let path = out.join(hex);
        assert!(
            path.exists(),
            "layer {digest} missing from {}",
            out.display()
        );
        assert_eq!(
            sha256_file(&path),
            sha256_hex(data),
            "layer {digest} differs"
        );
    }
}

/// A plain HTTP response as the tests look at it.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    /// Err: the body was cut short (what a client sees on a failed P2P download).
    pub body: Result<Vec<u8>, String>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
    pub fn bytes(&self) -> &[u8] {
        self.body
            .as_deref()
            .unwrap_or_else(|e| panic!("body failed: {e}"))
    }
}

/// One request through `proxy` (never an environment proxy), on a throwaway runtime.
pub fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> Answer {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let mut request = client.request(method.parse().unwrap(), url);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await.expect("send request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| format!("{e:?}"));
        Answer {
            status,
            headers,
            body,
        }
    })
}

/// Seconds until the first body byte and until the whole body of a GET (body sha256 too).
pub fn timed_get(url: &str) -> (f64, f64, String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let started = Instant::now();
        let mut response = client.get(url).send().await.expect("send");
        assert_eq!(response.status().as_u16(), 200);
        let mut first = None;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.expect("body") {
            first.get_or_insert_with(|| started.elapsed().as_secs_f64());
            body.extend_from_slice(&chunk);
        }
        let total = started.elapsed().as_secs_f64();
        (first.unwrap_or(total), total, sha256_hex(&body))
    })
}

/// Whether something listens on `addr`.
pub fn listening(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Uploads `data` as a blob of `repo` (a monolithic upload: `POST` a session, `PUT` the bytes
/// with their digest) and returns the digest. For blobs no manifest names, such as a Nydus data
/// blob that nydusd fetches by digest.
pub fn push_blob(registry: SocketAddr, repo: &str, data: Vec<u8>) -> String {
    let digest = format!("sha256:{}", sha256_hex(&data));
    let session = request(
        "POST",
        &format!("http://{registry}/v2/{repo}/blobs/uploads/"),
        &[],
    );
    assert_eq!(session.status, 202, "the registry refused a blob upload");
    let location = session.header("location").expect("upload Location");
    let location = if location.starts_with('/') {
        format!("http://{registry}{location}")
    } else {
        location
    };
    let separator = if location.contains('?') { '&' } else { '?' };
    let url = format!("{location}{separator}digest={digest}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = runtime.block_on(async {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let response = client
            .put(&url)
            .header("content-type", "application/octet-stream")
            .body(data)
            .send()
            .await
            .expect("blob upload");
        response.status().as_u16()
    });
    assert_eq!(status, 201, "blob upload of {digest} failed");
    digest
}
