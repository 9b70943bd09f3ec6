//! The conformance suite: what every [`Store`] must do, written once against the
//! trait and run against every backend on a real database.
//!
//! A backend's test file calls [`conformance_suite!`] with an async expression
//! that builds a fresh, isolated [`Harness`]; the macro expands to one
//! `#[tokio::test]` per case, so each case fails (and is reported) on its own.
//! A change to what the trait means changes this suite first.

use std::any::Any;
use std::sync::Arc;

use grafter_store::Store;

pub mod cases;

/// A fresh store for one test, and whatever must live as long as it (a temp dir,
/// a schema to drop).
pub struct Harness {
    /// The store under test.
    pub store: Arc<dyn Store>,
    _keep: Box<dyn Any + Send + Sync>,
}

impl Harness {
    /// A harness that keeps `keep` alive until the test ends.
    pub fn new(store: Arc<dyn Store>, keep: impl Any + Send + Sync) -> Self {
        Harness {
            store,
            _keep: Box::new(keep),
        }
    }
}

/// Expands to one test per conformance case. `$make` is an async expression that
/// evaluates to a [`Harness`], or to an `Option<Harness>` for a backend whose
/// server may be absent on a developer's machine: `None` ends the case at once
/// (the backend's own code says so loudly, and fails instead under CI).
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr) => {
        $crate::conformance_suite!(@cases $make;
            insert_stores_every_field,
            tokens_are_found_by_secret_hash_listed_and_revoked,
            token_last_use_only_moves_forward,
            audit_log_pages_newest_first_and_prunes_the_oldest,
            args_numbers_read_back_exactly,
            ids_are_never_reused,
            insert_in_the_future_is_scheduled_until_due,
            fetch_leases_and_counts_the_attempt,
            fetch_orders_by_priority_then_run_at_then_id,
            fetch_takes_only_named_queues_up_to_max,
            fetch_skips_paused_queues,
            fetch_never_leases_a_job_twice_under_concurrency,
            complete_stores_the_result,
            fail_makes_retryable_after_backoff_then_runs_again,
            fail_on_last_attempt_or_without_retry_is_dead,
            fail_with_retry_at_uses_that_time,
            stale_or_foreign_leases_are_refused_and_change_nothing,
            heartbeat_extends_the_lease_and_stores_progress,
            rescue_ends_expired_leases_as_failed_attempts,
            timeout_caps_the_lease_and_is_recorded,
            unique_key_dedupes_unfinished_jobs,
            batches_with_the_same_keys_in_any_order_all_succeed,
            expires_at_expires_unstarted_jobs,
            cancel_by_state,
            retry_revives_finished_jobs,
            reschedule_moves_run_at,
            delete_removes_the_job,
            list_filters_and_pages_by_keyset,
            queues_list_counts_per_state,
            announce_wakes_only_the_waiters_of_its_queues,
            release_hands_the_job_back_without_counting_the_attempt,
            workers_register_list_and_prune,
            complete_many_acks_a_batch_fenced_per_item,
            complete_many_repeats_and_results_answer_as_one_at_a_time,
            running_limit_caps_a_queue_across_fetches,
            fetch_stops_at_the_byte_budget,
            prune_deletes_old_finished_jobs_only,
            push_target_is_kept_and_removed,
            leadership_is_exclusive_until_it_expires_or_is_released,
            store_info_names_its_schema_and_who_leads,
            queues_list_shows_the_oldest_available_job,
            ping_answers,
            a_watched_job_logs_each_change_in_order_and_others_log_nothing,
            a_rescue_and_a_deletion_of_a_watched_job_are_logged,
            a_change_wakes_the_watchers_of_its_job_only,
            a_watched_batch_logs_each_change_in_order_until_it_finishes,
            a_cancelled_batch_ends_when_its_running_jobs_stop,
            a_batch_change_wakes_the_watchers_of_its_batch_only,
            list_filters_by_tag_args_and_any_combination,
            lists_merge_many_kinds_and_states_in_id_order,
            queue_counts_follow_every_change,
            throughput_counts_attempts_per_minute,
            bulk_changes_follow_the_one_job_rules,
            retry_can_replace_the_args,
            completed_jobs_are_neither_retried_nor_rescheduled,
            retry_or_reschedule_runs_an_expired_job_again,
            extreme_values_cannot_stop_recovery,
            the_same_input_has_the_same_outcome_on_every_store,
            json_nested_too_deep_is_refused_and_nothing_stored,
            a_batch_drops_a_malformed_trace_context_as_an_enqueue_does,
            work_wakes_only_the_fetches_of_its_queue,
            list_shows_large_fields_cut,
            schedules_fire_each_slot_once_across_dst_and_odd_dates,
            three_days_down_under_each_catch_up_policy,
            overlap_policies_and_trigger,
            pause_and_edit_exactly_at_a_slot_boundary,
            two_engines_racing_enqueue_each_slot_once,
            a_slot_taken_is_never_enqueued_again,
            a_firing_of_a_deleted_schedule_is_not_applied_to_one_made_again,
            config_schedules_are_reconciled_by_id,
            concurrency_is_never_exceeded_by_racing_fetches,
            partition_concurrency_is_never_exceeded_by_racing_fetches,
            a_zombie_ack_after_rescue_changes_no_count,
            rate_window_is_exact_across_edges,
            a_fetch_with_an_earlier_clock_still_counts_its_window,
            a_full_partition_never_blocks_another,
            partition_field_limits_each_partition,
            a_long_partition_value_counts_by_its_first_characters,
            number_partitions_are_told_apart_by_their_json_text,
            cancel_release_and_delete_free_a_slot,
            lowering_a_limit_stops_nothing,
            limits_are_kept_listed_and_removed,
            push_concurrency_and_limits_both_hold,
            held_says_what_holds_a_job_back,
            held_names_the_partition_its_store_counts,
            a_freed_slot_wakes_a_waiting_fetch,
            a_full_rate_window_wakes_its_waiting_fetch_when_it_frees,
            jobs_list_by_schedule,
            trace_context_is_stored_and_handed_out_with_the_lease,
            a_sealed_batch_without_jobs_succeeds_at_once,
            batch_counts_follow_each_move_and_settle_once,
            a_job_adding_to_its_open_batch_and_finishing_first_fires_nothing_early,
            concurrent_last_completions_enqueue_one_callback,
            a_batch_ack_counts_each_batch_it_spans,
            cancelling_a_batch_cancels_waiting_jobs_and_asks_running_ones,
            cancelling_a_batch_while_its_jobs_ack_and_beat_deadlocks_nothing,
            a_ten_thousand_job_fan_in_counts_exactly,
            a_batch_lists_its_jobs_in_pages_whatever_their_state,
            pruning_keeps_unfinished_batches_and_takes_finished_ones_whole,
            a_worker_lost_mid_batch_still_finishes_it_right,
            a_diamond_graph_runs_in_order,
            an_upstream_lists_its_dependents,
            each_dependency_policy_on_a_dead_and_a_cancelled_upstream,
            a_cycle_or_an_unknown_id_is_refused_and_nothing_inserted,
            a_dependency_finished_at_insert_is_applied_at_insert,
            pruning_keeps_an_upstream_of_a_pending_job,
            concurrent_completions_of_two_upstreams_release_the_dependent_once,
            a_released_dependent_wakes_a_waiting_fetch,
            a_cancelled_dependent_retried_by_hand_waits_again_for_unfinished_upstreams,
            a_finished_dependent_rescheduled_by_hand_waits_again_and_answers_so,
            queue_counts_follow_dependents_and_upstreams_moved_by_hand,
            a_graph_in_a_batch_is_counted_with_it,
            a_batch_cancel_cascades_to_a_dependent_in_another_batch_which_counts_it,
            a_chain_deeper_than_the_bound_is_refused_and_the_deepest_cascades,
            a_job_waiting_for_a_batch_is_released_when_it_succeeds,
            a_batch_with_failures_cancels_or_runs_its_dependents_by_policy,
            a_cancelled_batch_fails_its_dependents_once_it_has_finished,
            a_batch_finished_at_insert_is_applied_at_insert,
            waiting_for_an_unknown_open_or_own_batch_is_refused_and_nothing_inserted,
            a_released_dependent_stays_released_when_its_batch_reopens,
            pruning_keeps_a_batch_an_unfinished_job_waits_for,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(harness): Option<$crate::Harness> = $make.await.into() else {
                    return;
                };
                $crate::cases::$case(harness.store.clone()).await;
            }
        )*
    };
}
