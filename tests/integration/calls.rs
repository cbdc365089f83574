//! A record of handler calls, shared by a test and the handlers it runs.

use std::sync::{Arc, Mutex};

use hive_client::{TaskContext, TaskId};

/// Each handler call as (task, run number): the same pair twice would be one run executed
/// twice.
#[derive(Debug, Clone, Default)]
pub struct Calls(Arc<Mutex<Vec<(TaskId, u32)>>>);

impl Calls {
    pub fn record(&self, ctx: &TaskContext) {
        self.0
            .lock()
            .unwrap()
            .push((ctx.task.id, ctx.run.run_number));
    }

    /// Every call so far, in the order they were made.
    pub fn all(&self) -> Vec<(TaskId, u32)> {
        self.0.lock().unwrap().clone()
    }
}
