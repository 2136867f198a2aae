//! Walking two sorted samples together: the empirical CDFs at every distinct value, which is
//! what numpy's `searchsorted(..., side='right')` gives the scipy functions, without building
//! the concatenated array they sort.

/// One distinct value of the union of two sorted samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// The value.
    pub value: f64,
    /// How many times it occurs in the first sample.
    pub in_a: u64,
    /// How many times it occurs in the second.
    pub in_b: u64,
    /// How many values of the first sample are at most `value`.
    pub below_a: usize,
    /// How many values of the second sample are at most `value`.
    pub below_b: usize,
}

/// The distinct values of `a` and `b` (each sorted ascending, no NaN) in ascending order.
pub fn merged_steps<'a>(a: &'a [f64], b: &'a [f64]) -> MergedSteps<'a> {
    MergedSteps { a, b, i: 0, j: 0 }
}

/// Iterator of [`merged_steps`].
pub struct MergedSteps<'a> {
    a: &'a [f64],
    b: &'a [f64],
    i: usize,
    j: usize,
}

impl Iterator for MergedSteps<'_> {
    type Item = Step;

    fn next(&mut self) -> Option<Step> {
        let value = match (self.a.get(self.i), self.b.get(self.j)) {
            (None, None) => return None,
            (Some(x), None) | (None, Some(x)) => *x,
            (Some(x), Some(y)) => x.min(*y),
        };
        let (start_a, start_b) = (self.i, self.j);
        while self.a.get(self.i) == Some(&value) {
            self.i += 1;
        }
        while self.b.get(self.j) == Some(&value) {
            self.j += 1;
        }
        Some(Step {
            value,
            in_a: (self.i - start_a) as u64,
            in_b: (self.j - start_b) as u64,
            below_a: self.i,
            below_b: self.j,
        })
    }
}

/// How many distinct values the sorted sample `a` has.
pub fn distinct(a: &[f64]) -> usize {
    if a.is_empty() {
        return 0;
    }
    1 + a.windows(2).filter(|w| w[0] != w[1]).count()
}

/// A sum that keeps the digits a long plain sum of mixed magnitudes loses (Neumaier).
#[derive(Debug, Default, Clone, Copy)]
pub struct Sum {
    sum: f64,
    compensation: f64,
}

impl Sum {
    /// Adds `x`.
    pub fn add(&mut self, x: f64) {
        let next = self.sum + x;
        if !next.is_finite() {
            // An infinite term (chi-square's count where none was expected) makes the sum
            // infinite; the compensation would turn it into NaN (inf - inf).
            self.sum = next;
            return;
        }
        self.compensation += if self.sum.abs() >= x.abs() {
            (self.sum - next) + x
        } else {
            (x - next) + self.sum
        };
        self.sum = next;
    }

    /// The total.
    pub fn total(&self) -> f64 {
        self.sum + self.compensation
    }
}

impl FromIterator<f64> for Sum {
    fn from_iter<I: IntoIterator<Item = f64>>(iter: I) -> Sum {
        let mut sum = Sum::default();
        iter.into_iter().for_each(|x| sum.add(x));
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_count_values_at_or_below() {
        let steps: Vec<Step> = merged_steps(&[1.0, 1.0, 3.0], &[1.0, 2.0]).collect();
        assert_eq!(
            steps,
            vec![
                Step {
                    value: 1.0,
                    in_a: 2,
                    in_b: 1,
                    below_a: 2,
                    below_b: 1
                },
                Step {
                    value: 2.0,
                    in_a: 0,
                    in_b: 1,
                    below_a: 2,
                    below_b: 2
                },
                Step {
                    value: 3.0,
                    in_a: 1,
                    in_b: 0,
                    below_a: 3,
                    below_b: 2
                },
            ]
        );
        assert_eq!(distinct(&[1.0, 1.0, 2.0, 5.0, 5.0]), 3);
        assert_eq!(distinct(&[]), 0);
    }

    #[test]
    fn compensated_sum_keeps_small_terms() {
        let sum: Sum = [1e16, 1.0, -1e16, 1.0].into_iter().collect();
        assert_eq!(sum.total(), 2.0);
    }

    #[test]
    fn compensated_sum_stays_infinite() {
        let sum: Sum = [2.5, f64::INFINITY, 1.0].into_iter().collect();
        assert_eq!(sum.total(), f64::INFINITY);
    }
}
