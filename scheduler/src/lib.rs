//! Sluice's scheduler side: pipeline files, the DAG, the run engine, the store and the CLI.

pub mod api;
pub mod artifacts;
pub mod cli;
pub mod daemon;
pub mod engine;
pub mod heap;
pub mod host;
pub mod logtail;
pub mod metrics;
pub mod models;
pub mod spec;
pub mod store;
pub mod triggers;
