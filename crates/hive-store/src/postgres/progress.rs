//! A running handler's progress on Postgres: one statement stores it on the live run, and
//! its notification is published after (`publish.rs`).

use hive_models::{RunId, TaskId};
use uuid::Uuid;

use super::PostgresStore;
use super::sql::payload;
use crate::sql::R;
use crate::{Change, Error};

impl PostgresStore {
    pub(super) async fn record_progress_once(
        &self,
        run_id: RunId,
        fraction: f64,
        message: Option<String>,
    ) -> R<()> {
        let task: Option<Uuid> = sqlx::query_scalar(
            "UPDATE runs r SET progress = $2, progress_message = $3, progress_at = now(), \
                 updated_at = now() \
             FROM tasks t \
             WHERE r.id = $1 AND r.status = 'running' AND t.id = r.task_id \
               AND t.current_run_id = r.id \
             RETURNING r.task_id",
        )
        .bind(run_id.0)
        .bind(fraction)
        .bind(&message)
        .fetch_optional(&self.pool)
        .await?;
        let Some(task_id) = task.map(TaskId) else {
            return Err(Error::StaleRun { run_id }.into());
        };
        let note = self.notifier.note(Change::Progress {
            task_id,
            run_id,
            fraction,
            message,
        });
        self.publish(vec![payload(&note)?]).await;
        Ok(())
    }
}
