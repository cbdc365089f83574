//! Each schedule's gauges, labelled by its name (operators name schedules: a bounded
//! set): whether it runs, when it last fired and fires next, and how its last slot's work
//! stands. They answer the alerts a nightly job needs: a schedule overdue (no scheduler
//! running, a queued slot waiting, a slot whose work cannot be created:
//! `time() - hive_schedule_next_slot_timestamp_seconds`), one that keeps skipping
//! (`time() - hive_schedule_last_fired_timestamp_seconds`), and a last run that failed
//! (`hive_schedule_last_run{status="failed"}`).

use hive_client::ops::ScheduleView;
use hive_client::store::KeyedWork;
use prometheus::{GaugeVec, IntGaugeVec, Opts, Registry};

#[derive(Debug, Clone)]
pub(crate) struct ScheduleGauges {
    enabled: IntGaugeVec,
    last_fired: GaugeVec,
    next_slot: GaugeVec,
    last_run: IntGaugeVec,
}

fn seconds(t: chrono::DateTime<chrono::Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

impl ScheduleGauges {
    pub(crate) fn new(registry: &Registry) -> prometheus::Result<ScheduleGauges> {
        let gauges = ScheduleGauges {
            enabled: IntGaugeVec::new(
                Opts::new(
                    "hive_schedule_enabled",
                    "1 for a schedule that fires, 0 for a paused one.",
                ),
                &["schedule"],
            )?,
            last_fired: GaugeVec::new(
                Opts::new(
                    "hive_schedule_last_fired_timestamp_seconds",
                    "The time of the last slot a scheduler started, per schedule.",
                ),
                &["schedule"],
            )?,
            next_slot: GaugeVec::new(
                Opts::new(
                    "hive_schedule_next_slot_timestamp_seconds",
                    "An active schedule's first slot not yet handled (fired, skipped, or \
                     passed while paused): in the past while it is overdue (no scheduler \
                     running, a queued slot waiting, work that cannot be created).",
                ),
                &["schedule"],
            )?,
            last_run: IntGaugeVec::new(
                Opts::new(
                    "hive_schedule_last_run",
                    "1 for the kind (task or plan) and status of the work the schedule's last \
                     slot made.",
                ),
                &["schedule", "kind", "status"],
            )?,
        };
        registry.register(Box::new(gauges.enabled.clone()))?;
        registry.register(Box::new(gauges.last_fired.clone()))?;
        registry.register(Box::new(gauges.next_slot.clone()))?;
        registry.register(Box::new(gauges.last_run.clone()))?;
        Ok(gauges)
    }

    /// Replaces every schedule's gauges with `views`' (a deleted schedule's go).
    pub(crate) fn set(&self, views: &[ScheduleView]) {
        self.enabled.reset();
        self.last_fired.reset();
        self.next_slot.reset();
        self.last_run.reset();
        for v in views {
            let s = &v.schedule;
            let name = s.name.as_str();
            self.enabled
                .with_label_values(&[name])
                .set(i64::from(s.enabled));
            if let Some(t) = s.last_fired {
                self.last_fired.with_label_values(&[name]).set(seconds(t));
            }
            if let Some(t) = v.pending_slot {
                self.next_slot.with_label_values(&[name]).set(seconds(t));
            }
            let run = match v.last_run {
                Some(KeyedWork::Task { status, .. }) => Some(("task", status.as_str())),
                Some(KeyedWork::Plan { status, .. }) => Some(("plan", status.as_str())),
                None => None,
            };
            if let Some((kind, status)) = run {
                self.last_run
                    .with_label_values(&[name, kind, status])
                    .set(1);
            }
        }
    }
}
