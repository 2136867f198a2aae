//! The statistics, each matching the scipy function Evidently calls (to about 1e-12 on the
//! fixtures in `worker/tests/fixtures/drift/`), on sorted samples or on value counts.

pub mod binning;
pub mod counts;
pub mod distance;
mod kolmogorov;
pub mod ks;
pub mod sorted;
mod special;
