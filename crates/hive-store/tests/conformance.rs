//! Runs the conformance suite against every backend: `memory::*`, `sqlite::*`, `postgres::*`.

use hive_store::testing::dashboard::*;
use hive_store::testing::details::*;
use hive_store::testing::flow::*;
use hive_store::testing::notifications::*;
use hive_store::testing::plan_lifecycle::*;
use hive_store::testing::plans::*;
use hive_store::testing::progress::*;
use hive_store::testing::retries::*;
use hive_store::testing::runs::*;
use hive_store::testing::schedules::*;
use hive_store::testing::suite::*;
use hive_store::testing::workflows::*;

hive_store::per_backend!(hive_store::testing::TestStore::run =>
    insert_and_get_round_trip, strings_stored_verbatim, queue_order_priority_then_age,
    idempotency_key_returns_first_id, keyed_batches_in_opposite_orders_agree, list_filters,
    list_as_of_a_moment,
    list_filters_find_dependents,
    count_tasks_per_status,
    set_status_follows_transition_table, set_status_unknown_task_is_none,
    requeue_from_terminal, metadata_merges, delete_cascades_runs, prune_in_batches,
    claim_opens_run_and_respects_types, delayed_task_not_claimable_early,
    finish_success_and_stale_run_rejected, failure_retries_with_backoff_then_fails,
    failure_without_retry_fails_at_once, extend_lease_and_fencing,
    release_runs_does_not_count_attempt, a_run_given_back_by_its_worker_is_queued_again_uncounted,
    reap_expired_lease, heartbeat_extends_leases,
    running_runs_are_what_a_worker_holds,
    workers_register_list_unregister, plan_materialize_idempotent,
    plan_dependencies_gate_claims, plan_failure_cancels_descendants, plan_cancel,
    plan_transition_compare_and_set, dependencies_met_batch, subtask_ids_name_a_plans_tasks, notifications_after_commit,
    batches_announce_every_task,
    concurrent_claims_exactly_once, not_found_paths,
    plan_finishes_cancelled_when_all_subtasks_finish, a_plans_move_is_reported_on_the_outcome_that_made_it,
    finish_and_claim_refills_in_one_step,
    freed_dependents_are_announced_unless_claimed, outputs_reach_dependents_exactly,
    freed_dependents_compete_with_ready_tasks_in_queue_order,
    spawned_subtasks_join_before_the_dependents, a_spawn_the_plan_cannot_take_adds_nothing,
    a_failed_plan_refuses_a_spawn_until_it_is_retried, a_spawn_waiting_on_a_cancelled_subtask_is_refused,
    a_failed_plans_open_subtasks_can_be_cancelled,
    a_stale_run_spawns_nothing, a_last_subtask_that_spawns_keeps_its_plan_running, last_two_subtasks_finishing_at_once_complete_the_plan_once,
    a_join_whose_parents_finish_at_once_becomes_ready_once,
    ten_thousand_subtasks_submitted_and_drained, a_requeued_completed_subtask_is_unfinished_again,
    a_subtask_is_not_requeued_behind_a_dependency_that_will_not_complete,
    a_retried_plan_runs_its_failed_and_cancelled_subtasks_again,
    a_cancelled_plan_retried_resumes_and_one_with_nothing_left_completes,
    a_plan_cancelled_before_its_tasks_exist_runs_only_once_retried,
    a_spawner_run_again_keeps_what_it_spawned,
    a_spawner_run_again_keeps_what_a_later_spawn_rewired,
    a_failure_racing_a_retry_still_fails_the_plan, finished_plans_are_pruned_with_their_tasks,
    task_prune_leaves_plan_subtasks_to_their_plan,
    plans_are_counted_by_status, plan_metadata_round_trips, a_plan_key_submits_once, a_plan_submitted_in_one_step_is_stored_as_two_steps_store_it, runs_record_when_created_and_last_updated, runs_are_read_by_id_in_one_call, tasks_are_read_by_id_in_one_call,
    a_runs_start_moves_by_its_wait_for_a_handler,
    a_cancellation_keeps_its_reason, a_worker_status_keeps_its_reason,
    an_expired_lease_says_the_run_timed_out,
    full_jitter_spreads_a_burst_of_retries, a_tasks_own_policy_replaces_the_callers,
    snoozes_give_the_attempt_back_and_are_bounded,
    a_run_given_back_is_not_a_snooze, a_plan_retry_gives_a_subtask_its_snoozes_back,
    a_requeued_task_loses_its_result_until_it_finishes_again, a_queued_task_queued_again_runs_now,
    progress_is_stored_on_the_live_run_and_announced,
    schedules_round_trip_and_move_compare_and_set, work_is_unfinished_by_key_until_it_ends,
    task_pages_are_newest_first_and_follow_the_cursor,
    task_pages_filter_by_status_worker_and_plan,
    queue_stats_count_types_ready_age_and_finished_runs,
    a_task_is_ready_since_it_was_freed_or_requeued,
    flow_rules_are_stored_listed_and_deleted, a_type_runs_at_most_its_limit_and_others_pass,
    a_claim_takes_at_most_its_limit_of_ruled_and_other_tasks,
    a_claim_marks_the_tasks_that_count_against_a_limit,
    a_concurrency_key_is_serial_unless_it_says_otherwise, a_rate_counts_starts_in_its_window,
    a_task_allowing_more_is_not_held_behind_a_serial_task_of_its_key,
    a_busy_keys_backlog_hides_no_key_behind_it,
    a_key_with_room_for_one_hides_no_key_behind_its_backlog,
    a_claim_given_back_unstarted_leaves_its_rate_window,
    a_plans_subtasks_share_their_concurrency_key,
    a_keyed_dependent_is_claimed_in_the_step_that_frees_it,
    a_paused_type_is_not_claimed_until_resumed, a_keys_rate_and_running_cap_hold_together,
    a_limited_task_does_not_jump_the_queue, a_task_moved_in_progress_by_hand_holds_its_keys_place,
    flow_edits_apply_to_the_stored_rule_atomically,
);

/// Every public case of the suite is listed above: a case added to the suite and not here
/// would never run.
#[test]
fn every_suite_case_runs() {
    let suite = concat!(
        include_str!("../src/testing/suite.rs"),
        include_str!("../src/testing/workflows.rs"),
        include_str!("../src/testing/details.rs"),
        include_str!("../src/testing/flow.rs"),
        include_str!("../src/testing/retries.rs"),
        include_str!("../src/testing/progress.rs"),
        include_str!("../src/testing/schedules.rs"),
        include_str!("../src/testing/dashboard.rs")
    );
    let this = include_str!("conformance.rs");
    for line in suite.lines() {
        if let Some(rest) = line.strip_prefix("pub async fn ") {
            let name = rest.split('(').next().unwrap_or_default();
            assert!(
                this.contains(&format!("{name},")),
                "conformance case `{name}` is not run"
            );
        }
    }
}
