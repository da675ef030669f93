//! How many pieces a daemon's piece servers send at once, and which waiting request goes next.
//!
//! A host whose upload is a tenth of its peers' was asked by every fast peer at once for the
//! few pieces it alone held, and sent them all at once: in bench/netns (half the uplinks at
//! 10 Mbit/s) one such host held pieces 0-3, seven peers asked for all four, and each of the
//! 28 flows got a 28th of 10 Mbit/s; every fast peer waited 50-56 s for those pieces, where
//! one whole copy to one fast peer takes 3.4 s and that peer passes it on at ten times the
//! rate. So uploads are paced as a rationing seed paces its given pieces ([`Pace`]): as many
//! flows as still add to what leaves the uplink, the rest wait with their request read. A
//! child whose request waits sees its fetch write nothing and moves it to a holder that got
//! the piece meanwhile (`damselfly_daemon::dispatch::should_move`).
//!
//! The next in line:
//! - a piece this host is not sending and has not sent before a copy it already sent or is
//!   sending, while that copy has waited less than [`REPEAT_WAIT`]: a thin uplink sends first
//!   copies that faster peers can pass on. Without the bound, a host that keeps receiving
//!   new pieces kept a repeat waiting for good;
//! - then the child with the fewest uploads from here in flight: with the pieces most sent
//!   first, one child's requests waited 10-14 s at every fast parent while the others were
//!   served, and it finished last by 10 s (bench/netns);
//! - then the longest waiting.
//!
//! Only a thin uplink is paced ([`UplinkMeter`]): elsewhere every request up to the ceiling
//! is sent at once, as the children's downlinks, not this uplink, set the flows' rates.
//!
//! Uploads that started before the uplink was measured thin do not keep their turns: a
//! sender asks [`UploadSlots::keep_turn`] between writes, and while more uploads run than
//! the pace allows, the ones that rank last give their turn back and wait in line again
//! where they stopped. They rank as [`State::keeps`] says: first copies first, the pieces
//! most asked for here next, then the most sent.
//! The uplink is measured thin only after two 2 s windows, and by then every fast peer had
//! asked a 10 Mbit/s host for the piece it alone held (bench/netns, half the uplinks at
//! 10 Mbit/s): seven copies at a seventh of the uplink each took 30-36 s, where one copy
//! to a fast peer takes 3.4 s and that peer passes it on at ten times the rate.
//!
//! TCP and QUIC share one `UploadSlots`: they share the host's uplink.

use crate::metrics::{UPLOAD_LIMIT, UPLOAD_PACED, UPLOAD_SUSPENDED_TOTAL, UPLOAD_WAITING};
use crate::pace::Pace;
use crate::uplink::UplinkMeter;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A copy of a piece already sent (or being sent) waits behind first copies for this long at
/// most: two 4 MiB pieces at 10 Mbit/s, so a thin uplink gets its first copies out first
/// while a child that has no other holder still gets the piece.
pub const REPEAT_WAIT: Duration = Duration::from_secs(7);

/// How many pieces' copy counts are remembered; past it they are all forgotten (every piece
/// is a first copy again). 16,384 is a 64 GiB task in 4 MiB pieces.
pub const COPIES_REMEMBERED: usize = 16_384;

type PieceKey = (String, u32);

/// The uploads a host's piece servers run and the requests waiting for one.
pub struct UploadSlots {
    state: Mutex<State>,
}

struct State {
    floor: usize,
    ceiling: usize,
    meter: UplinkMeter,
    /// The meter's verdict the pace was last set up for.
    paced: bool,
    pace: Pace,
    sending: usize,
    line: Vec<Waiter>,
    next_seq: u64,
    /// Copies sent or being sent, per piece.
    copies: HashMap<PieceKey, u32>,
    /// Uploads in flight per child address.
    per_child: HashMap<IpAddr, usize>,
    /// Uploads in flight by their turn's id: the piece and how much of it went out.
    running: HashMap<u64, Running>,
}

/// One upload in flight.
struct Running {
    piece: PieceKey,
    sent: u64,
    /// It forwards a piece still arriving here and waits for its next bytes, not for the
    /// uplink.
    awaits_arrival: bool,
}

struct Waiter {
    seq: u64,
    since: Instant,
    piece: PieceKey,
    child: IpAddr,
    handoff: oneshot::Sender<UploadSlot>,
}

/// One upload's turn; dropping it frees the turn for the next in line.
pub struct UploadSlot {
    slots: Arc<UploadSlots>,
    /// The turn's id among the uploads in flight; also its place in line if it waits again.
    id: u64,
    piece: PieceKey,
    child: IpAddr,
    /// Uploads in flight when it started, itself included.
    level: usize,
    started: Instant,
    /// Bytes sent, once the piece went out whole.
    sent: Option<u64>,
    /// It waited in line again after it had begun: its time says nothing about the pace.
    resumed: bool,
    /// It holds a turn; one given back (to wait in line again) frees nothing when dropped.
    holds: bool,
}

impl std::fmt::Debug for UploadSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadSlot")
            .field("piece", &self.piece)
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

impl UploadSlot {
    /// Uploads in flight when this one started, itself included.
    pub fn level(&self) -> usize {
        self.level
    }

    /// The piece went out whole: `bytes` of content. Counts towards the pace when the turn
    /// is given back.
    pub fn finished(&mut self, bytes: u64) {
        if !self.resumed {
            self.sent = Some(bytes);
        }
    }
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        if self.holds {
            self.slots
                .release(self.id, self.child, self.level, self.started, self.sent);
        }
    }
}

impl UploadSlots {
    /// `floor` to `ceiling` uploads at once, as the measured upload allows (see [`Pace`]);
    /// `floor == ceiling` fixes the number.
    pub fn new(floor: usize, ceiling: usize) -> Arc<Self> {
        let ceiling = ceiling.max(1);
        let floor = floor.clamp(1, ceiling);
        Arc::new(Self {
            state: Mutex::new(State::new(floor, ceiling)),
        })
    }

    /// Uploads allowed at once now.
    pub fn limit(&self) -> usize {
        self.lock().allowed()
    }

    /// Whether the uplink was measured thin, so uploads are paced.
    pub fn is_paced(&self) -> bool {
        self.lock().paced
    }

    /// `bytes` of piece content went to a peer's socket.
    pub fn uploaded(self: &Arc<Self>, bytes: u64) {
        self.with_meter(|meter, now| meter.uploaded(bytes, now));
    }

    /// `bytes` of piece content came in (from peers or the origin).
    pub fn downloaded(self: &Arc<Self>, bytes: u64) {
        self.with_meter(|meter, now| meter.downloaded(bytes, now));
    }

    /// Updates the meter; when its verdict changed, the limit did too.
    fn with_meter(self: &Arc<Self>, update: impl FnOnce(&mut UplinkMeter, Instant)) {
        let now = Instant::now();
        let handoffs = {
            let mut state = self.lock();
            if !state.observe(update, now) {
                return;
            }
            state.hand_out(now)
        };
        self.hand_over(handoffs);
    }

    /// Requests waiting for a turn.
    pub fn waiting(&self) -> usize {
        let mut state = self.lock();
        state.line.retain(|w| !w.handoff.is_closed());
        state.line.len()
    }

    /// Uploads running now.
    pub fn sending(&self) -> usize {
        self.lock().sending
    }

    /// Waits for a turn to send piece `number` of `task_id` to `child`. Cancel-safe: a
    /// request dropped while it waits leaves the line, and a turn handed to it goes on to
    /// the next.
    pub async fn acquire(
        self: &Arc<Self>,
        task_id: &str,
        number: u32,
        child: IpAddr,
    ) -> UploadSlot {
        let piece = (task_id.to_string(), number);
        let waiting = {
            let mut state = self.lock();
            state.line.retain(|w| !w.handoff.is_closed());
            let now = Instant::now();
            let (pressing, line) = (state.pressing(), !state.line.is_empty());
            state.meter.demand(pressing + 1, line, now);
            state.follow_verdict();
            let seq = state.take_seq();
            if state.line.is_empty() && state.sending < state.allowed() {
                let level = state.start(seq, &piece, child);
                return self.slot(seq, piece, child, level);
            }
            let (handoff, waiting) = oneshot::channel();
            state.line.push(Waiter {
                seq,
                since: now,
                piece,
                child,
                handoff,
            });
            state.publish();
            waiting
        };
        self.turn_from(waiting).await
    }

    /// The turn handed over to a waiter. The sender lives in the line until it hands a turn
    /// over, and `UploadSlots` outlives every waiter (they hold an `Arc`), so the channel only
    /// closes by handing one over.
    async fn turn_from(self: &Arc<Self>, waiting: oneshot::Receiver<UploadSlot>) -> UploadSlot {
        match waiting.await {
            Ok(slot) => slot,
            Err(_) => unreachable_turn(self),
        }
    }

    /// The sender of `turn` forwards a piece still arriving here and now waits (`true`) or
    /// no longer waits (`false`) for its next bytes: while it waits it is no demand on the
    /// uplink (see [`State::pressing`]).
    pub fn awaits_arrival(&self, turn: &UploadSlot, awaiting: bool) {
        if let Some(running) = self.lock().running.get_mut(&turn.id) {
            running.awaits_arrival = awaiting;
        }
    }

    /// Called by a sender between writes, `sent` bytes of the piece out: returns at once
    /// while the upload keeps its turn; else gives the turn back, waits in line again and
    /// returns with a new one (see the module's notes). Cancel-safe like [`Self::acquire`].
    pub async fn keep_turn(self: &Arc<Self>, turn: &mut UploadSlot, sent: u64) {
        let (handoffs, waiting) = {
            let mut state = self.lock();
            if let Some(running) = state.running.get_mut(&turn.id) {
                running.sent = sent;
            }
            if !turn.holds || state.keeps(turn.id) {
                return;
            }
            turn.holds = false;
            let waiting = state.suspend(turn);
            (state.hand_out(Instant::now()), waiting)
        };
        self.hand_over(handoffs);
        UPLOAD_SUSPENDED_TOTAL.inc();
        tracing::debug!(number = turn.piece.1, sent, "upload waits for a turn again");
        let mut resumed = self.turn_from(waiting).await;
        resumed.resumed = true;
        // The old turn was given back: dropping it frees nothing.
        *turn = resumed;
    }

    fn slot(self: &Arc<Self>, id: u64, piece: PieceKey, child: IpAddr, level: usize) -> UploadSlot {
        UploadSlot {
            slots: Arc::clone(self),
            id,
            piece,
            child,
            level,
            started: Instant::now(),
            sent: None,
            resumed: false,
            holds: true,
        }
    }

    fn release(
        self: &Arc<Self>,
        id: u64,
        child: IpAddr,
        level: usize,
        started: Instant,
        sent: Option<u64>,
    ) {
        let now = Instant::now();
        let handoffs = {
            let mut state = self.lock();
            state.finish(id, child);
            if let (Some(bytes), true) = (sent, state.paced) {
                state
                    .pace
                    .flow_done(level, bytes, now.duration_since(started), now);
            }
            state.hand_out(now)
        };
        self.hand_over(handoffs);
    }

    /// Gives each waiter its turn, outside the lock: a turn whose waiter left meanwhile comes
    /// back through `release`.
    fn hand_over(self: &Arc<Self>, handoffs: Vec<(Waiter, usize)>) {
        for (waiter, level) in handoffs {
            let slot = self.slot(waiter.seq, waiter.piece, waiter.child, level);
            drop(waiter.handoff.send(slot));
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Never reached (see [`UploadSlots::acquire`]); if it were, a turn without a flow is handed
/// out rather than a panic on a request path.
fn unreachable_turn(slots: &Arc<UploadSlots>) -> UploadSlot {
    let child = IpAddr::from([0, 0, 0, 0]);
    let (id, level) = {
        let mut state = slots.lock();
        let id = state.take_seq();
        (id, state.start(id, &(String::new(), 0), child))
    };
    slots.slot(id, (String::new(), 0), child, level)
}

impl State {
    fn new(floor: usize, ceiling: usize) -> Self {
        Self {
            floor,
            ceiling,
            meter: UplinkMeter::default(),
            paced: false,
            pace: Pace::new(floor, ceiling),
            sending: 0,
            line: Vec::new(),
            next_seq: 0,
            copies: HashMap::new(),
            per_child: HashMap::new(),
            running: HashMap::new(),
        }
    }

    /// A new request's id: its place in line, and its turn's id once it has one.
    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Uploads allowed at once: the pace's limit on a thin uplink, else the ceiling.
    fn allowed(&self) -> usize {
        if self.paced {
            self.pace.limit()
        } else {
            self.ceiling
        }
    }

    /// Updates the meter, with the uploads in flight as demand; true when its verdict
    /// changed. Uploads that run through a window are demand as much as new requests: a
    /// 10 Mbit/s host whose seven uploads began in its first seconds got no request for
    /// 30 s after, so no window counted as busy and it was never paced (bench/netns).
    fn observe(&mut self, update: impl FnOnce(&mut UplinkMeter, Instant), now: Instant) -> bool {
        update(&mut self.meter, now);
        let line = !self.line.is_empty();
        self.meter.demand(self.pressing(), line, now);
        self.follow_verdict()
    }

    /// Uploads in flight that wait for the uplink: all but those forwarding a piece still
    /// arriving here while they wait for its next bytes. Those are held back by the piece's
    /// source, and counted as demand they made an even host whose relays followed a slow
    /// source look thin: 6 of 16 hosts with 100 Mbit/s uplinks were paced and gave turns
    /// back near the end of a download (bench/netns), so the last piece's copies to three
    /// peers waited behind a fourth.
    fn pressing(&self) -> usize {
        let awaiting = self.running.values().filter(|r| r.awaits_arrival).count();
        self.sending.saturating_sub(awaiting)
    }

    /// Follows the meter's verdict; true when it changed. A newly thin uplink starts its pace
    /// at the floor: levels measured unpaced say nothing about fewer uploads.
    fn follow_verdict(&mut self) -> bool {
        let thin = self.meter.is_thin();
        if thin == self.paced {
            return false;
        }
        self.paced = thin;
        if thin {
            self.pace = Pace::new(self.floor, self.ceiling);
        }
        true
    }

    /// Upload `id` of `piece` to `child` starts; returns its level.
    fn start(&mut self, id: u64, piece: &PieceKey, child: IpAddr) -> usize {
        if self.copies.len() >= COPIES_REMEMBERED && !self.copies.contains_key(piece) {
            self.copies.clear();
        }
        *self.copies.entry(piece.clone()).or_default() += 1;
        *self.per_child.entry(child).or_default() += 1;
        let sent = 0;
        let piece = piece.clone();
        self.running.insert(
            id,
            Running {
                piece,
                sent,
                awaits_arrival: false,
            },
        );
        self.sending += 1;
        self.sending
    }

    /// Whether upload `id` keeps its turn: always while no more run than allowed; else the
    /// allowed number of them: the most advanced copy of each piece first (a first copy a
    /// fast peer can pass on), the pieces most asked for here before the others, then the
    /// most sent. Peers ask a thin uplink for a piece when nobody faster holds it, so the
    /// piece most of them wait for here is the one they cannot get elsewhere (bench/netns:
    /// ranked by bytes sent alone, a 10 Mbit/s host kept sending pieces the fast hosts held
    /// and held back the one it alone had, which four of them were waiting for).
    fn keeps(&self, id: u64) -> bool {
        let allowed = self.allowed();
        if self.running.len() <= allowed {
            return true;
        }
        let mut asked: HashMap<&PieceKey, usize> = HashMap::new();
        let pieces = self.running.values().map(|r| &r.piece);
        for piece in pieces.chain(self.line.iter().map(|w| &w.piece)) {
            *asked.entry(piece).or_default() += 1;
        }
        let mut by_progress: Vec<(&u64, &Running)> = self.running.iter().collect();
        by_progress.sort_by_key(|(id, r)| {
            let asked = asked.get(&r.piece).copied().unwrap_or(0);
            (std::cmp::Reverse(asked), std::cmp::Reverse(r.sent), **id)
        });
        let mut pieces = std::collections::HashSet::new();
        let (firsts, repeats): (Vec<_>, Vec<_>) = by_progress
            .into_iter()
            .partition(|(_, r)| pieces.insert(&r.piece));
        firsts
            .into_iter()
            .chain(repeats)
            .take(allowed)
            .any(|(kept, _)| *kept == id)
    }

    /// `turn` gives its turn back and waits in line again, in its old place: returns what
    /// the next turn comes through. Its copy no longer counts as sent.
    fn suspend(&mut self, turn: &UploadSlot) -> oneshot::Receiver<UploadSlot> {
        self.finish(turn.id, turn.child);
        if let Some(copies) = self.copies.get_mut(&turn.piece) {
            *copies -= 1;
            if *copies == 0 {
                self.copies.remove(&turn.piece);
            }
        }
        let (handoff, waiting) = oneshot::channel();
        self.line.push(Waiter {
            seq: turn.id,
            since: Instant::now(),
            piece: turn.piece.clone(),
            child: turn.child,
            handoff,
        });
        waiting
    }

    fn finish(&mut self, id: u64, child: IpAddr) {
        self.running.remove(&id);
        self.sending = self.sending.saturating_sub(1);
        if let Some(count) = self.per_child.get_mut(&child) {
            *count -= 1;
            if *count == 0 {
                self.per_child.remove(&child);
            }
        }
    }

    /// The line's length, the limit and the verdict, as gauges. A process runs one daemon, so
    /// its one `UploadSlots` owns them.
    fn publish(&self) {
        UPLOAD_WAITING.set(i64::try_from(self.line.len()).unwrap_or(i64::MAX));
        UPLOAD_LIMIT.set(i64::try_from(self.allowed()).unwrap_or(i64::MAX));
        UPLOAD_PACED.set(i64::from(self.paced));
    }

    /// Takes waiters off the line while there is room (see the module's order). Returns each
    /// with the level its upload starts at.
    fn hand_out(&mut self, now: Instant) -> Vec<(Waiter, usize)> {
        let mut handoffs = Vec::new();
        self.line.retain(|w| !w.handoff.is_closed());
        if !self.line.is_empty() {
            self.meter.demand(self.pressing(), true, now);
        }
        while self.sending < self.allowed() {
            let Some(next) = self.next_in_line(now) else {
                break;
            };
            let waiter = self.line.swap_remove(next);
            let level = self.start(waiter.seq, &waiter.piece, waiter.child);
            handoffs.push((waiter, level));
        }
        self.publish();
        handoffs
    }

    fn next_in_line(&self, now: Instant) -> Option<usize> {
        self.line
            .iter()
            .enumerate()
            .min_by_key(|(_, w)| {
                let repeat =
                    self.copies.contains_key(&w.piece) && now.duration_since(w.since) < REPEAT_WAIT;
                let child_busy = self.per_child.get(&w.child).copied().unwrap_or(0);
                (repeat, child_busy, w.seq)
            })
            .map(|(index, _)| index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIECE: u64 = 4 << 20;

    fn child(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    /// Asks for a turn in the background; the task's result is the piece number it got.
    fn ask(slots: &Arc<UploadSlots>, number: u32, from: u8) -> tokio::task::JoinHandle<u32> {
        let slots = Arc::clone(slots);
        tokio::spawn(async move {
            let turn = slots.acquire("t", number, child(from)).await;
            turn.piece.1
        })
    }

    /// Waits until `count` requests are in line.
    async fn line_holds(slots: &UploadSlots, count: usize) {
        while slots.waiting() != count {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_first_copy_goes_before_a_piece_already_sent() {
        let slots = UploadSlots::new(1, 1);
        drop(slots.acquire("t", 0, child(1)).await);
        let running = slots.acquire("t", 2, child(1)).await;
        let again = ask(&slots, 0, 2);
        line_holds(&slots, 1).await;
        let fresh = ask(&slots, 1, 3);
        line_holds(&slots, 2).await;
        drop(running);
        assert_eq!(fresh.await.unwrap(), 1, "the never-sent piece goes first");
        assert_eq!(again.await.unwrap(), 0);
        assert_eq!(slots.sending(), 0);
    }

    #[tokio::test]
    async fn a_child_with_nothing_in_flight_goes_before_a_busy_one() {
        let slots = UploadSlots::new(2, 2);
        let busy_child = slots.acquire("t", 0, child(1)).await;
        let other = slots.acquire("t", 1, child(3)).await;
        let busy_again = ask(&slots, 2, 1);
        line_holds(&slots, 1).await;
        let idle = ask(&slots, 3, 2);
        line_holds(&slots, 2).await;
        drop(other);
        assert_eq!(
            idle.await.unwrap(),
            3,
            "the child without an upload goes first"
        );
        drop(busy_child);
        assert_eq!(busy_again.await.unwrap(), 2);
    }

    #[test]
    fn a_repeat_waits_behind_first_copies_only_so_long() {
        let (handoff, _kept) = oneshot::channel();
        let (handoff2, _kept2) = oneshot::channel();
        let t0 = Instant::now();
        let mut state = State::new(1, 1);
        state.copies.insert(("t".to_string(), 0), 1);
        state.line.push(Waiter {
            seq: 0,
            since: t0,
            piece: ("t".to_string(), 0),
            child: child(1),
            handoff,
        });
        state.line.push(Waiter {
            seq: 1,
            since: t0,
            piece: ("t".to_string(), 1),
            child: child(2),
            handoff: handoff2,
        });
        assert_eq!(state.next_in_line(t0 + Duration::from_secs(1)), Some(1));
        assert_eq!(
            state.next_in_line(t0 + REPEAT_WAIT),
            Some(0),
            "waited long enough"
        );
    }

    #[tokio::test]
    async fn a_waiter_that_leaves_gives_its_turn_to_the_next() {
        let slots = UploadSlots::new(1, 1);
        let running = slots.acquire("t", 0, child(1)).await;
        let left = ask(&slots, 1, 2);
        line_holds(&slots, 1).await;
        let stays = ask(&slots, 2, 3);
        line_holds(&slots, 2).await;
        left.abort();
        assert!(left.await.unwrap_err().is_cancelled());
        drop(running);
        assert_eq!(stays.await.unwrap(), 2);
        assert_eq!(slots.sending(), 0);
        assert_eq!(slots.waiting(), 0);
    }

    #[tokio::test]
    async fn a_turn_handed_to_a_waiter_that_is_gone_goes_on() {
        // The handoff races the waiter's cancellation: whichever wins, no turn is lost.
        let slots = UploadSlots::new(1, 1);
        for _ in 0..100 {
            let running = slots.acquire("t", 0, child(1)).await;
            let waiter = ask(&slots, 1, 2);
            tokio::task::yield_now().await;
            drop(running);
            waiter.abort();
            let _ = waiter.await;
            assert_eq!(slots.sending(), 0);
        }
        let _again = slots.acquire("t", 3, child(1)).await;
        assert_eq!(slots.sending(), 1);
    }

    /// Makes `state`'s uplink thin: busy windows at a tenth of the download.
    fn measure_thin(state: &mut State, t: &mut Instant) {
        for _ in 0..crate::uplink::THIN_WINDOWS {
            state.meter.demand(8, true, *t);
            state.meter.downloaded(100 << 20, *t);
            state.meter.uploaded(10 << 20, *t);
            *t += crate::uplink::UPLINK_WINDOW;
            state.meter.roll(*t);
        }
        state.follow_verdict();
    }

    /// Keeps as many uploads going as a thin uplink's pace allows for `rounds` completions;
    /// each flow runs at its share of an `uplink_mbit` uplink, at most `child_mbit` (its
    /// child's downlink). Returns the limit at the end.
    fn steady(floor: usize, uplink_mbit: f64, child_mbit: f64, rounds: u32) -> usize {
        let mut t = Instant::now();
        let mut state = State::new(floor, 64);
        measure_thin(&mut state, &mut t);
        assert!(state.paced);
        for _ in 0..rounds {
            let k = state.allowed();
            let per_flow = (uplink_mbit / k as f64).min(child_mbit) * 1e6 / 8.0;
            let took = Duration::from_secs_f64(PIECE as f64 / per_flow);
            t += took / k as u32;
            state.pace.flow_done(k, PIECE, took, t);
        }
        state.allowed()
    }

    /// Asks in the background whether `turn`, `sent` bytes out, keeps its turn; the task's
    /// result is the turn it holds after.
    fn keep_in_background(
        slots: &Arc<UploadSlots>,
        mut turn: UploadSlot,
        sent: u64,
    ) -> tokio::task::JoinHandle<UploadSlot> {
        let slots = Arc::clone(slots);
        tokio::spawn(async move {
            slots.keep_turn(&mut turn, sent).await;
            turn
        })
    }

    #[tokio::test]
    async fn uploads_begun_before_the_uplink_measured_thin_give_back_their_turns() {
        let slots = UploadSlots::new(2, 64);
        // Unpaced, every request starts at once: two copies of piece 0 (this host alone
        // holds it), one of piece 1.
        let mut most_sent = slots.acquire("t", 0, child(1)).await;
        let mut less_sent = slots.acquire("t", 0, child(2)).await;
        let mut other_piece = slots.acquire("t", 1, child(3)).await;
        let mut least_asked = slots.acquire("t", 2, child(4)).await;
        slots.keep_turn(&mut most_sent, 3 << 20).await;
        slots.keep_turn(&mut less_sent, 1 << 20).await;
        slots.keep_turn(&mut least_asked, 2 << 20).await;
        assert_eq!(
            slots.sending(),
            4,
            "an uplink not measured thin keeps every upload"
        );
        let mut t = Instant::now();
        measure_thin(&mut slots.lock(), &mut t);
        assert_eq!(slots.limit(), 2);
        // A second child asks for piece 1 and waits in line.
        let second_ask = ask(&slots, 1, 5);
        line_holds(&slots, 1).await;
        // Two may go on: the most advanced copy of each piece, the pieces most asked for
        // first. Piece 2 was asked for once here and gives its turn back although it sent
        // more than the copy of piece 1, and the second copy of piece 0 waits too.
        slots.keep_turn(&mut most_sent, 3 << 20).await;
        slots.keep_turn(&mut other_piece, 0).await;
        let least_waits = keep_in_background(&slots, least_asked, 2 << 20);
        line_holds(&slots, 2).await;
        assert_eq!(slots.sending(), 3);
        let waits = keep_in_background(&slots, less_sent, 1 << 20);
        line_holds(&slots, 3).await;
        assert_eq!(slots.sending(), 2);
        assert!(!waits.is_finished());
        let within = |task| tokio::time::timeout(Duration::from_secs(5), task);
        // A freed turn: piece 2 never went out whole, so it is a first copy again and goes
        // before the waiting copies of pieces 0 and 1, which are being sent already.
        drop(most_sent);
        let first_copy = within(least_waits).await.expect("resumes").unwrap();
        assert_eq!(first_copy.piece.1, 2);
        assert!(first_copy.resumed, "its time no longer measures the uplink");
        assert_eq!((slots.sending(), slots.waiting()), (2, 2));
        drop(first_copy);
        let resumed = within(waits).await.expect("resumes").unwrap();
        assert_eq!(resumed.piece.1, 0, "in its old place in line");
        drop((resumed, other_piece));
        assert_eq!(second_ask.await.unwrap(), 1);
        assert_eq!(slots.sending(), 0, "every turn came back once");
        assert_eq!(slots.waiting(), 0);
    }

    /// Enough windows to judge the uplink, each downloading 25 MiB/s and uploading 2 with
    /// no new request: the uploads already in flight alone may show demand.
    fn trickle_out_for_thin_windows(state: &mut State) {
        let mut t = Instant::now();
        let step = crate::uplink::UPLINK_WINDOW / 4;
        for _ in 0..(4 * crate::uplink::THIN_WINDOWS + 1) {
            state.observe(|m, now| m.downloaded(25 << 20 >> 2, now), t);
            state.observe(|m, now| m.uploaded(2 << 20 >> 2, now), t);
            t += step;
        }
    }

    #[test]
    fn uploads_running_through_windows_are_demand() {
        // Three uploads began at once; no request came after them. Their bytes trickle out
        // at a tenth of what the host downloads: the uplink is thin.
        let mut state = State::new(2, 64);
        for (id, child_n) in [(0, 1), (1, 2), (2, 3)] {
            state.start(id, &("t".to_string(), 0), child(child_n));
        }
        trickle_out_for_thin_windows(&mut state);
        assert!(state.paced);
        assert_eq!(state.allowed(), 2);
    }

    #[test]
    fn uploads_waiting_for_arriving_bytes_are_no_demand() {
        // As above, but the three uploads forward a piece still arriving here and wait for
        // its bytes, which come at a tenth of the host's download: its source, not its
        // uplink, holds them back.
        let mut state = State::new(2, 64);
        for (id, child_n) in [(0, 1), (1, 2), (2, 3)] {
            state.start(id, &("t".to_string(), 0), child(child_n));
            state.running.get_mut(&id).unwrap().awaits_arrival = true;
        }
        trickle_out_for_thin_windows(&mut state);
        assert!(!state.paced);
        assert_eq!(state.allowed(), 64);
    }

    #[test]
    fn an_even_uplink_sends_every_request_at_once() {
        let state = State::new(2, 64);
        assert_eq!(state.allowed(), 64);
    }

    #[test]
    fn a_thin_uplink_starts_at_the_floor_and_stays_near_it() {
        let mut t = Instant::now();
        let mut state = State::new(2, 64);
        measure_thin(&mut state, &mut t);
        assert_eq!(state.allowed(), 2);
        // 10 Mbit/s up, children at 100 down: one flow already fills it.
        let limit = steady(1, 10.0, 100.0, 300);
        assert!(limit <= 2, "{limit}");
    }

    #[test]
    fn a_paced_limit_grows_while_more_uploads_add_to_the_uplink() {
        // 1 Gbit/s up, each flow at most 40 Mbit/s (its child's downlink): 25 flows fill it.
        let limit = steady(2, 1000.0, 40.0, 300);
        assert!(limit >= 12, "{limit}");
    }
}
