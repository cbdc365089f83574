//! The server-rendered pages, one module each.

pub mod login;
pub mod overview;
pub mod plans;
pub mod queues;
pub mod schedules;
pub mod task;
pub mod tasks;
pub mod workers;
