//! The conversation in virtual time: each test is a script of events at instants given as
//! offsets from a base, with the actions expected back. No sockets, no sleeps.

use super::round::{MIN_PENDING_FOR_REFRESH, SEED_ONLY_REFRESH_AFTER};
use super::*;
use crate::dispatch::INITIAL_PIECE_TIME;
use dragonfly_api::common::v2::Host;
use std::collections::BTreeMap;

const PIECE: u64 = 4 << 20;
const STALL: Duration = Duration::from_secs(30);
const SCHEDULE: Duration = Duration::from_secs(10);

/// A conversation and a virtual clock.
struct Script {
    conversation: Conversation,
    base: Instant,
    now: Instant,
}

impl Script {
    /// A download of `pieces` pieces, registered at the base instant; returns the script and
    /// the first actions.
    fn new(pieces: u32, concurrency: usize, max_schedule_count: u32) -> (Self, Vec<Action>) {
        let settings = Settings {
            concurrency,
            collected_piece_timeout: STALL,
            schedule_timeout: SCHEDULE,
            max_schedule_count,
        };
        let missing: BTreeMap<u32, PieceSpan> = (0..pieces)
            .map(|number| {
                let offset = u64::from(number) * PIECE;
                let length = PIECE;
                (
                    number,
                    PieceSpan {
                        number,
                        offset,
                        length,
                    },
                )
            })
            .collect();
        let base = Instant::now();
        let (conversation, first) = Conversation::start(base, settings, missing, 7);
        let script = Self {
            conversation,
            base,
            now: base,
        };
        (script, first)
    }

    /// Moves the clock to `ms` milliseconds after the base.
    fn at(&mut self, ms: u64) -> &mut Self {
        self.now = self.base + Duration::from_millis(ms);
        self
    }

    fn feed(&mut self, event: Event) -> Vec<Action> {
        self.conversation.on(self.now, event)
    }

    fn decide(&mut self, parents: &[Peer]) -> Vec<Action> {
        self.feed(Event::Scheduler(Decision::Normal(parents.to_vec())))
    }

    fn offer(&mut self, parent: usize, number: u32) -> Vec<Action> {
        self.feed(Event::PieceAvailable {
            parent: ParentKey(parent),
            number,
            vortex: vortex(parent),
        })
    }

    fn land(&mut self, parent: usize, number: u32) -> Vec<Action> {
        self.feed(Event::PieceFetched {
            parent: ParentKey(parent),
            number,
            cost: Duration::from_millis(100),
            delivery: Delivery::Whole,
        })
    }

    fn fail(&mut self, parent: usize, number: u32, fault: Fault) -> Vec<Action> {
        self.feed(Event::PieceFailed {
            parent: ParentKey(parent),
            number,
            fault,
            error: "connection reset".into(),
        })
    }

    fn drained(&mut self) -> Vec<Action> {
        self.feed(Event::SchedulerDrained)
    }

    fn ms(&self, ms: u64) -> Instant {
        self.base + Duration::from_millis(ms)
    }
}

fn peer(id: &str, index: u16, host_type: u32) -> Peer {
    Peer {
        id: id.into(),
        host: Some(Host {
            ip: "127.0.0.1".into(),
            port: i32::from(4000 + index),
            r#type: host_type,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn normal(id: &str, index: u16) -> Peer {
    peer(id, index, 0)
}

fn seed(id: &str, index: u16) -> Peer {
    peer(id, index, 1)
}

fn vortex(parent: usize) -> damselfly_transfer::PieceServer {
    damselfly_transfer::PieceServer::Tcp(SocketAddr::from(([127, 0, 0, 1], 5000 + parent as u16)))
}

/// The (parent, piece) pairs of the Fetch actions.
fn fetches(actions: &[Action]) -> Vec<(usize, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Fetch { parent, span, .. } => Some((parent.0, span.number)),
            _ => None,
        })
        .collect()
}

/// The parents opened.
fn opened(actions: &[Action]) -> Vec<usize> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::OpenParent { parent, .. } => Some(parent.0),
            _ => None,
        })
        .collect()
}

fn reschedule_of(actions: &[Action]) -> Option<(Vec<String>, String)> {
    actions.iter().find_map(|a| match a {
        Action::Reschedule {
            failed,
            description,
        } => Some((
            failed.iter().map(|p| p.id.clone()).collect(),
            description.clone(),
        )),
        _ => None,
    })
}

/// A piece from `parent` stored after `cost`, sent whole.
fn landed(parent: usize, number: u32, cost: Duration) -> Event {
    Event::PieceFetched {
        parent: ParentKey(parent),
        number,
        cost,
        delivery: Delivery::Whole,
    }
}

fn open(parent: usize, interested: Vec<u32>) -> Action {
    Action::OpenParent {
        parent: ParentKey(parent),
        grpc: SocketAddr::from(([127, 0, 0, 1], 4000 + parent as u16)),
        interested,
    }
}

#[test]
fn waits_for_the_first_decision_then_downloads_and_finishes() {
    let (mut s, first) = Script::new(1, 4, 3);
    assert_eq!(first, vec![Action::WakeAt(s.ms(10_000))]);
    let actions = s.at(5).decide(&[normal("a", 0)]);
    assert_eq!(
        actions,
        vec![
            Action::ReportStarted,
            open(0, vec![0]),
            Action::WakeAt(s.ms(5) + STALL)
        ]
    );
    assert_eq!(fetches(&s.at(10).offer(0, 0)), vec![(0, 0)]);
    assert_eq!(
        s.at(20).land(0, 0),
        vec![
            Action::ReportPieceFinished { number: 0 },
            Action::EndRound,
            Action::Finish
        ]
    );
    assert!(s.at(30).feed(Event::Tick).is_empty(), "done is done");
}

#[test]
fn no_decision_in_time_goes_to_the_origin_unreported() {
    let (mut s, _) = Script::new(2, 4, 3);
    assert_eq!(
        s.at(9_999).feed(Event::Tick),
        vec![Action::WakeAt(s.ms(10_000))]
    );
    assert_eq!(
        s.at(10_000).feed(Event::Tick),
        vec![Action::BackToSource {
            reason: OriginReason::NoScheduler {
                detail: "no scheduling decision within 10s".into()
            },
            link: SchedulerLink::Lost,
        }]
    );
}

#[test]
fn collected_piece_timeout_asks_for_a_reschedule() {
    let (mut s, _) = Script::new(3, 4, 3);
    s.at(0).decide(&[normal("a", 0)]);
    let stall_ms = STALL.as_millis() as u64;
    assert_eq!(
        s.at(stall_ms - 1).feed(Event::Tick),
        vec![Action::WakeAt(s.ms(stall_ms))]
    );
    assert_eq!(
        s.at(stall_ms).feed(Event::Tick),
        vec![Action::EndRound, Action::DrainScheduler]
    );
    assert_eq!(
        s.drained(),
        vec![
            Action::Reschedule {
                failed: vec![],
                description: "3 pieces missing after a parent round".into()
            },
            Action::WakeAt(s.ms(stall_ms) + SCHEDULE)
        ]
    );
}

#[test]
fn back_to_source_after_max_schedule_count() {
    let (mut s, _) = Script::new(3, 4, 2);
    s.at(0).decide(&[normal("a", 0)]);
    let stall_ms = STALL.as_millis() as u64;
    s.at(stall_ms).feed(Event::Tick);
    assert!(reschedule_of(&s.drained()).is_some());
    let second = s.at(stall_ms + 1).decide(&[normal("a", 0)]);
    assert!(!second.contains(&Action::ReportStarted), "Started once");
    assert_eq!(opened(&second), vec![0]);
    assert_eq!(
        s.at(2 * stall_ms + 1).feed(Event::Tick),
        vec![Action::EndRound, Action::DrainScheduler]
    );
    assert_eq!(
        s.drained(),
        vec![Action::BackToSource {
            reason: OriginReason::ParentsFailed {
                last_error: "2 scheduling decisions left pieces missing".into()
            },
            link: SchedulerLink::Reachable,
        }]
    );
}

#[test]
fn parents_that_failed_name_their_last_error_when_the_origin_takes_over() {
    let (mut s, _) = Script::new(1, 4, 1);
    s.at(0).decide(&[normal("a", 0)]);
    assert_eq!(fetches(&s.at(1).offer(0, 0)), vec![(0, 0)]);
    // Its only parent's stream breaks: the round ends, and the decisions are used up.
    let broken = s.at(2).feed(Event::SyncEnded {
        parent: ParentKey(0),
        error: Some("stream reset".into()),
    });
    assert!(broken.contains(&Action::EndRound), "{broken:?}");
    assert_eq!(
        s.drained(),
        vec![Action::BackToSource {
            reason: OriginReason::ParentsFailed {
                last_error: "stream reset".into()
            },
            link: SchedulerLink::Reachable,
        }]
    );
}

#[test]
fn a_scheduler_description_is_read_as_a_reason() {
    let (mut s, _) = Script::new(2, 4, 3);
    let described = |text: &str| Event::Scheduler(Decision::BackToSource(Some(text.into())));
    assert_eq!(
        s.at(0).feed(described(
            "first-in-cluster: no other peer holds the task yet"
        )),
        vec![Action::BackToSource {
            reason: OriginReason::FirstInCluster,
            link: SchedulerLink::Reachable,
        }]
    );
    let (mut s, _) = Script::new(2, 4, 3);
    assert_eq!(
        s.at(0).feed(described("peer needs back-to-source")),
        vec![Action::BackToSource {
            reason: OriginReason::Other {
                description: "peer needs back-to-source".into()
            },
            link: SchedulerLink::Reachable,
        }]
    );
}

#[test]
fn a_parent_lost_mid_piece_hands_the_piece_to_another() {
    let (mut s, _) = Script::new(1, 4, 3);
    s.at(0).decide(&[normal("a", 0), normal("b", 1)]);
    assert_eq!(fetches(&s.at(1).offer(0, 0)), vec![(0, 0)]);
    assert!(
        fetches(&s.at(2).offer(1, 0)).is_empty(),
        "already in flight"
    );
    // a's stream breaks while its piece is in flight: a is dropped, the piece keeps going.
    let broken = s.at(3).feed(Event::SyncEnded {
        parent: ParentKey(0),
        error: Some("reset".into()),
    });
    assert!(broken.contains(&Action::DropParent {
        parent: ParentKey(0)
    }));
    // Then the piece fails: reported, and fetched from b.
    let failed = s.at(4).fail(0, 0, Fault::Parent);
    assert!(failed.contains(&Action::ReportPieceFailed {
        number: 0,
        parent_id: "a".into(),
        failure: PieceFailure::Temporary,
    }));
    assert_eq!(fetches(&failed), vec![(1, 0)]);
    assert_eq!(
        s.at(5).land(1, 0),
        vec![
            Action::ReportPieceFinished { number: 0 },
            Action::EndRound,
            Action::Finish
        ]
    );
}

#[test]
fn a_forged_piece_reports_and_drops_its_parent_at_once() {
    let (mut s, _) = Script::new(2, 4, 3);
    s.at(0).decide(&[normal("liar", 0), normal("honest", 1)]);
    assert_eq!(
        fetches(&[s.offer(0, 0), s.offer(0, 1)].concat()),
        vec![(0, 0), (0, 1)]
    );
    s.offer(1, 0);
    s.offer(1, 1);
    // One bad piece is enough: reported as not temporary, parent dropped, piece refetched
    // from the honest parent.
    let forged = s.at(1).fail(0, 0, Fault::Forged);
    assert!(forged.contains(&Action::ReportPieceFailed {
        number: 0,
        parent_id: "liar".into(),
        failure: PieceFailure::Forged,
    }));
    assert!(forged.contains(&Action::DropParent {
        parent: ParentKey(0)
    }));
    assert_eq!(fetches(&forged), vec![(1, 0)]);
    // The liar's other piece in flight may land only if it passed its check; it fails too.
    let second = s.at(2).fail(0, 1, Fault::Forged);
    assert_eq!(fetches(&second), vec![(1, 1)]);
    s.at(3).land(1, 0);
    assert!(s
        .at(4)
        .land(1, 1)
        .ends_with(&[Action::EndRound, Action::Finish]));
}

#[test]
fn a_parent_that_stops_forwarding_an_arriving_piece_is_neither_blamed_nor_forgotten() {
    let (mut s, _) = Script::new(1, 1, 3);
    s.at(0).decide(&[normal("relay", 0), normal("slow", 1)]);
    assert_eq!(fetches(&s.offer(0, 0)), vec![(0, 0)]);
    s.offer(1, 0);
    // The relay's own fetch of the piece failed: the piece goes to the other holder, the
    // relay is not reported and keeps its place.
    let withdrawn = s.at(1).fail(0, 0, Fault::Withdrawn);
    assert!(
        !withdrawn.iter().any(|a| matches!(
            a,
            Action::ReportPieceFailed { .. } | Action::DropParent { .. }
        )),
        "{withdrawn:?}"
    );
    assert_eq!(fetches(&withdrawn), vec![(1, 0)]);
    // It announces the piece again once whole, and is a holder again.
    assert!(
        fetches(&s.at(2).offer(0, 0)).is_empty(),
        "one fetch per piece"
    );
    // The other holder fails it: back to the relay.
    assert_eq!(fetches(&s.at(3).fail(1, 0, Fault::Parent)), vec![(0, 0)]);
}

#[test]
fn a_forger_is_kept_out_of_later_rounds_and_pushes() {
    let (mut s, _) = Script::new(2, 1, 5);
    s.at(0).decide(&[normal("liar", 0)]);
    assert_eq!(fetches(&s.offer(0, 0)), vec![(0, 0)]);
    let forged = s.at(1).fail(0, 0, Fault::Forged);
    assert!(forged.ends_with(&[Action::EndRound, Action::DrainScheduler]));
    let (failed, _) = reschedule_of(&s.drained()).expect("a reschedule");
    assert_eq!(failed, vec!["liar".to_string()]);
    // The scheduler offers it again with another parent: only the other one is opened.
    let next = s.at(2).decide(&[normal("liar", 0), normal("other", 1)]);
    assert_eq!(opened(&next), vec![0]);
    let Some(Action::OpenParent { grpc, .. }) =
        next.iter().find(|a| matches!(a, Action::OpenParent { .. }))
    else {
        panic!("a parent opened: {next:?}");
    };
    assert_eq!(grpc.port(), 4001, "the other parent, not the liar");
    // A push of the liar mid-round is ignored too.
    let pushed = s.at(3).decide(&[normal("liar", 0)]);
    assert!(opened(&pushed).is_empty(), "{pushed:?}");
}

#[test]
fn every_parent_failing_ends_the_round_with_all_of_them_reported() {
    let (mut s, _) = Script::new(2, 1, 3);
    s.at(0).decide(&[normal("a", 0), normal("b", 1)]);
    let offers = [s.offer(0, 0), s.offer(1, 0), s.offer(0, 1), s.offer(1, 1)].concat();
    let mut in_flight = fetches(&offers);
    let mut last = Vec::new();
    // Each failure sends the piece to another holder; two failures drop a parent.
    for step in 0..4 {
        let &[(parent, number)] = &in_flight[..] else {
            panic!("one piece in flight at step {step}: {in_flight:?}");
        };
        last = s.at(10 + step).fail(parent, number, Fault::Parent);
        in_flight = fetches(&last);
    }
    assert_eq!(
        last.iter()
            .filter(|a| matches!(a, Action::DropParent { .. }))
            .count(),
        1
    );
    assert!(last.ends_with(&[Action::EndRound, Action::DrainScheduler]));
    let (failed, description) = reschedule_of(&s.drained()).expect("a reschedule");
    assert_eq!(failed, vec!["a".to_string(), "b".to_string()]);
    assert_eq!(description, "2 pieces missing after a parent round");
}

#[test]
fn a_local_failure_fails_the_download() {
    let (mut s, _) = Script::new(2, 4, 3);
    s.at(0).decide(&[normal("a", 0)]);
    s.offer(0, 0);
    assert_eq!(
        s.at(1).fail(0, 0, Fault::Local),
        vec![
            Action::EndRound,
            Action::Fail {
                description: "connection reset".into()
            }
        ]
    );
}

#[test]
fn a_seed_only_piece_is_held_back_while_normal_parents_progress() {
    let (mut s, _) = Script::new(4, 4, 3);
    s.at(0).decide(&[normal("n", 0), seed("s", 1)]);
    assert_eq!(fetches(&s.offer(0, 0)), vec![(0, 0)]);
    // The seed alone has piece 1: held back two piece times after the normal news.
    let grace = (INITIAL_PIECE_TIME * 2).as_millis() as u64;
    let held = s.offer(1, 1);
    assert!(fetches(&held).is_empty());
    assert_eq!(held.last(), Some(&Action::WakeAt(s.ms(grace))));
    assert!(fetches(&s.at(grace - 1).feed(Event::Tick)).is_empty());
    assert_eq!(fetches(&s.at(grace).feed(Event::Tick)), vec![(1, 1)]);
}

#[test]
fn a_rationing_seed_s_exclusive_pieces_go_first() {
    let (mut s, _) = Script::new(4, 4, 3);
    s.at(0).decide(&[normal("n", 0), seed("s", 1)]);
    s.feed(Event::RationExclusive {
        parent: ParentKey(1),
    });
    assert_eq!(fetches(&s.offer(0, 0)), vec![(0, 0)]);
    // Offered to us alone: no grace, though the normal parent is making progress.
    assert_eq!(fetches(&s.offer(1, 1)), vec![(1, 1)]);
    // The seed budget (a quarter of 4 slots) is spent: the next exclusive piece waits.
    assert!(fetches(&s.offer(1, 2)).is_empty());
    assert_eq!(fetches(&s.at(50).land(1, 1)), vec![(1, 2)]);
}

#[test]
fn a_pushed_parent_joins_the_running_round() {
    let (mut s, _) = Script::new(2, 4, 3);
    s.at(0).decide(&[normal("a", 0)]);
    let joined = s.at(1).decide(&[normal("b", 1), normal("a", 0)]);
    assert_eq!(
        joined,
        vec![open(1, vec![0, 1]), Action::WakeAt(s.ms(1) + STALL)]
    );
    assert_eq!(fetches(&s.at(2).offer(1, 1)), vec![(1, 1)]);
}

/// A round fed only by seed "s", with enough pieces missing to refresh, fetching piece 0
/// from it; returns the script and its piece count.
fn seed_only_round(concurrency: usize) -> (Script, u32) {
    let pieces = MIN_PENDING_FOR_REFRESH as u32 + 2;
    let (mut s, _) = Script::new(pieces, concurrency, 3);
    s.at(0).decide(&[seed("s", 0)]);
    assert_eq!(fetches(&s.offer(0, 0)), vec![(0, 0)]);
    (s, pieces)
}

#[test]
fn a_pushed_normal_parent_cancels_the_seed_only_refresh() {
    let (mut s, _) = seed_only_round(2);
    // A normal parent is pushed before the refresh time: the round has what a refresh
    // would ask for, so it goes on instead of draining.
    let joined = s.at(10).decide(&[normal("p", 1)]);
    assert!(
        joined
            .iter()
            .any(|a| matches!(a, Action::OpenParent { grpc, .. } if grpc.port() == 4001)),
        "{joined:?}"
    );
    let refresh_ms = SEED_ONLY_REFRESH_AFTER.as_millis() as u64;
    let tick = s.at(refresh_ms).feed(Event::Tick);
    assert!(
        !tick
            .iter()
            .any(|a| matches!(a, Action::EndRound | Action::DrainScheduler)),
        "{tick:?}"
    );
    assert_eq!(
        fetches(&s.at(refresh_ms + 1).offer(1, 1)),
        vec![(1, 1)],
        "the round still starts fetches"
    );
}

#[test]
fn a_push_racing_a_reschedule_joins_the_next_round() {
    let (mut s, pieces) = seed_only_round(1);
    // Only a seed feeds the round: at the refresh time it drains to ask for normal parents.
    let refresh_ms = SEED_ONLY_REFRESH_AFTER.as_millis() as u64;
    assert!(s.at(refresh_ms).feed(Event::Tick).is_empty());
    // A parent pushed now cannot join a round that is ending: it waits for the next one.
    assert!(s.at(refresh_ms + 1).decide(&[normal("p", 1)]).is_empty());
    let ended = s.at(refresh_ms + 2).land(0, 0);
    assert!(ended.ends_with(&[Action::EndRound, Action::DrainScheduler]));
    // Another push was already on its way when the round ended: read before the reschedule,
    // so the reschedule's answer is not mistaken for it.
    assert!(s.decide(&[normal("q", 3)]).is_empty());
    let (failed, description) = reschedule_of(&s.drained()).expect("a reschedule");
    assert!(failed.is_empty());
    assert_eq!(
        description,
        format!(
            "{} pieces missing; looking for non-seed parents",
            pieces - 1
        )
    );
    // The answer brings another parent; the pushed ones join it.
    let next = s.at(refresh_ms + 3).decide(&[normal("c", 2)]);
    let ports: Vec<u16> = next
        .iter()
        .filter_map(|a| match a {
            Action::OpenParent { grpc, .. } => Some(grpc.port()),
            _ => None,
        })
        .collect();
    assert_eq!(ports, vec![4002, 4001, 4003], "c, then p and q");
}

#[test]
fn a_decision_mid_round_waits_for_the_pieces_in_flight() {
    let (mut s, _) = Script::new(3, 1, 3);
    s.at(0).decide(&[normal("a", 0)]);
    s.offer(0, 0);
    let back = Decision::BackToSource(Some("no-seed-peer: none".into()));
    assert!(s.at(1).feed(Event::Scheduler(back)).is_empty());
    assert!(fetches(&s.offer(0, 1)).is_empty(), "no new piece starts");
    assert_eq!(
        s.at(2).land(0, 0),
        vec![
            Action::ReportPieceFinished { number: 0 },
            Action::EndRound,
            Action::BackToSource {
                reason: OriginReason::NoSeedPeer,
                link: SchedulerLink::Reachable
            }
        ]
    );
}

#[test]
fn shutdown_during_a_round_ends_it_and_later_rounds_at_once() {
    let (mut s, _) = Script::new(3, 4, 2);
    s.at(0).decide(&[normal("a", 0)]);
    s.offer(0, 0);
    let stopped = s.at(1).feed(Event::Shutdown);
    assert_eq!(stopped, vec![Action::EndRound, Action::DrainScheduler]);
    assert!(reschedule_of(&s.drained()).is_some());
    assert!(!s.conversation.awaits_shutdown());
    // The piece in flight was aborted with the round; its late result is ignored.
    assert!(s
        .at(2)
        .land(0, 0)
        .last()
        .is_some_and(|a| matches!(a, Action::WakeAt(_))));
    // The next round opens no stream and ends at once.
    assert_eq!(
        s.at(3).decide(&[normal("a", 0)]),
        vec![Action::EndRound, Action::DrainScheduler]
    );
    assert_eq!(
        s.drained(),
        vec![Action::BackToSource {
            reason: OriginReason::ParentsFailed {
                last_error: "2 scheduling decisions left pieces missing".into()
            },
            link: SchedulerLink::Reachable
        }]
    );
}

#[test]
fn a_lost_scheduler_lets_the_round_finish_then_goes_to_the_origin() {
    let (mut s, _) = Script::new(2, 4, 5);
    s.at(0).decide(&[normal("a", 0)]);
    s.offer(0, 0);
    s.at(1).feed(Event::SchedulerLost {
        reason: "stream closed".into(),
    });
    assert!(!s.conversation.listens_to_scheduler());
    let ended = s.at(2).feed(Event::SyncEnded {
        parent: ParentKey(0),
        error: None,
    });
    assert!(ended.is_empty() || matches!(ended[..], [Action::WakeAt(_)]));
    assert_eq!(
        s.at(3).land(0, 0),
        vec![
            Action::ReportPieceFinished { number: 0 },
            Action::EndRound,
            Action::BackToSource {
                reason: OriginReason::NoScheduler {
                    detail: "stream closed".into()
                },
                link: SchedulerLink::Lost
            }
        ]
    );
}

#[test]
fn an_empty_task_finishes_without_parents() {
    let (mut s, _) = Script::new(0, 4, 3);
    assert_eq!(
        s.feed(Event::Scheduler(Decision::Empty)),
        vec![Action::ReportStarted, Action::Finish]
    );
}

#[test]
fn a_seed_only_round_refreshes_once_and_not_for_a_few_pieces() {
    let pieces = MIN_PENDING_FOR_REFRESH as u32;
    let (mut s, _) = Script::new(pieces, 4, 5);
    s.at(0).decide(&[seed("s", 0)]);
    let refresh_ms = SEED_ONLY_REFRESH_AFTER.as_millis() as u64;
    // Nothing in flight: the refresh ends the round at once.
    assert_eq!(
        s.at(refresh_ms).feed(Event::Tick),
        vec![Action::EndRound, Action::DrainScheduler]
    );
    let (_, description) = reschedule_of(&s.drained()).expect("a reschedule");
    assert!(description.contains("looking for non-seed parents"));
    // The next seed-only round has no refresh left: its only deadline is the stall.
    let second = s.at(refresh_ms + 1).decide(&[seed("s", 0)]);
    assert_eq!(
        second.last(),
        Some(&Action::WakeAt(s.ms(refresh_ms + 1) + STALL))
    );
    // A first round with fewer missing pieces than a refresh is worth does not refresh.
    let (mut few, _) = Script::new(pieces - 1, 4, 5);
    few.at(0).decide(&[seed("s", 0)]);
    assert_eq!(
        few.at(refresh_ms).feed(Event::Tick),
        vec![Action::WakeAt(few.ms(0) + STALL)]
    );
}

#[test]
fn stray_news_from_the_shell_changes_nothing() {
    let (mut s, first) = Script::new(2, 4, 3);
    // Before any round: parent news and a drain report are ignored.
    assert_eq!(s.offer(3, 0), first);
    assert_eq!(s.drained(), first);
    s.at(1).decide(&[normal("a", 0)]);
    // A result for a fetch never started, from a parent that does not exist.
    let wake = vec![Action::WakeAt(s.ms(1) + STALL)];
    assert_eq!(s.at(2).land(9, 0), wake);
    assert_eq!(s.fail(9, 1, Fault::Parent), wake);
    assert_eq!(
        s.feed(Event::SyncEnded {
            parent: ParentKey(9),
            error: Some("gone".into())
        }),
        wake
    );
}

#[test]
fn a_fetch_from_a_slow_parent_moves_to_a_fast_one_that_got_the_piece() {
    let (mut s, _) = Script::new(4, 4, 3);
    s.at(0).decide(&[normal("slow", 0), normal("fast", 1)]);
    assert_eq!(fetches(&s.at(1).offer(0, 0)), vec![(0, 0)]);
    assert_eq!(fetches(&s.at(1).offer(1, 1)), vec![(1, 1)]);
    // What each delivered: 4 MiB in 20 s against 4 MiB in 100 ms.
    s.at(2_000).feed(landed(0, 0, Duration::from_secs(20)));
    s.at(2_000).feed(landed(1, 1, Duration::from_millis(100)));
    // Piece 2 is at the slow parent only: it is fetched from there...
    assert_eq!(fetches(&s.at(2_001).offer(0, 2)), vec![(0, 2)]);
    // ... and the fast one gets it a moment later: nothing changes yet.
    assert!(fetches(&s.at(2_002).offer(1, 2)).is_empty());
    let early = s.at(4_000).feed(Event::Tick);
    assert!(
        !early.contains(&Action::AbortFetch { number: 2 }),
        "{early:?}"
    );
    // Long past a few piece times: the slow fetch is given up for the fast holder.
    let late = s.at(40_000).feed(Event::Tick);
    assert!(late.contains(&Action::AbortFetch { number: 2 }), "{late:?}");
    assert_eq!(fetches(&late), vec![(1, 2)]);
    // A late result from the aborted fetch is not taken for the piece.
    let stale = s.at(40_001).feed(landed(0, 2, Duration::from_secs(38)));
    assert!(
        !stale.contains(&Action::ReportPieceFinished { number: 2 }),
        "{stale:?}"
    );
    let done = s.at(40_100).feed(landed(1, 2, Duration::from_millis(100)));
    assert!(done.contains(&Action::ReportPieceFinished { number: 2 }));
    // Moved once, never again.
    assert!(!s
        .at(400_000)
        .feed(Event::Tick)
        .iter()
        .any(|a| matches!(a, Action::AbortFetch { .. })));
}

#[test]
fn a_slow_fetch_never_moves_to_a_seed() {
    let (mut s, _) = Script::new(4, 8, 3);
    s.at(0).decide(&[seed("seed", 0), normal("slow", 1)]);
    // The seed delivered a piece in 100 ms, the slow parent one in 20 s.
    // (A seed-only piece goes to the seed once the seed grace passed.)
    s.at(1).offer(0, 0);
    assert_eq!(fetches(&s.at(300).feed(Event::Tick)), vec![(0, 0)]);
    s.at(400).feed(landed(0, 0, Duration::from_millis(100)));
    assert_eq!(fetches(&s.at(401).offer(1, 1)), vec![(1, 1)]);
    s.at(20_401).feed(landed(1, 1, Duration::from_secs(20)));
    // Piece 2 is at the slow parent and the seed: the normal parent serves it, and the
    // fetch stays there however slow: the seed's uplink is for first copies.
    s.at(20_402).offer(0, 2);
    assert_eq!(fetches(&s.at(20_403).offer(1, 2)), vec![(1, 2)]);
    let later = s.at(80_000).feed(Event::FetchProgress {
        written_to: vec![(2, 2 * PIECE + 4096)],
    });
    assert!(
        !later.contains(&Action::AbortFetch { number: 2 }),
        "{later:?}"
    );
}

/// Parents a and b each delivered a piece in 400 ms; piece 2, which both hold, is in flight
/// from a since 801 ms.
fn piece_2_from_a_while_b_holds_it() -> Script {
    let (mut s, _) = Script::new(4, 8, 3);
    s.at(0).decide(&[normal("a", 0), normal("b", 1)]);
    assert_eq!(fetches(&s.at(1).offer(0, 0)), vec![(0, 0)]);
    s.at(400).feed(landed(0, 0, Duration::from_millis(400)));
    assert_eq!(fetches(&s.at(401).offer(1, 1)), vec![(1, 1)]);
    s.at(800).feed(landed(1, 1, Duration::from_millis(400)));
    assert_eq!(fetches(&s.at(801).offer(0, 2)), vec![(0, 2)]);
    assert!(fetches(&s.at(802).offer(1, 2)).is_empty());
    s
}

/// Piece 2's write has come `bytes` into the piece.
fn written_to(bytes: u64) -> Event {
    Event::FetchProgress {
        written_to: vec![(2, 2 * PIECE + bytes)],
    }
}

#[test]
fn a_fetch_that_writes_slowly_moves_whatever_its_parent_delivered_before() {
    let mut s = piece_2_from_a_while_b_holds_it();
    // Parent a then slows down: a tenth of the piece in 3 s.
    // Steady: nothing moves.
    let steady = s.at(2_900).feed(written_to(PIECE * 9 / 10));
    assert!(!steady.contains(&Action::AbortFetch { number: 2 }));
    // Stalled at a tenth: it moves to b.
    let moved = s.at(3_801).feed(written_to(PIECE / 10));
    assert!(
        moved.contains(&Action::AbortFetch { number: 2 }),
        "{moved:?}"
    );
    assert_eq!(fetches(&moved), vec![(1, 2)]);
}

#[test]
fn a_fetch_that_stopped_writing_moves_however_far_it_came() {
    let mut s = piece_2_from_a_while_b_holds_it();
    // Nine tenths in its first two seconds, then nothing more.
    s.at(2_801).feed(written_to(PIECE * 9 / 10));
    // By its average rate it is nearly done (0.4 s left against 0.4 s anew at b), and 1.9 s
    // without a byte is no stall yet.
    let waiting = s.at(4_700).feed(written_to(PIECE * 9 / 10));
    assert!(
        !waiting.contains(&Action::AbortFetch { number: 2 }),
        "{waiting:?}"
    );
    // Two seconds without a byte: it moves to b.
    let moved = s.at(4_802).feed(written_to(PIECE * 9 / 10));
    assert!(
        moved.contains(&Action::AbortFetch { number: 2 }),
        "{moved:?}"
    );
    assert_eq!(fetches(&moved), vec![(1, 2)]);
}

#[test]
fn a_moved_fetch_never_moves_back() {
    let (mut s, _) = Script::new(4, 8, 3);
    s.at(0).decide(&[normal("a", 0), normal("b", 1)]);
    assert_eq!(fetches(&s.at(1).offer(0, 0)), vec![(0, 0)]);
    s.at(400).feed(landed(0, 0, Duration::from_millis(400)));
    assert_eq!(fetches(&s.at(401).offer(1, 1)), vec![(1, 1)]);
    s.at(800).feed(landed(1, 1, Duration::from_millis(400)));
    assert_eq!(fetches(&s.at(801).offer(0, 2)), vec![(0, 2)]);
    s.at(802).offer(1, 2);
    let stalled = Event::FetchProgress {
        written_to: vec![(2, 0)],
    };
    // Nothing written at a in 3 s: the fetch moves to b...
    let moved = s.at(3_801).feed(stalled);
    assert_eq!(fetches(&moved), vec![(1, 2)]);
    // ... and stalls there too: it stays, rather than go back to a and start again.
    let stalled = Event::FetchProgress {
        written_to: vec![(2, 0)],
    };
    let later = s.at(9_000).feed(stalled);
    assert!(
        !later.contains(&Action::AbortFetch { number: 2 }),
        "{later:?}"
    );
}

#[test]
fn fetches_crawling_at_slow_parents_free_their_slots_for_fast_ones() {
    // Two slots. The fast parent delivers piece 4 in 400 ms; pieces 0 and 1 start at a
    // parent nobody knows yet, which then crawls.
    let (mut s, _) = Script::new(6, 2, 3);
    s.at(0).decide(&[normal("crawling", 0), normal("fast", 1)]);
    assert_eq!(fetches(&s.at(1).offer(1, 4)), vec![(1, 4)]);
    assert_eq!(fetches(&s.at(2).offer(0, 0)), vec![(0, 0)]);
    s.at(401).feed(landed(1, 4, Duration::from_millis(400)));
    assert_eq!(fetches(&s.at(402).offer(0, 1)), vec![(0, 1)]);
    // The fast parent gets piece 5: both slots are taken.
    assert!(
        fetches(&s.at(403).offer(1, 5)).is_empty(),
        "both slots taken"
    );
    // 4 s on, the crawling fetches wrote 100 KiB each, far below what the fast parent
    // delivers: they stop holding slots, and piece 5 starts there while they go on (nobody
    // else holds pieces 0 and 1).
    let mut freed = s.at(4_500).feed(Event::FetchProgress {
        written_to: vec![(0, 100 << 10), (1, PIECE + (100 << 10))],
    });
    freed.extend(s.at(4_501).feed(Event::Tick));
    assert_eq!(fetches(&freed), vec![(1, 5)], "{freed:?}");
    assert!(
        !freed.iter().any(|a| matches!(a, Action::AbortFetch { .. })),
        "the crawling fetches go on: {freed:?}"
    );
    // A freed slot is not for the crawling parent: piece 2, which only it holds, waits ...
    assert!(fetches(&s.at(4_502).offer(0, 2)).is_empty());
    let landed5 = s.at(4_900).feed(landed(1, 5, Duration::from_millis(400)));
    assert!(fetches(&landed5).is_empty(), "{landed5:?}");
    // ... until the round is within its slots again.
    let landed0 = s.at(30_000).feed(landed(0, 0, Duration::from_secs(30)));
    assert_eq!(fetches(&landed0), vec![(0, 2)], "{landed0:?}");
}

#[test]
fn a_fetch_never_moves_to_a_parent_that_crawls_too() {
    let (mut s, _) = Script::new(4, 8, 3);
    s.at(0)
        .decide(&[normal("a", 0), normal("b", 1), normal("c", 2)]);
    // a delivered in 400 ms, b in 10 s, c in 400 ms.
    assert_eq!(fetches(&s.at(1).offer(0, 0)), vec![(0, 0)]);
    s.at(400).feed(landed(0, 0, Duration::from_millis(400)));
    assert_eq!(fetches(&s.at(401).offer(1, 1)), vec![(1, 1)]);
    s.at(10_401).feed(landed(1, 1, Duration::from_secs(10)));
    assert_eq!(fetches(&s.at(10_402).offer(2, 3)), vec![(2, 3)]);
    s.at(10_802).feed(landed(2, 3, Duration::from_millis(400)));
    // Piece 2 starts at a, which stalls; only b (slow) also holds it: it stays at a.
    assert_eq!(fetches(&s.at(10_803).offer(0, 2)), vec![(0, 2)]);
    s.at(10_804).offer(1, 2);
    let stalled = s.at(14_000).feed(Event::FetchProgress {
        written_to: vec![(2, 2 * PIECE)],
    });
    assert!(
        !stalled.contains(&Action::AbortFetch { number: 2 }),
        "moved to a slow parent: {stalled:?}"
    );
}

#[test]
fn a_slow_fetch_moves_to_a_rationing_seed_that_offers_the_piece() {
    let (mut s, _) = Script::new(4, 8, 3);
    s.at(0).decide(&[seed("seed", 0), normal("slow", 1)]);
    s.feed(Event::RationExclusive {
        parent: ParentKey(0),
    });
    // The seed delivered a piece in 400 ms; the slow parent one in 20 s.
    assert_eq!(fetches(&s.at(1).offer(0, 0)), vec![(0, 0)]);
    s.at(401).feed(landed(0, 0, Duration::from_millis(400)));
    assert_eq!(fetches(&s.at(402).offer(1, 1)), vec![(1, 1)]);
    s.at(20_402).feed(landed(1, 1, Duration::from_secs(20)));
    // Piece 2 starts at the slow parent; later the seed gives it to us too.
    assert_eq!(fetches(&s.at(20_403).offer(1, 2)), vec![(1, 2)]);
    assert!(fetches(&s.at(21_000).offer(0, 2)).is_empty());
    let moved = s.at(24_000).feed(Event::FetchProgress {
        written_to: vec![(2, 2 * PIECE + 4096)],
    });
    assert!(
        moved.contains(&Action::AbortFetch { number: 2 }),
        "{moved:?}"
    );
    assert_eq!(fetches(&moved), vec![(0, 2)]);
}

#[test]
fn a_slow_fetch_moves_to_a_rationing_seed_slower_than_the_best_peer() {
    let (mut s, _) = Script::new(5, 8, 3);
    s.at(0)
        .decide(&[seed("seed", 0), normal("slow", 1), normal("fast", 2)]);
    s.feed(Event::RationExclusive {
        parent: ParentKey(0),
    });
    // The seed delivered a piece in 3 s (its uplink shared by many children), the fast
    // parent one in 200 ms: the seed is slow next to it. The slow parent took 40 s.
    assert_eq!(fetches(&s.at(1).offer(0, 0)), vec![(0, 0)]);
    s.at(3_001).feed(landed(0, 0, Duration::from_secs(3)));
    assert_eq!(fetches(&s.at(3_002).offer(2, 3)), vec![(2, 3)]);
    s.at(3_202).feed(landed(2, 3, Duration::from_millis(200)));
    assert_eq!(fetches(&s.at(3_203).offer(1, 1)), vec![(1, 1)]);
    s.at(43_203).feed(landed(1, 1, Duration::from_secs(40)));
    // Piece 2 starts at the slow parent; the seed then gives it to us.
    assert_eq!(fetches(&s.at(43_204).offer(1, 2)), vec![(1, 2)]);
    assert!(fetches(&s.at(44_000).offer(0, 2)).is_empty());
    let moved = s.at(53_204).feed(Event::FetchProgress {
        written_to: vec![(2, 2 * PIECE + PIECE / 10)],
    });
    assert!(
        moved.contains(&Action::AbortFetch { number: 2 }),
        "{moved:?}"
    );
    assert_eq!(fetches(&moved), vec![(0, 2)]);
}

#[test]
fn a_slow_fetch_never_moves_to_a_copy_that_may_be_its_own_bytes_forwarded() {
    let (mut s, _) = Script::new(4, 8, 3);
    s.at(0).decide(&[normal("a", 0), normal("b", 1)]);
    let cut_through =
        |parent: usize| damselfly_transfer::PieceServer::TcpCutThrough(vortex(parent).addr());
    let offer = |s: &mut Script, parent: usize, number: u32| {
        s.feed(Event::PieceAvailable {
            parent: ParentKey(parent),
            number,
            vortex: cut_through(parent),
        })
    };
    // Both parents delivered a piece in 400 ms.
    assert_eq!(fetches(&offer(s.at(1), 0, 0)), vec![(0, 0)]);
    s.at(400).feed(landed(0, 0, Duration::from_millis(400)));
    assert_eq!(fetches(&offer(s.at(401), 1, 1)), vec![(1, 1)]);
    s.at(800).feed(landed(1, 1, Duration::from_millis(400)));
    // Piece 2 from a; b announces it after that fetch began, as a peer forwarding our own
    // arriving copy would.
    assert_eq!(fetches(&offer(s.at(801), 0, 2)), vec![(0, 2)]);
    assert!(fetches(&offer(s.at(802), 1, 2)).is_empty());
    // Stalled at a tenth: a whole copy elsewhere would take it (see the test above), but
    // b's copy may be fed by this very fetch.
    let stalled = s.at(3_801).feed(written_to(PIECE / 10));
    assert!(
        !stalled.contains(&Action::AbortFetch { number: 2 }),
        "{stalled:?}"
    );
    // b announces the piece again: recorded there, a copy of its own, and the fetch moves.
    let moved = offer(s.at(3_900), 1, 2);
    assert!(
        moved.contains(&Action::AbortFetch { number: 2 }),
        "{moved:?}"
    );
    assert_eq!(fetches(&moved), vec![(1, 2)]);
}

#[test]
fn a_fetch_at_a_slow_parent_moves_to_a_holder_not_measured_yet() {
    let (mut s, _) = Script::new(5, 8, 3);
    s.at(0)
        .decide(&[normal("slow", 0), normal("fast", 1), normal("new", 2)]);
    // The slow parent delivered a piece in 20 s, the fast one in 400 ms; "new" nothing yet.
    assert_eq!(fetches(&s.at(1).offer(1, 0)), vec![(1, 0)]);
    s.at(401).feed(landed(1, 0, Duration::from_millis(400)));
    assert_eq!(fetches(&s.at(402).offer(0, 1)), vec![(0, 1)]);
    s.at(20_402).feed(landed(0, 1, Duration::from_secs(20)));
    // Piece 2 starts at the slow parent; then "new" announces it.
    assert_eq!(fetches(&s.at(20_403).offer(0, 2)), vec![(0, 2)]);
    s.at(20_404).offer(2, 2);
    let moved = s.at(24_000).feed(Event::FetchProgress {
        written_to: vec![(2, 2 * PIECE + PIECE / 20)],
    });
    assert!(
        moved.contains(&Action::AbortFetch { number: 2 }),
        "{moved:?}"
    );
    assert_eq!(fetches(&moved), vec![(2, 2)]);
}

#[test]
fn a_fetch_at_a_parent_not_slow_never_moves_on_a_guess() {
    let (mut s, _) = Script::new(5, 8, 3);
    s.at(0).decide(&[normal("a", 0), normal("new", 1)]);
    assert_eq!(fetches(&s.at(1).offer(0, 0)), vec![(0, 0)]);
    s.at(401).feed(landed(0, 0, Duration::from_millis(400)));
    // Piece 2 stalls at a, the best parent known; "new" has it, and no rate yet.
    assert_eq!(fetches(&s.at(402).offer(0, 2)), vec![(0, 2)]);
    s.at(403).offer(1, 2);
    let stalled = s.at(4_000).feed(Event::FetchProgress {
        written_to: vec![(2, 2 * PIECE)],
    });
    assert!(
        !stalled.contains(&Action::AbortFetch { number: 2 }),
        "{stalled:?}"
    );
}
