//! The pieces of NSGA-II (Deb et al. 2002) the search needs, over measured points: the
//! constrained dominance relation, fast non-dominated sorting, crowding distance, and the
//! seeded variation operators on per-group genomes. Small on purpose: the search owns the
//! loop (ask, measure through the journal, tell), which the optimisation crates we looked at
//! do not allow (docs/architecture.md, "The search").

use rand::Rng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;

/// One measured point: objectives to minimise, and how far it is from feasible (0: feasible).
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub objectives: Vec<f64>,
    pub violation: f64,
}

/// Deb's constrained dominance: a feasible point beats an infeasible one, the less
/// infeasible of two infeasible points wins, and two feasible points compare by Pareto
/// dominance.
pub fn dominates(a: &Point, b: &Point) -> bool {
    match (a.violation > 0.0, b.violation > 0.0) {
        (false, true) => true,
        (true, false) => false,
        (true, true) => a.violation < b.violation,
        (false, false) => a.objectives.iter().zip(&b.objectives).all(|(x, y)| x <= y) && a.objectives.iter().zip(&b.objectives).any(|(x, y)| x < y),
    }
}

/// Fronts by rank (indices into `points`), the first being the non-dominated set.
pub fn fronts(points: &[Point]) -> Vec<Vec<usize>> {
    let n = points.len();
    let mut dominated_by = vec![0usize; n];
    let mut beats: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in 0..n {
        for j in 0..n {
            if i != j && dominates(&points[i], &points[j]) {
                beats[i].push(j);
            } else if i != j && dominates(&points[j], &points[i]) {
                dominated_by[i] += 1;
            }
        }
    }
    let mut out = Vec::new();
    let mut current: Vec<usize> = (0..n).filter(|&i| dominated_by[i] == 0).collect();
    while !current.is_empty() {
        let mut next = Vec::new();
        for &i in &current {
            for &j in &beats[i] {
                dominated_by[j] -= 1;
                if dominated_by[j] == 0 {
                    next.push(j);
                }
            }
        }
        next.sort_unstable();
        out.push(std::mem::replace(&mut current, next));
    }
    out
}

/// Crowding distance of each member of one front (same order as `front`); the extremes of
/// every objective get infinity.
pub fn crowding(points: &[Point], front: &[usize]) -> Vec<f64> {
    let mut d = vec![0.0; front.len()];
    let Some(first) = front.first() else { return d };
    for k in 0..points[*first].objectives.len() {
        let mut order: Vec<usize> = (0..front.len()).collect();
        order.sort_by(|&a, &b| points[front[a]].objectives[k].total_cmp(&points[front[b]].objectives[k]).then(front[a].cmp(&front[b])));
        let (lo, hi) = (points[front[order[0]]].objectives[k], points[front[order[order.len() - 1]]].objectives[k]);
        d[order[0]] = f64::INFINITY;
        d[order[order.len() - 1]] = f64::INFINITY;
        if hi > lo {
            for w in 1..order.len().saturating_sub(1) {
                let gap = points[front[order[w + 1]]].objectives[k] - points[front[order[w - 1]]].objectives[k];
                d[order[w]] += gap / (hi - lo);
            }
        }
    }
    d
}

/// The `n` survivors of `points`: whole fronts by rank, the last one cut by crowding
/// distance (ties by index, so the choice is deterministic). Returns (index, rank, crowding).
pub fn select(points: &[Point], n: usize) -> Vec<(usize, usize, f64)> {
    let mut out = Vec::new();
    for (rank, front) in fronts(points).into_iter().enumerate() {
        let d = crowding(points, &front);
        let mut members: Vec<(usize, usize, f64)> = front.iter().zip(d).map(|(&i, c)| (i, rank, c)).collect();
        if out.len() + members.len() > n {
            members.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)));
            members.truncate(n - out.len());
        }
        out.extend(members);
        if out.len() >= n {
            break;
        }
    }
    out
}

/// Binary tournament by (rank, crowding) among the survivors.
pub fn tournament<'s>(rng: &mut ChaCha8Rng, pool: &'s [(usize, usize, f64)]) -> &'s (usize, usize, f64) {
    let a = &pool[rng.random_range(0..pool.len())];
    let b = &pool[rng.random_range(0..pool.len())];
    if (a.1, -a.2, a.0) <= (b.1, -b.2, b.0) { a } else { b }
}

/// Uniform crossover, then each gene mutated with probability 1/len to another allowed value.
pub fn offspring(rng: &mut ChaCha8Rng, a: &[u8], b: &[u8], allowed: &[Vec<u8>]) -> Vec<u8> {
    let mut child: Vec<u8> = a.iter().zip(b).map(|(&x, &y)| if rng.random_bool(0.5) { x } else { y }).collect();
    let p = 1.0 / child.len().max(1) as f64;
    for (g, gene) in child.iter_mut().enumerate() {
        if allowed[g].len() > 1 && rng.random_bool(p.min(1.0)) {
            let others: Vec<u8> = allowed[g].iter().copied().filter(|v| v != gene).collect();
            if let Some(v) = others.choose(rng) {
                *gene = *v;
            }
        }
    }
    child
}

/// Spearman's rank correlation (average ranks for ties); `None` under three pairs or when
/// either side is constant.
pub fn spearman(xs: &[f64], ys: &[f64]) -> Option<f64> {
    if xs.len() < 3 || xs.len() != ys.len() {
        return None;
    }
    let rank = |v: &[f64]| -> Vec<f64> {
        let mut order: Vec<usize> = (0..v.len()).collect();
        order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
        let mut r = vec![0.0; v.len()];
        let mut i = 0;
        while i < order.len() {
            let mut j = i;
            while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
                j += 1;
            }
            for &k in &order[i..=j] {
                r[k] = (i + j) as f64 / 2.0;
            }
            i = j + 1;
        }
        r
    };
    let (rx, ry) = (rank(xs), rank(ys));
    let mean = (xs.len() - 1) as f64 / 2.0;
    let cov: f64 = rx.iter().zip(&ry).map(|(a, b)| (a - mean) * (b - mean)).sum();
    let vx: f64 = rx.iter().map(|a| (a - mean).powi(2)).sum();
    let vy: f64 = ry.iter().map(|b| (b - mean).powi(2)).sum();
    (vx > 0.0 && vy > 0.0).then(|| cov / (vx * vy).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn p(o: &[f64], v: f64) -> Point {
        Point { objectives: o.to_vec(), violation: v }
    }

    #[test]
    fn constrained_dominance_puts_feasible_first() {
        assert!(dominates(&p(&[1.0, 1.0], 0.0), &p(&[2.0, 1.0], 0.0)));
        assert!(!dominates(&p(&[1.0, 1.0], 0.0), &p(&[1.0, 1.0], 0.0)), "equal points do not dominate");
        assert!(!dominates(&p(&[1.0, 2.0], 0.0), &p(&[2.0, 1.0], 0.0)), "a trade-off");
        assert!(dominates(&p(&[9.0, 9.0], 0.0), &p(&[0.0, 0.0], 0.1)), "feasible beats infeasible");
        assert!(dominates(&p(&[9.0, 9.0], 0.1), &p(&[0.0, 0.0], 0.2)), "less infeasible wins");
    }

    #[test]
    fn fronts_and_crowding_match_a_hand_worked_example() {
        // (1,4) (2,2) (4,1) are the front; (3,3) is dominated by (2,2); (5,5) by everyone.
        let pts = vec![p(&[1.0, 4.0], 0.0), p(&[3.0, 3.0], 0.0), p(&[2.0, 2.0], 0.0), p(&[4.0, 1.0], 0.0), p(&[5.0, 5.0], 0.0)];
        assert_eq!(fronts(&pts), vec![vec![0, 2, 3], vec![1], vec![4]]);
        let d = crowding(&pts, &[0, 2, 3]);
        assert!(d[0].is_infinite() && d[2].is_infinite());
        // (4-1)/3 + (4-1)/3 for the middle point.
        assert!((d[1] - 2.0).abs() < 1e-12, "{d:?}");
        let s = select(&pts, 4);
        assert_eq!(s.iter().map(|x| x.0).collect::<Vec<_>>(), vec![0, 2, 3, 1]);
    }

    #[test]
    fn variation_is_seeded_and_respects_the_allowed_values() {
        let allowed = vec![vec![0, 1, 2], vec![1], vec![0, 2]];
        let run = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..50).map(|_| offspring(&mut rng, &[0, 1, 2], &[2, 1, 0], &allowed)).collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
        for child in run(3) {
            for (g, v) in child.iter().enumerate() {
                assert!(allowed[g].contains(v), "{child:?}");
            }
        }
    }

    #[test]
    fn spearman_matches_known_values() {
        assert_eq!(spearman(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0, 30.0, 40.0]), Some(1.0));
        assert_eq!(spearman(&[1.0, 2.0, 3.0, 4.0], &[4.0, 3.0, 2.0, 1.0]), Some(-1.0));
        // scipy.stats.spearmanr([1,2,3,4,5],[2,1,4,3,5]) = 0.8
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[2.0, 1.0, 4.0, 3.0, 5.0]).unwrap() - 0.8).abs() < 1e-12);
        assert_eq!(spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
    }
}
