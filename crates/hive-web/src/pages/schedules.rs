//! Schedules: each schedule's cron expression and zone, what it creates (a task type, or a
//! plan of N subtasks), its last slot with its work's status (linked) and its next slot and whether it is paused, with buttons to
//! pause or resume it and to run it by hand now (what `hive schedule
//! list|pause|resume|trigger` does).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use hive_client::models::{Overlap, Schedule, Scheduled};
use hive_client::store::KeyedWork;
use maud::{Markup, html};

use crate::AppState;
use crate::actions::urlencode;
use crate::view::{layout, op_error, pause_toggle, time};

/// What a schedule creates, as the page and `hive schedule list` name it.
fn creates(s: &Schedule) -> Markup {
    match &s.creates {
        Scheduled::Task(t) => html! { "task of type " code { (t.task_type) } },
        Scheduled::Plan(p) => html! { "plan of " (p.subtasks.len()) " subtasks" },
    }
}

/// The last slot's work as a link in its status colour: did last night's run succeed.
fn last_run(work: Option<KeyedWork>) -> Markup {
    match work {
        Some(KeyedWork::Task { id, status }) => html! {
            " " a class="last-run" href={ "/tasks/" (id) } {
                span class={ "badge s-" (status.as_str()) } { "task " (status.as_str()) }
            }
        },
        Some(KeyedWork::Plan { id, status }) => html! {
            " " a class="last-run" href={ "/plans/" (id) } {
                span class={ "badge s-" (status.as_str()) } { "plan " (status.as_str()) }
            }
        },
        None => html! {},
    }
}

pub async fn page(State(s): State<AppState>) -> Response {
    let views = match s.client.list_schedule_views().await {
        Ok(found) => found,
        Err(e) => return op_error(&e),
    };
    layout(
        "Schedules",
        html! {
            @if views.is_empty() {
                p { "No schedules yet: " code { "hive schedule add" } " creates one." }
            } @else {
                // Each refresh reads every schedule, plan templates included: paced.
                table id="schedules" data-refresh-ms="5000" {
                    tr { th { "schedule" } th { "cron" } th { "zone" } th { "creates" }
                         th { "title" } th { "last" } th { "next" } th { "state" } th {} }
                    @for v in &views {
                        @let sc = &v.schedule;
                        tr data-name=(sc.name) {
                            td class="name" { (sc.name) }
                            td class="cron" { code { (sc.cron) } }
                            td { (sc.timezone) }
                            td class="creates" { (creates(sc)) }
                            td class="title" { (sc.creates.title()) }
                            td class="last" {
                                @if let Some(t) = sc.last_fired { (time(t)) } @else { "–" }
                                (last_run(v.last_run))
                            }
                            td class="next" {
                                @match v.pending_slot {
                                    Some(t) => {
                                        (time(t))
                                        @if v.overdue {
                                            " " span class="overdue" { "overdue" }
                                        }
                                    }
                                    None => "–",
                                }
                            }
                            td class="state" {
                                @if sc.enabled { "active" } @else { "paused" }
                                @if sc.overlap != Overlap::Allow {
                                    br; small { "overlaps: " (sc.overlap.as_str()) }
                                }
                            }
                            td {
                                (pause_toggle("/actions/schedules", &sc.name, !sc.enabled))
                                form class="inline" method="post"
                                    action={ "/actions/schedules/" (urlencode(&sc.name)) "/trigger" }
                                    data-confirm={ "Run schedule " (sc.name) " now, by hand?" } {
                                    input type="hidden" name="idempotency_key" value=(uuid::Uuid::new_v4());
                                    button type="submit" class="trigger" { "Run now" }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
    .into_response()
}
