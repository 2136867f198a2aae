//! Sluice's worker side: the task contract, the queues that carry tasks, the executors that run
//! them and the loop that ties them together. It knows nothing of pipeline files or the store.

pub mod artifacts;
pub mod backoff;
pub mod drift;
pub mod executor;
pub mod gpu;
pub mod log_stream;
pub mod logs;
pub mod pool;
pub mod queue;
pub mod safe_fs;
pub mod secrets;
pub mod service;
pub mod task;
