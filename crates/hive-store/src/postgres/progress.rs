//! A running handler's progress on Postgres: one statement stores it on the live run and
//! announces it.

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
        // The notification names the task, which the update finds: it is serialized here
        // with a random placeholder id (no message can contain it by chance) that the
        // statement replaces with the real one, so its format stays serde's.
        let placeholder = Uuid::new_v4();
        let note = self.notifier.note(Change::Progress {
            task_id: TaskId(placeholder),
            run_id,
            fraction,
            message: message.clone(),
        });
        let template = payload(&note)?;
        let task: Option<Uuid> = sqlx::query_scalar(concat!(
            "WITH done AS ( \
                 UPDATE runs r SET progress = $2, progress_message = $3, progress_at = now(), \
                     updated_at = now() \
                 FROM tasks t \
                 WHERE r.id = $1 AND r.status = 'running' AND t.id = r.task_id \
                   AND t.current_run_id = r.id \
                 RETURNING r.task_id \
             ) \
             SELECT task_id FROM done, \
                 LATERAL (SELECT pg_notify(",
            channel_sql!(),
            ", replace($4::text, $5::text, task_id::text))) AS sent"
        ))
        .bind(run_id.0)
        .bind(fraction)
        .bind(message)
        .bind(template)
        .bind(placeholder.to_string())
        .fetch_optional(&self.pool)
        .await?;
        task.map(|_| ())
            .ok_or_else(|| Error::StaleRun { run_id }.into())
    }
}
