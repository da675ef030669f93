//! Which piece to fetch next, and from which parent: pure functions over the piece
//! availability we learned from `SyncPieces`, so the policy is testable without a network.
//!
//! Policy:
//! - pieces only a seed holds go first when the seed may serve them (within the seed budget,
//!   and once no normal parent is likely to bring them, see [`SeedGrace`]): the seed's uplink
//!   is usually the swarm's scarcest link, and a piece it offers us must not wait
//!   behind pieces our peers can give us any time;
//! - then pieces that normal (non-seed) parents hold, rarest first, ties broken at random,
//!   so that the peers of a swarm hold different pieces and trade them; a rationing seed that
//!   shows such a piece (it chose to send it again: its end game, or a piece whose first
//!   child measured slow) competes with them on its rate, as a seed with five times the
//!   hosts' uplink otherwise idled through its end game (bench/netns `SEED_MBIT=500`:
//!   1.30-1.37 x T_min, 1.18-1.31 with it, the seed sending 2.8-3.2 copies of the file);
//! - among those, to the parent with the most spare upload bandwidth per piece in flight,
//!   ties broken at random. Once a parent delivered pieces to us, what it delivered (bytes per
//!   second per piece) stands for its bandwidth, and a parent not heard from yet is taken to
//!   be as good as the best one: a parent with a tenth of the others' uplink (bench/netns,
//!   uneven uplinks) announces the same bandwidth as they do, but its pieces take ten times
//!   as long, and a child that keeps asking it waits for pieces the others would bring.

use rand::seq::IndexedRandom;
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Bandwidth assumed for a parent that did not announce one (1 Gbit/s in bytes), so unknown
/// parents are neither starved nor preferred.
pub const UNKNOWN_PARENT_BANDWIDTH: u64 = 125_000_000;
/// Weight of a new piece's rate in a parent's delivered rate (running average).
pub const DELIVERY_EWMA: f64 = 0.3;

/// What the dispatcher knows about one parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentLoad {
    pub seed: bool,
    /// A seed whose every shown piece is an offer (a rationing seed): a piece it shows beside
    /// normal parents is one it chose to send again, so it competes with them on its rate.
    pub offers: bool,
    /// Announced upload capacity in bytes/s (0 = unknown).
    pub max_tx_bandwidth: u64,
    /// Announced current upload rate in bytes/s.
    pub tx_bandwidth: u64,
    /// Our pieces in flight from this parent.
    pub in_flight: u32,
    /// What it delivered to us, bytes per second per piece (running average); `None` until
    /// a piece came from it.
    pub delivered: Option<u64>,
    /// What its fetches in flight wrote so far, bytes per second per piece (the best of
    /// them, once it ran [`MIN_MOVE_AFTER`]): stands for its rate until a piece landed, so a
    /// parent whose first pieces crawl is known slow before the first one lands.
    pub writing: Option<u64>,
    /// The best rate a piece it forwarded as it arrived showed: a floor under its rate
    /// (its source may have been the slower link), known before any whole piece came.
    pub forwarded: Option<u64>,
}

impl ParentLoad {
    /// This load with `guess` standing in for a delivered rate not measured yet.
    pub fn delivered_or(&self, guess: Option<u64>) -> ParentLoad {
        let mut load = self.clone();
        load.delivered = load.delivered.or(guess);
        load
    }

    /// Spare upload bandwidth per piece we would have in flight with one more piece. A busy
    /// parent keeps a floor of 10 % of its capacity, as Dragonfly's selector, so it still
    /// gets some work.
    /// A piece of `bytes` came from this parent in `cost`.
    pub fn delivered_piece(&mut self, bytes: u64, cost: Duration) {
        let rate = rate_of(bytes, cost);
        let average = match self.delivered {
            Some(old) => old as f64 + DELIVERY_EWMA * (rate - old as f64),
            None => rate,
        };
        self.delivered = Some(average as u64);
    }

    /// A piece of `bytes` that this parent forwarded as it arrived there came in `cost`: at
    /// least what the parent delivers, as its own source may have been the slower link. It
    /// raises the running average, never lowers it, and sets none: a fast parent relaying
    /// a slow source must not look slow.
    pub fn delivered_at_least(&mut self, bytes: u64, cost: Duration) {
        let rate = rate_of(bytes, cost);
        self.forwarded = self.forwarded.max(Some(rate as u64));
        if self.delivered.is_some_and(|old| rate > old as f64) {
            self.delivered_piece(bytes, cost);
        }
    }

    /// What one piece from this parent gets: what it delivered, else what its fetches in
    /// flight wrote so far but at least what a forwarded piece showed; `None` while nothing
    /// is known. Without the floor, a fast parent whose pieces all came forwarded was
    /// unknown, so no parent was known fast and crawling fetches held every slot
    /// (bench/netns, half the uplinks slow: a fast host took no piece for 13 s).
    pub fn rate(&self) -> Option<u64> {
        self.delivered.or(self.writing.max(self.forwarded))
    }

    /// What one more piece from this parent would get: its rate (or, for a parent not heard
    /// from yet, `best_delivered`, the best among the candidates) shared with our pieces in
    /// flight from it; without any rate, the announced spare bandwidth.
    pub fn spare_per_piece(&self, best_delivered: Option<u64>) -> u64 {
        if let Some(rate) = self.rate().or(best_delivered) {
            return rate / u64::from(self.in_flight + 1);
        }
        let max = if self.max_tx_bandwidth == 0 {
            UNKNOWN_PARENT_BANDWIDTH
        } else {
            self.max_tx_bandwidth
        };
        let idle = max.saturating_sub(self.tx_bandwidth).max(max / 10);
        idle / u64::from(self.in_flight + 1)
    }
}

/// Bytes per second of `bytes` in `cost`.
fn rate_of(bytes: u64, cost: Duration) -> f64 {
    bytes as f64 / cost.as_secs_f64().max(1e-3)
}

/// Chooses among `holders` (indexes into `parents`) the parent to fetch a piece from.
pub fn choose_parent<R: Rng + ?Sized>(
    holders: &[usize],
    parents: &[ParentLoad],
    rng: &mut R,
) -> Option<usize> {
    let usable: Vec<usize> = holders
        .iter()
        .copied()
        .filter(|&i| i < parents.len())
        .collect();
    let normal: Vec<usize> = usable
        .iter()
        .copied()
        .filter(|&i| !parents[i].seed || parents[i].offers)
        .collect();
    let pool = if normal.is_empty() { usable } else { normal };
    let seen = pool.iter().filter_map(|&i| parents[i].rate()).max();
    let best = pool
        .iter()
        .map(|&i| parents[i].spare_per_piece(seen))
        .max()?;
    let top: Vec<usize> = pool
        .into_iter()
        .filter(|&i| parents[i].spare_per_piece(seen) == best)
        .collect();
    top.choose(rng).copied()
}

/// A parent whose delivered rate is below the best one's divided by this is slow: pieces
/// that only slow parents hold start after every other piece (see [`choose_piece`]).
pub const SLOW_PARENT_RATIO: u64 = 4;

/// The best rate among normal parents, if any is known.
pub fn best_rate(parents: &[ParentLoad]) -> Option<u64> {
    parents
        .iter()
        .filter(|p| !p.seed)
        .filter_map(ParentLoad::rate)
        .max()
}

/// Whether `rate` is slow next to `best`: below it divided by [`SLOW_PARENT_RATIO`].
fn is_slow(rate: u64, best: Option<u64>) -> bool {
    best.is_some_and(|best| rate < best / SLOW_PARENT_RATIO)
}

/// Which parents are slow: their rate (see [`ParentLoad::rate`]) below the best normal
/// parent's divided by [`SLOW_PARENT_RATIO`]. A parent not heard from yet is not slow.
pub fn slow_parents(parents: &[ParentLoad]) -> Vec<bool> {
    let best = best_rate(parents);
    parents
        .iter()
        .map(|p| p.rate().is_some_and(|rate| is_slow(rate, best)))
        .collect()
}

/// A fetch lingers when it ran [`MIN_MOVE_AFTER`] and writes at a slow rate (see
/// [`SLOW_PARENT_RATIO`]) next to the best parent's, `best`: it no longer takes one of the
/// child's slots, so pieces that fast parents hold start beside it. Early in a task nobody's
/// rate is known and a child fills its slots at whatever parents offer pieces; with half the
/// uplinks at a tenth, a child whose slots all went to slow parents took no piece for 30 s
/// while fast parents held dozens it lacked (bench/netns). It goes on (a move may take it
/// to a faster holder), so the slow parent's upload is still used.
pub fn lingers(fetch: FetchStatus, best: Option<u64>) -> bool {
    fetch.written_rate().is_some_and(|rate| is_slow(rate, best))
}

/// How many fetches a child may have in flight, lingering ones included, per slot: the
/// bound on connections when every parent crawls.
pub const MAX_FETCHES_PER_SLOT: usize = 2;

/// Chooses the next piece among `candidates` (missing, not in flight):
/// - first a piece only seeds hold and that `seed_may_serve` allows (the caller's seed budget
///   and grace period), at random, so that children of one seed start from different pieces
///   and can trade them afterwards;
/// - then the pieces some normal parent that is not slow holds, the rarest among normal
///   parents first, so the swarm trades among itself;
/// - then the pieces only slow normal parents hold (a fast parent may get them meanwhile:
///   with half the uplinks at a tenth, hosts took their last pieces from slow parents 8 s
///   after the fast ones finished). Taking one such piece at a time first, so fast hosts
///   spread it early, made every fast host split a slow uplink with the others: in two
///   bench/netns runs the last host took 1.45 and 2.87 x T_min.
pub fn choose_piece<R: Rng + ?Sized>(
    candidates: &BTreeSet<u32>,
    holders: &BTreeMap<u32, Vec<usize>>,
    parents: &[ParentLoad],
    seed_may_serve: &dyn Fn(u32) -> bool,
    rng: &mut R,
) -> Option<u32> {
    let slow = slow_parents(parents);
    let mut from_seed: Vec<u32> = Vec::new();
    let mut from_fast = Rarest::default();
    let mut from_slow = Rarest::default();
    for &number in candidates {
        let Some(list) = holders.get(&number) else {
            continue;
        };
        let normal: Vec<usize> = list
            .iter()
            .copied()
            .filter(|&i| parents.get(i).is_some_and(|p| !p.seed))
            .collect();
        if normal.is_empty() {
            if list.iter().any(|&i| i < parents.len()) && seed_may_serve(number) {
                from_seed.push(number);
            }
        } else if normal.iter().all(|&i| slow[i]) {
            from_slow.offer(number, normal.len());
        } else {
            from_fast.offer(number, normal.len());
        }
    }
    let from_fast = on_least_loaded_parents(from_fast.pieces, holders, parents);
    let from_slow = on_least_loaded_parents(from_slow.pieces, holders, parents);
    from_seed
        .choose(rng)
        .or_else(|| from_fast.choose(rng))
        .or_else(|| from_slow.choose(rng))
        .copied()
}

/// Of equally rare `pieces`, those whose best holder would give one more piece the most
/// spare upload ([`ParentLoad::spare_per_piece`], as [`choose_parent`] weighs holders).
/// Rarest first alone stacked a child's fetches on whichever parent held most of the rarest
/// pieces: early in a task every parent holds only the few pieces the seed gave it, all
/// equally rare, and a child put six of its eight slots on one parent whose uplink the
/// other children shared too (bench/netns `SEED_MBIT=500`: the six took 7.9 s, while the
/// child's downlink ran at two thirds).
fn on_least_loaded_parents(
    pieces: Vec<u32>,
    holders: &BTreeMap<u32, Vec<usize>>,
    parents: &[ParentLoad],
) -> Vec<u32> {
    let seen = best_rate(parents);
    let spare = |number: &u32| {
        holders
            .get(number)
            .into_iter()
            .flatten()
            .filter_map(|&i| parents.get(i))
            .filter(|p| !p.seed || p.offers)
            .map(|p| p.spare_per_piece(seen))
            .max()
    };
    let weighed: Vec<(u32, Option<u64>)> = pieces.iter().map(|n| (*n, spare(n))).collect();
    let Some(best) = weighed.iter().filter_map(|&(_, s)| s).max() else {
        return pieces;
    };
    weighed
        .into_iter()
        .filter(|&(_, s)| s == Some(best))
        .map(|(number, _)| number)
        .collect()
}

/// The pieces held by the fewest parents, among those offered.
#[derive(Default)]
struct Rarest {
    holders: usize,
    pieces: Vec<u32>,
}

impl Rarest {
    fn offer(&mut self, number: u32, holders: usize) {
        if self.pieces.is_empty() || holders < self.holders {
            self.holders = holders;
            self.pieces.clear();
        }
        if holders == self.holders {
            self.pieces.push(number);
        }
    }
}

/// How many pieces a child may have in flight from seed parents. With a live normal parent
/// the seed gets a quarter of the slots: the seed's uplink is shared by every child of the
/// task, and a child that can trade with peers should leave it to those that cannot.
pub fn seed_budget(parents: &[ParentLoad], alive: &[bool], concurrency: usize) -> usize {
    let normal_alive = parents
        .iter()
        .zip(alive)
        .any(|(p, &alive)| alive && !p.seed);
    if normal_alive {
        (concurrency / SEED_SHARE_DIVISOR).max(1)
    } else {
        concurrency
    }
}

/// A child with live normal parents gives seeds `1 / SEED_SHARE_DIVISOR` of its slots.
pub const SEED_SHARE_DIVISOR: usize = 4;

/// One dispatch decision: the next (piece, parent) pair, or `None` when nothing can start.
/// Pieces only seeds hold start only when `seed_may_serve` says so.
pub fn next_assignment<R: Rng + ?Sized>(
    candidates: &BTreeSet<u32>,
    holders: &BTreeMap<u32, Vec<usize>>,
    parents: &[ParentLoad],
    seed_may_serve: &dyn Fn(u32) -> bool,
    rng: &mut R,
) -> Option<(u32, usize)> {
    let piece = choose_piece(candidates, holders, parents, seed_may_serve, rng)?;
    let parent = choose_parent(holders.get(&piece)?, parents, rng)?;
    Some((piece, parent))
}

/// A fetch runs at least this long before it may move to a faster holder: its parent's
/// rate is a running average, and a move throws away what the fetch already has.
pub const MIN_MOVE_AFTER: Duration = Duration::from_secs(3);
/// A fetch moves only if what it still needs is this many times what a fresh fetch from the
/// other holder would take.
pub const MOVE_GAIN: f64 = 3.0;
/// How often the round looks again at fetches that may become worth moving.
pub const MOVE_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// A fetch that wrote nothing for this long has stalled, however far it came: judged by its
/// average rate since it began, a fetch that ran well and then stopped looked nearly done
/// and never moved (bench/netns, seed at 5 x the hosts' uplink: a host's last piece, asked
/// at 0.5 s, landed at 25.0 s, 1.2 s after every other host had finished). A flow sharing a
/// full downlink with seven others still writes every few hundred milliseconds, and TCP's
/// retransmission timeouts start at 0.2 s.
pub const STALL_AFTER: Duration = Duration::from_secs(2);

/// How long `bytes` take at `rate` bytes per second.
fn time_at(bytes: u64, rate: u64) -> f64 {
    bytes as f64 / rate.max(1) as f64
}

/// A fetch in flight, as far as the move policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct FetchStatus {
    /// Since the fetch started.
    pub elapsed: Duration,
    /// The piece's length.
    pub length: u64,
    /// Bytes of the piece written so far, if the shell told us.
    pub written: Option<u64>,
    /// Since the write last came further (since the fetch started, before it wrote).
    pub stalled_for: Duration,
}

impl FetchStatus {
    /// Bytes per second written so far, once the fetch ran [`MIN_MOVE_AFTER`] (earlier, a
    /// request's round trip and the first buffer would dominate it).
    pub fn written_rate(&self) -> Option<u64> {
        let written = self.written?;
        (self.elapsed >= MIN_MOVE_AFTER)
            .then(|| (written as f64 / self.elapsed.as_secs_f64()) as u64)
    }

    /// Seconds the fetch still needs: at the rate it has written so far, or (not told) at
    /// `running`'s delivered rate, a fetch past its expected time taken to be halfway; a
    /// fetch that wrote nothing for [`STALL_AFTER`] may never end.
    fn remaining(&self, running: &ParentLoad) -> Option<f64> {
        let elapsed = self.elapsed.as_secs_f64();
        match self.written {
            Some(0) => Some(f64::INFINITY),
            Some(_) if self.stalled_for >= STALL_AFTER => Some(f64::INFINITY),
            Some(written) => {
                let left = self.length.saturating_sub(written);
                Some(left as f64 * elapsed / written as f64)
            }
            None => {
                let whole = time_at(self.length, running.delivered?);
                Some(if elapsed < whole {
                    whole - elapsed
                } else {
                    elapsed / 2.0
                })
            }
        }
    }
}

/// Whether a fetch from `running` should be given up for `other`, which also holds the piece:
/// when what the fetch still needs is [`MOVE_GAIN`] times a fresh fetch from `other` at its
/// delivered rate (measured while it sent us other pieces alongside, as it would now). A
/// piece that only a slow parent held when we asked may since have reached parents that
/// deliver ten times faster; without moving, the child waits on the slow uplink for it
/// (bench/netns, half the hosts at 10 Mbit/s up: fast hosts took their last pieces from slow
/// ones 50 s after their fast parents had them). `other`'s rate must be known, so a guess
/// never aborts a fetch; a fetch that wrote nothing in [`MIN_MOVE_AFTER`] moves to any holder
/// known to deliver.
pub fn should_move(fetch: FetchStatus, running: &ParentLoad, other: &ParentLoad) -> bool {
    let Some(fast) = other.delivered else {
        return false;
    };
    if fetch.elapsed < MIN_MOVE_AFTER {
        return false;
    }
    let Some(remaining) = fetch.remaining(running) else {
        return false;
    };
    remaining > time_at(fetch.length, fast) * MOVE_GAIN
}

/// Shortest wait for a normal parent to pick up a piece only a seed has.
pub const MIN_SEED_GRACE: Duration = Duration::from_millis(20);
/// Longest quiet period we wait for: a normal parent silent this long is not coming.
pub const MAX_SEED_GRACE: Duration = Duration::from_secs(10);
/// Longest a piece is held back at all: past it the seed serves, whatever the swarm does,
/// so a slow but steady normal parent cannot hold a child back for long.
pub const MAX_SEED_WAIT: Duration = Duration::from_secs(60);
/// Piece time assumed before the first piece of a round has landed.
pub const INITIAL_PIECE_TIME: Duration = Duration::from_millis(100);
/// The grace period in piece times: one for a normal parent to fetch the piece from the
/// seed, one for its SyncPieces announcement and our request to follow.
const GRACE_IN_PIECE_TIMES: u32 = 2;

/// Holds a piece that only seeds have back while the child's normal parents are making
/// progress, as those parents are probably fetching the same pieces from the same seed right
/// now: taking them from the parents spares the seed's uplink one copy per child. A seed that
/// rations its announcements (a Damselfly seed, see `crate::ration`) offers each piece to one
/// child alone (and to others only once the swarm failed to spread it), so its pieces are
/// never held back. Without
/// it, every child of a fast seed takes every piece from the seed at once. A piece is
/// released to the seed once it waited a grace period (two of our piece times, at most
/// [`MAX_SEED_GRACE`]) with no news from any normal parent, and at the latest after
/// [`MAX_SEED_WAIT`]. Where the seed's uplink is the bottleneck (a seed next to the origin,
/// many children), this is what keeps it carrying each piece about once.
#[derive(Debug, Clone)]
pub struct SeedGrace {
    /// When a piece was first seen at a seed.
    since: BTreeMap<u32, Instant>,
    /// Moving average of how long a piece takes us to fetch.
    piece_time: Duration,
    /// When a normal parent last announced a piece.
    last_normal_news: Option<Instant>,
    /// Pieces a rationing seed offered us: ripe at once.
    exclusive: BTreeSet<u32>,
}

impl Default for SeedGrace {
    fn default() -> Self {
        Self {
            since: BTreeMap::new(),
            piece_time: INITIAL_PIECE_TIME,
            last_normal_news: None,
            exclusive: BTreeSet::new(),
        }
    }
}

impl SeedGrace {
    /// A seed announced `number`.
    pub fn seen_at_seed(&mut self, number: u32, now: Instant) {
        self.since.entry(number).or_insert(now);
    }

    /// A rationing seed offered `number` to us.
    pub fn offered_exclusively(&mut self, number: u32, now: Instant) {
        self.since.entry(number).or_insert(now);
        self.exclusive.insert(number);
    }

    /// A normal parent announced a piece.
    pub fn normal_progress(&mut self, now: Instant) {
        self.last_normal_news = Some(now);
    }

    /// A piece took `cost` to fetch (exponential moving average, weight 1/4).
    pub fn piece_took(&mut self, cost: Duration) {
        self.piece_time = (self.piece_time * 3 + cost) / 4;
    }

    /// How long a piece takes us lately (moving average).
    pub fn piece_time(&self) -> Duration {
        self.piece_time
    }

    pub fn grace(&self) -> Duration {
        (self.piece_time * GRACE_IN_PIECE_TIMES).clamp(MIN_SEED_GRACE, MAX_SEED_GRACE)
    }

    /// When the seed may serve `number` (None: never announced by a seed).
    pub fn ripe_at(&self, number: u32) -> Option<Instant> {
        let since = *self.since.get(&number)?;
        if self.exclusive.contains(&number) {
            return Some(since);
        }
        let grace = self.grace();
        let quiet_from = self.last_normal_news.map_or(since, |news| news.max(since));
        Some((quiet_from + grace).min(since + MAX_SEED_WAIT))
    }

    pub fn is_ripe(&self, number: u32, now: Instant) -> bool {
        self.ripe_at(number).is_some_and(|at| at <= now)
    }

    /// The earliest moment one of `pieces` ripens after `now`, to wake the dispatcher.
    pub fn next_ripening<'a>(
        &self,
        pieces: impl IntoIterator<Item = &'a u32>,
        now: Instant,
    ) -> Option<Instant> {
        pieces
            .into_iter()
            .filter_map(|&n| self.ripe_at(n))
            .filter(|&at| at > now)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn normal(max: u64) -> ParentLoad {
        ParentLoad {
            seed: false,
            offers: false,
            max_tx_bandwidth: max,
            tx_bandwidth: 0,
            in_flight: 0,
            delivered: None,
            writing: None,
            forwarded: None,
        }
    }

    #[test]
    fn spreads_pieces_by_spare_bandwidth() {
        let mut rng = StdRng::seed_from_u64(7);
        // Parent 0 has twice the bandwidth of parent 1: it should get about two thirds.
        let mut parents = vec![normal(200), normal(100)];
        let mut counts = [0u32; 2];
        for _ in 0..30 {
            let p = choose_parent(&[0, 1], &parents, &mut rng).unwrap();
            parents[p].in_flight += 1;
            counts[p] += 1;
        }
        assert!(counts[0] >= 18 && counts[0] <= 22, "{counts:?}");
        assert!(counts[1] >= 8, "{counts:?}");
    }

    #[test]
    fn a_parent_that_delivers_slowly_gets_fewer_pieces() {
        // Both announce the same bandwidth; one delivered 4 MiB in 0.4 s, the other in 4 s.
        let mut parents = vec![normal(0), normal(0), normal(0)];
        parents[0].delivered_piece(4 << 20, Duration::from_millis(400));
        parents[1].delivered_piece(4 << 20, Duration::from_secs(4));
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = [0u32; 3];
        for _ in 0..24 {
            let Some(i) = choose_parent(&[0, 1, 2], &parents, &mut rng) else {
                panic!("no parent chosen");
            };
            counts[i] += 1;
            parents[i].in_flight += 1;
        }
        // The fast one and the one not heard from yet (as good as the best) share the work.
        assert!(counts[1] <= 2, "{counts:?}");
        assert!(counts[0] >= 10 && counts[2] >= 10, "{counts:?}");
    }

    #[test]
    fn a_long_fetch_moves_only_to_a_much_faster_holder() {
        const PIECE: u64 = 4 << 20;
        let mut slow = normal(0);
        slow.delivered_piece(PIECE, Duration::from_secs(20));
        let mut fast = normal(0);
        fast.delivered_piece(PIECE, Duration::from_millis(400));
        let fetch = |ms: u64, written: Option<u64>| FetchStatus {
            elapsed: Duration::from_millis(ms),
            length: PIECE,
            written,
            stalled_for: Duration::ZERO,
        };
        let early = MIN_MOVE_AFTER.as_millis() as u64 - 1;
        assert!(!should_move(fetch(early, None), &slow, &fast), "too early");
        assert!(should_move(fetch(3_000, None), &slow, &fast));
        assert!(
            !should_move(fetch(3_000, None), &fast, &slow),
            "never to a slower one"
        );
        // Nearly done at the slow parent: 0.5 s left against 0.4 s anew is not worth it.
        assert!(!should_move(fetch(19_500, None), &slow, &fast));
        // Overdue (the parent got slower than its average): taken to be halfway.
        assert!(should_move(fetch(30_000, None), &slow, &fast));
        // What the fetch wrote says more than the parent's average: a fetch from the "slow"
        // parent that is nearly done stays; one from the "fast" parent that stalls moves.
        assert!(!should_move(fetch(3_000, Some(PIECE - 4096)), &slow, &fast));
        assert!(should_move(fetch(3_000, Some(PIECE / 10)), &fast, &fast));
        assert!(should_move(fetch(3_000, Some(0)), &fast, &fast));
        // Unknown rates at the other holder never move a fetch.
        assert!(!should_move(fetch(60_000, Some(0)), &slow, &normal(0)));
    }

    #[test]
    fn a_forwarded_piece_raises_a_parents_rate_but_never_lowers_it() {
        let mut relay = normal(0);
        relay.delivered_at_least(4 << 20, Duration::from_millis(100));
        assert_eq!(relay.delivered, None, "a lower bound alone says nothing");
        relay.delivered_piece(4 << 20, Duration::from_millis(400));
        let measured = relay.delivered.unwrap();
        // Forwarded from a slow source of its own: the relay does not look slower.
        relay.delivered_at_least(4 << 20, Duration::from_secs(20));
        assert_eq!(relay.delivered, Some(measured));
        // Forwarded faster than we thought it could send: it looks faster.
        relay.delivered_at_least(4 << 20, Duration::from_millis(100));
        assert!(relay.delivered.unwrap() > measured);
    }

    #[test]
    fn pieces_only_slow_parents_hold_start_last() {
        let mut fast = normal(0);
        fast.delivered_piece(4 << 20, Duration::from_millis(400));
        let mut slow = normal(0);
        slow.delivered_piece(4 << 20, Duration::from_secs(8));
        let parents = vec![fast, slow];
        // Piece 0 at the slow parent alone (rarer), piece 1 at both.
        let holders: BTreeMap<u32, Vec<usize>> =
            [(0, vec![1]), (1, vec![0, 1])].into_iter().collect();
        let both: BTreeSet<u32> = [0, 1].into_iter().collect();
        for s in 0..20 {
            let mut rng = StdRng::seed_from_u64(s);
            assert_eq!(
                choose_piece(&both, &holders, &parents, &|_| true, &mut rng),
                Some(1)
            );
        }
        // Nothing else to start: the slow parent serves it.
        let only0: BTreeSet<u32> = [0].into_iter().collect();
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(
            next_assignment(&only0, &holders, &parents, &|_| true, &mut rng),
            Some((0, 1))
        );
    }

    #[test]
    fn a_parent_whose_first_fetches_crawl_is_slow_before_a_piece_lands() {
        let mut fast = normal(0);
        fast.delivered_piece(4 << 20, Duration::from_millis(400));
        let mut crawling = normal(0);
        assert_eq!(
            slow_parents(&[fast.clone(), crawling.clone()]),
            [false, false]
        );
        crawling.writing = Some(100 << 10);
        assert_eq!(
            slow_parents(&[fast.clone(), crawling.clone()]),
            [false, true]
        );
        // What it delivers, once known, stands instead.
        crawling.delivered_piece(4 << 20, Duration::from_millis(500));
        assert_eq!(slow_parents(&[fast, crawling]), [false, false]);
    }

    #[test]
    fn a_forwarded_piece_is_a_floor_under_a_parents_rate() {
        let mut relay = normal(0);
        relay.delivered_at_least(4 << 20, Duration::from_secs(1));
        assert_eq!(relay.delivered, None, "not a measure of its upload");
        assert_eq!(relay.rate(), Some(4 << 20));
        let mut crawling = normal(0);
        crawling.writing = Some(100 << 10);
        assert_eq!(slow_parents(&[relay.clone(), crawling]), [false, true]);
        // A slower forwarded piece later does not lower the floor.
        relay.delivered_at_least(4 << 20, Duration::from_secs(8));
        assert_eq!(relay.rate(), Some(4 << 20));
    }

    #[test]
    fn a_fetch_lingers_once_it_writes_far_below_the_best_rate() {
        let best = Some(10 << 20);
        let fetch = |secs: u64, written: Option<u64>| FetchStatus {
            elapsed: Duration::from_secs(secs),
            length: 4 << 20,
            written,
            stalled_for: Duration::ZERO,
        };
        assert!(
            lingers(fetch(4, Some(1 << 20)), best),
            "256 KiB/s next to 10 MiB/s"
        );
        assert!(
            !lingers(fetch(4, Some(12 << 20)), best),
            "3 MiB/s is not slow"
        );
        assert!(!lingers(fetch(2, Some(0)), best), "too early to tell");
        assert!(!lingers(fetch(10, None), best), "progress unknown");
        assert!(
            !lingers(fetch(10, Some(0)), None),
            "nothing to compare with"
        );
    }

    #[test]
    fn busy_parent_yields_to_idle_one() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut busy = normal(100);
        busy.tx_bandwidth = 95;
        let parents = vec![busy, normal(100)];
        assert_eq!(choose_parent(&[0, 1], &parents, &mut rng), Some(1));
    }

    #[test]
    fn prefers_normal_parents_over_seeds() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut seed = normal(10_000);
        seed.seed = true;
        let mut parents = vec![seed, normal(10)];
        parents[1].in_flight = 5;
        for _ in 0..20 {
            assert_eq!(choose_parent(&[0, 1], &parents, &mut rng), Some(1));
        }
        // Only the seed has it: the seed serves.
        assert_eq!(choose_parent(&[0], &parents, &mut rng), Some(0));
        assert_eq!(choose_parent(&[], &parents, &mut rng), None);
        assert_eq!(choose_parent(&[9], &parents, &mut rng), None);
    }

    #[test]
    fn a_rationing_seed_competes_with_normal_parents_on_its_rate() {
        // The seed delivers 50 MB/s per piece, the peer 5 and is busy: a piece both hold goes
        // to the seed once the seed offers what it shows (the end game of a fat seed).
        let mut rng = StdRng::seed_from_u64(4);
        let mut seed = normal(0);
        seed.seed = true;
        seed.offers = true;
        seed.delivered = Some(50_000_000);
        let mut peer = normal(0);
        peer.delivered = Some(5_000_000);
        peer.in_flight = 2;
        let mut parents = vec![seed, peer];
        for _ in 0..20 {
            assert_eq!(choose_parent(&[0, 1], &parents, &mut rng), Some(0));
        }
        // A seed that does not ration leaves pieces peers hold to them.
        parents[0].offers = false;
        for _ in 0..20 {
            assert_eq!(choose_parent(&[0, 1], &parents, &mut rng), Some(1));
        }
    }

    #[test]
    fn rarest_first_in_random_order() {
        let parents = vec![normal(100), normal(100)];
        let candidates: BTreeSet<u32> = (0..6).collect();
        let mut holders: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for n in 0..6 {
            holders.insert(n, vec![0, 1]);
        }
        holders.insert(4, vec![1]);
        holders.insert(5, vec![0]);
        holders.remove(&0); // nobody has piece 0
        let mut seen = BTreeSet::new();
        for seed in 0..40 {
            let mut rng = StdRng::seed_from_u64(seed);
            let p = choose_piece(&candidates, &holders, &parents, &|_| true, &mut rng).unwrap();
            assert!(p == 4 || p == 5, "rarest pieces first, got {p}");
            seen.insert(p);
        }
        assert_eq!(seen.len(), 2, "ties are broken at random");
        // Among equally rare pieces, different peers start at different pieces.
        let common: BTreeSet<u32> = [1, 2, 3].into_iter().collect();
        let firsts: BTreeSet<u32> = (0..40)
            .map(|s| {
                let mut rng = StdRng::seed_from_u64(s);
                choose_piece(&common, &holders, &parents, &|_| true, &mut rng).unwrap()
            })
            .collect();
        assert_eq!(firsts.len(), 3);
        let only0: BTreeSet<u32> = [0].into_iter().collect();
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(
            choose_piece(&only0, &holders, &parents, &|_| true, &mut rng),
            None
        );
    }

    #[test]
    fn equally_rare_pieces_go_to_the_parents_with_the_fewest_of_ours() {
        // Three parents hold one piece each that nobody else has; parent 0 holds six. A
        // child with eight slots starts one piece at each parent before a second at any.
        let mut parents = vec![normal(100), normal(100), normal(100)];
        let mut holders: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for n in 0..6 {
            holders.insert(n, vec![0]);
        }
        holders.insert(6, vec![1]);
        holders.insert(7, vec![2]);
        let mut candidates: BTreeSet<u32> = (0..8).collect();
        let mut rng = StdRng::seed_from_u64(3);
        let mut order = Vec::new();
        while let Some((number, parent)) =
            next_assignment(&candidates, &holders, &parents, &|_| true, &mut rng)
        {
            candidates.remove(&number);
            parents[parent].in_flight += 1;
            order.push(parent);
        }
        let firsts: BTreeSet<usize> = order[..3].iter().copied().collect();
        assert_eq!(firsts.len(), 3, "one at each parent first: {order:?}");
        assert_eq!(order.len(), 8);
    }

    #[test]
    fn servable_seed_only_pieces_before_normal_held_ones() {
        let mut seed = normal(10_000);
        seed.seed = true;
        let parents = vec![seed, normal(100)];
        let candidates: BTreeSet<u32> = [0, 1].into_iter().collect();
        // Piece 1 is held by the seed alone, piece 0 by both. While the seed may serve,
        // piece 1 goes first (the seed's uplink must not idle); piece 0 always comes from the
        // normal parent.
        let holders: BTreeMap<u32, Vec<usize>> =
            [(0, vec![0, 1]), (1, vec![0])].into_iter().collect();
        for s in 0..20 {
            let mut rng = StdRng::seed_from_u64(s);
            assert_eq!(
                next_assignment(&candidates, &holders, &parents, &|_| true, &mut rng),
                Some((1, 0))
            );
            assert_eq!(
                next_assignment(&candidates, &holders, &parents, &|_| false, &mut rng),
                Some((0, 1))
            );
        }
        // Once only seed-held pieces are left, they start when the caller lets the seed serve.
        let only1: BTreeSet<u32> = [1].into_iter().collect();
        let mut rng = StdRng::seed_from_u64(5);
        assert_eq!(
            next_assignment(&only1, &holders, &parents, &|_| true, &mut rng),
            Some((1, 0))
        );
        assert_eq!(
            next_assignment(&only1, &holders, &parents, &|_| false, &mut rng),
            None
        );
    }

    #[test]
    fn seed_budget_shrinks_with_live_normal_parents() {
        let mut seed = normal(100);
        seed.seed = true;
        let parents = vec![seed.clone(), normal(100)];
        assert_eq!(seed_budget(&parents, &[true, true], 8), 2);
        assert_eq!(seed_budget(&parents, &[true, true], 2), 1);
        // The normal parent died: the seed may take every slot.
        assert_eq!(seed_budget(&parents, &[true, false], 8), 8);
        assert_eq!(seed_budget(&[seed], &[true], 8), 8);
    }

    #[test]
    fn seed_grace_follows_piece_time() {
        let start = Instant::now();
        let mut grace = SeedGrace::default();
        assert_eq!(grace.grace(), INITIAL_PIECE_TIME * 2);
        grace.seen_at_seed(3, start);
        grace.seen_at_seed(3, start + Duration::from_secs(9)); // first sighting counts
        assert!(!grace.is_ripe(3, start));
        assert!(!grace.is_ripe(4, start + Duration::from_secs(60)));
        assert!(grace.is_ripe(3, start + INITIAL_PIECE_TIME * 2));
        for _ in 0..50 {
            grace.piece_took(Duration::from_millis(1));
        }
        assert_eq!(grace.grace(), MIN_SEED_GRACE);
        // News from a normal parent holds pieces back a grace period longer.
        let news = start + Duration::from_millis(500);
        grace.normal_progress(news);
        assert!(!grace.is_ripe(3, news));
        assert!(grace.is_ripe(3, news + MIN_SEED_GRACE));
        // But never past MAX_SEED_WAIT from the first sighting.
        grace.normal_progress(start + MAX_SEED_WAIT * 2);
        assert!(grace.is_ripe(3, start + MAX_SEED_WAIT));
        for _ in 0..50 {
            grace.piece_took(Duration::from_secs(30));
        }
        assert_eq!(grace.grace(), MAX_SEED_GRACE);
        assert_eq!(
            grace.next_ripening(&[3, 4], start),
            Some(start + MAX_SEED_WAIT)
        );
        assert_eq!(grace.next_ripening(&[4], start), None);
        // A piece a rationing seed offered to us alone is ripe at once, news or not.
        grace.offered_exclusively(7, start);
        grace.normal_progress(start);
        assert!(grace.is_ripe(7, start));
        assert_eq!(grace.next_ripening(&[7], start), None);
    }
}
