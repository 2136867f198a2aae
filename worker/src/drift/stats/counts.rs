//! The tests on value counts: Evidently's chi-square (`chisquare_stattest.py`) and its two-sample
//! z-test for proportions (`z_stattest.py`).
//!
//! Both take one `(reference count, current count)` pair per value seen in either file.

use super::sorted::Sum;
use super::special::{chi2_sf, ndtr};

/// The p-value of `scipy.stats.chisquare(current counts, reference counts * n_cur / n_ref)`.
///
/// A value only the current file has expects 0 rows: scipy's statistic is then infinite and
/// the p-value 0. With a single value in both files scipy answers NaN (no degrees of freedom);
/// this answers 1, the two files being the same.
pub fn chi_square(counts: &[(u64, u64)], n_ref: u64, n_cur: u64) -> f64 {
    if counts.len() <= 1 {
        return 1.0;
    }
    let k_norm = n_cur as f64 / n_ref as f64;
    let statistic: Sum = counts
        .iter()
        .map(|(r, c)| {
            let expected = *r as f64 * k_norm;
            let observed = *c as f64;
            (observed - expected).powi(2) / expected
        })
        .collect();
    let statistic = statistic.total();
    if statistic.is_nan() {
        return 1.0;
    }
    chi2_sf((counts.len() - 1) as f64, statistic)
}

/// Evidently's z-test p-value, `2 (1 - Φ(|z|))`, for at most two values: rows equal to the
/// first value (in sort order, given first) count as 0, the others as 1.
pub fn z_test(counts: &[(u64, u64)], n_ref: u64, n_cur: u64) -> f64 {
    if counts.len() <= 1 {
        // One value, the same in both files.
        return 1.0;
    }
    let (first_ref, first_cur) = counts[0];
    let (n1, n2) = (n_ref as f64, n_cur as f64);
    let p1 = (n_ref - first_ref) as f64 / n1;
    let p2 = (n_cur - first_cur) as f64 / n2;
    let pooled = (p1 * n1 + p2 * n2) / (n1 + n2);
    let z = (p1 - p2) / (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    2.0 * (1.0 - ndtr(z.abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: f64, want: f64) {
        assert!((got - want).abs() <= 1e-12, "got {got:e}, want {want:e}");
    }

    #[test]
    fn chi_square_matches_scipy() {
        // scipy.stats.chisquare([30, 50, 20], [40 * 100/80, 25 * 100/80, 15 * 100/80])
        close(
            chi_square(&[(40, 30), (25, 50), (15, 20)], 80, 100),
            6.336070607455961e-05,
        );
        // A value the reference never had.
        assert_eq!(chi_square(&[(10, 5), (0, 5)], 10, 10), 0.0);
        assert_eq!(chi_square(&[(10, 10)], 10, 10), 1.0);
    }

    #[test]
    fn z_test_matches_evidently() {
        // 2 * (1 - norm.cdf(|z|)) for ref 30/70 ones, cur 45/55 ones.
        close(z_test(&[(70, 55), (30, 45)], 100, 100), 0.02845973691631065);
        assert_eq!(z_test(&[(5, 7)], 5, 7), 1.0);
    }
}
