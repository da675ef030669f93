//! damselfly-loadgen: drives one real `dfscheduler` over gRPC on loopback with thousands of
//! synthetic hosts and peers, and measures it (issue 14, scheduler scale).
//!
//! 1. announces every host (`AnnounceHost`);
//! 2. runs every peer's AnnouncePeer stream (`peer`), at most `--concurrency` at once over
//!    `--connections` HTTP/2 connections;
//! 3. prints one `RESULT key=value ...` line: decisions per second, p50/p99 decision latency
//!    (register sent to the first response), piece reports per second, and the scheduler's
//!    memory per host and per peer (`--scheduler-pid`, from `/proc/<pid>/status`).
//!
//! Bounded in count (hosts × peers per host) and in time (`--max-seconds`): it stops by itself
//! and reports what it got.

mod cluster;
mod measure;
mod peer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use dragonfly_api::scheduler::v2::scheduler_client::SchedulerClient;
use dragonfly_api::scheduler::v2::AnnounceHostRequest;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use cluster::Cluster;
use measure::{CpuTime, Memory, Report, Totals};
use peer::{Arrivals, Pace};

/// Hosts per task when `--tasks` is not given: 100 peers per task at 5 peers per host.
pub const DEFAULT_HOSTS_PER_TASK: usize = 20;
/// AnnounceHost calls in flight at once.
pub const ANNOUNCE_CONCURRENCY: usize = 256;
/// Connecting to the scheduler gives up after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(
    name = "damselfly-loadgen",
    about = "Load a dfscheduler with synthetic hosts and peers"
)]
struct Args {
    /// The scheduler's gRPC address
    #[arg(long, default_value = "127.0.0.1:8002")]
    scheduler: SocketAddr,
    /// The scheduler's process id, for its memory (VmRSS, VmHWM)
    #[arg(long)]
    scheduler_pid: Option<u32>,
    /// Synthetic hosts
    #[arg(long, default_value_t = 1000)]
    hosts: usize,
    /// Peers (downloads) per host, each of a different task
    #[arg(long, default_value_t = 5)]
    peers_per_host: usize,
    /// Tasks [default: hosts / 20]
    #[arg(long)]
    tasks: Option<usize>,
    /// Pieces per task (4 MiB each)
    #[arg(long, default_value_t = 16)]
    pieces: u32,
    /// HTTP/2 connections to the scheduler, shared by all streams
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// AnnouncePeer streams open at once; with --piece-interval-ms this sets the offered
    /// load (500 streams reporting every 20 ms: 25,000 piece reports per second)
    #[arg(long, default_value_t = 500)]
    concurrency: usize,
    /// Milliseconds a peer waits before each piece report (its "download" of the piece), on
    /// average
    #[arg(long, default_value_t = 20)]
    piece_interval_ms: u64,
    /// How the reports of the peers downloading at once line up: `poisson` (independent
    /// peers) or `lockstep` (every peer's report in one burst per interval, a worst case)
    #[arg(long, value_enum, default_value_t = Arrivals::Poisson)]
    arrivals: Arrivals,
    /// One peer's stream gives up after this many seconds
    #[arg(long, default_value_t = 120)]
    peer_timeout_seconds: u64,
    /// The peer phase stops (and reports what it got) after this many seconds
    #[arg(long, default_value_t = 600)]
    max_seconds: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let tasks = args
        .tasks
        .unwrap_or(args.hosts / DEFAULT_HOSTS_PER_TASK)
        .max(args.peers_per_host);
    let cluster = Arc::new(Cluster::new(
        args.hosts,
        tasks,
        args.peers_per_host,
        args.pieces,
    ));
    let channels = connect(args.scheduler, args.connections.max(1)).await?;
    let base = Memory::of(args.scheduler_pid);

    let started = Instant::now();
    announce_hosts(&cluster, &channels).await?;
    let announce_time = started.elapsed();
    let after_hosts = Memory::of(args.scheduler_pid);
    eprintln!(
        "loadgen: {} hosts announced in {announce_time:.2?}; running {} peers of {} tasks",
        args.hosts,
        cluster.peer_count(),
        cluster.tasks.len()
    );

    let sched_before = args.scheduler_pid.map(CpuTime::of);
    let own_before = CpuTime::of_self();
    let started = Instant::now();
    let totals = run_peers(&cluster, &channels, &args).await;
    let peer_time = started.elapsed();
    let loadgen_cpu = CpuTime::of_self().since(own_before);
    let scheduler_cpu = args
        .scheduler_pid
        .zip(sched_before)
        .map(|(pid, before)| CpuTime::of(pid).since(before));
    let after_peers = Memory::of(args.scheduler_pid);
    if let Some(error) = &totals.first_error {
        eprintln!("loadgen: {} peers failed; first: {error}", totals.errors);
    }
    let mut report = Report {
        hosts: args.hosts,
        tasks: cluster.tasks.len(),
        totals,
        announce_time,
        peer_time,
        base,
        after_hosts,
        after_peers,
        scheduler_cpu,
        loadgen_cpu,
    };
    println!("{}", report.line());
    Ok(())
}

async fn connect(addr: SocketAddr, count: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to the scheduler at {addr}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

async fn announce_hosts(cluster: &Cluster, channels: &[Channel]) -> anyhow::Result<()> {
    let limit = Arc::new(Semaphore::new(ANNOUNCE_CONCURRENCY));
    let mut calls = JoinSet::new();
    for (i, host) in cluster.hosts.iter().enumerate() {
        let permit = limit.clone().acquire_owned().await?;
        let mut client = SchedulerClient::new(channels[i % channels.len()].clone());
        let request = AnnounceHostRequest {
            host: Some(host.clone()),
            interval: Duration::from_secs(30).try_into().ok(),
        };
        calls.spawn(async move {
            let _permit = permit;
            client.announce_host(request).await
        });
    }
    while let Some(done) = calls.join_next().await {
        done?.context("AnnounceHost")?;
    }
    Ok(())
}

/// Every peer, at most `concurrency` at once, until all ended or `max_seconds` passed.
async fn run_peers(cluster: &Arc<Cluster>, channels: &[Channel], args: &Args) -> Totals {
    let pace = Pace {
        piece_interval: Duration::from_millis(args.piece_interval_ms),
        arrivals: args.arrivals,
        timeout: Duration::from_secs(args.peer_timeout_seconds),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.max_seconds);
    let limit = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut peers = JoinSet::new();
    let mut totals = Totals::default();
    for k in 0..cluster.peer_count() {
        let permit = tokio::select! {
            permit = limit.clone().acquire_owned() => permit,
            () = tokio::time::sleep_until(deadline) => break,
        };
        let (Ok(permit), Some(plan)) = (permit, cluster.peer(k)) else {
            break;
        };
        let client = SchedulerClient::new(channels[k % channels.len()].clone());
        // The first `concurrency` peers register together, in one burst.
        let first_wave = k < args.concurrency;
        peers.spawn(async move {
            let _permit = permit;
            let mut outcome = peer::run(client, plan, pace).await;
            outcome.first_wave = first_wave;
            outcome
        });
        // Reap as we go, so the outcomes do not pile up in the set.
        while let Some(Ok(outcome)) = peers.try_join_next() {
            totals.add(outcome);
        }
    }
    loop {
        let next = tokio::select! {
            next = peers.join_next() => next,
            () = tokio::time::sleep_until(deadline) => {
                eprintln!("loadgen: --max-seconds reached; {} peers still running are stopped", peers.len());
                peers.abort_all();
                break;
            }
        };
        match next {
            Some(Ok(outcome)) => totals.add(outcome),
            Some(Err(_)) => totals.errors += 1,
            None => break,
        }
    }
    totals
}
