//! The scheduler's in-memory world: hosts, tasks, peers and the per-task graph of parent→child
//! edges (a mesh by default, a DAG with `parentGraph: dag`). Everything here is synchronous and
//! runs under one mutex held by the service; no method awaits, so the lock is never held across
//! a suspension point.
//!
//! One [`State`], its methods grouped by concept:
//! - `hosts`: AnnounceHost, ListHosts, DeleteHost;
//! - `registration`: a peer joins a task; the priority rules of a first download;
//! - `seeding`: whether a task needs a seed peer, which seed host gets the job, its outcome;
//! - `scheduling`: one scheduling decision (back to source, or ranked candidate parents);
//! - `graph`: edges and the bandwidth they reserve, mesh back-edges, the outbox of pushes;
//! - `reports`: what a peer's stream reports (state events, pieces, reschedule, the end);
//! - `flow`: bytes per (parent, child) edge, per task source and per host, for the console;
//! - `digests`: trusted piece digests from the peers that fetched from the origin;
//! - `queries`: StatPeer, StatTask, deletes, and the protobuf views they answer with;
//! - `expiry`: the GC of hosts, peers and tasks.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use dragonfly_api::common::v2 as pb;
use rand::seq::SliceRandom;
use tonic::Status;

use crate::fsm::{PeerEvent, PeerState, SizeScope, TaskEvent, TaskState};
pub use crate::model::*;
use crate::scoring::{self, ChildFeatures, HostKind, ParentFeatures};
use crate::upload::UploadMeter;
pub use digests::{DigestReport, DigestSource, TrustedDigest};
pub use flow::{FlowEdge, HostTraffic, PeerFlow, PieceOrigin, TaskFlow};
pub use topup::{SLOW_PARENT_SHARE, TOP_UP_INTERVAL};

mod digests;
mod expiry;
#[cfg(test)]
mod fixtures;
mod flow;
mod graph;
mod hosts;
mod listing;
mod queries;
mod ranges;
mod registration;
mod reports;
mod scheduling;
mod seeding;
mod topup;

/// The maps keyed by ids that clients choose. Every piece report looks up about five of
/// them, and SipHash (std's default) was 3 % of a loaded scheduler's CPU; foldhash is several
/// times faster on short strings and still seeded at random per process, so a client cannot
/// pick ids that collide.
type IdMap<V> = HashMap<Id, V, foldhash::fast::RandomState>;

/// Hosts, tasks and peers.
#[derive(Debug)]
pub struct State {
    policy: Policy,
    hosts: IdMap<Host>,
    tasks: IdMap<Task>,
    /// Boxed: the table then holds 24 bytes per slot, not a whole `Peer`, and a hash table
    /// keeps up to half its slots empty.
    peers: IdMap<Box<Peer>>,
    /// Mesh edges made by the last decisions, for the service to push to their peers.
    outbox: Vec<Push>,
}

fn not_found_peer(peer_id: &str) -> Status {
    Status::not_found(format!("peer {peer_id} is not known to this scheduler"))
}

fn not_found_task(task_id: &str) -> Status {
    Status::not_found(format!("task {task_id} is not known to this scheduler"))
}

fn not_found_host(host_id: &str) -> Status {
    Status::not_found(format!(
        "host {host_id} is not known to this scheduler; call AnnounceHost first"
    ))
}

/// `http://ip:port` with IPv6 brackets.
pub fn host_endpoint(ip: &str, port: i32) -> String {
    if ip.contains(':') && !ip.starts_with('[') {
        format!("http://[{ip}]:{port}")
    } else {
        format!("http://{ip}:{port}")
    }
}

/// FNV-1a: a stable hash so a task keeps mapping to the same seed host across restarts.
fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl State {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            hosts: IdMap::default(),
            tasks: IdMap::default(),
            peers: IdMap::default(),
            outbox: Vec::new(),
        }
    }

    pub fn counts(&self) -> Counts {
        Counts {
            hosts: self.hosts.len(),
            tasks: self.tasks.len(),
            peers: self.peers.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{download, host, state};
    use super::*;

    /// `n` peers of task "t" on hosts h0..h{n-1}, each running and taking mesh pushes.
    pub(super) fn running_mesh(n: usize) -> State {
        let mut s = with_peers(n);
        for i in 0..n {
            let id = format!("p{i}");
            s.set_takes_pushes(&id);
            s.peer_event(&id, PeerEvent::Download).unwrap();
        }
        s
    }

    /// A 4 MiB piece `number` from `parent` that took `cost_ms`.
    pub(super) fn piece_from(parent: &str, number: u32, cost_ms: u64) -> pb::Piece {
        pb::Piece {
            number,
            parent_id: Some(parent.into()),
            length: 4 << 20,
            cost: Duration::from_millis(cost_ms).try_into().ok(),
            ..Default::default()
        }
    }

    fn with_peers(n: usize) -> State {
        let mut s = state();
        let now = Instant::now();
        for i in 0..n {
            s.announce_host(host(&format!("h{i}"), 0), now).unwrap();
            s.register(&format!("h{i}"), "t", &format!("p{i}"), download(), now)
                .unwrap();
        }
        s
    }

    fn ranged(start: u64, length: u64) -> pb::Download {
        pb::Download {
            range: Some(pb::Range { start, length }),
            ..download()
        }
    }

    /// Lazy reads: a ranged peer is sent to peers holding its pieces, else to the origin at
    /// once; whole-task peers never get a ranged peer as a parent.
    #[test]
    fn ranged_peers_take_parents_holding_their_pieces() {
        let mut s = state();
        let now = Instant::now();
        for h in ["h0", "h1", "h2"] {
            s.announce_host(host(h, 0), now).unwrap();
        }
        // p0 on h0 read piece 1 from the origin and finished.
        s.register("h0", "t", "p0", ranged(5 << 20, 1 << 20), now)
            .unwrap();
        assert!(s.peer("p0").unwrap().need_back_to_source.is_none());
        assert!(s.is_ranged("p0"));
        assert!(matches!(
            s.schedule_once("p0", 0, now),
            Step::Decided(Decision::BackToSource(_))
        ));
        s.piece_finished(
            "p0",
            &pb::Piece {
                number: 1,
                ..Default::default()
            },
            now,
        )
        .unwrap();
        s.finish("p0", Terminal::BackToSourceFinished, now).unwrap();

        // The same range elsewhere: p0 is its parent.
        s.register("h1", "t", "p1", ranged(5 << 20, 100), now)
            .unwrap();
        assert_eq!(s.find_candidate_parents("p1", now), vec![Id::from("p0")]);
        // Another range: p0 has none of it, so the origin, at once.
        s.register("h1", "t", "p2", ranged(40 << 20, 100), now)
            .unwrap();
        assert!(s.find_candidate_parents("p2", now).is_empty());
        assert!(matches!(
            s.schedule_once("p2", 0, now),
            Step::Decided(Decision::BackToSource(_))
        ));
        // A whole-task peer does not take p0 (it holds 1 piece of 16).
        s.register("h2", "t", "p3", download(), now).unwrap();
        assert!(s.find_candidate_parents("p3", now).is_empty());
    }

    #[test]
    fn cycle_is_detected() {
        let mut s = with_peers(3);
        s.add_edge("p0", "p1");
        s.add_edge("p1", "p2");
        assert!(s.creates_cycle("p2", "p0"));
        assert!(s.creates_cycle("p1", "p0"));
        assert!(!s.creates_cycle("p0", "p2"));
    }

    #[test]
    fn edges_reserve_and_release_bandwidth() {
        let mut s = with_peers(3);
        let per_edge = scoring::edge_bandwidth(4 << 20, 8);
        s.add_edge("p0", "p1");
        s.add_edge("p0", "p2");
        assert_eq!(s.host("h0").unwrap().assigned_tx_bandwidth, 2 * per_edge);
        assert_eq!(s.host("h0").unwrap().active_children, 2);
        s.peer_event("p1", PeerEvent::Download).unwrap();
        s.finish("p1", Terminal::Finished, Instant::now()).unwrap();
        assert_eq!(s.host("h0").unwrap().assigned_tx_bandwidth, per_edge);
        s.delete_peer("p2").unwrap();
        assert_eq!(s.host("h0").unwrap().assigned_tx_bandwidth, 0);
        assert_eq!(s.host("h0").unwrap().active_children, 0);
    }

    #[test]
    fn first_peer_goes_to_source_without_seed() {
        let mut s = state();
        s.announce_host(host("h0", 0), Instant::now()).unwrap();
        s.announce_host(host("h1", 0), Instant::now()).unwrap();
        s.register("h0", "t", "p0", download(), Instant::now())
            .unwrap();
        assert_eq!(
            s.peer("p0").unwrap().need_back_to_source,
            Some(OriginReason::FirstInCluster)
        );
        s.register("h1", "t", "p1", download(), Instant::now())
            .unwrap();
        assert!(s.peer("p1").unwrap().need_back_to_source.is_none());
    }

    #[test]
    fn seed_host_gets_a_job_once() {
        let mut s = state();
        let now = Instant::now();
        s.announce_host(host("seed", 1), now).unwrap();
        s.announce_host(host("h0", 0), now).unwrap();
        s.announce_host(host("h1", 0), now).unwrap();
        let job = s
            .register("h0", "t", "p0", download(), now)
            .unwrap()
            .seed_job;
        let job = job.unwrap();
        assert_eq!(job.endpoint, "http://127.0.0.1:4000");
        assert!(job.download.need_back_to_source);
        assert!(s.peer("p0").unwrap().need_back_to_source.is_none());
        assert!(s.seed_on_its_way("t", now));
        // The task is running now; the second peer neither triggers nor goes to the origin.
        let second = s.register("h1", "t", "p1", download(), now).unwrap();
        assert!(second.seed_job.is_none());
        assert!(matches!(s.schedule_once("p1", 0, now), Step::Wait));
        s.seed_trigger_failed("t", "seed", now);
        // First one to ask after the failure becomes the source; the next one waits for it.
        match s.schedule_once("p1", 0, now) {
            Step::Decided(Decision::BackToSource(why)) => {
                assert_eq!(OriginReason::parse(&why), OriginReason::NoSeedPeer);
                assert_eq!(
                    s.peer("p1").unwrap().origin_reason,
                    Some(OriginReason::NoSeedPeer)
                );
            }
            other => panic!("expected back to source, got {other:?}"),
        }
        assert!(matches!(
            s.schedule_once("p0", 0, now),
            Step::Decided(Decision::Normal(_))
        ));
    }

    #[test]
    fn a_prefetch_nobody_provides_goes_to_the_origin_not_a_seed() {
        let mut s = state();
        let now = Instant::now();
        s.announce_host(host("seed", 1), now).unwrap();
        s.announce_host(host("h0", 0), now).unwrap();
        s.announce_host(host("h1", 0), now).unwrap();
        let mut prefetch = download();
        prefetch.is_prefetch = true;
        let registered = s.register("h0", "t", "p0", prefetch.clone(), now).unwrap();
        assert!(
            registered.seed_job.is_none(),
            "a prefetch triggered the seed"
        );
        assert_eq!(
            s.peer("p0").unwrap().need_back_to_source,
            Some(OriginReason::Forced {
                by: registration::PREFETCH_SOURCE.into()
            })
        );
        // The task has a source now: another host's prefetch takes it from peers.
        let second = s.register("h1", "t", "p1", prefetch, now).unwrap();
        assert!(second.seed_job.is_none());
        assert!(s.peer("p1").unwrap().need_back_to_source.is_none());
    }

    #[test]
    fn credentials_reach_the_seed_but_not_stat_answers() {
        let mut s = state();
        let now = Instant::now();
        s.announce_host(host("seed", 1), now).unwrap();
        s.announce_host(host("h0", 0), now).unwrap();
        let mut with_token = download();
        with_token.request_header = [
            ("Authorization", "Bearer secret-token"),
            ("Cookie", "session=secret"),
            ("Accept", "application/octet-stream"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let job = s
            .register("h0", "t", "p0", with_token, now)
            .unwrap()
            .seed_job
            .unwrap();
        // The seed fetches from the origin for the task, with the requester's credentials.
        assert_eq!(
            job.download
                .request_header
                .get("Authorization")
                .map(String::as_str),
            Some("Bearer secret-token")
        );
        for answer in [
            format!("{:?}", s.stat_task("t").unwrap()),
            format!("{:?}", s.stat_peer("p0").unwrap()),
            format!("{job:?}"),
        ] {
            assert!(!answer.contains("secret"), "{answer}");
        }
        let task = s.stat_task("t").unwrap();
        assert_eq!(task.request_header.len(), 1, "{:?}", task.request_header);
    }

    #[test]
    fn concurrent_registrations_send_one_peer_to_the_origin() {
        let mut s = with_peers(2);
        let now = Instant::now();
        // p1 runs its scheduling round before p0 (registered first) ran its own.
        assert!(matches!(s.schedule_once("p1", 0, now), Step::Retry));
        assert!(matches!(
            s.schedule_once("p0", 0, now),
            Step::Decided(Decision::BackToSource(_))
        ));
        match s.schedule_once("p1", 1, now) {
            Step::Decided(Decision::Normal(parents)) => assert_eq!(parents[0].id, "p0"),
            other => panic!("expected p0 as parent, got {other:?}"),
        }
    }

    #[test]
    fn priority_rules_for_first_download() {
        let mut s = state();
        let now = Instant::now();
        s.announce_host(host("seed", 1), now).unwrap();
        s.announce_host(host("h0", 0), now).unwrap();
        let level = |p: pb::Priority| pb::Download {
            priority: p as i32,
            ..download()
        };
        let err = s
            .register("h0", "t", "p0", level(pb::Priority::Level1), now)
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        let err = s
            .register("h0", "t", "p0", level(pb::Priority::Level2), now)
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert!(s.task("t").is_none());
        let r = s
            .register("h0", "t", "p0", level(pb::Priority::Level3), now)
            .unwrap();
        assert!(r.seed_job.is_none());
        assert_eq!(
            s.peer("p0").unwrap().need_back_to_source,
            Some(OriginReason::Forced {
                by: "priority LEVEL3".into()
            })
        );
    }

    #[test]
    fn piece_reports_measure_the_parents_upload_and_list_hosts_shows_it() {
        let mut s = with_peers(3);
        let t0 = Instant::now();
        let piece = |parent: &str, number: u32| pb::Piece {
            number,
            parent_id: Some(parent.into()),
            length: 4 << 20,
            // 4 MiB in 3.36 s: 10 Mbit/s.
            cost: Duration::from_millis(3355).try_into().ok(),
            ..Default::default()
        };
        for i in 0..3 {
            let now = t0 + Duration::from_millis(3355 * (i + 1));
            s.piece_finished("p1", &piece("p0", i as u32), now).unwrap();
        }
        let now = t0 + Duration::from_millis(3355 * 3);
        let tx = |s: &State, id: &str| {
            s.list_hosts(None, now)
                .into_iter()
                .find(|h| h.id == id)
                .and_then(|h| h.network)
                .and_then(|n| n.tx_bandwidth)
        };
        let measured = tx(&s, "h0").unwrap();
        assert!((8_000_000..=12_000_000).contains(&measured), "{measured}");
        // Nobody got anything from h2: nothing measured, nothing made up.
        assert_eq!(tx(&s, "h2"), None);
        // A piece from the origin (no parent) measures no host.
        let from_origin = pb::Piece {
            parent_id: None,
            ..piece("", 5)
        };
        s.piece_finished("p2", &from_origin, now).unwrap();
        assert_eq!(tx(&s, "h2"), None);
    }

    /// A decision in a task larger than `filterParentLimit` samples the whole task, not the
    /// peers that registered first, and always looks at the task's seed.
    #[test]
    fn decisions_sample_the_whole_task_and_every_seed() {
        let mut s = state();
        let now = Instant::now();
        s.announce_host(host("seed", 1), now).unwrap();
        s.register("seed", "t", "ps", download(), now).unwrap();
        let mut done = vec!["ps".to_string()];
        for i in 0..40 {
            s.announce_host(host(&format!("h{i}"), 0), now).unwrap();
            s.register(&format!("h{i}"), "t", &format!("p{i}"), download(), now)
                .unwrap();
            done.push(format!("p{i}"));
        }
        for id in &done {
            s.peer_event(id, PeerEvent::DownloadBackToSource).unwrap();
            s.finish(id, Terminal::BackToSourceFinished, now).unwrap();
        }
        s.announce_host(host("hc", 0), now).unwrap();
        s.register("hc", "t", "c", download(), now).unwrap();
        let mut chosen = HashSet::new();
        for _ in 0..300 {
            let parents = s.find_candidate_parents("c", now);
            assert!(parents.iter().any(|id| &**id == "ps"), "{parents:?}");
            chosen.extend(parents.into_iter().filter(|id| &**id != "ps"));
        }
        // 3 of 40 at a time: one peer missed in 300 decisions has a chance of about e^-23.
        assert_eq!(chosen.len(), 40, "{chosen:?}");
    }

    /// A report the scheduler refuses (the peer already finished) counts nothing: not the
    /// piece, not the parent host's upload, not the bytes by source.
    #[test]
    fn a_refused_piece_report_counts_nothing() {
        let mut s = with_peers(2);
        let now = Instant::now();
        s.peer_event("p1", PeerEvent::DownloadBackToSource).unwrap();
        s.finish("p1", Terminal::BackToSourceFinished, now).unwrap();
        let piece = piece_from("p0", 3, 40);
        let err = s
            .piece_report("p1", &piece, &PieceOrigin::of(&piece), now)
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert_eq!(s.host("h0").unwrap().upload.bits_per_second(now), None);
        assert_eq!(s.host("h0").unwrap().traffic, HostTraffic::default());
        assert_eq!(s.task("t").unwrap().flow, TaskFlow::default());
        assert!(!s.peer("p1").unwrap().finished_pieces.contains(3));
    }

    #[test]
    fn ipv6_endpoint_is_bracketed() {
        assert_eq!(host_endpoint("::1", 4000), "http://[::1]:4000");
        assert_eq!(host_endpoint("10.0.0.1", 4000), "http://10.0.0.1:4000");
    }
}
