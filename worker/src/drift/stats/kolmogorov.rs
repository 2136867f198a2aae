//! The distribution of the one-sample two-sided Kolmogorov-Smirnov statistic, `scipy.stats.kstwo`,
//! which `ks_2samp` uses for its asymptotic p-value.
//!
//! A port of scipy's `scipy/stats/_ksstats.py` (`_kolmogn` and the methods it picks between,
//! after Simard and L'Ecuyer 2011) and of the one-sided `smirnov` survival function it calls
//! (`xsf/cephes/kolmogorov.h`), in `f64` where those use double-double or long double: the
//! results agree with scipy to about 1e-13.

use super::sorted::Sum;

/// `2^128` and its inverse: the scaling steps scipy uses to keep products in range.
const EP128: f64 = f64::from_bits(0x47F0_0000_0000_0000);
const EM128: f64 = f64::from_bits(0x37F0_0000_0000_0000);
const E128: i32 = 128;

/// `log(2^-1075)`: below this `exp` is 0 (Cephes' `MINLOG`).
const MINLOG: f64 = -745.133_219_101_941_2;

/// `scipy.stats.kstwo.sf(x, n)`: the probability that the statistic of a sample of `n` is at
/// least `x`.
pub fn kstwo_sf(n: u64, x: f64) -> f64 {
    // rv_continuous: 1 at or below the support's lower end 0.5/n, 0 at or above 1.
    if x <= 0.5 / n as f64 {
        return 1.0;
    }
    if x >= 1.0 {
        return 0.0;
    }
    kolmogn_sf(n, x).clamp(0.0, 1.0)
}

/// `_kolmogn(n, x, cdf=False)`.
fn kolmogn_sf(n: u64, x: f64) -> f64 {
    let nf = n as f64;
    let t = nf * x;
    if t <= 1.0 {
        // Ruben-Gambino: 1/2n <= x <= 1/n.
        if t <= 0.5 {
            return 1.0;
        }
        let cdf = if n <= 140 {
            (1..=n).fold(1.0, |p, i| p * (i as f64 * (1.0 / nf) * (2.0 * t - 1.0)))
        } else {
            (log_nfactorial_div_n_pow_n(nf) + nf * (2.0 * t - 1.0).ln()).exp()
        };
        return 1.0 - cdf;
    }
    if t >= nf - 1.0 {
        return 2.0 * (1.0 - x).powf(nf);
    }
    if x >= 0.5 {
        return 2.0 * smirnov_sf(n, x);
    }
    let nxsquared = t * x;
    if n <= 140 {
        if nxsquared <= 0.754693 {
            return 1.0 - durbin_mtw_cdf(n, x);
        }
        if nxsquared <= 4.0 {
            return 1.0 - pomeranz_cdf(n, x);
        }
        return 2.0 * smirnov_sf(n, x);
    }
    if nxsquared >= 370.0 {
        return 0.0;
    }
    if nxsquared >= 2.2 {
        return 2.0 * smirnov_sf(n, x);
    }
    let cdf = if nxsquared >= 18.0 {
        1.0
    } else if n <= 100_000 && nf * x.powf(1.5) <= 1.4 {
        durbin_mtw_cdf(n, x)
    } else {
        pelz_good_cdf(n, x)
    };
    1.0 - cdf
}

/// `log(n! / n^n)` by Stirling's series, without the `n log n` that would cancel.
fn log_nfactorial_div_n_pow_n(n: f64) -> f64 {
    const STIRLING: [f64; 8] = [
        -2.955_065_359_477_124_2e-2,
        6.410_256_410_256_41e-3,
        -1.917_526_917_526_917_6e-3,
        8.417_508_417_508_418e-4,
        -5.952_380_952_380_953e-4,
        7.936_507_936_507_937e-4,
        -2.777_777_777_777_778e-3,
        8.333_333_333_333_333e-2,
    ];
    let rn = 1.0 / n;
    let poly = STIRLING.iter().fold(0.0, |acc, c| acc * (rn / n) + c);
    n.ln() / 2.0 - n + (2.0 * std::f64::consts::PI).ln() / 2.0 + rn * poly
}

/// `Pr(D_n <= d)` by Durbin's matrix algorithm as Marsaglia, Tsang and Wang compute it.
fn durbin_mtw_cdf(n: u64, d: f64) -> f64 {
    if d >= 1.0 {
        return 1.0;
    }
    let nd = n as f64 * d;
    if nd <= 0.5 {
        return 0.0;
    }
    let k = nd.ceil() as usize;
    let h = k as f64 - nd;
    let m = 2 * k - 1;

    let mut v: Vec<f64> = (1..=m).map(|j| 1.0 - h.powi(j as i32)).collect();
    let mut w = vec![0.0; m];
    let mut fac = 1.0;
    for j in 1..=m {
        w[j - 1] = fac;
        fac /= j as f64;
        v[j - 1] *= fac;
    }
    let tt = (2.0 * h - 1.0).max(0.0).powi(m as i32) - 2.0 * h.powi(m as i32);
    v[m - 1] = (1.0 + tt) * fac;

    let mut hm = Matrix::zeros(m);
    for i in 1..m {
        for r in (i - 1)..m {
            hm.set(r, i, w[r - (i - 1)]);
        }
    }
    for (r, value) in v.iter().enumerate() {
        hm.set(r, 0, *value);
    }
    for c in 0..m {
        hm.set(m - 1, c, v[m - 1 - c]);
    }

    let mut power = Matrix::identity(m);
    let mut nn = n;
    let mut expnt: i32 = 0;
    let mut h_expnt: i32 = 0;
    while nn > 0 {
        if nn % 2 == 1 {
            power = power.mul(&hm);
            expnt += h_expnt;
        }
        hm = hm.mul(&hm);
        h_expnt *= 2;
        if hm.get(k - 1, k - 1).abs() > EP128 {
            hm.scale(EM128);
            h_expnt += E128;
        }
        nn /= 2;
    }

    let mut p = power.get(k - 1, k - 1);
    for i in 1..=n {
        p = i as f64 * p / n as f64;
        if p.abs() < EM128 {
            p *= EP128;
            expnt -= E128;
        }
    }
    if expnt != 0 {
        p = ldexp(p, expnt);
    }
    p.clamp(0.0, 1.0)
}

/// A square matrix, row-major, for [`durbin_mtw_cdf`].
struct Matrix {
    size: usize,
    cells: Vec<f64>,
}

impl Matrix {
    fn zeros(size: usize) -> Matrix {
        Matrix {
            size,
            cells: vec![0.0; size * size],
        }
    }
    fn identity(size: usize) -> Matrix {
        let mut m = Matrix::zeros(size);
        for i in 0..size {
            m.set(i, i, 1.0);
        }
        m
    }
    fn get(&self, r: usize, c: usize) -> f64 {
        self.cells[r * self.size + c]
    }
    fn set(&mut self, r: usize, c: usize, value: f64) {
        self.cells[r * self.size + c] = value;
    }
    fn scale(&mut self, by: f64) {
        self.cells.iter_mut().for_each(|x| *x *= by);
    }
    fn mul(&self, other: &Matrix) -> Matrix {
        let n = self.size;
        let mut out = Matrix::zeros(n);
        for r in 0..n {
            for k in 0..n {
                let a = self.cells[r * n + k];
                if a == 0.0 {
                    continue;
                }
                for c in 0..n {
                    out.cells[r * n + c] += a * other.cells[k * n + c];
                }
            }
        }
        out
    }
}

/// `x * 2^exp`.
fn ldexp(x: f64, exp: i32) -> f64 {
    // Two steps keep 2^exp itself in range for exponents down to about -2000.
    let half = exp / 2;
    x * 2f64.powi(half) * 2f64.powi(exp - half)
}

/// The interval of non-zero entries in row `i` of Pomeranz's recursion.
fn pomeranz_j1j2(i: i64, n: i64, ll: i64, ceilf: i64, roundf: i64) -> (i64, i64) {
    let (j1, j2) = if i == 0 {
        (-ll - ceilf - 1, ll + ceilf - 1)
    } else {
        let (ip1div2, ip1mod2) = ((i + 1) / 2, (i + 1) % 2);
        if ip1mod2 == 0 {
            if ip1div2 == n + 1 {
                (n - ll - ceilf - 1, n + ll + ceilf - 1)
            } else {
                (ip1div2 - 1 - ll - roundf - 1, ip1div2 + ll - 1 + ceilf - 1)
            }
        } else {
            (ip1div2 - 1 - ll - 1, ip1div2 + ll + roundf - 1)
        }
    };
    ((j1 + 2).max(0), j2.min(n))
}

/// `Pr(D_n <= x)` by Pomeranz's recursion (used for `n <= 140`).
fn pomeranz_cdf(n: u64, x: f64) -> f64 {
    let ni = n as i64;
    let nf = n as f64;
    let t = nf * x;
    let ll = t.floor() as i64;
    let f = t - ll as f64;
    let g = f.min(1.0 - f);
    let ceilf = i64::from(f > 0.0);
    let roundf = i64::from(f > 0.5);
    let npwrs = (2 * (ll + 1)) as usize;
    let mut gpower = vec![1.0; npwrs];
    let mut twogpower = vec![1.0; npwrs];
    let mut onem2gpower = vec![1.0; npwrs];
    let (g_n, two_g_n, one_minus_two_g_n) = (g / nf, 2.0 * g / nf, (1.0 - 2.0 * g) / nf);
    for m in 1..npwrs {
        gpower[m] = gpower[m - 1] * g_n / m as f64;
        twogpower[m] = twogpower[m - 1] * two_g_n / m as f64;
        onem2gpower[m] = onem2gpower[m - 1] * one_minus_two_g_n / m as f64;
    }

    let mut v0 = vec![0.0; npwrs];
    let mut v1 = vec![0.0; npwrs];
    v1[0] = 1.0;
    let (mut v0s, mut v1s) = (0i64, 0i64);
    let mut expnt: i32 = 0;
    let mut j1 = pomeranz_j1j2(0, ni, ll, ceilf, roundf).0;
    for i in 1..(2 * ni + 2) {
        let k1 = j1;
        std::mem::swap(&mut v0, &mut v1);
        std::mem::swap(&mut v0s, &mut v1s);
        v1.iter_mut().for_each(|x| *x = 0.0);
        let j2;
        (j1, j2) = pomeranz_j1j2(i, ni, ll, ceilf, roundf);
        let pwrs = if i == 1 || i == 2 * ni + 1 {
            &gpower
        } else if i % 2 == 1 {
            &twogpower
        } else {
            &onem2gpower
        };
        let ln2 = j2 - k1 + 1;
        if ln2 > 0 {
            let a = py_slice(&v0, k1 - v0s, k1 - v0s + ln2);
            let b = py_slice(pwrs, 0, ln2);
            let conv = convolve(a, b);
            let conv_start = j1 - k1;
            let conv_len = j2 - j1 + 1;
            let part = py_slice(&conv, conv_start, conv_start + conv_len);
            let len = part.len().min(v1.len());
            v1[..len].copy_from_slice(&part[..len]);
            let max = v1.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if 0.0 < max && max < EM128 {
                v1.iter_mut().for_each(|x| *x *= EP128);
                expnt -= E128;
            }
            v1s = v0s + j1 - k1;
        }
    }
    let index = usize::try_from(ni - v1s).unwrap_or(usize::MAX);
    let mut ans = v1.get(index).copied().unwrap_or(f64::NAN);
    for m in 1..=n {
        if ans.abs() > EP128 {
            ans *= EM128;
            expnt += E128;
        }
        ans *= m as f64;
    }
    if expnt != 0 {
        ans = ldexp(ans, expnt);
    }
    ans.clamp(0.0, 1.0)
}

/// `values[start:end]` as Python slices it (clipped to the list, empty when reversed).
fn py_slice(values: &[f64], start: i64, end: i64) -> &[f64] {
    let len = values.len() as i64;
    let clip = |i: i64| (if i < 0 { (len + i).max(0) } else { i.min(len) }) as usize;
    let (s, e) = (clip(start), clip(end));
    if s >= e {
        &[]
    } else {
        &values[s..e]
    }
}

/// `numpy.convolve(a, b)` (mode `full`).
fn convolve(a: &[f64], b: &[f64]) -> Vec<f64> {
    if a.is_empty() || b.is_empty() {
        return Vec::new();
    }
    let mut out = vec![0.0; a.len() + b.len() - 1];
    for (i, x) in a.iter().enumerate() {
        for (j, y) in b.iter().enumerate() {
            out[i + j] += x * y;
        }
    }
    out
}

/// The Pelz-Good approximation to `Pr(D_n <= x)`.
fn pelz_good_cdf(n: u64, x: f64) -> f64 {
    use std::f64::consts::PI;
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let nf = n as f64;
    let z = nf.sqrt() * x;
    let (zsquared, zthree, zfour, zsix) = (z * z, z.powi(3), z.powi(4), z.powi(6));
    let (pi2, pi4, pi6) = (PI * PI, PI.powi(4), PI.powi(6));

    let qlog = -pi2 / 8.0 / zsquared;
    if qlog < -708.0 {
        return 0.0;
    }
    let q = qlog.exp();

    let k1a = -zsquared;
    let k1b = pi2 / 4.0;
    let k2a = 6.0 * zsix + 2.0 * zfour;
    let k2b = (2.0 * zfour - 5.0 * zsquared) * pi2 / 4.0;
    let k2c = pi4 * (1.0 - 2.0 * zsquared) / 16.0;
    let k3d = pi6 * (5.0 - 30.0 * zsquared) / 64.0;
    let k3c = pi4 * (-60.0 * zsquared + 212.0 * zfour) / 16.0;
    let k3b = pi2 * (135.0 * zfour - 96.0 * zsix) / 4.0;
    let k3a = -30.0 * zsix - 90.0 * z.powi(8);

    let mut k = [0.0f64; 4];
    let maxk = (16.0 * z / PI).ceil() as i64;
    for kk in (1..=maxk).rev() {
        let m = (2 * kk - 1) as f64;
        let (msquared, mfour, msix) = (m * m, m.powi(4), m.powi(6));
        let qpower = q.powf(8.0 * kk as f64);
        let coeffs = [
            1.0,
            k1a + k1b * msquared,
            k2a + k2b * msquared + k2c * mfour,
            k3a + k3b * msquared + k3c * mfour + k3d * msix,
        ];
        for (ki, c) in k.iter_mut().zip(coeffs) {
            *ki = *ki * qpower + c;
        }
    }
    let sqrt2pi = (2.0 * PI).sqrt();
    let divisors = [z, 6.0 * zfour, 72.0 * z.powi(7), 6480.0 * z.powi(10)];
    for (ki, div) in k.iter_mut().zip(divisors) {
        *ki = *ki * q * sqrt2pi / div;
    }

    let q = (-pi2 / 2.0 / zsquared).exp();
    let sqrt3z = 3f64.sqrt() * z;
    let (mut k2extra, mut k3extra) = (0.0, 0.0);
    for kk in (1..=maxk).rev() {
        let ksquared = (kk * kk) as f64;
        let kspi = PI * kk as f64;
        let qpwer = q.powf(ksquared);
        k2extra += ksquared * qpwer;
        k3extra += (sqrt3z + kspi) * (sqrt3z - kspi) * ksquared * qpwer;
    }
    k[2] += k2extra * pi2 * sqrt2pi / (-36.0 * zthree);
    k[3] += k3extra * pi2 * sqrt2pi / (216.0 * zsix);
    for (i, ki) in k.iter_mut().enumerate() {
        *ki /= nf.powf(i as f64 / 2.0);
    }
    k.iter().sum()
}

/// `scipy.special.smirnov(n, x)`: the one-sided statistic's survival function, by the
/// Birnbaum-Tingey sum (the lower sum; the upper one scipy keeps for `n x^2 <= 1/4`, which the
/// callers above never reach).
fn smirnov_sf(n: u64, x: f64) -> f64 {
    if !(0.0..=1.0).contains(&x) {
        return f64::NAN;
    }
    if n == 1 {
        return 1.0 - x;
    }
    if x == 0.0 {
        return 1.0;
    }
    if x == 1.0 {
        return 0.0;
    }
    let nf = n as f64;
    // floor(n x) and the remainder, from the exact product.
    let nx = nf * x;
    let err = nf.mul_add(x, -nx);
    let mut nxfl = nx.floor();
    if nx == nxfl && err < 0.0 {
        nxfl -= 1.0;
    }
    let mut alpha = (nx - nxfl) + err;
    if alpha >= 1.0 {
        nxfl += 1.0;
        alpha = 0.0;
    }
    if nxfl == 0.0 || (nxfl == 1.0 && alpha == 0.0) {
        let t = (1.0 + x).powf(nf - 1.0);
        return 1.0 - x * t;
    }
    if -2.0 * nf * x * x < MINLOG {
        return 0.0;
    }
    if nxfl >= nf - 1.0 {
        return (1.0 - x).powf(nf);
    }
    if n > 1_000_000 {
        let logp = -(6.0 * nf * x + 1.0).powi(2) / 18.0 / nf;
        return if logp < -std::f64::consts::LN_2 {
            logp.exp()
        } else {
            1.0 + logp.exp_m1()
        };
    }
    // sf = x Σ_{j=0}^{n - nxfl - 1} C(n, j) (1 - x - j/n)^(n-j) (x + j/n)^(j-1)
    let last = n - nxfl as u64 - 1;
    // ln C(n, j), one logarithm a term. Compensated: the sum can run to hundreds of thousands
    // of terms (n = 500 000, x = 0.0025 peaks near j = 225 000), and a plain running sum of
    // values near 10^5 drifts by 1e-9 relative in the terms (scipy keeps C(n, j) in
    // double-double for the same reason).
    let mut ln_binom = Sum::default();
    let mut sum = Sum::default();
    for j in 0..=last {
        let jf = j as f64;
        if j > 0 {
            ln_binom.add(((nf - jf + 1.0) / jf).ln());
        }
        // 1 - x - j/n and x + j/n from the exact n x, so the last terms keep their digits.
        let below = ((nf - jf - nxfl) - alpha) / nf;
        let above = ((nxfl + jf) + alpha) / nf;
        if below <= 0.0 {
            break;
        }
        let term = (ln_binom.total() + (nf - jf) * below.ln() + (jf - 1.0) * above.ln()).exp();
        sum.add(term);
        // scipy stops when the rest cannot move the sum; this stops a little later.
        if term != 0.0 && 4.0 * (last - j) as f64 * term < f64::EPSILON * 1e-3 * sum.total() {
            break;
        }
    }
    (x * sum.total()).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: f64, want: f64) {
        let tol = 1e-12 * want.abs() + 1e-15;
        assert!((got - want).abs() <= tol, "got {got:e}, want {want:e}");
    }

    #[test]
    fn kstwo_sf_matches_scipy_in_every_regime() {
        // (n, x, scipy.stats.kstwo.sf(x, n)) -- see worker/tests/fixtures/drift/generate.py
        for (n, x, want) in KSTWO_CASES {
            let got = kstwo_sf(*n, *x);
            let tol = 1e-11 * want.abs() + 1e-14;
            assert!(
                (got - want).abs() <= tol,
                "kstwo.sf({x}, {n}): got {got:e}, want {want:e}"
            );
        }
    }

    #[test]
    fn smirnov_matches_scipy_special() {
        // scipy.special.smirnov(n, x)
        close(smirnov_sf(5, 0.6), 0.015040000000000005);
        close(smirnov_sf(200, 0.11), 0.0072899743634965986);
        close(smirnov_sf(5000, 0.03), 0.00012079617211333408);
    }

    include!("kolmogorov_cases.rs");
}
