//! Parent evaluation as pure functions: no locks, no clocks, so every rule is unit-tested.
//!
//! The score is a weighted sum in `[0, 1]`. The load term dominates on purpose: a parent that
//! the scheduler has already handed children to must lose against an idle one, otherwise every
//! new child piles onto the single best-looking parent while the rest of the swarm idles.

use std::time::Duration;

/// Weight of spare upload capacity (bandwidth and concurrency) in the total score.
pub const LOAD_WEIGHT: f64 = 0.5;
/// Weight of the share of the task the parent already holds.
pub const PIECES_WEIGHT: f64 = 0.2;
/// Weight of the host type (running seeds are preferred for a new task).
pub const HOST_TYPE_WEIGHT: f64 = 0.1;
/// Weight of same-IDC placement.
pub const IDC_WEIGHT: f64 = 0.15;
/// Weight of matching location prefix.
pub const LOCATION_WEIGHT: f64 = 0.05;

/// Inside the load term: share of spare announced bandwidth.
pub const LOAD_BANDWIDTH_SHARE: f64 = 0.6;
/// Inside the load term: share of the "fewer children is better" component. It keeps spreading
/// children even when the announced bandwidth is so large that one edge hardly dents it.
pub const LOAD_CONCURRENCY_SHARE: f64 = 0.4;

/// Capacity assumed for a host that announced `max_tx_bandwidth = 0` (bits per second).
pub const DEFAULT_MAX_TX_BANDWIDTH_BPS: u64 = 10_000_000_000;
/// Location is `|`-separated; at most this many leading elements are compared (Dragonfly: 5).
pub const MAX_LOCATION_ELEMENTS: usize = 5;
/// Host type score of a normal host (between an idle seed, 0, and an active seed, 1).
pub const NORMAL_HOST_TYPE_SCORE: f64 = 0.5;

/// A parent whose measured upload is this share of the best candidate's keeps this share of
/// its load term, but never less than this floor: a slow uplink is still an uplink.
pub const MIN_UPLOAD_FACTOR: f64 = 0.05;

/// Piece costs kept per peer for bad-parent detection.
pub const PIECE_COST_WINDOW: usize = 30;
/// Fewer cost samples than this never make a parent bad.
pub const MIN_AVAILABLE_COST_LEN: usize = 2;
/// Before the window is full, a last cost above this multiple of the mean is bad.
pub const BAD_COST_MEAN_FACTOR: f64 = 20.0;
/// Once the window is full, a last cost above mean + this many standard deviations is bad.
pub const BAD_COST_SIGMAS: f64 = 3.0;

/// What the evaluator needs to know about one candidate parent.
#[derive(Debug, Clone, PartialEq)]
pub struct ParentFeatures<'a> {
    /// Announced `network.max_tx_bandwidth` of the parent's host, bits per second.
    pub max_tx_bandwidth: u64,
    /// Bandwidth the scheduler has already assigned to the host's active edges, bps.
    pub assigned_tx_bandwidth: u64,
    /// Active parent→child edges of the parent's host.
    pub active_children: u32,
    /// What the parent's host served lately, bits per second (`crate::upload`); `None` until
    /// a child reported a piece from it.
    pub measured_upload: Option<u64>,
    /// Pieces the parent has finished.
    pub finished_pieces: u32,
    /// Pieces of the whole task (0 when unknown).
    pub total_pieces: u32,
    /// Whether the parent's host is a seed host and what it is doing.
    pub host_kind: HostKind,
    /// Borrowed from the host as announced: features are built for every candidate of
    /// every decision.
    pub idc: Option<&'a str>,
    pub location: Option<&'a str>,
}

/// Host type as far as scoring cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    Normal,
    /// A seed host whose peer is downloading or done: the best source for a new task.
    ActiveSeed,
    /// A seed host whose peer is not (yet) producing pieces.
    IdleSeed,
}

/// Where the child is, for affinity.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChildFeatures<'a> {
    pub idc: Option<&'a str>,
    pub location: Option<&'a str>,
}

/// Total score in `[0, 1]`; higher is better. Alone, without other candidates to compare
/// its measured upload with.
pub fn score(parent: &ParentFeatures, child: &ChildFeatures) -> f64 {
    score_among(parent, child, None)
}

/// Score among candidates whose best measured upload is `best_upload`: the load term (spare
/// capacity) counts in proportion to the parent's measured upload, so a host that passes
/// pieces on at a tenth of the others' rate is not handed children as if it were idle.
fn score_among(parent: &ParentFeatures, child: &ChildFeatures, best_upload: Option<u64>) -> f64 {
    LOAD_WEIGHT * load_score(parent) * upload_factor(parent.measured_upload, best_upload)
        + PIECES_WEIGHT * pieces_score(parent.finished_pieces, parent.total_pieces)
        + HOST_TYPE_WEIGHT * host_type_score(parent.host_kind)
        + IDC_WEIGHT * idc_score(parent.idc, child.idc)
        + LOCATION_WEIGHT * location_score(parent.location, child.location)
}

/// Spare capacity: announced bandwidth minus what was already assigned, and fewer children.
pub fn load_score(parent: &ParentFeatures) -> f64 {
    let max = if parent.max_tx_bandwidth == 0 {
        DEFAULT_MAX_TX_BANDWIDTH_BPS
    } else {
        parent.max_tx_bandwidth
    };
    let spare = 1.0 - (parent.assigned_tx_bandwidth as f64 / max as f64);
    let concurrency = 1.0 / (1.0 + f64::from(parent.active_children));
    LOAD_BANDWIDTH_SHARE * spare.clamp(0.0, 1.0) + LOAD_CONCURRENCY_SHARE * concurrency
}

/// The parent's measured upload over the best candidate's, at least [`MIN_UPLOAD_FACTOR`];
/// 1 when either is unknown (an unmeasured host is given the benefit of the doubt).
pub fn upload_factor(measured: Option<u64>, best: Option<u64>) -> f64 {
    match (measured, best) {
        (Some(m), Some(b)) if b > 0 => (m as f64 / b as f64).clamp(MIN_UPLOAD_FACTOR, 1.0),
        _ => 1.0,
    }
}

/// Share of the task the parent holds; unknown totals count as nothing held.
pub fn pieces_score(finished: u32, total: u32) -> f64 {
    if total == 0 {
        return 0.0;
    }
    (f64::from(finished) / f64::from(total)).clamp(0.0, 1.0)
}

pub fn host_type_score(kind: HostKind) -> f64 {
    match kind {
        HostKind::ActiveSeed => 1.0,
        HostKind::IdleSeed => 0.0,
        HostKind::Normal => NORMAL_HOST_TYPE_SCORE,
    }
}

/// 1 on a case-insensitive IDC match, else 0.
pub fn idc_score(parent: Option<&str>, child: Option<&str>) -> f64 {
    match (parent, child) {
        (Some(p), Some(c)) if !p.is_empty() && p.eq_ignore_ascii_case(c) => 1.0,
        _ => 0.0,
    }
}

/// Matching leading `|`-separated elements, over [`MAX_LOCATION_ELEMENTS`].
pub fn location_score(parent: Option<&str>, child: Option<&str>) -> f64 {
    let (Some(parent), Some(child)) = (parent, child) else {
        return 0.0;
    };
    if parent.is_empty() || child.is_empty() {
        return 0.0;
    }
    if parent.eq_ignore_ascii_case(child) {
        return 1.0;
    }
    let matching = parent
        .split('|')
        .zip(child.split('|'))
        .take(MAX_LOCATION_ELEMENTS)
        .take_while(|(p, c)| p.eq_ignore_ascii_case(c))
        .count();
    matching as f64 / MAX_LOCATION_ELEMENTS as f64
}

/// Dragonfly's bad-parent rule on the parent's recent piece costs (oldest first).
pub fn is_bad_by_costs(costs: &[Duration]) -> bool {
    is_bad_by_cost_seconds(costs.iter().map(Duration::as_secs_f64))
}

/// [`is_bad_by_costs`] on costs in seconds, oldest first, read in place: the parent filter
/// asks it for every candidate of every decision, so it collects nothing.
pub fn is_bad_by_cost_seconds<I>(costs: I) -> bool
where
    I: ExactSizeIterator<Item = f64> + Clone,
{
    let len = costs.len();
    if len < MIN_AVAILABLE_COST_LEN {
        return false;
    }
    let others = costs.clone().take(len - 1);
    let Some(last) = costs.last() else {
        return false;
    };
    let count = (len - 1) as f64;
    let mean = others.clone().sum::<f64>() / count;
    if len < PIECE_COST_WINDOW {
        return last > mean * BAD_COST_MEAN_FACTOR;
    }
    let variance = others.map(|c| (c - mean).powi(2)).sum::<f64>() / count;
    last > mean + BAD_COST_SIGMAS * variance.sqrt()
}

/// Orders candidate indices best first and keeps at most `limit`. The sort is stable, so a
/// caller that shuffles candidates first breaks ties randomly.
pub fn rank(parents: &[ParentFeatures], child: &ChildFeatures, limit: usize) -> Vec<usize> {
    let best_upload = parents.iter().filter_map(|p| p.measured_upload).max();
    let mut scored: Vec<(usize, f64)> = parents
        .iter()
        .enumerate()
        .map(|(i, p)| (i, score_among(p, child, best_upload)))
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    scored.into_iter().take(limit).map(|(i, _)| i).collect()
}

/// Bandwidth one parent→child edge reserves: a full window of in-flight pieces, in bits.
pub fn edge_bandwidth(piece_length: u64, concurrent_piece_count: u32) -> u64 {
    piece_length
        .saturating_mul(u64::from(concurrent_piece_count))
        .saturating_mul(8)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GBPS: u64 = 1_000_000_000;

    fn parent() -> ParentFeatures<'static> {
        ParentFeatures {
            max_tx_bandwidth: 10 * GBPS,
            assigned_tx_bandwidth: 0,
            active_children: 0,
            measured_upload: None,
            finished_pieces: 10,
            total_pieces: 10,
            host_kind: HostKind::Normal,
            idc: None,
            location: None,
        }
    }

    #[test]
    fn idle_parent_beats_loaded_parent() {
        let idle = parent();
        let loaded = ParentFeatures {
            assigned_tx_bandwidth: edge_bandwidth(4 << 20, 8),
            active_children: 1,
            ..parent()
        };
        let child = ChildFeatures::default();
        assert!(score(&idle, &child) > score(&loaded, &child));
    }

    #[test]
    fn one_child_outweighs_seed_preference() {
        // A seed already serving a child should lose against an idle normal parent holding
        // the same pieces, so the seed's uplink is not the only one used.
        let busy_seed = ParentFeatures {
            host_kind: HostKind::ActiveSeed,
            assigned_tx_bandwidth: edge_bandwidth(4 << 20, 8),
            active_children: 1,
            ..parent()
        };
        let child = ChildFeatures::default();
        assert!(score(&parent(), &child) > score(&busy_seed, &child));
        // And an idle seed for a new task beats an idle normal parent.
        let seed = ParentFeatures {
            host_kind: HostKind::ActiveSeed,
            ..parent()
        };
        assert!(score(&seed, &child) > score(&parent(), &child));
    }

    #[test]
    fn overloaded_bandwidth_is_clamped() {
        let p = ParentFeatures {
            max_tx_bandwidth: 1,
            assigned_tx_bandwidth: u64::MAX,
            active_children: 1000,
            ..parent()
        };
        let s = score(&p, &ChildFeatures::default());
        assert!((0.0..=1.0).contains(&s));
    }

    #[test]
    fn affinity_scores() {
        assert_eq!(idc_score(Some("IDC-a"), Some("idc-A")), 1.0);
        assert_eq!(idc_score(Some("a"), Some("b")), 0.0);
        assert_eq!(idc_score(None, Some("b")), 0.0);
        assert_eq!(location_score(Some("cn|zj|hz"), Some("cn|zj|nb")), 0.4);
        assert_eq!(location_score(Some("cn|zj"), Some("cn|zj")), 1.0);
        assert_eq!(location_score(Some(""), Some("")), 0.0);
        let child = ChildFeatures {
            idc: Some("a"),
            location: None,
        };
        let same_idc = ParentFeatures {
            idc: Some("a"),
            ..parent()
        };
        assert!(score(&same_idc, &child) > score(&parent(), &child));
    }

    #[test]
    fn pieces_held_count() {
        assert_eq!(pieces_score(0, 0), 0.0);
        assert_eq!(pieces_score(5, 10), 0.5);
        assert_eq!(pieces_score(50, 10), 1.0);
    }

    #[test]
    fn bad_parent_by_costs() {
        let ms = Duration::from_millis;
        assert!(!is_bad_by_costs(&[]));
        assert!(!is_bad_by_costs(&[ms(100_000)]));
        assert!(!is_bad_by_costs(&[ms(10), ms(190)]));
        assert!(is_bad_by_costs(&[ms(10), ms(201)]));
        assert!(is_bad_by_costs(&[ms(10), ms(10), ms(10), ms(300)]));
        // Full window: mean + 3 sigma.
        let mut costs: Vec<Duration> = (0..PIECE_COST_WINDOW - 1)
            .map(|i| ms(100 + (i as u64 % 2) * 20))
            .collect();
        costs.push(ms(135));
        assert!(!is_bad_by_costs(&costs));
        costs.pop();
        costs.push(ms(200));
        assert!(is_bad_by_costs(&costs));
    }

    /// Simulates the scheduler's loop: each child takes the top `limit` parents and every
    /// assignment reserves bandwidth on the chosen parent. Children must spread evenly.
    fn simulate(parents: usize, children: usize, limit: usize) -> Vec<u32> {
        let mut pool: Vec<ParentFeatures> = (0..parents).map(|_| parent()).collect();
        let child = ChildFeatures::default();
        for _ in 0..children {
            for i in rank(&pool, &child, limit) {
                pool[i].active_children += 1;
                pool[i].assigned_tx_bandwidth += edge_bandwidth(4 << 20, 8);
            }
        }
        pool.iter().map(|p| p.active_children).collect()
    }

    #[test]
    fn assignments_spread_instead_of_piling_on_top_parent() {
        for (parents, children, limit) in [(4, 12, 1), (5, 20, 3), (15, 40, 3), (3, 9, 3)] {
            let load = simulate(parents, children, limit);
            let max = load.iter().copied().max().unwrap_or(0);
            let min = load.iter().copied().min().unwrap_or(0);
            assert!(
                max - min <= 1,
                "{parents}x{children} limit {limit}: {load:?}"
            );
            assert_eq!(
                load.iter().sum::<u32>() as usize,
                children * limit.min(parents)
            );
        }
    }

    #[test]
    fn a_slow_uplink_gets_fewer_children_but_is_still_used() {
        // Two hosts upload at 100 Mbit/s, two at 10 (measured from piece reports).
        let mbit = |m: u64| ParentFeatures {
            measured_upload: Some(m * 1_000_000),
            ..parent()
        };
        let mut pool = vec![mbit(100), mbit(10), mbit(100), mbit(10)];
        let child = ChildFeatures::default();
        for _ in 0..12 {
            for i in rank(&pool, &child, 1) {
                pool[i].active_children += 1;
                pool[i].assigned_tx_bandwidth += edge_bandwidth(4 << 20, 8);
            }
        }
        let load: Vec<u32> = pool.iter().map(|p| p.active_children).collect();
        assert!(load[0] >= 5 && load[2] >= 5, "{load:?}");
        assert!(load[1] <= 1 && load[3] <= 1, "{load:?}");
        // A host nobody has measured yet is not held back.
        assert_eq!(upload_factor(None, Some(100)), 1.0);
        assert_eq!(upload_factor(Some(0), Some(100)), MIN_UPLOAD_FACTOR);
    }

    #[test]
    fn spreading_holds_with_unequal_bandwidth() {
        // A parent with twice the uplink takes more children, but the small ones are used too.
        let mut pool = vec![
            ParentFeatures {
                max_tx_bandwidth: 20 * GBPS,
                ..parent()
            },
            parent(),
            parent(),
        ];
        let child = ChildFeatures::default();
        for _ in 0..12 {
            for i in rank(&pool, &child, 1) {
                pool[i].active_children += 1;
                pool[i].assigned_tx_bandwidth += edge_bandwidth(4 << 20, 8);
            }
        }
        assert!(pool.iter().all(|p| p.active_children >= 3), "{pool:?}");
        assert!(pool[0].active_children >= pool[1].active_children);
    }
}
