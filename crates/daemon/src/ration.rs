//! Super-seeding: how a seed peer spends its uplink.
//!
//! A seed's uplink is usually the scarcest link of a swarm (it sits next to the origin), so
//! each piece should leave the seed about once and then spread between the children. If the
//! seed's `SyncPieces` stream showed every child every piece, children that start together
//! would pick the same pieces and the uplink would carry several copies of each. So a seed
//! gives each piece to one child first and shows it to that child alone:
//! - the next piece goes to the waiting child that was given the fewest so far: a child passes
//!   each piece it got from the seed on to its mesh neighbours, so an even share keeps any one
//!   child's uplink from becoming the swarm's hot spot (measured in bench/netns: first come,
//!   first served gave one host 12 of 64 pieces and another none);
//! - ... but in proportion to each child's measured upload (what the scheduler saw it serve,
//!   read with `ListHosts`, `Network.tx_bandwidth`): a child that uploads at a tenth of the
//!   others' rate cannot pass pieces on before they go public, and the seed would send them
//!   again (bench/netns, half the hosts at 10 Mbit/s up: the seed sent 2.04-2.18 x the file).
//!   A child below [`SLOW_CHILD_SHARE`] of the fastest gets a piece only when no faster child
//!   is waiting; it still downloads at full speed from its other parents;
//! - only so many given pieces are waiting for their upload at a time, over all the seed's
//!   tasks, shared out between the children, so pieces leave the seed a few at a time at its
//!   full rate rather than all at once at a trickle each (a trickle would finish every piece
//!   near the end, and the swarm would have nothing to trade until then). The tasks share
//!   the one uplink, so they share the limit: an image pull's layers are tasks that start
//!   together, and four layers each with their own limit put four times the flows on the
//!   uplink (bench/netns image pulls, 4 x 64 MiB: pieces took 11 s each to leave the seed,
//!   longer than [`RATION_SLOT_HOLD`], so the seed gave yet more). How many follows the
//!   seed's measured upload ([`pace`]): from `seedPeer.ration.piecesInFlight` up to
//!   `maxPiecesInFlight`, as long as more pieces in flight still add to what leaves the
//!   seed;
//! - a given piece stays the child's until the seed has given out every piece of the task
//!   (the end game): before that the seed's uplink is worth most as first copies, and a copy
//!   of a piece the swarm already holds only delays the next first copy (bench/netns, half
//!   the hosts at 10 Mbit/s up: with pieces public 10 s after their upload, 49 of the seed's
//!   113 copies were second copies of pieces that slow children could not spread in time). In
//!   the end game a given piece becomes public (shown to every child that lacks it)
//!   [`RATION_SHARE_WINDOW`] after its upload, so a seed with spare upload sends extra copies;
//!   a piece the child never fetched becomes public [`RATION_RELEASE_AFTER`] after it was
//!   given, and a child's unfetched pieces go back to the pool when its stream ends.
//!
//! This only shapes what the seed announces, never what it serves: a child that asks for a
//! piece it learned about elsewhere still gets it, and official Dragonfly children see a
//! valid stream (a seed that is still downloading announces pieces gradually too). Damselfly
//! children learn from the stream's metadata that a rationed piece is theirs to take now.

use dragonfly_api::dfdaemon::v2::SyncPiecesResponse;
use futures::{Stream, StreamExt};
use rand::seq::IteratorRandom;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

pub use damselfly_transfer::{FlowClock, Pace};

/// Measured upload per child host, bits per second.
pub type UploadRates = HashMap<String, u64>;

/// In the end game (every piece given once), how long after its first upload a piece stays
/// with the child it was given to: the holder starts spreading it meanwhile, and children it
/// did not reach see it at the seed afterwards, whose uplink has nothing better to do.
pub const RATION_SHARE_WINDOW: Duration = Duration::from_secs(2);
/// A given piece the child has not fetched by then becomes public anyway.
pub const RATION_RELEASE_AFTER: Duration = Duration::from_secs(30);
/// A given piece the child has not fetched by then stops holding one of the seed's pieces in
/// flight. A child may never fetch it from the seed: it may have asked another parent for it
/// before the seed gave it (a piece given again after its first child turned out slow), and
/// with every slot held so the seed would send nothing (bench/netns, half the hosts at
/// 10 Mbit/s up: the seed's uplink stood idle for 26 s waiting for [`RATION_RELEASE_AFTER`]).
/// Ten seconds is three times a 4 MiB piece at a tenth of a 100 Mbit/s uplink.
pub const RATION_SLOT_HOLD: Duration = Duration::from_secs(10);
/// A given piece its child has not asked for by then stops holding one of the seed's pieces
/// in flight (it stays the child's). A piece given again after its first child measured slow
/// has often reached the new child from peers already, and that child never asks for it: in
/// bench/netns (half the uplinks at 10 Mbit/s) the seed gave four such pieces within 2.6 s
/// and its uplink stood idle for 6 s. A child asks for a piece given to it within half a
/// second, or within a piece time when its seed budget is full.
pub const RATION_REQUEST_WAIT: Duration = Duration::from_secs(2);
/// How often a held-back stream looks again for pieces that became public with time; uploads
/// and departures wake it at once.
pub const RATION_TICK: Duration = Duration::from_millis(200);
/// A wanting child whose stream has not looked for this long is skipped.
const WANT_STALE_AFTER: Duration = Duration::from_millis(600);
/// A child whose measured upload is below this share of the fastest child's gets a piece
/// only when no faster child is waiting for one.
pub const SLOW_CHILD_SHARE: f64 = 0.25;
/// How often a rationing seed reads its children's measured upload from the scheduler.
pub const RATION_RATES_INTERVAL: Duration = Duration::from_secs(1);

type Item = Result<SyncPiecesResponse, tonic::Status>;
type Inner = Pin<Box<dyn Stream<Item = Item> + Send>>;

/// Who got which piece first, per task.
pub struct SeedRation {
    /// How many given pieces may wait for their first upload, over all tasks.
    pace: Mutex<Pace>,
    /// Given pieces being uploaded, integrated over time: a flow's level for the pace is the
    /// average in flight over its life. Locked inside `tasks`, never the other way round.
    clock: Mutex<FlowClock>,
    /// The children's measured upload, as the scheduler last told.
    rates: Mutex<Arc<UploadRates>>,
    tasks: Mutex<HashMap<String, TaskRation>>,
    /// Wakes held-back streams when a piece was uploaded or a child left.
    changed: Notify,
}

/// A child waiting for a piece of its own.
struct Want {
    since: Instant,
    /// Its stream last looked at the ration then (at least every [`RATION_TICK`] while it
    /// lives); a stream that stopped looking (its child stopped reading) loses its turn.
    seen: Instant,
}

/// One given piece.
struct Given {
    child: String,
    at: Instant,
    uploaded_at: Option<Instant>,
    /// When someone first asked the seed for it. The pace times a flow from here, not from
    /// the giving: a child may take seconds to ask while its fetch slots wait on other
    /// parents, and that wait says nothing about the seed's uplink (timed from the giving,
    /// the per-flow rates of a seed with five times the hosts' uplink were noise, and its
    /// pace fell back to the floor).
    asked: Option<Asked>,
    bytes: u64,
    /// Flows on the seed's uplink when its own began, itself included: given pieces of all
    /// the seed's tasks asked for and not uploaded yet (until then, the given pieces
    /// waiting). Given pieces not asked for yet take no uplink, and counting them made a
    /// 50 Mbit/s seed look as if eight flows carried twice what four did. The pace takes
    /// the average over the flow's life from the [`FlowClock`] instead; this count stands
    /// in for a piece that left before anybody asked.
    level: usize,
}

/// The first ask for a given piece: when, and the flow clock's reading then.
#[derive(Clone, Copy)]
struct Asked {
    at: Instant,
    clock: f64,
}

#[derive(Default)]
struct TaskRation {
    /// Every piece the seed announced for the task.
    announced: BTreeSet<u32>,
    /// The seed announced the whole task (a child's source stream ended).
    complete: bool,
    given: HashMap<u32, Given>,
    /// Pieces given so far, per child.
    given_count: HashMap<String, usize>,
    /// Children that see unclaimed pieces and have nothing of their own to fetch.
    wanting: HashMap<String, Want>,
    /// Open streams per child (a child's next round may open its stream before the last one
    /// closed); the task's entry goes when the last stream ends.
    streams: HashMap<String, usize>,
}

impl TaskRation {
    /// `level`: the given pieces of all the seed's tasks in flight with this one.
    fn give(&mut self, child: &str, piece: &SyncPiecesResponse, now: Instant, level: usize) {
        self.wanting.remove(child);
        *self.given_count.entry(child.to_string()).or_default() += 1;
        self.given.insert(
            piece.number,
            Given {
                child: child.to_string(),
                at: now,
                uploaded_at: None,
                asked: None,
                bytes: piece.length,
                level,
            },
        );
    }

    /// Given to a child that can pass it on. A piece given to a child that turned out to be a
    /// slow uploader is not: the swarm would wait on that child's uplink for it (bench/netns,
    /// half the hosts at 10 Mbit/s up: the fast hosts' last pieces trickled in from slow hosts
    /// that alone held them), so it is given again to a fast child.
    fn is_claimed(&self, number: u32, speeds: &Speeds) -> bool {
        self.given
            .get(&number)
            .is_some_and(|g| !speeds.is_slow(&g.child))
    }

    /// The piece to give next among `held`: one whose first child measured slow before any
    /// never given, as the swarm waits on that child's uplink for it (bench/netns, half the
    /// uplinks at 10 Mbit/s: picked at random among the pieces never given, such a piece
    /// was given again 18-20 s after its child measured slow, and every fast host fetched
    /// it from the slow one meanwhile); at random among equals, so children spread over the
    /// task.
    fn unclaimed(&self, held: &BTreeMap<u32, SyncPiecesResponse>, speeds: &Speeds) -> Option<u32> {
        let unclaimed = || {
            held.keys()
                .copied()
                .filter(|&n| !self.is_claimed(n, speeds))
        };
        let mut rng = rand::rng();
        unclaimed()
            .filter(|n| self.given.contains_key(n))
            .choose(&mut rng)
            .or_else(|| unclaimed().choose(&mut rng))
    }

    /// The seed holds the whole task and gave every piece once: no first copy is left for its
    /// uplink. A piece whose child turned out slow still counts: it is given again to a fast
    /// child while that child lacks it, but waiting for that would hold the end game back for
    /// good once every fast child got the piece elsewhere, and the pieces given to children
    /// that are not known slow would then stay theirs until [`RATION_RELEASE_AFTER`]
    /// (bench/netns, half the hosts at 10 Mbit/s up: three pieces first given to a 10 Mbit/s
    /// host stayed its own for 30 s each while the seed's uplink stood idle, and every fast
    /// host fetched them from that host meanwhile).
    fn is_end_game(&self) -> bool {
        self.complete && self.announced.iter().all(|n| self.given.contains_key(n))
    }

    fn is_public(&self, number: u32, end_game: bool, now: Instant) -> bool {
        self.given.get(&number).is_some_and(|g| {
            let shared = g
                .uploaded_at
                .is_some_and(|at| now.duration_since(at) >= RATION_SHARE_WINDOW);
            (end_game && shared) || now.duration_since(g.at) >= RATION_RELEASE_AFTER
        })
    }

    /// Given to someone and still waiting for its first upload, for at most
    /// [`RATION_SLOT_HOLD`], or [`RATION_REQUEST_WAIT`] while nobody asked for it.
    fn is_waiting(&self, given: &Given, now: Instant) -> bool {
        let hold = if given.asked.is_some() {
            RATION_SLOT_HOLD
        } else {
            RATION_REQUEST_WAIT
        };
        given.uploaded_at.is_none() && now.duration_since(given.at) < hold
    }

    /// Given pieces still waiting (see [`Self::is_waiting`]) that `also` picks.
    fn count_waiting(&self, now: Instant, also: impl Fn(&Given) -> bool) -> usize {
        self.given
            .values()
            .filter(|g| also(g) && self.is_waiting(g, now))
            .count()
    }

    fn waiting_total(&self, now: Instant) -> usize {
        self.count_waiting(now, |_| true)
    }

    /// Given pieces being uploaded: asked for and still waiting.
    fn flows(&self, now: Instant) -> usize {
        self.count_waiting(now, |g| g.asked.is_some())
    }

    fn waiting_for(&self, child: &str, now: Instant) -> usize {
        self.count_waiting(now, |g| g.child == child)
    }

    /// The child was given a piece it has not asked for yet (for at most
    /// [`RATION_REQUEST_WAIT`]). It gets no more until it asks: a child asks for a given piece
    /// within milliseconds while it has room for seed pieces, so one waiting is its next
    /// fetch ready, and more would only wait on it. The first child's stream opens a fraction
    /// of a millisecond before the others', and was given all four pieces in flight; a
    /// Damselfly child asks for two at a time from a seed, and when that child uploaded at a
    /// tenth of the others' rate (bench/netns, half the uplinks at 10 Mbit/s), every host
    /// fetched all four from it, 28 flows on its 10 Mbit/s, and the seed sent them again.
    fn has_unasked(&self, child: &str, now: Instant) -> bool {
        self.count_waiting(now, |g| g.child == child && g.asked.is_none()) > 0
    }

    /// A child's share of the pieces in flight: all of them for a lone child, one each when
    /// there are more children than pieces. Slow children do not count: they get a piece
    /// only when the others leave one.
    fn share(&self, in_flight: usize, speeds: &Speeds) -> usize {
        let quick = self.streams.keys().filter(|c| !speeds.is_slow(c)).count();
        (in_flight / quick.max(1)).max(1)
    }

    /// `seed_waiting`: the given pieces of all the seed's tasks still waiting for their upload.
    fn may_give(
        &self,
        child: &str,
        in_flight: usize,
        seed_waiting: usize,
        speeds: &Speeds,
        now: Instant,
    ) -> bool {
        seed_waiting < in_flight && self.next_in_line(in_flight, speeds, now) == Some(child)
    }

    /// Among the wanting children that have room in their share, a fast one before a slow
    /// one, then the one with the fewest pieces given for its upload, the longest waiting
    /// among equals. A child at its share never holds the line: its turn comes when one of
    /// its pieces has left.
    fn next_in_line(&self, in_flight: usize, speeds: &Speeds, now: Instant) -> Option<&str> {
        let share = self.share(in_flight, speeds);
        let any_quick = self.streams.keys().any(|c| !speeds.is_slow(c));
        let key = |child: &str, want: &Want| {
            let given = self.given_count.get(child).copied().unwrap_or(0) as f64;
            (
                speeds.is_slow(child),
                speeds.on_probation(child),
                given / speeds.weight(child),
                want.since,
            )
        };
        self.wanting
            .iter()
            .filter(|(_, want)| now.duration_since(want.seen) < WANT_STALE_AFTER)
            .filter(|(child, _)| self.waiting_for(child, now) < share)
            .filter(|(child, _)| !self.has_unasked(child, now))
            // A slow uploader gets first copies only when no fast child is left to take them.
            .filter(|(child, _)| !(any_quick && speeds.is_slow(child)))
            .map(|(child, want)| (key(child, want), child))
            .min_by(|(a, _), (b, _)| {
                (a.0, a.1)
                    .cmp(&(b.0, b.1))
                    .then(a.2.total_cmp(&b.2))
                    .then(a.3.cmp(&b.3))
            })
            .map(|(_, child)| child.as_str())
    }
}

/// The children of one task as fast or slow uploaders.
struct Speeds {
    rates: Arc<UploadRates>,
    /// The fastest measured upload among the task's children.
    fastest: Option<u64>,
}

impl Speeds {
    fn of(task: &TaskRation, rates: Arc<UploadRates>) -> Self {
        let fastest = task
            .streams
            .keys()
            .filter_map(|c| rates.get(c).copied())
            .max();
        Self { rates, fastest }
    }

    fn is_slow(&self, child: &str) -> bool {
        match (self.rates.get(child), self.fastest) {
            (Some(&rate), Some(fastest)) => (rate as f64) < fastest as f64 * SLOW_CHILD_SHARE,
            _ => false,
        }
    }

    /// Not measured yet while other children are: it waits behind those measured fast. A
    /// slow uploader is unmeasured until its first pieces reached others, and in that time
    /// it was given first copies the swarm then fetched at its rate (bench/netns, half the
    /// uplinks at 10 Mbit/s: the fast hosts were measured 5 s in, the slow ones 10-20 s in,
    /// and four of the seed's first copies went to them in between). Only the order: it
    /// still gets pieces when no measured child is in line, and its given pieces stay its.
    fn on_probation(&self, child: &str) -> bool {
        self.fastest.is_some() && !self.rates.contains_key(child)
    }

    /// What a child's share of the given pieces is weighed by: its measured upload, the
    /// fastest's for a child not measured yet (it is given the benefit of the doubt).
    fn weight(&self, child: &str) -> f64 {
        let rate = self.rates.get(child).copied().or(self.fastest).unwrap_or(1);
        rate.max(1) as f64
    }
}

impl SeedRation {
    /// `floor` to `ceiling` given pieces in flight over all tasks (`piecesInFlight`,
    /// `maxPiecesInFlight`), as the seed's measured upload allows ([`Pace`]).
    pub fn new(floor: usize, ceiling: usize) -> Arc<Self> {
        Arc::new(Self {
            pace: Mutex::new(Pace::new(floor, ceiling)),
            clock: Mutex::default(),
            rates: Mutex::default(),
            tasks: Mutex::default(),
            changed: Notify::new(),
        })
    }

    /// The children's measured upload (host id to bits per second), as the scheduler says.
    pub fn set_upload_rates(&self, rates: UploadRates) {
        *self.rates.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(rates);
        self.changed.notify_waiters();
    }

    /// Whether any child stream is open (the rates are worth reading).
    pub fn is_active(&self) -> bool {
        self.with_tasks(|tasks| !tasks.is_empty())
    }

    fn in_flight(&self) -> usize {
        self.pace
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .limit()
    }

    /// A peer asked the piece servers for `number` of `task_id`.
    pub fn requested(&self, task_id: &str, number: u32) {
        let now = Instant::now();
        self.with_tasks(|tasks| {
            let first_ask = tasks
                .get(task_id)
                .and_then(|t| t.given.get(&number))
                .is_some_and(|g| g.asked.is_none());
            if !first_ask {
                return;
            }
            let flows: usize = tasks.values().map(|t| t.flows(now)).sum();
            let reading = self.clock().set(flows + 1, now);
            if let Some(given) = tasks
                .get_mut(task_id)
                .and_then(|t| t.given.get_mut(&number))
            {
                given.asked = Some(Asked {
                    at: now,
                    clock: reading,
                });
                given.level = flows + 1;
            }
        });
    }

    fn clock(&self) -> std::sync::MutexGuard<'_, FlowClock> {
        self.clock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The Vortex server finished sending `number` of `task_id` to someone.
    pub fn uploaded(&self, task_id: &str, number: u32) {
        let now = Instant::now();
        let first = self.with_tasks(|tasks| {
            let given = tasks
                .get_mut(task_id)
                .and_then(|t| t.given.get_mut(&number))?;
            if given.uploaded_at.is_some() {
                return None;
            }
            given.uploaded_at = Some(now);
            let (asked, bytes, level_at_give, given_at) =
                (given.asked, given.bytes, given.level, given.at);
            let took = now.duration_since(asked.map_or(given_at, |a| a.at));
            let flows: usize = tasks.values().map(|t| t.flows(now)).sum();
            let reading = self.clock().set(flows, now);
            let level = asked.map_or(level_at_give, |a| FlowClock::level(a.clock, reading, took));
            Some((level, bytes, took))
        });
        if let Some((level, bytes, took)) = first {
            let mut pace = self.pace.lock().unwrap_or_else(PoisonError::into_inner);
            let before = pace.limit();
            pace.flow_done(level, bytes, took, now);
            if pace.limit() != before {
                tracing::debug!(
                    before,
                    after = pace.limit(),
                    level,
                    ?took,
                    "ration: pace limit"
                );
            }
        }
        self.changed.notify_waiters();
    }

    /// Wraps a seed's SyncPieces stream to `child` so it announces rationed pieces.
    pub fn wrap(
        self: &Arc<Self>,
        task_id: String,
        child: String,
        inner: impl Stream<Item = Item> + Send + 'static,
    ) -> impl Stream<Item = Item> + Send + 'static {
        self.with_tasks(|tasks| {
            let task = tasks.entry(task_id.clone()).or_default();
            *task.streams.entry(child.clone()).or_default() += 1;
        });
        let state = Rationed {
            ration: Arc::clone(self),
            task_id,
            child,
            inner: Box::pin(inner),
            inner_done: false,
            held: BTreeMap::new(),
        };
        futures::stream::unfold(state, |mut state| async move {
            state.next().await.map(|item| (item, state))
        })
    }

    fn with_tasks<R>(&self, f: impl FnOnce(&mut HashMap<String, TaskRation>) -> R) -> R {
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut tasks)
    }

    /// Takes from `held` the next piece `child` may be shown, giving it one if there is room.
    fn pick(
        &self,
        task_id: &str,
        child: &str,
        held: &mut BTreeMap<u32, SyncPiecesResponse>,
    ) -> Option<SyncPiecesResponse> {
        let now = Instant::now();
        let in_flight = self.in_flight();
        let rates = Arc::clone(&self.rates.lock().unwrap_or_else(PoisonError::into_inner));
        self.with_tasks(|tasks| {
            let seed_waiting: usize = tasks.values().map(|t| t.waiting_total(now)).sum();
            let task = tasks.entry(task_id.to_string()).or_default();
            let speeds = Speeds::of(task, rates);
            let end_game = task.is_end_game();
            let shown = held.keys().copied().find(|&n| {
                task.is_public(n, end_game, now)
                    || task.given.get(&n).is_some_and(|g| g.child == child)
            });
            if let Some(number) = shown {
                return held.remove(&number);
            }
            let Some(number) = task.unclaimed(held, &speeds) else {
                task.wanting.remove(child);
                return None;
            };
            task.wanting
                .entry(child.to_string())
                .or_insert(Want {
                    since: now,
                    seen: now,
                })
                .seen = now;
            if !task.may_give(child, in_flight, seed_waiting, &speeds, now) {
                return None;
            }
            let piece = held.remove(&number)?;
            task.give(child, &piece, now, seed_waiting + 1);
            tracing::debug!(task_id, child, number, in_flight, "ration: piece given");
            Some(piece)
        })
    }

    /// The seed announced `number` of the task (`complete`: and every other piece).
    fn announced(&self, task_id: &str, number: Option<u32>) {
        self.with_tasks(|tasks| {
            let task = tasks.entry(task_id.to_string()).or_default();
            match number {
                Some(number) => {
                    task.announced.insert(number);
                }
                None => task.complete = true,
            }
        });
    }

    /// A child's stream ended. If it ended early (the child left), pieces it was given but
    /// never fetched go back to the pool. A stream that `showed_all` ends right after it
    /// showed its child the last piece it lacked, often one just given to it, which the
    /// child is about to fetch: giving that piece again would hand it to the next child
    /// whose stream then ends the same way (bench/netns, 16 hosts: the seed's last given
    /// piece went to 15 children in one millisecond, 0.22 x the file sent again).
    fn stream_ended(&self, task_id: &str, child: &str, showed_all: bool) {
        self.with_tasks(|tasks| {
            let Some(task) = tasks.get_mut(task_id) else {
                return;
            };
            let child_streams = task.streams.get(child).copied().unwrap_or(0);
            if child_streams > 1 {
                // Another stream of this child is still open and keeps its pieces.
                task.streams.insert(child.to_string(), child_streams - 1);
                return;
            }
            task.streams.remove(child);
            if task.streams.is_empty() {
                tasks.remove(task_id);
                return;
            }
            task.wanting.remove(child);
            if !showed_all {
                task.given
                    .retain(|_, g| g.child != child || g.uploaded_at.is_some());
            }
        });
        self.changed.notify_waiters();
    }
}

/// Reads the children's measured upload from the schedulers every [`RATION_RATES_INTERVAL`]
/// while any child stream is open, until the daemon shuts down.
pub async fn follow_upload_rates(ration: Arc<SeedRation>, ctx: crate::context::Context) {
    let mut ticker = tokio::time::interval(RATION_RATES_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = ctx.lifecycle.stopping() => return,
        }
        if ration.is_active() {
            let rates = ctx.schedulers.host_uploads().await;
            if tracing::enabled!(tracing::Level::TRACE) {
                let sorted: BTreeMap<&String, &u64> = rates.iter().collect();
                tracing::trace!(?sorted, "children's measured upload, bit/s");
            }
            ration.set_upload_rates(rates);
        }
    }
}

/// One child's rationed stream.
struct Rationed {
    ration: Arc<SeedRation>,
    task_id: String,
    child: String,
    inner: Inner,
    inner_done: bool,
    /// Pieces the seed has that this child was not shown yet.
    held: BTreeMap<u32, SyncPiecesResponse>,
}

impl Rationed {
    async fn next(&mut self) -> Option<Item> {
        loop {
            // Armed before looking, so an upload between the look and the wait is not lost.
            let ration = Arc::clone(&self.ration);
            let changed = ration.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(piece) = self.ration.pick(&self.task_id, &self.child, &mut self.held) {
                // The next child in line may take a slot that is still free.
                self.ration.changed.notify_waiters();
                return Some(Ok(piece));
            }
            if self.inner_done && self.held.is_empty() {
                return None;
            }
            tokio::select! {
                item = self.inner.next(), if !self.inner_done => match item {
                    Some(Ok(piece)) => {
                        self.ration.announced(&self.task_id, Some(piece.number));
                        self.held.insert(piece.number, piece);
                    }
                    Some(Err(status)) => return Some(Err(status)),
                    None => {
                        self.ration.announced(&self.task_id, None);
                        self.inner_done = true;
                    }
                },
                () = &mut changed => {}
                () = tokio::time::sleep(RATION_TICK) => {}
            }
        }
    }
}

impl Drop for Rationed {
    fn drop(&mut self) {
        let showed_all = self.inner_done && self.held.is_empty();
        self.ration
            .stream_ended(&self.task_id, &self.child, showed_all);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IN_FLIGHT: usize = 4;

    fn piece(number: u32) -> Item {
        Ok(SyncPiecesResponse {
            number,
            ..Default::default()
        })
    }

    /// Up to `n` pieces the stream shows within 300 ms each, each asked for at once as a
    /// child would (so a slow test machine does not free their slots, see
    /// [`RATION_REQUEST_WAIT`]).
    async fn take(
        ration: &SeedRation,
        stream: &mut (impl Stream<Item = Item> + Unpin),
        n: usize,
    ) -> Vec<u32> {
        let mut got = Vec::new();
        for _ in 0..n {
            let next = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
            match next {
                Ok(Some(Ok(p))) => got.push(p.number),
                _ => break,
            }
            for task in ["t", "t1", "t2"] {
                ration.requested(task, got[got.len() - 1]);
            }
        }
        got
    }

    /// The next piece the stream shows within 300 ms, not asked for.
    async fn shown(stream: &mut (impl Stream<Item = Item> + Unpin)) -> Option<u32> {
        let next = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
        match next {
            Ok(Some(Ok(p))) => Some(p.number),
            _ => None,
        }
    }

    #[tokio::test]
    async fn children_share_the_pieces_in_flight_and_get_distinct_ones() {
        let ration = SeedRation::new(IN_FLIGHT, IN_FLIGHT);
        let all = || futures::stream::iter((0..16).map(piece));
        let mut a = Box::pin(ration.wrap("t".into(), "a".into(), all()));
        let mut b = Box::pin(ration.wrap("t".into(), "b".into(), all()));
        let share = IN_FLIGHT / 2;
        let first_a = take(&ration, &mut a, share + 1).await;
        let first_b = take(&ration, &mut b, share + 1).await;
        assert_eq!(first_a.len(), share, "{first_a:?}");
        assert_eq!(first_b.len(), share, "{first_b:?}");
        assert!(
            first_a.iter().all(|n| !first_b.contains(n)),
            "{first_a:?} {first_b:?}"
        );
        // A's first piece left the seed: A gets a new one of its own, and B does not see
        // A's piece (the swarm spreads it) until the share window has passed.
        ration.uploaded("t", first_a[0]);
        let next_a = take(&ration, &mut a, 2).await;
        assert_eq!(next_a.len(), 1, "{next_a:?}");
        assert!(!first_b.contains(&next_a[0]) && !first_a.contains(&next_a[0]));
        assert!(take(&ration, &mut b, 1).await.is_empty());
    }

    #[tokio::test]
    async fn a_flow_counts_the_pieces_being_uploaded_beside_it() {
        // Four pieces given; only those asked for take the uplink. The pace learns each
        // flow's level from the pieces asked for and not uploaded when it began.
        let ration = SeedRation::new(IN_FLIGHT, IN_FLIGHT);
        let all = || futures::stream::iter((0..16).map(piece));
        // One piece for each of four children (a child gets no second piece before it asks
        // for its first); the streams stay open, as a closed one returns its child's pieces.
        let (mut given, mut streams) = (Vec::new(), Vec::new());
        for child in ["a", "b", "c", "d"] {
            let mut stream = Box::pin(ration.wrap("t".into(), child.into(), all()));
            given.extend(shown(&mut stream).await);
            streams.push(stream);
        }
        assert_eq!(given.len(), IN_FLIGHT, "{given:?}");
        let level = |number: u32| ration.with_tasks(|tasks| tasks["t"].given[&number].level);
        ration.requested("t", given[0]);
        assert_eq!(level(given[0]), 1, "the others were not asked for");
        ration.requested("t", given[1]);
        assert_eq!(level(given[1]), 2);
        ration.requested("t", given[1]);
        assert_eq!(level(given[1]), 2, "a second ask changes nothing");
        ration.uploaded("t", given[0]);
        ration.requested("t", given[2]);
        assert_eq!(level(given[2]), 2, "the first one left the seed");
    }

    #[tokio::test]
    async fn a_child_gets_no_second_piece_before_it_asks_for_the_first() {
        // The first child's stream opens just before the others'. It is given one of the
        // four pieces in flight, not all four; the others go to the children after it.
        let ration = SeedRation::new(IN_FLIGHT, IN_FLIGHT);
        let all = || futures::stream::iter((0..16).map(piece));
        let mut a = Box::pin(ration.wrap("t".into(), "a".into(), all()));
        let first = shown(&mut a).await.expect("a's first piece");
        assert_eq!(shown(&mut a).await, None, "a has not asked for {first}");
        let mut b = Box::pin(ration.wrap("t".into(), "b".into(), all()));
        let second = shown(&mut b).await.expect("b's first piece");
        assert_ne!(first, second);
        ration.requested("t", first);
        let third = shown(&mut a).await.expect("a asked, so it gets its next");
        assert!(![first, second].contains(&third), "{third}");
    }

    #[tokio::test]
    async fn tasks_share_the_pieces_in_flight() {
        // One slot for the whole seed: a piece of t1 in flight holds back t2 (the layers of
        // an image are tasks pulled together over the one uplink) until it left the seed.
        let ration = SeedRation::new(1, 1);
        let all = || futures::stream::iter((0..8).map(piece));
        let mut a1 = Box::pin(ration.wrap("t1".into(), "a".into(), all()));
        let mut b2 = Box::pin(ration.wrap("t2".into(), "b".into(), all()));
        let first = take(&ration, &mut a1, 2).await;
        assert_eq!(first.len(), 1, "{first:?}");
        assert!(
            take(&ration, &mut b2, 1).await.is_empty(),
            "t1 holds the one slot"
        );
        ration.uploaded("t1", first[0]);
        assert_eq!(
            take(&ration, &mut b2, 2).await.len(),
            1,
            "the slot is free again"
        );
        assert!(
            take(&ration, &mut a1, 1).await.is_empty(),
            "t2 holds it now"
        );
    }

    #[tokio::test]
    async fn the_next_piece_goes_to_the_child_given_the_fewest() {
        let ration = SeedRation::new(1, 1);
        let all = || futures::stream::iter((0..8).map(piece));
        let mut a = Box::pin(ration.wrap("t".into(), "a".into(), all()));
        let mut b = Box::pin(ration.wrap("t".into(), "b".into(), all()));
        let first = take(&ration, &mut a, 1).await;
        assert_eq!(first.len(), 1);
        assert!(
            take(&ration, &mut b, 1).await.is_empty(),
            "the one slot is taken"
        );
        ration.uploaded("t", first[0]);
        assert!(
            take(&ration, &mut a, 1).await.is_empty(),
            "a had one already; b is next in line"
        );
        assert_eq!(take(&ration, &mut b, 1).await.len(), 1);
    }

    #[tokio::test]
    async fn a_child_at_its_share_does_not_hold_up_the_others() {
        // Two children share four pieces in flight, two each, and both were given two. One
        // of B's pieces leaves the seed. A still has two waiting and has wanted more for
        // longer, but it is at its share: B, with room, gets the next piece.
        let ration = SeedRation::new(4, 4);
        let all = || futures::stream::iter((0..8).map(piece));
        let mut a = Box::pin(ration.wrap("t".into(), "a".into(), all()));
        let mut b = Box::pin(ration.wrap("t".into(), "b".into(), all()));
        assert_eq!(take(&ration, &mut a, 3).await.len(), 2);
        let of_b = take(&ration, &mut b, 3).await;
        assert_eq!(of_b.len(), 2);
        ration.uploaded("t", of_b[0]);
        assert!(take(&ration, &mut a, 1).await.is_empty());
        assert_eq!(take(&ration, &mut b, 1).await.len(), 1);
    }

    #[tokio::test]
    async fn a_childs_second_stream_keeps_its_pieces_when_the_first_closes() {
        let ration = SeedRation::new(1, 1);
        let all = || futures::stream::iter((0..4).map(piece));
        let mut old = Box::pin(ration.wrap("t".into(), "a".into(), all()));
        let given = take(&ration, &mut old, 1).await;
        assert_eq!(given.len(), 1);
        let mut new = Box::pin(ration.wrap("t".into(), "a".into(), all()));
        let mut b = Box::pin(ration.wrap("t".into(), "b".into(), all()));
        drop(old);
        assert_eq!(
            take(&ration, &mut new, 1).await,
            given,
            "still a's own piece"
        );
        assert!(
            take(&ration, &mut b, 1).await.is_empty(),
            "the one slot is still a's"
        );
    }

    #[tokio::test]
    async fn a_slow_uploader_gets_seed_pieces_only_when_no_fast_child_is_left() {
        // Two slots; a uploads at 100 Mbit/s, b at 10: a's share is both slots, and a freed
        // slot goes to a, though b has been given nothing.
        let ration = SeedRation::new(2, 2);
        ration.set_upload_rates(
            [
                ("a".to_string(), 100_000_000),
                ("b".to_string(), 10_000_000),
            ]
            .into(),
        );
        let all = || futures::stream::iter((0..16).map(piece));
        let mut a = Box::pin(ration.wrap("t".into(), "a".into(), all()));
        let mut b = Box::pin(ration.wrap("t".into(), "b".into(), all()));
        let of_a = take(&ration, &mut a, 3).await;
        assert_eq!(of_a.len(), 2, "{of_a:?}");
        assert!(
            take(&ration, &mut b, 1).await.is_empty(),
            "both slots are a's"
        );
        ration.uploaded("t", of_a[0]);
        assert_eq!(take(&ration, &mut a, 1).await.len(), 1, "a before b");
        assert!(take(&ration, &mut b, 1).await.is_empty());
        // a has its share in flight: the free slot still is not b's.
        ration.uploaded("t", of_a[1]);
        assert!(
            take(&ration, &mut b, 1).await.is_empty(),
            "b waits while a fast child is there"
        );
        // a is gone: b, slow as it is, gets the slots.
        drop(a);
        assert_eq!(take(&ration, &mut b, 1).await.len(), 1);
    }

    #[tokio::test]
    async fn a_child_not_measured_yet_waits_behind_one_measured_fast() {
        // One slot; a is measured, b is not (its uploads have not been reported yet).
        let ration = SeedRation::new(1, 1);
        ration.set_upload_rates([("a".to_string(), 100_000_000)].into());
        let all = || futures::stream::iter((0..8).map(piece));
        let mut a = Box::pin(ration.wrap("t".into(), "a".into(), all()));
        let mut b = Box::pin(ration.wrap("t".into(), "b".into(), all()));
        let of_a = take(&ration, &mut a, 2).await;
        assert_eq!(of_a.len(), 1, "{of_a:?}");
        // Both want the next piece; b was given none, but a is known to pass pieces on.
        assert!(take(&ration, &mut b, 1).await.is_empty());
        assert!(take(&ration, &mut a, 1).await.is_empty());
        ration.uploaded("t", of_a[0]);
        assert!(
            take(&ration, &mut b, 1).await.is_empty(),
            "a is in line before b"
        );
        assert_eq!(take(&ration, &mut a, 1).await.len(), 1);
    }

    #[tokio::test]
    async fn a_given_piece_nobody_asks_for_frees_its_slot_soon() {
        let ration = SeedRation::new(1, 1);
        let all = || futures::stream::iter((0..4).map(piece));
        let mut a = Box::pin(ration.wrap("t".into(), "a".into(), all()));
        let mut b = Box::pin(ration.wrap("t".into(), "b".into(), all()));
        let of_a = take(&ration, &mut a, 1).await;
        assert_eq!(of_a.len(), 1);
        assert!(
            take(&ration, &mut b, 1).await.is_empty(),
            "the one slot is a's"
        );
        ration.with_tasks(|tasks| {
            let given = tasks.get_mut("t").unwrap().given.get_mut(&of_a[0]).unwrap();
            // a already holds the piece (it came from a peer): it never asks the seed.
            given.asked = None;
            given.at = Instant::now() - RATION_REQUEST_WAIT;
        });
        let of_b = take(&ration, &mut b, 1).await;
        assert_eq!(
            of_b.len(),
            1,
            "a never asked for its piece: the slot is free"
        );
        assert_ne!(of_b, of_a, "a's piece stays a's until it is released");
    }

    #[tokio::test]
    async fn a_given_piece_never_fetched_frees_its_slot_after_the_hold() {
        let ration = SeedRation::new(1, 1);
        let all = || futures::stream::iter((0..4).map(piece));
        let mut a = Box::pin(ration.wrap("t".into(), "a".into(), all()));
        let mut b = Box::pin(ration.wrap("t".into(), "b".into(), all()));
        let of_a = take(&ration, &mut a, 1).await;
        assert_eq!(of_a.len(), 1);
        ration.with_tasks(|tasks| {
            let given = tasks.get_mut("t").unwrap().given.get_mut(&of_a[0]).unwrap();
            given.at = Instant::now() - RATION_REQUEST_WAIT;
        });
        assert!(
            take(&ration, &mut b, 1).await.is_empty(),
            "asked for: the one slot is still a's"
        );
        ration.with_tasks(|tasks| {
            let given = tasks.get_mut("t").unwrap().given.get_mut(&of_a[0]).unwrap();
            given.at = Instant::now() - RATION_SLOT_HOLD;
        });
        let of_b = take(&ration, &mut b, 1).await;
        assert_eq!(of_b.len(), 1, "a never fetched its piece: the slot is free");
        assert_ne!(of_b, of_a, "a's piece stays a's until it is released");
    }

    #[tokio::test]
    async fn a_piece_given_to_a_child_that_turns_out_slow_is_given_again() {
        // b got a piece before anything was measured; then it measures at a tenth of a's
        // upload. The piece goes to a as well, before its share window would make it public.
        let ration = SeedRation::new(2, 2);
        let all = || futures::stream::iter((0..1).map(piece));
        let mut b = Box::pin(ration.wrap("t".into(), "b".into(), all()));
        assert_eq!(take(&ration, &mut b, 1).await, vec![0]);
        ration.uploaded("t", 0);
        let mut a = Box::pin(ration.wrap("t".into(), "a".into(), all()));
        assert!(
            take(&ration, &mut a, 1).await.is_empty(),
            "b's piece, b unmeasured"
        );
        ration.set_upload_rates(
            [
                ("a".to_string(), 100_000_000),
                ("b".to_string(), 10_000_000),
            ]
            .into(),
        );
        assert_eq!(
            take(&ration, &mut a, 1).await,
            vec![0],
            "given again, to a fast child"
        );
    }

    #[tokio::test]
    async fn a_piece_whose_child_turned_out_slow_goes_before_pieces_never_given() {
        // One piece in flight. b was given piece 31 before it measured slow; c holds the
        // slot with piece 30 while a's stream sees all 32 pieces. When the slot frees, a
        // gets 31 before any of the 30 pieces never given, whatever the random order.
        let ration = SeedRation::new(1, 1);
        let only = |n: u32| futures::stream::iter(std::iter::once(piece(n)));
        let mut b = Box::pin(ration.wrap("t".into(), "b".into(), only(31)));
        assert_eq!(take(&ration, &mut b, 1).await, vec![31]);
        ration.uploaded("t", 31);
        let mut c = Box::pin(ration.wrap("t".into(), "c".into(), only(30)));
        assert_eq!(take(&ration, &mut c, 1).await, vec![30]);
        ration.set_upload_rates(
            [
                ("a".to_string(), 100_000_000),
                ("b".to_string(), 10_000_000),
                ("c".to_string(), 100_000_000),
            ]
            .into(),
        );
        let all = futures::stream::iter((0..32).map(piece)).chain(futures::stream::pending());
        let mut a = Box::pin(ration.wrap("t".into(), "a".into(), all));
        assert!(
            take(&ration, &mut a, 1).await.is_empty(),
            "c holds the slot"
        );
        ration.uploaded("t", 30);
        assert_eq!(
            take(&ration, &mut a, 1).await,
            vec![31],
            "given again first"
        );
    }

    #[tokio::test]
    async fn a_piece_given_to_a_slow_child_does_not_hold_back_the_end_game() {
        // b got piece 0 before it was measured slow, and a had it from elsewhere: nobody
        // fast is left to give it to. The end game starts anyway, so a's uploaded piece 1
        // goes public for c once its share window passed, not after RATION_RELEASE_AFTER.
        let ration = SeedRation::new(2, 2);
        let only = |n: u32| futures::stream::iter(std::iter::once(piece(n)));
        let mut b = Box::pin(ration.wrap("t".into(), "b".into(), only(0)));
        assert_eq!(take(&ration, &mut b, 1).await, vec![0]);
        ration.uploaded("t", 0);
        let mut a = Box::pin(ration.wrap("t".into(), "a".into(), only(1)));
        assert_eq!(take(&ration, &mut a, 1).await, vec![1]);
        ration.uploaded("t", 1);
        ration.announced("t", None);
        ration.set_upload_rates(
            [
                ("a".to_string(), 100_000_000),
                ("b".to_string(), 10_000_000),
                ("c".to_string(), 100_000_000),
            ]
            .into(),
        );
        ration.with_tasks(|tasks| {
            let given = tasks.get_mut("t").unwrap().given.get_mut(&1).unwrap();
            given.uploaded_at = Some(Instant::now() - RATION_SHARE_WINDOW);
        });
        let mut c = Box::pin(ration.wrap("t".into(), "c".into(), only(1)));
        assert_eq!(
            take(&ration, &mut c, 1).await,
            vec![1],
            "public in the end game"
        );
    }

    #[tokio::test]
    async fn pieces_are_given_in_proportion_to_measured_upload() {
        // a uploads at twice b's rate (both above the slow share): one slot, taken in turn
        // by whoever has the fewest pieces per unit of upload.
        let ration = SeedRation::new(1, 1);
        ration.set_upload_rates([("a".to_string(), 100), ("b".to_string(), 50)].into());
        let all = || futures::stream::iter((0..32).map(piece));
        let mut a = Box::pin(ration.wrap("t".into(), "a".into(), all()));
        let mut b = Box::pin(ration.wrap("t".into(), "b".into(), all()));
        let (mut got_a, mut got_b) = (0, 0);
        for _ in 0..9 {
            // Both ask; whoever is in line takes the slot; its piece then leaves.
            let (x, y) = (
                take(&ration, &mut a, 1).await,
                take(&ration, &mut b, 1).await,
            );
            let (x, y) = (x.first().copied(), y.first().copied());
            got_a += usize::from(x.is_some());
            got_b += usize::from(y.is_some());
            for n in x.into_iter().chain(y) {
                ration.uploaded("t", n);
            }
        }
        assert!(got_a > got_b && got_b >= 2, "a {got_a}, b {got_b}");
    }

    #[tokio::test]
    async fn a_lone_child_gets_every_piece_in_flight() {
        let ration = SeedRation::new(IN_FLIGHT, IN_FLIGHT);
        let mut a = Box::pin(ration.wrap(
            "t".into(),
            "a".into(),
            futures::stream::iter((0..16).map(piece)),
        ));
        let got = take(&ration, &mut a, IN_FLIGHT + 1).await;
        assert_eq!(got.len(), IN_FLIGHT, "{got:?}");
    }

    #[tokio::test]
    async fn uploaded_pieces_stay_private_until_every_piece_was_given_once() {
        let ration = SeedRation::new(1, 1);
        let all = || futures::stream::iter((0..2).map(piece));
        let mut a = Box::pin(ration.wrap("t".into(), "a".into(), all()));
        let mut b = Box::pin(ration.wrap("t".into(), "b".into(), all()));
        let first = take(&ration, &mut a, 1).await;
        assert_eq!(first.len(), 1);
        ration.uploaded("t", first[0]);
        ration.with_tasks(|tasks| {
            let given = tasks
                .get_mut("t")
                .unwrap()
                .given
                .get_mut(&first[0])
                .unwrap();
            given.uploaded_at = Some(Instant::now() - RATION_SHARE_WINDOW * 10);
        });
        // The other piece is still to be given: b gets that one first, not a's.
        let other = 1 - first[0];
        assert_eq!(take(&ration, &mut b, 1).await, vec![other]);
        // Now every piece was given (the end game): a's, uploaded long ago, is public.
        assert_eq!(take(&ration, &mut b, 1).await, vec![first[0]]);
    }

    #[tokio::test]
    async fn uploaded_pieces_become_public_after_the_share_window() {
        let ration = SeedRation::new(IN_FLIGHT, IN_FLIGHT);
        let all = || futures::stream::iter((0..1).map(piece));
        let mut a = Box::pin(ration.wrap("t".into(), "a".into(), all()));
        let mut b = Box::pin(ration.wrap("t".into(), "b".into(), all()));
        assert_eq!(take(&ration, &mut a, 1).await, vec![0]);
        ration.uploaded("t", 0);
        assert!(take(&ration, &mut b, 1).await.is_empty());
        ration.with_tasks(|tasks| {
            let given = tasks
                .get_mut("t")
                .and_then(|t| t.given.get_mut(&0))
                .unwrap();
            given.uploaded_at = Some(Instant::now() - RATION_SHARE_WINDOW);
        });
        assert_eq!(take(&ration, &mut b, 1).await, vec![0]);
    }

    #[tokio::test]
    async fn a_piece_given_with_the_last_a_stream_shows_stays_given_when_the_stream_ends() {
        // Every other piece reached a and b elsewhere; piece 0 is the last each lacks. a is
        // given it, and a's stream ends (it showed everything): b must not be given it too.
        let ration = SeedRation::new(IN_FLIGHT, IN_FLIGHT);
        let only = || futures::stream::iter(std::iter::once(piece(0)));
        let mut a = Box::pin(ration.wrap("t".into(), "a".into(), only()));
        let mut b = Box::pin(ration.wrap("t".into(), "b".into(), only()));
        assert_eq!(shown(&mut a).await, Some(0));
        assert!(a.next().await.is_none(), "a's stream showed everything");
        drop(a);
        assert_eq!(shown(&mut b).await, None, "piece 0 is a's, being fetched");
    }

    #[tokio::test]
    async fn a_departed_child_returns_its_pieces() {
        let ration = SeedRation::new(IN_FLIGHT, IN_FLIGHT);
        let all = || futures::stream::iter((0..2).map(piece));
        let mut a = Box::pin(ration.wrap("t".into(), "a".into(), all()));
        let mut b = Box::pin(ration.wrap("t".into(), "b".into(), all()));
        let share = IN_FLIGHT / 2;
        assert_eq!(take(&ration, &mut a, 2).await.len(), share.min(2));
        drop(a);
        let mut got = take(&ration, &mut b, 2).await;
        got.sort_unstable();
        assert_eq!(got, vec![0, 1]);
        // The stream ends once everything was shown and the source is done.
        assert!(b.next().await.is_none());
    }
}
