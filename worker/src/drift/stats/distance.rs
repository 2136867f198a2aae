//! The distances: normed Wasserstein on sorted samples, Jensen-Shannon and PSI on bucket shares.

use super::binning::Shares;
use super::sorted::{merged_steps, Sum};

/// Evidently's floor on the reference's standard deviation, so a constant column does not
/// divide by zero (`wasserstein_distance_norm.py`).
const MIN_NORM: f64 = 0.001;

/// `scipy.stats.wasserstein_distance(reference, current) / max(np.std(reference), 0.001)`, as
/// Evidently's `wasserstein` test computes it, for two sorted, non-empty samples.
pub fn wasserstein_normed(reference: &[f64], current: &[f64]) -> f64 {
    wasserstein(reference, current) / std_population(reference).max(MIN_NORM)
}

/// `scipy.stats.wasserstein_distance`: the area between the two empirical CDFs.
pub fn wasserstein(a: &[f64], b: &[f64]) -> f64 {
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    let mut area = Sum::default();
    let mut steps = merged_steps(a, b).peekable();
    while let Some(step) = steps.next() {
        let Some(next) = steps.peek() else { break };
        let gap = step.below_a as f64 / n1 - step.below_b as f64 / n2;
        area.add(gap.abs() * (next.value - step.value));
    }
    area.total()
}

/// `numpy.std(values)` (`ddof=0`).
pub fn std_population(values: &[f64]) -> f64 {
    let n = values.len() as f64;
    let mean = values.iter().copied().collect::<Sum>().total() / n;
    let squares: Sum = values.iter().map(|x| (x - mean) * (x - mean)).collect();
    (squares.total() / n).sqrt()
}

/// `scipy.spatial.distance.jensenshannon(reference, current)` (natural logarithm) on bucket
/// shares, without `feel_zeroes` (Evidently's `jensenshannon.py`).
pub fn jensen_shannon(shares: &Shares) -> f64 {
    let p_total = shares.reference.iter().copied().collect::<Sum>().total();
    let q_total = shares.current.iter().copied().collect::<Sum>().total();
    let mut left = Sum::default();
    let mut right = Sum::default();
    for (p, q) in shares.reference.iter().zip(&shares.current) {
        let (p, q) = (p / p_total, q / q_total);
        let m = (p + q) / 2.0;
        left.add(rel_entr(p, m));
        right.add(rel_entr(q, m));
    }
    // A sum that rounds below zero would make scipy's square root NaN; it means 0.
    ((left.total() + right.total()) / 2.0).max(0.0).sqrt()
}

/// `scipy.special.rel_entr(x, y)`.
fn rel_entr(x: f64, y: f64) -> f64 {
    if x > 0.0 && y > 0.0 {
        x * (x / y).ln()
    } else if x == 0.0 && y >= 0.0 {
        0.0
    } else {
        f64::INFINITY
    }
}

/// Evidently's PSI (`psi.py`): `Σ (r - c) ln(r / c)` over the shares after `feel_zeroes`.
pub fn psi(shares: &Shares) -> f64 {
    let mut filled = shares.clone();
    filled.fill_zeroes();
    filled
        .reference
        .iter()
        .zip(&filled.current)
        .map(|(r, c)| (r - c) * (r / c).ln())
        .collect::<Sum>()
        .total()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: f64, want: f64) {
        assert!(
            (got - want).abs() <= 1e-12 * want.abs().max(1.0),
            "got {got:e}, want {want:e}"
        );
    }

    #[test]
    fn wasserstein_matches_scipy() {
        // scipy.stats.wasserstein_distance([0, 1, 3], [5, 6, 8]) == 5.0
        close(wasserstein(&[0.0, 1.0, 3.0], &[5.0, 6.0, 8.0]), 5.0);
        // ... ([1, 2, 2, 7], [2, 3]) == 1.5
        close(wasserstein(&[1.0, 2.0, 2.0, 7.0], &[2.0, 3.0]), 1.5);
        close(std_population(&[1.0, 2.0, 3.0, 4.0]), 1.118033988749895);
        // Constant reference: normed by 0.001.
        close(wasserstein_normed(&[2.0, 2.0], &[2.0, 3.0]), 0.5 / 0.001);
    }

    #[test]
    fn jensen_shannon_matches_scipy() {
        // scipy.spatial.distance.jensenshannon([0.5, 0.5, 0], [0, 0.5, 0.5])
        let shares = Shares {
            reference: vec![0.5, 0.5, 0.0],
            current: vec![0.0, 0.5, 0.5],
        };
        close(jensen_shannon(&shares), 0.5887050112577373);
        let same = Shares {
            reference: vec![0.25, 0.75],
            current: vec![0.25, 0.75],
        };
        assert_eq!(jensen_shannon(&same), 0.0);
    }

    #[test]
    fn psi_fills_empty_buckets() {
        let shares = Shares {
            reference: vec![0.5, 0.5, 0.0],
            current: vec![0.0, 0.5, 0.5],
        };
        // (0.5 - 0.0001) ln(0.5 / 0.0001) twice.
        close(psi(&shares), 2.0 * (0.5 - 0.0001) * (0.5f64 / 0.0001).ln());
    }
}
