//! What starts runs without a person: cron schedules, webhooks, watched folders.

pub mod cron;
