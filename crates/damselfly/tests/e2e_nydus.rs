//! End-to-end lazy pull with the real client (issue 12): a RAFS v6 image built by
//! `nydus-image`, its data blob in Debian's `docker-registry`, and two `nydusd` FUSE mounts,
//! each fetching chunks by HTTP Range through its own dfdaemon's proxy (`backend.config.proxy`,
//! as in Dragonfly's Nydus integration), beside a scheduler and a seed peer. A front in the
//! test process counts the blob bytes the registry serves.
//!
//! Needs root and /dev/fuse (else `SKIP:`, also under `DAMSELFLY_REQUIRE_TOOLS=1`), nydusd and
//! nydus-image from `tools/nydus/install.sh`, and `docker-registry`.

mod common;
mod nydus;
mod registry;

use common::*;
use nydus::{build_image, Backend, Mount, RafsImage, Tools};
use registry::{push_blob, tool, Front, Registry};
use std::fs;
use std::net::SocketAddr;
use std::time::Duration;

/// Dragonfly's proxy port; every daemon binds it on its own loopback address.
const PROXY_PORT: u16 = 4001;
const REPO: &str = "test/nydus";
/// 12 files of 3 MiB: a 36 MiB blob, 9 pieces of 4 MiB (Dragonfly's piece length at this size).
const FILES: usize = 12;
const FILE_LEN: usize = 3 * MIB;
const PIECE: u64 = 4 * MIB as u64;
/// The file the tests read, from the middle of the blob.
const READ_FILE: usize = 5;
/// Pieces a mount fetches besides its reads: RAFS v6 keeps the chunk table at the blob's end,
/// and nydusd reads it once per blob before the first chunk.
const METADATA_PIECES: u64 = 1;
/// The pause between two looks at the registry's count when waiting for it to settle.
const SETTLE_LOOK: Duration = Duration::from_millis(200);

/// Whether the daemons fetch the rest of a blob behind a Range read (`proxy.prefetch`).
#[derive(Clone, Copy, PartialEq)]
enum Prefetch {
    Off,
    On,
}

struct Env {
    cluster: Cluster,
    front: Front,
    image: RafsImage,
    tools: Tools,
    a: DaemonInfo,
    b: DaemonInfo,
    // Last: dropped after the mounts that read through it.
    _registry: Registry,
}

/// Registry with the pushed blob, a front counting it, scheduler, seed peer and two daemons;
/// None (skipped) without FUSE or the tools.
fn setup(name: &str, prefetch: Prefetch) -> Option<Env> {
    let tools = nydus::tools()?;
    let registry_bin = tool("docker-registry")?;
    let mut cluster = Cluster::new(name);
    let registry = Registry::start(&registry_bin, &cluster.root);
    let front = Front::start(registry.addr, false);
    let image = build_image(&tools, &cluster.path("image"), FILES, FILE_LEN);
    let digest = push_blob(registry.addr, REPO, image.blob.clone());
    assert_eq!(digest, format!("sha256:{}", image.blob_id));
    cluster.start_scheduler();
    cluster.start_daemon(DaemonOpts {
        seed: true,
        ..Default::default()
    });
    let a = start_peer(&mut cluster, prefetch);
    let b = start_peer(&mut cluster, prefetch);
    Some(Env {
        cluster,
        front,
        image,
        tools,
        a,
        b,
        _registry: registry,
    })
}

fn start_peer(cluster: &mut Cluster, prefetch: Prefetch) -> DaemonInfo {
    let mut opts = DaemonOpts::default();
    if prefetch == Prefetch::On {
        let config = cluster.path(&format!("dfdaemon-{}.yaml", cluster.daemons.len()));
        fs::write(&config, "proxy:\n  prefetch: true\n").unwrap();
        opts.extra = vec!["--config".into(), config.display().to_string()];
    }
    cluster.start_daemon(opts)
}

impl Env {
    /// nydusd mounting the image, fetching through `daemon`'s proxy from the front.
    fn mount(&self, name: &str, daemon: &DaemonInfo) -> Mount {
        let backend = Backend {
            registry: self.front.addr,
            repo: REPO,
            proxy: SocketAddr::new(daemon.ip.into(), PROXY_PORT),
        };
        Mount::start(&self.tools, &self.cluster.root, name, &self.image, &backend)
    }

    /// Reads file `i` from `mount` and checks its sha256 against what was put in the image.
    fn read_and_check(&self, mount: &Mount, i: usize) -> u64 {
        let (name, data) = &self.image.files[i];
        let read = mount.read(name);
        assert_eq!(
            sha256_hex(&read),
            sha256_hex(data),
            "{name} read from {} differs from the image's",
            mount.point.display()
        );
        read.len() as u64
    }

    /// Waits until what `daemon`'s reads asked of the registry is counted. A read is answered
    /// as soon as its bytes are there (from a direct range read, `proxy.rangeHedge`, or from
    /// storage) while its piece fill and a direct read it no longer needs may still run, and
    /// the front counts a GET only once its body is in. Settled: no job running, no request
    /// open, and the count unchanged over a second look.
    fn wait_for_fills(&self, daemon: &DaemonInfo) {
        let idle = || daemon.jobs_running() == 0.0 && self.front.requests_open() == 0;
        let settled = || {
            let before = self.registry_bytes();
            if !idle() {
                return false;
            }
            std::thread::sleep(SETTLE_LOOK);
            idle() && self.registry_bytes() == before
        };
        assert!(
            wait_until(DEFAULT_DFGET_TIMEOUT, settled),
            "{}'s piece fills did not end ({} jobs running, {} registry requests open)",
            daemon.name,
            daemon.jobs_running(),
            self.front.requests_open()
        );
    }

    fn registry_bytes(&self) -> u64 {
        self.front.blob_bytes()
    }
}

/// Bytes of the blob GETs that asked for something other than one whole piece.
fn direct_range_bytes(gets: &[(String, Option<String>)], blob_len: u64) -> u64 {
    gets.iter()
        .filter_map(|(_, range)| {
            let (first, last) = range.as_deref()?.strip_prefix("bytes=")?.split_once('-')?;
            let (first, last): (u64, u64) = (first.parse().ok()?, last.parse().ok()?);
            let piece_end = (first + PIECE).min(blob_len);
            let whole_piece = first % PIECE == 0 && last + 1 == piece_end;
            (!whole_piece).then_some(last + 1 - first)
        })
        .sum()
}

fn bytes_from_peers(daemon: &DaemonInfo) -> f64 {
    let traffic = daemon.traffic();
    traffic.remote_seed + traffic.remote_normal
}

/// Prefetch off: the first mount's read makes the registry serve only the pieces covering the
/// file (plus the chunk table), never the blob; the second mount reads the same file from the
/// first daemon, and the registry serves nothing more.
#[test]
fn nydus_reads_fetch_only_their_chunks_and_peers_share_them() {
    let Some(env) = setup("nydus-lazy", Prefetch::Off) else {
        return;
    };
    let blob_len = env.image.blob.len() as u64;
    let mount_a = env.mount("a", &env.a);
    let read = env.read_and_check(&mount_a, READ_FILE);
    env.wait_for_fills(&env.a);
    let first = env.registry_bytes();
    let gets = env.front.state.blob_gets.lock().unwrap().clone();
    // Cold ranges are also read from the registry directly (`proxy.rangeHedge`): at most
    // what nydusd asked for, the file's chunks and the chunk table.
    let direct = direct_range_bytes(&gets, blob_len);
    assert!(
        direct <= read + PIECE,
        "{direct} B of direct range reads for a {read} B read: {gets:?}"
    );
    let bound = (read.div_ceil(PIECE) + 1 + METADATA_PIECES) * PIECE + direct;
    eprintln!("blob {blob_len} B; read {read} B; registry served {first} B (bound {bound} B)");
    assert!(first > 0, "nothing came from the registry");
    assert!(
        first <= bound && first < blob_len,
        "the registry served {first} B of a {blob_len} B blob for a {read} B read (bound {bound})"
    );
    assert!(
        gets.iter().all(|(_, range)| range.is_some()),
        "every blob GET to the registry is ranged: {gets:?}"
    );

    let mount_b = env.mount("b", &env.b);
    env.read_and_check(&mount_b, READ_FILE);
    env.wait_for_fills(&env.b);
    let from_peers = bytes_from_peers(&env.b);
    eprintln!("second mount: {from_peers} B from peers");
    assert_eq!(
        env.registry_bytes(),
        first,
        "the second mount's reads went to the registry instead of the first daemon"
    );
    assert!(
        from_peers >= read as f64,
        "the second daemon took {from_peers} B from peers for a {read} B read"
    );
    drop((mount_a, mount_b));
    env.cluster.assert_no_panics();
}

/// Prefetch on: after the first read the daemon fetches the rest of the blob, and the registry
/// serves the blob exactly once; the second mount then reads every file without the registry.
#[test]
fn nydus_with_prefetch_fetches_the_blob_once() {
    let Some(env) = setup("nydus-prefetch", Prefetch::On) else {
        return;
    };
    let blob_len = env.image.blob.len() as u64;
    let mount_a = env.mount("a", &env.a);
    env.read_and_check(&mount_a, READ_FILE);
    let whole_task_finished = || env.a.whole_tasks_finished() >= 1.0;
    assert!(
        wait_until(DEFAULT_DFGET_TIMEOUT, whole_task_finished),
        "the prefetch did not finish the blob's task"
    );
    env.wait_for_fills(&env.a);
    eprintln!(
        "blob {blob_len} B; registry served {} B",
        env.registry_bytes()
    );
    assert_eq!(
        env.registry_bytes(),
        blob_len,
        "range + prefetch should fetch the blob exactly once"
    );

    let mount_b = env.mount("b", &env.b);
    for i in 0..FILES {
        env.read_and_check(&mount_b, i);
    }
    env.wait_for_fills(&env.b);
    assert_eq!(
        env.registry_bytes(),
        blob_len,
        "the second mount's reads went to the registry"
    );
    drop((mount_a, mount_b));
    env.cluster.assert_no_panics();
}
