//! Evidently's `get_binned_data` (`evidently/legacy/calculations/stattests/utils.py`): the
//! shares of each file in common buckets, which Jensen-Shannon and PSI compare.
//!
//! A numeric column whose reference has more than 20 distinct values is cut into
//! `numpy.histogram_bin_edges(reference + current, bins="sturges")`; anything else (categories,
//! and numbers with few values) gets one bucket per value seen in either file. Note that
//! Evidently bins PSI the same way: on both files together, not on reference quantiles.

use super::sorted::{distinct, merged_steps};

/// A numeric reference with more distinct values than this is binned as a histogram.
const HISTOGRAM_ABOVE_DISTINCT: usize = 20;

/// The share of each file's rows in each bucket, in the same bucket order.
#[derive(Debug, Clone, PartialEq)]
pub struct Shares {
    /// Reference rows in the bucket / reference rows.
    pub reference: Vec<f64>,
    /// Current rows in the bucket / current rows.
    pub current: Vec<f64>,
}

impl Shares {
    /// Shares from per-bucket counts.
    pub fn from_counts(
        counts: impl IntoIterator<Item = (u64, u64)>,
        n_ref: u64,
        n_cur: u64,
    ) -> Shares {
        let (reference, current) = counts
            .into_iter()
            .map(|(r, c)| (r as f64 / n_ref as f64, c as f64 / n_cur as f64))
            .unzip();
        Shares { reference, current }
    }

    /// Evidently's `feel_zeroes`: an empty bucket gets a millionth of the smallest non-empty
    /// share when that is at most 0.0001, else 0.0001 (so PSI's logarithm stays finite).
    pub fn fill_zeroes(&mut self) {
        fill_zeroes(&mut self.reference);
        fill_zeroes(&mut self.current);
    }
}

fn fill_zeroes(shares: &mut [f64]) {
    let smallest = shares
        .iter()
        .copied()
        .filter(|s| *s != 0.0)
        .fold(f64::INFINITY, f64::min);
    if smallest.is_infinite() {
        return;
    }
    let fill = if smallest <= 0.0001 {
        smallest / 1e6
    } else {
        0.0001
    };
    shares
        .iter_mut()
        .filter(|s| **s == 0.0)
        .for_each(|s| *s = fill);
}

/// The buckets of two sorted numeric samples, as `get_binned_data` makes them for a numeric
/// column (without `feel_zeroes`).
pub fn numeric(reference: &[f64], current: &[f64]) -> Shares {
    let (n_ref, n_cur) = (reference.len() as u64, current.len() as u64);
    if distinct(reference) <= HISTOGRAM_ABOVE_DISTINCT {
        let counts = merged_steps(reference, current).map(|s| (s.in_a, s.in_b));
        return Shares::from_counts(counts, n_ref, n_cur);
    }
    let edges = sturges_edges(reference, current);
    Shares::from_counts(
        histogram(reference, &edges)
            .into_iter()
            .zip(histogram(current, &edges)),
        n_ref,
        n_cur,
    )
}

/// `numpy.histogram_bin_edges(np.concatenate([a, b]), bins="sturges")` for sorted `a`, `b`.
fn sturges_edges(a: &[f64], b: &[f64]) -> Vec<f64> {
    let first = [a.first(), b.first()]
        .into_iter()
        .flatten()
        .copied()
        .fold(f64::INFINITY, f64::min);
    let last = [a.last(), b.last()]
        .into_iter()
        .flatten()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    let size = (a.len() + b.len()) as f64;
    let ptp = last - first;
    let (first, last) = if first == last {
        (first - 0.5, last + 0.5)
    } else {
        (first, last)
    };
    let width = ptp / (size.log2() + 1.0);
    let bins = if width != 0.0 {
        ((last - first) / width).ceil() as usize
    } else {
        1
    };
    // numpy.linspace: i * step + start, and the last edge exactly `last`.
    let step = (last - first) / bins as f64;
    let mut edges: Vec<f64> = (0..=bins).map(|i| i as f64 * step + first).collect();
    edges[bins] = last;
    edges
}

/// `numpy.histogram(values, edges)[0]` for sorted `values`: bucket `i` holds
/// `edges[i] <= x < edges[i + 1]`, the last bucket also its right edge.
fn histogram(values: &[f64], edges: &[f64]) -> Vec<u64> {
    let below = |edge: f64| values.partition_point(|x| *x < edge);
    let mut cumulative: Vec<usize> = edges[..edges.len() - 1].iter().map(|e| below(*e)).collect();
    let last = edges[edges.len() - 1];
    cumulative.push(values.partition_point(|x| *x <= last));
    cumulative
        .windows(2)
        .map(|w| (w[1] - w[0]) as u64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_values_get_one_bucket_each() {
        let shares = numeric(&[1.0, 1.0, 2.0, 2.0], &[2.0, 3.0]);
        assert_eq!(shares.reference, vec![0.5, 0.5, 0.0]);
        assert_eq!(shares.current, vec![0.0, 0.5, 0.5]);
    }

    #[test]
    fn sturges_edges_match_numpy() {
        // numpy.histogram_bin_edges(np.arange(30.0), bins="sturges")
        let a: Vec<f64> = (0..20).map(f64::from).collect();
        let b: Vec<f64> = (20..30).map(f64::from).collect();
        let edges = sturges_edges(&a, &b);
        assert_eq!(edges.len(), 7);
        assert_eq!(edges[0], 0.0);
        assert_eq!(edges[1], 4.833333333333333);
        assert_eq!(edges[6], 29.0);
        assert_eq!(histogram(&a, &edges), vec![5, 5, 5, 5, 0, 0]);
        assert_eq!(histogram(&b, &edges), vec![0, 0, 0, 0, 5, 5]);
    }

    #[test]
    fn zeroes_are_filled_like_evidently() {
        let mut shares = Shares {
            reference: vec![0.5, 0.5, 0.0],
            current: vec![0.99995, 0.00005, 0.0],
        };
        shares.fill_zeroes();
        assert_eq!(shares.reference[2], 0.0001);
        assert_eq!(shares.current[2], 0.00005 / 1e6);
    }
}
