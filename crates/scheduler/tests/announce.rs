//! AnnouncePeer sequences against an in-process scheduler with a real tonic client.

mod common;

use std::time::{Duration, Instant};

use common::*;
use dragonfly_api::common::v2::Download;
use dragonfly_api::scheduler::v2::announce_peer_response::Response as PeerResponse;
use dragonfly_api::scheduler::v2::{StatPeerRequest, StatTaskRequest};

const URL: &str = "http://origin.example/file.bin";
const SIZE: u64 = 3 * PIECE_LENGTH;

#[tokio::test]
async fn full_sequence_and_close_after_finished() {
    let scheduler = TestScheduler::start(fast_config()).await;
    let mut client = scheduler.client().await;
    announce(&mut client, host("h1", "127.0.0.1", 4000, 0)).await;
    announce(&mut client, host("h2", "127.0.0.2", 4000, 0)).await;

    // First peer: no seed host, so it is the task's one back-to-source peer.
    let mut first = PeerStream::register(&mut client, "h1", "t1", "p1", download(URL, SIZE)).await;
    assert!(is_back_to_source(&first.next().await));
    first.complete_from_source(3).await;

    let task = client
        .stat_task(StatTaskRequest {
            host_id: "h1".into(),
            task_id: "t1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(task.state, "Succeeded");
    assert_eq!(task.content_length, SIZE);
    assert_eq!(task.piece_count, 3);
    assert!(task.has_available_peer);

    // Second peer gets the first as parent, with the host fields the client dials.
    let mut second = PeerStream::register(&mut client, "h2", "t1", "p2", download(URL, SIZE)).await;
    let decision = second.next().await;
    assert_eq!(parents(&decision), vec!["p1"]);
    let PeerResponse::NormalTaskResponse(normal) = &decision else {
        unreachable!()
    };
    let parent_host = normal.candidate_parents[0].host.clone().unwrap();
    assert_eq!(parent_host.id, "h1");
    assert_eq!(parent_host.ip, "127.0.0.1");
    assert_eq!(parent_host.port, 4000);
    assert_eq!(parent_host.download_port, 4000);
    assert!(parent_host.network.is_some());
    assert_eq!(normal.candidate_parents[0].state, "Succeeded");
    second.complete_from_parent("p1", 3).await;

    let peer = client
        .stat_peer(StatPeerRequest {
            host_id: "h2".into(),
            task_id: "t1".into(),
            peer_id: "p2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(peer.state, "Succeeded");
    scheduler.shutdown().await;
}

#[tokio::test]
async fn empty_task_gets_empty_response() {
    let scheduler = TestScheduler::start(fast_config()).await;
    let mut client = scheduler.client().await;
    announce(&mut client, host("h1", "127.0.0.1", 4000, 0)).await;
    let mut peer = PeerStream::register(&mut client, "h1", "empty", "p1", download(URL, 0)).await;
    assert!(matches!(
        peer.next().await,
        PeerResponse::EmptyTaskResponse(_)
    ));
    peer.started().await;
    peer.finished().await;
    peer.expect_closed().await;
    scheduler.shutdown().await;
}

#[tokio::test]
async fn without_seed_only_the_first_peer_goes_to_the_origin() {
    let scheduler = TestScheduler::start(fast_config()).await;
    let mut client = scheduler.client().await;
    announce_normal_hosts(&mut client, 4).await;
    let started = Instant::now();
    let mut first = PeerStream::register(&mut client, "h1", "t", "p1", download(URL, SIZE)).await;
    assert!(is_back_to_source(&first.next().await));
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "first peer must not wait"
    );
    first.back_to_source_started().await;

    // While the first peer is still downloading, the others get it as parent at once.
    let mut second = PeerStream::register(&mut client, "h2", "t", "p2", download(URL, SIZE)).await;
    assert_eq!(parents(&second.next().await), vec!["p1"]);
    second.started().await;
    let mut third = PeerStream::register(&mut client, "h3", "t", "p3", download(URL, SIZE)).await;
    let third_parents = parents(&third.next().await);
    assert!(
        third_parents.contains(&"p1".to_string()),
        "{third_parents:?}"
    );
    assert!(
        third_parents.contains(&"p2".to_string()),
        "{third_parents:?}"
    );

    let task = client
        .stat_task(StatTaskRequest {
            host_id: "h1".into(),
            task_id: "t".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(task.state, "Running");
    assert_eq!(task.peer_count, 3);
    drop(third);
    first.complete_from_source(3).await;
    scheduler.shutdown().await;
}

#[tokio::test]
async fn failed_source_lets_the_next_peer_go_back_to_source() {
    let scheduler = TestScheduler::start(fast_config()).await;
    let mut client = scheduler.client().await;
    announce(&mut client, host("h1", "127.0.0.1", 4000, 0)).await;
    announce(&mut client, host("h2", "127.0.0.2", 4000, 0)).await;
    let mut first = PeerStream::register(&mut client, "h1", "t", "p1", download(URL, SIZE)).await;
    assert!(is_back_to_source(&first.next().await));
    first
        .send(dragonfly_api::scheduler::v2::announce_peer_request::Request::DownloadPeerBackToSourceFailedRequest(
            dragonfly_api::scheduler::v2::DownloadPeerBackToSourceFailedRequest {
                description: Some("origin 500".into()),
            },
        ))
        .await;
    first.expect_closed().await;
    let mut second = PeerStream::register(&mut client, "h2", "t", "p2", download(URL, SIZE)).await;
    assert!(is_back_to_source(&second.next().await));
    scheduler.shutdown().await;
}

#[tokio::test]
async fn reschedule_blocklists_the_given_parents() {
    let mut config = fast_config();
    config.scheduler.retry_back_to_source_limit = 2;
    let scheduler = TestScheduler::start(config).await;
    let mut client = scheduler.client().await;
    announce_normal_hosts(&mut client, 3).await;
    let mut a = PeerStream::register(&mut client, "h1", "t", "a", download(URL, SIZE)).await;
    assert!(is_back_to_source(&a.next().await));
    a.back_to_source_started().await;
    let mut b = PeerStream::register(&mut client, "h2", "t", "b", download(URL, SIZE)).await;
    assert_eq!(parents(&b.next().await), vec!["a"]);
    b.started().await;
    let mut c = PeerStream::register(&mut client, "h3", "t", "c", download(URL, SIZE)).await;
    let mut first = parents(&c.next().await);
    first.sort();
    assert_eq!(first, vec!["a", "b"]);
    c.started().await;

    c.reschedule(&["a"]).await;
    assert_eq!(parents(&c.next().await), vec!["b"]);

    // With every parent blocklisted, after retryBackToSourceLimit rounds it goes to the origin.
    c.reschedule(&["b"]).await;
    assert!(is_back_to_source(&c.next().await));
    scheduler.shutdown().await;
}

#[tokio::test]
async fn bad_parent_by_piece_costs_is_not_offered_until_it_holds_the_task() {
    let mut config = fast_config();
    config.scheduler.retry_back_to_source_limit = 2;
    let scheduler = TestScheduler::start(config).await;
    let mut client = scheduler.client().await;
    announce_normal_hosts(&mut client, 4).await;
    // Parent of task "slow": its last piece took 100x the mean, and it is still downloading.
    let mut slow = PeerStream::register(&mut client, "h1", "slow", "s1", download(URL, SIZE)).await;
    assert!(is_back_to_source(&slow.next().await));
    slow.back_to_source_started().await;
    slow.piece_from_source(0, Duration::from_millis(10)).await;
    slow.piece_from_source(1, Duration::from_millis(10)).await;
    slow.piece_from_source(2, Duration::from_secs(1)).await;
    // Control, task "fast": same shape, normal costs, also still downloading.
    let other = "http://origin.example/other.bin";
    let mut fast =
        PeerStream::register(&mut client, "h1", "fast", "f1", download(other, SIZE)).await;
    assert!(is_back_to_source(&fast.next().await));
    fast.back_to_source_started().await;
    fast.piece_from_source(0, Duration::from_millis(10)).await;
    fast.piece_from_source(1, Duration::from_millis(12)).await;
    fast.piece_from_source(2, Duration::from_millis(11)).await;

    let mut child =
        PeerStream::register(&mut client, "h2", "fast", "f2", download(other, SIZE)).await;
    assert_eq!(parents(&child.next().await), vec!["f1"]);
    let mut child =
        PeerStream::register(&mut client, "h3", "slow", "s2", download(URL, SIZE)).await;
    // The only holder is bad while it downloads: no parent, so after the retries the child
    // fetches from the origin.
    assert!(is_back_to_source(&child.next().await));

    // Once it holds the whole task its costs say nothing about its upload: offered again.
    // (The scheduler closes a stream only after it took in every report before the end.)
    slow.back_to_source_finished().await;
    slow.expect_closed().await;
    let mut child =
        PeerStream::register(&mut client, "h4", "slow", "s3", download(URL, SIZE)).await;
    assert!(parents(&child.next().await).contains(&"s1".to_string()));
    scheduler.shutdown().await;
}

#[tokio::test]
async fn children_spread_across_parents() {
    let mut config = fast_config();
    config.scheduler.candidate_parent_limit = 1;
    let scheduler = TestScheduler::start(config).await;
    let mut client = scheduler.client().await;
    announce_normal_hosts(&mut client, 9).await;
    // Three finished parents: p1 from the origin, p2 and p3 from the swarm.
    let mut p1 = PeerStream::register(&mut client, "h1", "t", "p1", download(URL, SIZE)).await;
    assert!(is_back_to_source(&p1.next().await));
    p1.complete_from_source(3).await;
    for i in 2..=3 {
        let mut p = PeerStream::register(
            &mut client,
            &format!("h{i}"),
            "t",
            &format!("p{i}"),
            download(URL, SIZE),
        )
        .await;
        let parent = parents(&p.next().await).remove(0);
        p.complete_from_parent(&parent, 3).await;
    }
    // Six children in flight at once must not all land on one parent.
    let mut counts = std::collections::HashMap::new();
    let mut open = Vec::new();
    for i in 4..=9 {
        let mut c = PeerStream::register(
            &mut client,
            &format!("h{i}"),
            "t",
            &format!("c{i}"),
            download(URL, SIZE),
        )
        .await;
        let parent = parents(&c.next().await).remove(0);
        c.started().await;
        *counts.entry(parent).or_insert(0u32) += 1;
        open.push(c);
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|n| *n == 2), "{counts:?}");

    // Finishing children releases their parents' reserved bandwidth.
    for c in open.drain(..) {
        c.finished().await;
        let mut c = c;
        c.expect_closed().await;
    }
    scheduler.shutdown().await;
}

#[tokio::test]
async fn concurrent_first_registrations_send_exactly_one_peer_to_the_origin() {
    let scheduler = TestScheduler::start(fast_config()).await;
    let mut client = scheduler.client().await;
    let peers = 8;
    for i in 0..peers {
        announce(
            &mut client,
            host(&format!("h{i}"), &format!("127.0.1.{i}"), 4000, 0),
        )
        .await;
    }
    let mut joins = Vec::new();
    for i in 0..peers {
        let mut client = scheduler.client().await;
        joins.push(tokio::spawn(async move {
            let mut p = PeerStream::register(
                &mut client,
                &format!("h{i}"),
                "race",
                &format!("p{i}"),
                download(URL, SIZE),
            )
            .await;
            let decision = p.next().await;
            if is_back_to_source(&decision) {
                p.back_to_source_started().await;
            } else {
                p.started().await;
            }
            (decision, p)
        }));
    }
    let mut back_to_source = 0;
    let mut streams = Vec::new();
    for join in joins {
        let (decision, stream) = join.await.unwrap();
        if is_back_to_source(&decision) {
            back_to_source += 1;
        } else {
            assert!(!parents(&decision).is_empty());
        }
        streams.push(stream);
    }
    assert_eq!(back_to_source, 1, "the origin must serve the task once");
    drop(streams);
    scheduler.shutdown().await;
}

/// Peers registering one after another: p1 fetches the origin, p2 (an official client, no
/// pushes) and p3 (a Damselfly daemon) download from parents. When p4 picks them as parents,
/// the mesh makes p4 a parent of p3 too and pushes it; p2 and the back-to-source p1 get
/// nothing.
#[tokio::test]
async fn mesh_pushes_a_new_peer_to_its_parents_that_take_pushes() {
    let mut config = fast_config();
    config.scheduler.candidate_parent_limit = 3;
    let scheduler = TestScheduler::start(config).await;
    let mut client = scheduler.client().await;
    announce_normal_hosts(&mut client, 4).await;
    let mut p1 = PeerStream::register(&mut client, "h1", "t", "p1", download(URL, SIZE)).await;
    assert!(is_back_to_source(&p1.next().await));
    p1.back_to_source_started().await;
    let mut p2 = PeerStream::register(&mut client, "h2", "t", "p2", download(URL, SIZE)).await;
    assert_eq!(parents(&p2.next().await), vec!["p1"]);
    p2.started().await;
    let mut p3 =
        PeerStream::register_taking_pushes(&mut client, "h3", "t", "p3", download(URL, SIZE)).await;
    let mut p3_parents = parents(&p3.next().await);
    p3_parents.sort();
    assert_eq!(p3_parents, vec!["p1", "p2"]);
    // p3 registered after p2, and p2 takes no pushes: p2 hears nothing.
    p2.expect_quiet(Duration::from_millis(200)).await;

    let mut p4 = PeerStream::register(&mut client, "h4", "t", "p4", download(URL, SIZE)).await;
    let mut p4_parents = parents(&p4.next().await);
    p4_parents.sort();
    assert_eq!(p4_parents, vec!["p1", "p2", "p3"]);
    // p3 has its decision but has not started its round: the push waits for Started, so p3
    // cannot take it for an answer to anything.
    p3.expect_quiet(Duration::from_millis(200)).await;
    p3.started().await;
    assert_eq!(parents(&p3.next().await), vec!["p4"], "p3 gets p4 pushed");
    p2.expect_quiet(Duration::from_millis(200)).await;
    p1.expect_quiet(Duration::from_millis(50)).await;

    let p3_stat = client
        .stat_peer(StatPeerRequest {
            host_id: "h3".into(),
            task_id: "t".into(),
            peer_id: "p3".into(),
        })
        .await;
    assert!(p3_stat.is_ok());
    drop((p2, p3, p4));
    p1.complete_from_source(3).await;
    scheduler.shutdown().await;
}

/// With `parentGraph: dag` (Dragonfly's rule) nothing is pushed and no edge closes a cycle.
#[tokio::test]
async fn dag_graph_pushes_nothing() {
    let mut config = fast_config();
    config.scheduler.parent_graph = damselfly_scheduler::config::ParentGraph::Dag;
    let scheduler = TestScheduler::start(config).await;
    let mut client = scheduler.client().await;
    announce_normal_hosts(&mut client, 3).await;
    let mut p1 = PeerStream::register(&mut client, "h1", "t", "p1", download(URL, SIZE)).await;
    assert!(is_back_to_source(&p1.next().await));
    p1.back_to_source_started().await;
    let mut p2 =
        PeerStream::register_taking_pushes(&mut client, "h2", "t", "p2", download(URL, SIZE)).await;
    assert_eq!(parents(&p2.next().await), vec!["p1"]);
    p2.started().await;
    let mut p3 = PeerStream::register(&mut client, "h3", "t", "p3", download(URL, SIZE)).await;
    assert_eq!(parents(&p3.next().await).len(), 2);
    p2.expect_quiet(Duration::from_millis(200)).await;
    drop((p2, p3));
    p1.complete_from_source(3).await;
    scheduler.shutdown().await;
}

/// A daemon telling a restarted scheduler what it holds: a metadata-only peer is answered
/// MetadataOnly at once (no origin, no seed), its pieces make it a parent, and a second
/// announcement of the same host and task replaces the first instead of listing it twice.
#[tokio::test]
async fn metadata_only_peer_becomes_a_parent_without_any_origin_fetch() {
    let scheduler = TestScheduler::start(fast_config()).await;
    let mut client = scheduler.client().await;
    announce_normal_hosts(&mut client, 3).await;
    let held = || Download {
        metadata_only: true,
        ..download(URL, SIZE)
    };
    for peer_id in ["held-old", "held"] {
        let mut peer = PeerStream::register(&mut client, "h1", "t", peer_id, held()).await;
        assert!(
            matches!(peer.next().await, PeerResponse::MetadataOnlyResponse(_)),
            "a holder is not scheduled"
        );
        peer.complete_from_parent("local", 3).await;
    }
    let task = client
        .stat_task(StatTaskRequest {
            host_id: "h1".into(),
            task_id: "t".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(task.state, "Succeeded");
    assert_eq!(
        task.peer_count, 1,
        "the re-announcement replaced the old peer"
    );

    let mut new = PeerStream::register(&mut client, "h2", "t", "new", download(URL, SIZE)).await;
    assert_eq!(parents(&new.next().await), vec!["held"]);
    new.complete_from_parent("held", 3).await;
    scheduler.shutdown().await;
}
