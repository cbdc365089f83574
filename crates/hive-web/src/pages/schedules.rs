//! Schedules: each schedule's cron expression and zone, what it creates (a task type, or a
//! plan of N subtasks), its last and next slot and whether it is paused, with buttons to
//! pause or resume it and to run it by hand now (what `hive schedule
//! list|pause|resume|trigger` does).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use hive_client::models::{Schedule, Scheduled};
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

pub async fn page(State(s): State<AppState>) -> Response {
    let schedules = match s.client.list_schedules().await {
        Ok(found) => found,
        Err(e) => return op_error(&e),
    };
    layout(
        "Schedules",
        html! {
            @if schedules.is_empty() {
                p { "No schedules yet: " code { "hive schedule add" } " creates one." }
            } @else {
                table id="schedules" {
                    tr { th { "schedule" } th { "cron" } th { "zone" } th { "creates" }
                         th { "title" } th { "last" } th { "next" } th { "state" } th {} }
                    @for sc in &schedules {
                        tr data-name=(sc.name) {
                            td class="name" { (sc.name) }
                            td class="cron" { code { (sc.cron) } }
                            td { (sc.timezone) }
                            td class="creates" { (creates(sc)) }
                            td class="title" { (sc.creates.title()) }
                            td class="last" { @if let Some(t) = sc.last_fired { (time(t)) } @else { "–" } }
                            td class="next" {
                                @match sc.next_slot.filter(|_| sc.enabled) {
                                    Some(t) => (time(t)),
                                    None => "–",
                                }
                            }
                            td class="state" { @if sc.enabled { "active" } @else { "paused" } }
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
