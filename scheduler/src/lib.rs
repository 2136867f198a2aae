//! Sluice's scheduler side: pipeline files, the DAG, the run engine, the store and the CLI.

pub mod cli;
pub mod engine;
pub mod spec;
pub mod store;
