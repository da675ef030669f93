//! The AnnouncePeer side of a download (reference §1.4): Register → decision → Started →
//! rounds of parents, each followed by a Reschedule … → Finished, or back-to-source.

use super::round::{DrainReason, Round, RoundEnd};
use super::{Action, Event, Fault, SchedulerLink, Settings};
use crate::scheduler_client::Decision;
use damselfly_core::{OriginReason, PieceSpan};
use dragonfly_api::common::v2::Peer;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;
use tracing::info;

/// Early re-scheduling rounds to get off seed-only parents (see `Round::check_refresh`).
const MAX_SEED_ONLY_REFRESHES: u32 = 1;

/// Where the conversation is.
#[derive(Debug)]
enum Phase {
    /// Registered or rescheduled: waiting for the scheduler's decision until the deadline.
    AwaitingDecision { until: Instant },
    /// Downloading from the parents of the last decision.
    InRound(Box<Round>),
    /// A round ended with pieces missing: reading what the scheduler already sent before
    /// choosing between a reschedule and the origin.
    Concluding(RoundEnd),
    /// A terminal action went out; nothing more happens.
    Done,
}

/// One download's conversation with its scheduler and parents. Feed it [`Event`]s with
/// [`Conversation::on`] and carry out the [`Action`]s it returns, in order.
#[derive(Debug)]
pub struct Conversation {
    phase: Phase,
    settings: Settings,
    /// Pieces still missing.
    missing: BTreeMap<u32, PieceSpan>,
    /// Decisions acted on (pushes that joined a round do not count).
    decisions: u32,
    /// Rounds started; the first one tells the scheduler the download started.
    rounds: u32,
    /// Early rounds ended to get off seed-only parents.
    refreshes: u32,
    /// Parents pushed while no round could take them; they join the next round.
    pushed: Vec<Peer>,
    /// Parents whose pieces failed a digest check: never a parent again in this download.
    banned: BTreeSet<String>,
    /// Why the scheduler session is gone, once it is.
    scheduler_lost: Option<String>,
    /// The last error a parent gave (a failed piece or a broken SyncPieces stream), for the
    /// back-to-source reason when parents did not deliver.
    last_parent_error: Option<String>,
    /// The daemon is stopping: a running round ends, new ones end at once.
    shutdown_requested: bool,
    rng: StdRng,
}

impl Conversation {
    /// The conversation of a download whose register went out at `now`, and its first
    /// actions; `rng_seed` makes the dispatch policy's tie-breaking repeatable.
    pub fn start(
        now: Instant,
        settings: Settings,
        missing: BTreeMap<u32, PieceSpan>,
        rng_seed: u64,
    ) -> (Self, Vec<Action>) {
        let conversation = Self {
            phase: Phase::AwaitingDecision {
                until: now + settings.schedule_timeout,
            },
            settings,
            missing,
            decisions: 0,
            rounds: 0,
            refreshes: 0,
            pushed: Vec::new(),
            banned: BTreeSet::new(),
            scheduler_lost: None,
            last_parent_error: None,
            shutdown_requested: false,
            rng: StdRng::seed_from_u64(rng_seed),
        };
        let mut first = Vec::new();
        conversation.push_wake(now, &mut first);
        (conversation, first)
    }

    /// Pieces still missing (what back-to-source has to fetch).
    pub fn missing(&self) -> &BTreeMap<u32, PieceSpan> {
        &self.missing
    }

    /// Whether the shell should still read the scheduler session.
    pub fn listens_to_scheduler(&self) -> bool {
        self.scheduler_lost.is_none() && !matches!(self.phase, Phase::Done)
    }

    /// Whether a shutdown is still news to the conversation.
    pub fn awaits_shutdown(&self) -> bool {
        !self.shutdown_requested && !matches!(self.phase, Phase::Done)
    }

    /// Feeds one event that happened at `now`; returns what to do, in order.
    pub fn on(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        if matches!(self.phase, Phase::Done) {
            return out;
        }
        match event {
            Event::Scheduler(decision) => self.on_decision(now, decision, &mut out),
            Event::SchedulerLost { reason } => self.on_scheduler_lost(now, reason, &mut out),
            Event::SchedulerDrained => self.on_scheduler_drained(now, &mut out),
            Event::Shutdown => self.on_shutdown(),
            Event::Tick => self.on_tick(now, &mut out),
            news => self.on_parent_news(now, news, &mut out),
        }
        self.step_round(now, &mut out);
        self.push_wake(now, &mut out);
        out
    }

    fn on_decision(&mut self, now: Instant, decision: Decision, out: &mut Vec<Action>) {
        let round = match &mut self.phase {
            Phase::InRound(round) => round,
            Phase::Concluding(end) => {
                match decision {
                    Decision::Normal(peers) => self.pushed.extend(peers),
                    other => end.interrupt = Some(other),
                }
                return;
            }
            _ => return self.act_on(now, decision, out),
        };
        match decision {
            // A pushed parent joins a running round, or waits for the next one.
            Decision::Normal(peers) if round.is_draining() => self.pushed.extend(peers),
            Decision::Normal(peers) => {
                let peers = without(&self.banned, peers);
                round.join(now, &peers, &self.missing, out)
            }
            // Another decision is final; the pieces in flight land first.
            other if round.is_draining() => {
                if !round.interrupted() {
                    round.drain(DrainReason::Interrupt(other));
                }
            }
            other => round.drain(DrainReason::Interrupt(other)),
        }
    }

    fn on_scheduler_lost(&mut self, now: Instant, reason: String, out: &mut Vec<Action>) {
        if matches!(self.phase, Phase::AwaitingDecision { .. }) {
            return self.terminate(no_scheduler(reason), out);
        }
        // A round goes on; what follows it cannot be asked of the scheduler.
        self.scheduler_lost = Some(reason);
        if matches!(self.phase, Phase::Concluding(_)) {
            self.on_scheduler_drained(now, out);
        }
    }

    fn on_scheduler_drained(&mut self, now: Instant, out: &mut Vec<Action>) {
        if !matches!(self.phase, Phase::Concluding(_)) {
            return; // nothing was being drained
        }
        if let Phase::Concluding(end) = std::mem::replace(&mut self.phase, Phase::Done) {
            self.conclude(now, end, out);
        }
    }

    fn on_shutdown(&mut self) {
        self.shutdown_requested = true;
        if let Phase::InRound(round) = &mut self.phase {
            round.cancel();
        }
    }

    fn on_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        if let Phase::AwaitingDecision { until } = self.phase {
            if now >= until {
                let reason = format!(
                    "no scheduling decision within {}",
                    humantime::format_duration(self.settings.schedule_timeout)
                );
                self.terminate(no_scheduler(reason), out);
            }
        }
    }

    fn on_parent_news(&mut self, now: Instant, event: Event, out: &mut Vec<Action>) {
        self.remember_parent_error(&event);
        let Phase::InRound(round) = &mut self.phase else {
            return;
        };
        // A draining round only waits for its fetches; availability news is moot.
        match event {
            Event::RationExclusive { parent } if !round.is_draining() => {
                round.ration_exclusive(parent)
            }
            Event::PieceAvailable {
                parent,
                number,
                vortex,
            } if !round.is_draining() => round.learn(now, parent, number, vortex, &self.missing),
            Event::SyncEnded { parent, error } if !round.is_draining() => {
                round.sync_ended(parent, error, out)
            }
            Event::FetchProgress { written_to } => round.progress(now, &written_to),
            Event::PieceFetched {
                parent,
                number,
                cost,
                delivery,
            } => round.fetched(
                now,
                (parent, number),
                (cost, delivery),
                &mut self.missing,
                out,
            ),
            Event::PieceFailed {
                parent,
                number,
                fault: Fault::Local,
                error,
            } => round.failed_locally(now, parent, number, error),
            Event::PieceFailed {
                parent,
                number,
                fault: Fault::Parent,
                error,
            } => round.parent_failed(now, (parent, number), error, &self.missing, out),
            Event::PieceFailed {
                parent,
                number,
                fault: Fault::Withdrawn,
                error,
            } => round.parent_withdrew(now, (parent, number), error, &self.missing),
            Event::PieceFailed {
                parent,
                number,
                fault: Fault::Forged,
                error,
            } => {
                let forger = round.parent_forged(now, (parent, number), error, &self.missing, out);
                self.banned.extend(forger);
            }
            _ => {}
        }
    }

    /// Keeps the last error a parent gave, for the reason if the origin has to take over.
    fn remember_parent_error(&mut self, event: &Event) {
        match event {
            Event::PieceFailed {
                fault: Fault::Parent | Fault::Forged,
                error,
                ..
            }
            | Event::SyncEnded {
                error: Some(error), ..
            } => self.last_parent_error = Some(error.clone()),
            _ => {}
        }
    }

    /// Lets the round start pieces, and ends it when it is over.
    fn step_round(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Phase::InRound(round) = &mut self.phase else {
            return;
        };
        if let Some(end) = round.step(now, &self.missing, out) {
            out.push(Action::EndRound);
            self.after_round(now, end, out);
        }
    }

    /// What follows a round: done, failed, the decision that interrupted it, or, once the
    /// scheduler's buffered messages are read, [`Conversation::conclude`].
    fn after_round(&mut self, now: Instant, mut end: RoundEnd, out: &mut Vec<Action>) {
        if let Some(description) = end.fatal.take() {
            return self.terminate(Action::Fail { description }, out);
        }
        if self.missing.is_empty() {
            return self.terminate(Action::Finish, out);
        }
        if let Some(decision) = end.interrupt.take() {
            return self.act_on(now, decision, out);
        }
        if self.scheduler_lost.is_some() {
            return self.conclude(now, end, out);
        }
        out.push(Action::DrainScheduler);
        self.phase = Phase::Concluding(end);
    }

    /// After a round and the scheduler's buffered messages: a decision among them, back to
    /// source after too many decisions or without a scheduler, or a reschedule.
    fn conclude(&mut self, now: Instant, mut end: RoundEnd, out: &mut Vec<Action>) {
        if let Some(decision) = end.interrupt.take() {
            return self.act_on(now, decision, out);
        }
        if self.decisions >= self.settings.max_schedule_count {
            let last_error = self.last_parent_error.clone().unwrap_or_else(|| {
                format!(
                    "{} scheduling decisions left pieces missing",
                    self.decisions
                )
            });
            let reason = OriginReason::ParentsFailed { last_error };
            return self.terminate(back_to_source(reason, SchedulerLink::Reachable), out);
        }
        if let Some(reason) = self.scheduler_lost.clone() {
            return self.terminate(no_scheduler(reason), out);
        }
        self.reschedule(now, end, out);
    }

    fn reschedule(&mut self, now: Instant, end: RoundEnd, out: &mut Vec<Action>) {
        let remaining = self.missing.len();
        let description = if end.refresh {
            self.refreshes += 1;
            format!("{remaining} pieces missing; looking for non-seed parents")
        } else {
            format!("{remaining} pieces missing after a parent round")
        };
        info!(
            remaining,
            failed_parents = end.failed.len(),
            refresh = end.refresh,
            "asking the scheduler for other parents"
        );
        out.push(Action::Reschedule {
            failed: end.failed,
            description,
        });
        self.await_decision(now);
    }

    /// A decision the conversation waited for, or one that interrupted a round.
    fn act_on(&mut self, now: Instant, decision: Decision, out: &mut Vec<Action>) {
        self.decisions += 1;
        match decision {
            Decision::BackToSource(description) => {
                let reason = OriginReason::parse(description.as_deref().unwrap_or_default());
                self.terminate(back_to_source(reason, SchedulerLink::Reachable), out);
            }
            Decision::Empty | Decision::MetadataOnly if self.missing.is_empty() => {
                out.push(Action::ReportStarted);
                self.terminate(Action::Finish, out);
            }
            Decision::Empty | Decision::MetadataOnly => {
                // The scheduler thinks the task is empty but the origin said otherwise.
                let reason = OriginReason::NoParentFound {
                    detail: "the scheduler sent no parents".into(),
                };
                self.terminate(back_to_source(reason, SchedulerLink::Reachable), out);
            }
            Decision::Normal(parents) => self.start_round(now, parents, out),
        }
    }

    fn start_round(&mut self, now: Instant, mut parents: Vec<Peer>, out: &mut Vec<Action>) {
        for peer in self.pushed.drain(..) {
            if !parents.iter().any(|p| p.id == peer.id) {
                parents.push(peer);
            }
        }
        let parents = without(&self.banned, parents);
        if self.rounds == 0 {
            out.push(Action::ReportStarted);
        }
        self.rounds += 1;
        // One early refresh per download, and never with the last decision.
        let may_refresh = self.refreshes < MAX_SEED_ONLY_REFRESHES
            && self.decisions + 1 < self.settings.max_schedule_count;
        let rng = StdRng::from_rng(&mut self.rng);
        let round = if self.shutdown_requested {
            // A stopping daemon opens no streams: the round is over before it starts.
            None
        } else {
            Round::start(
                now,
                &parents,
                &self.missing,
                &self.settings,
                may_refresh,
                rng,
                out,
            )
        };
        match round {
            Some(round) => self.phase = Phase::InRound(Box::new(round)),
            None => {
                let failed = if self.shutdown_requested {
                    Vec::new()
                } else {
                    parents
                };
                out.push(Action::EndRound);
                self.after_round(now, RoundEnd::unusable(failed), out);
            }
        }
    }

    fn await_decision(&mut self, now: Instant) {
        self.phase = Phase::AwaitingDecision {
            until: now + self.settings.schedule_timeout,
        };
    }

    fn terminate(&mut self, action: Action, out: &mut Vec<Action>) {
        out.push(action);
        self.phase = Phase::Done;
    }

    /// Ends the batch with the next deadline, if any.
    fn push_wake(&self, now: Instant, out: &mut Vec<Action>) {
        let wake = match &self.phase {
            Phase::AwaitingDecision { until } => Some(*until),
            Phase::InRound(round) => round.next_wake(now),
            Phase::Concluding(_) | Phase::Done => None,
        };
        out.extend(wake.map(Action::WakeAt));
    }
}

/// `peers` less the banned ones.
fn without(banned: &BTreeSet<String>, mut peers: Vec<Peer>) -> Vec<Peer> {
    peers.retain(|p| !banned.contains(&p.id));
    peers
}

fn back_to_source(reason: OriginReason, link: SchedulerLink) -> Action {
    Action::BackToSource { reason, link }
}

/// The scheduler is gone or silent: the origin, without reports.
fn no_scheduler(detail: String) -> Action {
    back_to_source(OriginReason::NoScheduler { detail }, SchedulerLink::Lost)
}
