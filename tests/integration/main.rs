//! Cross-crate scenarios, driven through hive-client as an app would.
#![allow(clippy::unwrap_used)]

mod calls;
mod commits_overlap;
mod db_faults;
mod held_runs;
mod log_capture;
mod plans_under_failure;
mod prefetch;
mod proxy;
mod refused_outcomes;
mod retries;
mod sdk;
mod secrets;
mod storage_faults;
mod worker;
