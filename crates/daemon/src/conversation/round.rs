//! One round of downloading from the parents of one scheduling decision.
//!
//! Each parent's SyncPieces stream tells which pieces it has (and, for a parent still
//! downloading, each piece as it lands). The round keeps up to `concurrency` pieces in
//! flight, choosing piece and parent with [`crate::dispatch`]. A failed piece is reported and
//! retried from another parent; a parent that keeps failing is dropped. Parents the scheduler
//! pushes while the round runs (the mesh's reverse edges) join at once.

use super::parent::{Parent, ParentKind, ParentState, MAX_PARENT_FAILURES};
use super::{Action, Delivery, ParentKey, PieceFailure, Settings};
use crate::dispatch::{
    best_rate, lingers, next_assignment, seed_budget, should_move, slow_parents, FetchStatus,
    ParentLoad, SeedGrace, MAX_FETCHES_PER_SLOT, MIN_MOVE_AFTER, MOVE_CHECK_INTERVAL,
};
use crate::scheduler_client::Decision;
use damselfly_core::PieceSpan;
use dragonfly_api::common::v2::Peer;
use rand::rngs::StdRng;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// A round fed only by seed parents ends early after this long, so the scheduler can add the
/// normal peers that meanwhile hold pieces: the swarm then trades among itself instead of
/// every peer pulling the whole task through the seed's uplink.
pub(super) const SEED_ONLY_REFRESH_AFTER: Duration = Duration::from_millis(500);
/// Below this many missing pieces a refresh is not worth a scheduling round.
pub(super) const MIN_PENDING_FOR_REFRESH: usize = 8;
/// How often one piece's fetch may move to a faster holder. Each move restarts the fetch, so
/// a bound keeps a piece from bouncing between holders whose speed changes faster than the
/// running averages follow.
pub(super) const MAX_MOVES: usize = 3;

/// Where a round is.
#[derive(Debug)]
pub(super) enum RoundState {
    /// Starting pieces and waiting for news.
    Fetching,
    /// About to end: the pieces in flight may land, no new ones start.
    Draining(DrainReason),
    /// Ends at once, its fetches aborted (the daemon is stopping).
    Cancelled,
}

/// Why a round drains.
#[derive(Debug)]
pub(super) enum DrainReason {
    /// Only seeds fed it: ask the scheduler for normal parents.
    Refresh,
    /// The scheduler decided something other than more parents, to act on afterwards.
    Interrupt(Decision),
}

/// How a round ended.
#[derive(Debug, Default)]
pub(super) struct RoundEnd {
    /// Parents that failed us, for the ReschedulePeerRequest.
    pub failed: Vec<Peer>,
    /// The round ended early to look for non-seed parents.
    pub refresh: bool,
    /// A local failure that no other parent can fix.
    pub fatal: Option<String>,
    /// A decision that arrived mid-round, to act on instead of asking for a new one.
    pub interrupt: Option<Decision>,
}

impl RoundEnd {
    /// The end of a round that could not start: every candidate counts as failed.
    pub fn unusable(candidates: Vec<Peer>) -> Self {
        Self {
            failed: candidates,
            ..Self::default()
        }
    }
}

/// What a holder's announcements say of its copy of a missing piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeldCopy {
    /// Announced once by a parent that forwards pieces still arriving (cut-through), heard
    /// at this instant: the copy may still be arriving there, and its bytes may come from
    /// our own fetch of the piece, directly or over other hosts.
    MaybeArriving(Instant),
    /// Announced by a parent that announces recorded pieces only, or announced again (a
    /// cut-through parent announces every piece a second time, when it is recorded there;
    /// see `damselfly_transfer::sync_pieces_stream`).
    Whole,
}

/// A piece in flight: from whom, since when, and how far its write has come (the content
/// file offset written to, when the shell told us) and when it last came further.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    parent: usize,
    since: Instant,
    written_to: Option<u64>,
    advanced_at: Instant,
}

/// What the move and slot policies see of a fetch.
fn fetch_status(now: Instant, span: &PieceSpan, fetch: &InFlight) -> FetchStatus {
    FetchStatus {
        elapsed: now.saturating_duration_since(fetch.since),
        length: span.length,
        written: fetch
            .written_to
            .map(|to| to.saturating_sub(span.offset).min(span.length)),
        stalled_for: now.saturating_duration_since(fetch.advanced_at),
    }
}

#[derive(Debug)]
pub(super) struct Round {
    state: RoundState,
    parents: Vec<Parent>,
    /// Missing pieces nobody is fetching right now.
    idle: BTreeSet<u32>,
    /// Which live parents have which missing piece.
    holders: BTreeMap<u32, Vec<usize>>,
    /// What each holder's announcements said of its copy, by piece and parent. Kept when a
    /// holder withdraws or fails a piece (unlike `holders`), so its next announcement of the
    /// piece, the one it sends once the piece is recorded, counts as whole.
    copies: BTreeMap<(u32, usize), HeldCopy>,
    /// Pieces in flight, and from whom.
    fetching: BTreeMap<u32, InFlight>,
    /// The parents each piece's fetch moved away from; at [`MAX_MOVES`] it stays, and it
    /// never moves back to one of them (two parents alike would trade it back and forth,
    /// each restart throwing away what the fetch had).
    moves: BTreeMap<u32, Vec<usize>>,
    fatal: Option<String>,
    grace: SeedGrace,
    concurrency: usize,
    stall_limit: Duration,
    /// The last offer, landed piece or joined parent: the round stalls this long after it.
    last_news: Instant,
    /// When a seed-only round asks for better parents, if it may.
    refresh_at: Option<Instant>,
    /// Breaks ties in the dispatch policy; seeded by the caller, so tests are repeatable.
    rng: StdRng,
}

impl Round {
    /// A round over `candidates`, opening their streams; `None` when no candidate has a
    /// usable address.
    pub fn start(
        now: Instant,
        candidates: &[Peer],
        missing: &BTreeMap<u32, PieceSpan>,
        settings: &Settings,
        may_refresh: bool,
        rng: StdRng,
        out: &mut Vec<Action>,
    ) -> Option<Self> {
        let parents: Vec<Parent> = candidates.iter().filter_map(Parent::from_peer).collect();
        if parents.is_empty() {
            return None;
        }
        let seeds_only = parents.iter().all(|p| p.load.seed);
        let mut round = Self {
            state: RoundState::Fetching,
            parents: Vec::new(),
            idle: missing.keys().copied().collect(),
            holders: BTreeMap::new(),
            copies: BTreeMap::new(),
            fetching: BTreeMap::new(),
            moves: BTreeMap::new(),
            fatal: None,
            grace: SeedGrace::default(),
            concurrency: settings.concurrency.max(1),
            stall_limit: settings.collected_piece_timeout,
            last_news: now,
            refresh_at: (may_refresh && seeds_only).then(|| now + SEED_ONLY_REFRESH_AFTER),
            rng,
        };
        for parent in parents {
            round.add_parent(parent, missing, out);
        }
        Some(round)
    }

    pub fn is_draining(&self) -> bool {
        matches!(self.state, RoundState::Draining(_))
    }

    /// Whether a decision already waits for the round's end.
    pub fn interrupted(&self) -> bool {
        matches!(self.state, RoundState::Draining(DrainReason::Interrupt(_)))
    }

    /// Stop starting pieces; end once the ones in flight landed.
    pub fn drain(&mut self, reason: DrainReason) {
        self.state = RoundState::Draining(reason);
    }

    /// End at the next step without waiting for the pieces in flight. A draining round is
    /// already ending and finishes its fetches.
    pub fn cancel(&mut self) {
        if matches!(self.state, RoundState::Fetching) {
            self.state = RoundState::Cancelled;
        }
    }

    fn add_parent(
        &mut self,
        parent: Parent,
        missing: &BTreeMap<u32, PieceSpan>,
        out: &mut Vec<Action>,
    ) {
        out.push(Action::OpenParent {
            parent: ParentKey(self.parents.len()),
            grpc: parent.grpc,
            interested: missing.keys().copied().collect(),
        });
        self.parents.push(parent);
    }

    /// Parents pushed by the scheduler join the round; ones we already have are skipped.
    pub fn join(
        &mut self,
        now: Instant,
        peers: &[Peer],
        missing: &BTreeMap<u32, PieceSpan>,
        out: &mut Vec<Action>,
    ) {
        for peer in peers {
            if self.parents.iter().any(|p| p.peer.id == peer.id) {
                continue;
            }
            if let Some(parent) = Parent::from_peer(peer) {
                debug!(parent = %peer.id, "pushed parent joins the round");
                if parent.kind == ParentKind::Normal {
                    // What the seed-only refresh would ask for has come. Draining anyway
                    // left a host's slots idle until its fetches in flight landed, and a
                    // new round then asked the newcomers all at once (bench/netns
                    // SEED_MBIT=500: the first host to register idled 5.5 s and finished
                    // last, at 1.44 x T_min).
                    self.refresh_at = None;
                }
                self.add_parent(parent, missing, out);
            }
        }
        self.last_news = now;
    }

    /// A seed said it rations what it shows us.
    pub fn ration_exclusive(&mut self, parent: ParentKey) {
        if let Some(p) = self.parents.get_mut(parent.0) {
            p.heard_from();
            if p.kind == ParentKind::Seed {
                p.kind = ParentKind::RationingSeed;
                p.load.offers = true;
            }
        }
    }

    /// A parent has a piece.
    pub fn learn(
        &mut self,
        now: Instant,
        parent: ParentKey,
        number: u32,
        vortex: damselfly_transfer::PieceServer,
        missing: &BTreeMap<u32, PieceSpan>,
    ) {
        // Any offer counts against the stall, even one we cannot use.
        self.last_news = now;
        let Some(p) = self.parents.get_mut(parent.0).filter(|p| p.is_alive()) else {
            return;
        };
        p.heard_from();
        p.vortex = Some(vortex);
        match p.kind {
            ParentKind::RationingSeed => self.grace.offered_exclusively(number, now),
            ParentKind::Seed => self.grace.seen_at_seed(number, now),
            ParentKind::Normal if missing.contains_key(&number) => self.grace.normal_progress(now),
            ParentKind::Normal => {}
        }
        if missing.contains_key(&number) {
            let holders = self.holders.entry(number).or_default();
            if !holders.contains(&parent.0) {
                holders.push(parent.0);
            }
            self.note_copy(now, (parent.0, number), vortex);
        }
    }

    fn note_copy(
        &mut self,
        now: Instant,
        (parent, number): (usize, u32),
        vortex: damselfly_transfer::PieceServer,
    ) {
        let heard_before = self.copies.contains_key(&(number, parent));
        let copy = match vortex {
            damselfly_transfer::PieceServer::TcpCutThrough(_) if !heard_before => {
                HeldCopy::MaybeArriving(now)
            }
            _ => HeldCopy::Whole,
        };
        self.copies.insert((number, parent), copy);
    }

    /// The piece landed: its holders' copies are no longer news.
    fn forget_copies(&mut self, number: u32) {
        let heard: Vec<(u32, usize)> = self
            .copies
            .range((number, 0)..=(number, usize::MAX))
            .map(|(key, _)| *key)
            .collect();
        for key in heard {
            self.copies.remove(&key);
        }
    }

    /// Whether `parent`'s copy of `number` cannot be fed by our own fetch of it that began
    /// at `fetch_since`: recorded there, or announced before that fetch began. A copy
    /// announced arriving later may be our bytes forwarded on, and a fetch moved to it is
    /// refused (bench/netns, 16 hosts: a host moved its slow fetch from the seed to a peer
    /// forwarding that very fetch; the peer refused, the fetch started over from nothing,
    /// and the five hosts following it by cut-through lost their copies too: 12.6 s for
    /// the swarm's last piece).
    fn copy_is_independent(&self, (parent, number): (usize, u32), fetch_since: Instant) -> bool {
        match self.copies.get(&(number, parent)) {
            Some(HeldCopy::MaybeArriving(heard)) => *heard < fetch_since,
            Some(HeldCopy::Whole) | None => true,
        }
    }

    /// A parent's SyncPieces stream ended; with an error the parent is dropped.
    pub fn sync_ended(&mut self, parent: ParentKey, error: Option<String>, out: &mut Vec<Action>) {
        let Some(p) = self.parents.get_mut(parent.0) else {
            return;
        };
        match error {
            Some(error) => {
                debug!(parent = %p.peer.id, %error, "SyncPieces failed");
                self.drop_parent(parent.0, out);
            }
            None if p.is_streaming() => p.state = ParentState::Ended,
            None => {}
        }
    }

    /// The fetch of `number` from `parent` ended; `None` for a fetch we did not start.
    fn settle_fetch(
        &mut self,
        now: Instant,
        parent: ParentKey,
        number: u32,
    ) -> Option<&mut Parent> {
        if self.fetching.get(&number).map(|f| f.parent) != Some(parent.0) {
            return None;
        }
        self.fetching.remove(&number);
        self.last_news = now;
        let p = self.parents.get_mut(parent.0)?;
        p.load.in_flight = p.load.in_flight.saturating_sub(1);
        Some(p)
    }

    /// How far the writes of pieces in flight have come (content file offsets).
    pub fn progress(&mut self, now: Instant, written_to: &[(u32, u64)]) {
        for &(number, to) in written_to {
            if let Some(fetch) = self.fetching.get_mut(&number) {
                if fetch.written_to.is_none_or(|before| to > before) {
                    fetch.advanced_at = now;
                }
                fetch.written_to = Some(to);
            }
        }
    }

    /// A piece is stored. A piece forwarded as it arrived at the parent took as long as the
    /// slower of the parent's source and its upload: it may raise what we think the parent
    /// delivers, never lower it.
    pub fn fetched(
        &mut self,
        now: Instant,
        (parent, number): (ParentKey, u32),
        (cost, delivery): (Duration, Delivery),
        missing: &mut BTreeMap<u32, PieceSpan>,
        out: &mut Vec<Action>,
    ) {
        let length = missing.get(&number).map(|span| span.length);
        let Some(p) = self.settle_fetch(now, parent, number) else {
            return;
        };
        match (length, delivery) {
            (Some(length), Delivery::Whole) => p.load.delivered_piece(length, cost),
            (Some(length), Delivery::Forwarded) => p.load.delivered_at_least(length, cost),
            (None, _) => {}
        }
        missing.remove(&number);
        self.holders.remove(&number);
        self.forget_copies(number);
        self.grace.piece_took(cost);
        out.push(Action::ReportPieceFinished { number });
    }

    /// A piece failed on our side (disk, storage): no other parent can fix it, the round
    /// ends.
    pub fn failed_locally(&mut self, now: Instant, parent: ParentKey, number: u32, error: String) {
        if self.settle_fetch(now, parent, number).is_some() {
            self.fatal = Some(error);
        }
    }

    /// A parent failed a piece: the piece goes to another holder, and a parent that failed
    /// repeatedly is dropped.
    pub fn parent_failed(
        &mut self,
        now: Instant,
        (parent, number): (ParentKey, u32),
        error: String,
        missing: &BTreeMap<u32, PieceSpan>,
        out: &mut Vec<Action>,
    ) {
        let Some(p) = self.settle_fetch(now, parent, number) else {
            return;
        };
        p.failures += 1;
        let parent_id = p.peer.id.clone();
        let failures = p.failures;
        debug!(piece = number, parent = %parent_id, %error, "piece from parent failed");
        out.push(Action::ReportPieceFailed {
            number,
            parent_id,
            failure: PieceFailure::Temporary,
        });
        if let Some(holders) = self.holders.get_mut(&number) {
            holders.retain(|&h| h != parent.0);
        }
        if failures >= MAX_PARENT_FAILURES {
            self.drop_parent(parent.0, out);
        }
        if missing.contains_key(&number) {
            self.idle.insert(number);
        }
    }

    /// A parent stopped forwarding a piece that was still arriving there: the piece goes to
    /// another holder; the parent is neither counted nor reported, since its own source
    /// failed, and is a holder again once it announces the piece whole.
    pub fn parent_withdrew(
        &mut self,
        now: Instant,
        (parent, number): (ParentKey, u32),
        error: String,
        missing: &BTreeMap<u32, PieceSpan>,
    ) {
        if self.settle_fetch(now, parent, number).is_none() {
            return;
        }
        debug!(piece = number, %error, "parent stopped forwarding an arriving piece");
        if let Some(holders) = self.holders.get_mut(&number) {
            holders.retain(|&h| h != parent.0);
        }
        if missing.contains_key(&number) {
            self.idle.insert(number);
        }
    }

    /// A parent sent bytes that failed a digest check: it is reported as a bad parent and
    /// dropped at once, and the piece goes to another holder. Returns the parent's ID, to keep
    /// it out of later rounds.
    pub fn parent_forged(
        &mut self,
        now: Instant,
        (parent, number): (ParentKey, u32),
        error: String,
        missing: &BTreeMap<u32, PieceSpan>,
        out: &mut Vec<Action>,
    ) -> Option<String> {
        let p = self.settle_fetch(now, parent, number)?;
        p.failures += 1;
        let parent_id = p.peer.id.clone();
        warn!(piece = number, parent = %parent_id, %error, "parent sent a piece that failed its digest; dropping it");
        out.push(Action::ReportPieceFailed {
            number,
            parent_id: parent_id.clone(),
            failure: PieceFailure::Forged,
        });
        self.drop_parent(parent.0, out);
        if missing.contains_key(&number) {
            self.idle.insert(number);
        }
        Some(parent_id)
    }

    fn drop_parent(&mut self, parent: usize, out: &mut Vec<Action>) {
        let Some(p) = self.parents.get_mut(parent) else {
            return;
        };
        if p.state != ParentState::Dropped {
            p.state = ParentState::Dropped;
            out.push(Action::DropParent {
                parent: ParentKey(parent),
            });
        }
        for holders in self.holders.values_mut() {
            holders.retain(|&h| h != parent);
        }
        self.copies.retain(|&(_, p), _| p != parent);
    }

    /// Starts what can start and says whether the round is over.
    pub fn step(
        &mut self,
        now: Instant,
        missing: &BTreeMap<u32, PieceSpan>,
        out: &mut Vec<Action>,
    ) -> Option<RoundEnd> {
        self.refresh_writing(now, missing);
        if matches!(self.state, RoundState::Fetching) {
            self.check_refresh(now, missing);
            self.move_slow_fetches(now, missing, out);
        }
        if self.is_draining() {
            return self.fetching.is_empty().then(|| self.end(missing));
        }
        if matches!(self.state, RoundState::Cancelled) || self.fatal.is_some() {
            return Some(self.end(missing));
        }
        self.dispatch(now, missing, out);
        if missing.is_empty() || !self.parents.iter().any(Parent::is_alive) {
            return Some(self.end(missing));
        }
        if self.fetching.is_empty() && !self.parents.iter().any(Parent::is_streaming) {
            return Some(self.end(missing)); // nobody can tell us about more pieces
        }
        if self.fetching.is_empty() && now >= self.last_news + self.stall_limit {
            info!(
                remaining = missing.len(),
                "parents offered no missing piece in time"
            );
            return Some(self.end(missing));
        }
        None
    }

    /// A seed-only round past its refresh time drains, unless too little is missing to
    /// be worth a scheduling round. Checked once.
    fn check_refresh(&mut self, now: Instant, missing: &BTreeMap<u32, PieceSpan>) {
        if self.refresh_at.is_some_and(|at| at <= now) {
            self.refresh_at = None;
            if missing.len() >= MIN_PENDING_FOR_REFRESH {
                debug!(
                    remaining = missing.len(),
                    "only seed parents; asking for more"
                );
                self.drain(DrainReason::Refresh);
            }
        }
    }

    /// Starts fetches until the concurrency limit or until no piece can start.
    fn dispatch(
        &mut self,
        now: Instant,
        missing: &BTreeMap<u32, PieceSpan>,
        out: &mut Vec<Action>,
    ) {
        while self.slots_taken(now, missing) < self.concurrency
            && self.fetching.len() < self.concurrency * MAX_FETCHES_PER_SLOT
        {
            let Some((number, parent)) = self.next_assignment(now) else {
                return;
            };
            // A slot a lingering fetch left is for a parent that is not slow: more fetches
            // at slow parents would only split their uplinks further.
            if self.fetching.len() >= self.concurrency && slow_parents(&self.loads())[parent] {
                return;
            }
            self.idle.remove(&number);
            if let Some(span) = missing.get(&number) {
                self.start_fetch(now, *span, parent, out);
            }
        }
    }

    /// Fetches `span` from `parent`.
    fn start_fetch(&mut self, now: Instant, span: PieceSpan, parent: usize, out: &mut Vec<Action>) {
        let p = &mut self.parents[parent];
        let Some(vortex) = p.vortex else {
            // Cannot happen (a holder always told us its address); never lose the piece.
            self.idle.insert(span.number);
            self.drop_parent(parent, out);
            return;
        };
        p.load.in_flight += 1;
        let fetch = InFlight {
            parent,
            since: now,
            written_to: None,
            advanced_at: now,
        };
        self.fetching.insert(span.number, fetch);
        out.push(Action::Fetch {
            parent: ParentKey(parent),
            parent_id: p.peer.id.clone(),
            seed: p.load.seed,
            span,
            vortex,
        });
    }

    /// Gives up fetches that a much faster holder would finish sooner (see [`should_move`])
    /// and starts them again at once from that holder: the fastest normal parent for one
    /// more piece. Never a seed that does not ration: its uplink carries the task's first
    /// copies, and each copy of a piece the swarm holds delays the next first copy
    /// (bench/netns, half the uplinks slow: moves to the seed made it send 1.14 copies per
    /// piece, its last first copy 6 s later).
    fn move_slow_fetches(
        &mut self,
        now: Instant,
        missing: &BTreeMap<u32, PieceSpan>,
        out: &mut Vec<Action>,
    ) {
        let to_move: Vec<(u32, usize, usize)> = self
            .fetching
            .iter()
            .filter(|(number, _)| self.may_move(**number))
            .filter_map(|(&number, f)| {
                let target = self.move_target(now, missing.get(&number)?, f)?;
                Some((number, f.parent, target))
            })
            .collect();
        for (number, parent, target) in to_move {
            let Some(span) = missing.get(&number) else {
                continue;
            };
            debug!(
                number,
                from = %self.parents[parent].peer.id,
                to = %self.parents[target].peer.id,
                "moving a slow fetch to a faster holder"
            );
            self.fetching.remove(&number);
            self.moves.entry(number).or_default().push(parent);
            if let Some(p) = self.parents.get_mut(parent) {
                p.load.in_flight = p.load.in_flight.saturating_sub(1);
            }
            out.push(Action::AbortFetch { number });
            self.start_fetch(now, *span, target, out);
        }
    }

    /// The holder a fetch of `number` should move to, if any is much faster; never a slow
    /// one (a fetch moved from one 10 Mbit/s parent to another crawled on for 30 s more).
    /// A rationing seed that offers the piece is judged by [`should_move`] alone: its uplink
    /// is shared by all its flows and measures slow next to a fast peer's, yet it gave us
    /// the piece because the holder it first went to measured slow (bench/netns, half the
    /// uplinks at 10 Mbit/s: three hosts' fetches of such a piece crawled on at the slow
    /// host for 20 s after the seed offered it, 36 s in all).
    ///
    /// A holder not measured yet counts at the best parent's rate while the fetch runs at a
    /// slow parent: a fast host the scheduler pushed 17 s in held a piece that a 10 Mbit/s
    /// host was forwarding to us, and with no rate of its own it was never a target; the
    /// fetch took 44 s (bench/netns, half the uplinks slow). A guess never aborts a fetch
    /// at a parent that is not slow.
    fn move_target(&self, now: Instant, span: &PieceSpan, running: &InFlight) -> Option<usize> {
        let load = &self.parents[running.parent].load;
        let status = fetch_status(now, span, running);
        let left = self.moves.get(&span.number);
        let loads = self.loads();
        let slow = slow_parents(&loads);
        let guess = slow[running.parent].then(|| best_rate(&loads)).flatten();
        let seed_slot = self.seed_slots_free();
        self.holders
            .get(&span.number)?
            .iter()
            .copied()
            .filter(|&h| h != running.parent && self.parents[h].is_alive())
            .filter(|h| !left.is_some_and(|left| left.contains(h)))
            .filter(|&h| self.copy_is_independent((h, span.number), running.since))
            .filter(|&h| {
                if self.parents[h].load.seed {
                    self.seed_offers(h, seed_slot)
                } else {
                    !slow[h]
                }
            })
            .filter(|&h| should_move(status, load, &self.parents[h].load.delivered_or(guess)))
            .max_by_key(|&h| self.parents[h].load.spare_per_piece(None))
    }

    /// Whether a fetch may move to seed `parent`: only a rationing seed, whose every offer
    /// is a copy it chose to spend its uplink on, and within the seed budget. A rationing
    /// seed gives a piece again to a fast child once the child it first went to measures
    /// slow; that child's fetch of it from the slow holder had kept it, and with moves to
    /// seeds barred it crawled on for 50 s (bench/netns, half the uplinks slow).
    fn seed_offers(&self, parent: usize, seed_slot: bool) -> bool {
        seed_slot && self.parents[parent].kind == ParentKind::RationingSeed
    }

    fn loads(&self) -> Vec<ParentLoad> {
        self.parents.iter().map(|p| p.load.clone()).collect()
    }

    /// Each parent's rate as its fetches in flight show it (see [`ParentLoad::writing`]).
    fn refresh_writing(&mut self, now: Instant, missing: &BTreeMap<u32, PieceSpan>) {
        let mut writing: Vec<Option<u64>> = vec![None; self.parents.len()];
        for (number, fetch) in &self.fetching {
            let Some(span) = missing.get(number) else {
                continue;
            };
            let Some(rate) = fetch_status(now, span, fetch).written_rate() else {
                continue;
            };
            if let Some(slot) = writing.get_mut(fetch.parent) {
                *slot = Some(slot.map_or(rate, |best| best.max(rate)));
            }
        }
        for (parent, rate) in self.parents.iter_mut().zip(writing) {
            parent.load.writing = rate;
        }
    }

    /// Fetches that hold one of the child's slots: all but the lingering ones (see
    /// [`lingers`]).
    fn slots_taken(&self, now: Instant, missing: &BTreeMap<u32, PieceSpan>) -> usize {
        let best = best_rate(&self.loads());
        self.fetching
            .iter()
            .filter(|(number, fetch)| {
                missing
                    .get(number)
                    .is_none_or(|span| !lingers(fetch_status(now, span, fetch), best))
            })
            .count()
    }

    /// Whether piece `number`'s fetch may still move.
    fn may_move(&self, number: u32) -> bool {
        self.moves.get(&number).map_or(0, Vec::len) < MAX_MOVES
    }

    /// Whether a seed may take one more of our pieces within the seed budget.
    fn seed_slots_free(&self) -> bool {
        let loads: Vec<ParentLoad> = self.parents.iter().map(|p| p.load.clone()).collect();
        let alive: Vec<bool> = self.parents.iter().map(Parent::is_alive).collect();
        let seed_in_flight: usize = loads
            .iter()
            .filter(|l| l.seed)
            .map(|l| l.in_flight as usize)
            .sum();
        seed_in_flight < seed_budget(&loads, &alive, self.concurrency)
    }

    /// The next (piece, parent) pair, within the seed budget and the seed grace.
    fn next_assignment(&mut self, now: Instant) -> Option<(u32, usize)> {
        let seed_slots_free = self.seed_slots_free();
        let loads = self.loads();
        let alive: Vec<bool> = self.parents.iter().map(Parent::is_alive).collect();
        let normal_alive = loads.iter().zip(&alive).any(|(l, &a)| a && !l.seed);
        let grace = &self.grace;
        let seed_may_serve =
            |number: u32| seed_slots_free && (!normal_alive || grace.is_ripe(number, now));
        next_assignment(
            &self.idle,
            &self.holders,
            &loads,
            &seed_may_serve,
            &mut self.rng,
        )
    }

    /// When the round wants to look again: the stall deadline, a held-back piece ripening,
    /// the seed-only refresh. A draining round waits for its fetches only.
    pub fn next_wake(&self, now: Instant) -> Option<Instant> {
        if self.is_draining() {
            return None;
        }
        let stall = self
            .fetching
            .is_empty()
            .then(|| self.last_news + self.stall_limit);
        let ripening = (self.fetching.len() < self.concurrency)
            .then(|| self.grace.next_ripening(&self.idle, now))
            .flatten();
        // A fetch another parent also holds may become worth moving, and with pieces
        // waiting any fetch may start to linger and free its slot: looked at once it ran
        // long enough, then every MOVE_CHECK_INTERVAL (never at `now`, so no busy loop).
        let waiting = !self.idle.is_empty();
        let moving = self
            .fetching
            .iter()
            .filter(|(number, _)| {
                let movable = self.may_move(**number)
                    && self.holders.get(number).is_some_and(|h| h.len() > 1);
                movable || waiting
            })
            .map(|(_, f)| (f.since + MIN_MOVE_AFTER).max(now + MOVE_CHECK_INTERVAL))
            .min();
        [stall, ripening, self.refresh_at, moving]
            .into_iter()
            .flatten()
            .min()
    }

    /// The round's outcome; what it held is forgotten.
    pub fn end(&mut self, missing: &BTreeMap<u32, PieceSpan>) -> RoundEnd {
        let (refresh, interrupt) = match std::mem::replace(&mut self.state, RoundState::Fetching) {
            RoundState::Draining(DrainReason::Refresh) => (!missing.is_empty(), None),
            RoundState::Draining(DrainReason::Interrupt(decision)) => (false, Some(decision)),
            RoundState::Fetching | RoundState::Cancelled => (false, None),
        };
        RoundEnd {
            failed: self
                .parents
                .iter()
                .filter(|p| p.failed_us())
                .map(|p| p.peer.clone())
                .collect(),
            refresh,
            fatal: self.fatal.take(),
            interrupt,
        }
    }
}
