//! What starts runs without a person: cron schedules, webhooks, watched folders, and other
//! pipelines' runs (`after:`).

pub mod after;
pub mod cron;
