//! `scipy.stats.ks_2samp(reference, current)` with its defaults (two-sided, `method='auto'`),
//! ported from scipy 1.17 `scipy/stats/_stats_py.py` (`ks_2samp`, `_attempt_exact_2kssamp`,
//! `_compute_prob_outside_square`) and `scipy/stats/_stats_pythran.py`
//! (`_compute_outer_prob_inside_method`).
//!
//! `auto` means: the exact p-value when both samples have at most 10 000 values, unless that
//! computation leaves [0, 1]; otherwise `kstwo.sf(d, round(m n / (m + n)))`.

use super::kolmogorov::kstwo_sf;
use super::sorted::merged_steps;

/// Samples up to this size get the exact p-value (`MAX_AUTO_N`).
const MAX_EXACT_N: usize = 10_000;

/// The two-sided KS statistic of two sorted samples, as `ks_2samp` computes it.
pub fn statistic(reference: &[f64], current: &[f64]) -> f64 {
    let (n1, n2) = (reference.len() as f64, current.len() as f64);
    let mut max_diff = f64::NEG_INFINITY;
    let mut min_diff = f64::INFINITY;
    for step in merged_steps(reference, current) {
        let diff = step.below_a as f64 / n1 - step.below_b as f64 / n2;
        max_diff = max_diff.max(diff);
        min_diff = min_diff.min(diff);
    }
    let min_s = (-min_diff).clamp(0.0, 1.0);
    if min_s > max_diff {
        min_s
    } else {
        max_diff
    }
}

/// The p-value of `ks_2samp` for two sorted, non-empty samples.
pub fn p_value(reference: &[f64], current: &[f64]) -> f64 {
    let (n1, n2) = (reference.len(), current.len());
    let mut d = statistic(reference, current);
    if n1.max(n2) <= MAX_EXACT_N {
        match exact(n1 as u64, n2 as u64, d) {
            Exact::Done(p) => return p.clamp(0.0, 1.0),
            Exact::Failed(rounded_d) => d = rounded_d,
        }
    }
    let (m, n) = (n1.max(n2) as f64, n1.min(n2) as f64);
    let en = m * n / (m + n);
    kstwo_sf(en.round_ties_even() as u64, d).clamp(0.0, 1.0)
}

/// What `_attempt_exact_2kssamp` returns.
enum Exact {
    Done(f64),
    /// Outside [0, 1]: scipy falls back to the asymptotic p-value with this (rounded) `d`.
    Failed(f64),
}

fn exact(n1: u64, n2: u64, d: f64) -> Exact {
    let g = gcd(n1, n2);
    let lcm = (n1 / g) * n2;
    let h = (d * lcm as f64).round_ties_even() as u64;
    let d = h as f64 / lcm as f64;
    if h == 0 {
        return Exact::Done(1.0);
    }
    let prob = if n1 == n2 {
        prob_outside_square(n1, h)
    } else {
        outer_prob_inside(n1, n2, g, h)
    };
    if (0.0..=1.0).contains(&prob) {
        Exact::Done(prob)
    } else {
        Exact::Failed(d)
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// `_compute_prob_outside_square(n, h)`: `Pr(D_{n,n} >= h/n)`.
fn prob_outside_square(n: u64, h: u64) -> f64 {
    let (n, h) = (n as i64, h as i64);
    let mut p = 0.0;
    let mut k = n / h;
    while k >= 0 {
        let mut p1 = 1.0;
        for j in 0..h {
            p1 = (n - k * h - j) as f64 * p1 / (n + k * h + j + 1) as f64;
        }
        p = p1 * (1.0 - p);
        k -= 1;
    }
    2.0 * p
}

/// `_compute_outer_prob_inside_method(m, n, g, h)`: the share of lattice paths from (0, 0) to
/// (m, n) that leave the band `|x/m - y/n| < h / lcm(m, n)` (Hodges; Viehmann's recursion).
fn outer_prob_inside(m: u64, n: u64, g: u64, h: u64) -> f64 {
    let (m, n) = if m < n { (n, m) } else { (m, n) };
    let (m, n, g, h) = (m as i64, n as i64, g as i64, h as i64);
    let (mg, ng) = (m / g, n / g);
    let hf = h as f64;
    let mut minj: i64 = 0;
    let mut maxj: i64 = ((hf / mg as f64).ceil() as i64).min(n + 1);
    let mut curlen = maxj - minj;
    let len_a = (2 * maxj + 2).min(n + 1) as usize;
    let mut a = vec![1.0f64; len_a];
    for cell in a.iter_mut().take(maxj as usize) {
        *cell = 0.0;
    }
    for i in 1..=m {
        let (lastminj, lastlen) = (minj, curlen);
        minj = ((((ng * i - h) as f64 / mg as f64).floor() as i64) + 1).max(0);
        minj = minj.min(n);
        maxj = (((ng * i + h) as f64 / mg as f64).ceil() as i64).min(n + 1);
        if maxj <= minj {
            return 1.0;
        }
        let mut val = if minj == 0 { 0.0 } else { 1.0 };
        for jj in 0..(maxj - minj) {
            let j = jj + minj;
            let Some(prev) = a.get((jj + minj - lastminj) as usize).copied() else {
                return f64::NAN;
            };
            val = (prev * i as f64 + val * j as f64) / (i + j) as f64;
            let Some(cell) = a.get_mut(jj as usize) else {
                return f64::NAN;
            };
            *cell = val;
        }
        curlen = maxj - minj;
        if lastlen > curlen {
            let from = (maxj - minj) as usize;
            let to = (from + (lastlen - curlen) as usize).min(a.len());
            for cell in a.iter_mut().take(to).skip(from) {
                *cell = 1.0;
            }
        }
    }
    a.get((maxj - minj - 1) as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: f64, want: f64) {
        assert!((got - want).abs() <= 1e-12, "got {got:e}, want {want:e}");
    }

    #[test]
    fn exact_p_values_match_scipy() {
        // scipy.stats.ks_2samp([1..5], [3..8]) and friends, exact mode.
        close(
            p_value(&[1.0, 2.0, 3.0, 4.0, 5.0], &[3.0, 4.0, 5.0, 6.0, 7.0, 8.0]),
            0.35714285714285715,
        );
        close(p_value(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]), 0.1);
        close(p_value(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]), 1.0);
        close(p_value(&[0.0, 1.0, 1.0, 2.0], &[0.5, 1.0, 1.5, 2.5]), 1.0);
    }

    #[test]
    fn statistic_handles_ties_like_searchsorted_right() {
        close(statistic(&[1.0, 1.0, 2.0], &[1.0, 2.0, 2.0]), 1.0 / 3.0);
        close(statistic(&[1.0], &[2.0]), 1.0);
    }
}
