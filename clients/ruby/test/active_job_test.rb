# frozen_string_literal: true

require_relative "test_helper"
# Debian's ruby-activejob, without Rails.
require "grafter/active_job"
require "grafter/worker"

ActiveJob::Base.logger = Logger.new(nil)

module AdapterJobs
  RUNS = Hash.new(0)
  LOCK = Mutex.new

  def self.ran(name)
    LOCK.synchronize { RUNS[name] += 1 }
  end

  def self.runs(name)
    LOCK.synchronize { RUNS[name] }
  end

  class StillBroken < StandardError; end
  class Unwanted < StandardError; end

  class BaseJob < ActiveJob::Base
    self.queue_adapter = :grafter
  end

  class OkJob < BaseJob
    def perform(name, count:)
      AdapterJobs.ran(name)
      grafter_progress(0.5, "half of #{count}")
      # Long enough for a heartbeat to carry the progress (an ack does not).
      sleep 0.6 if count > 3
      { "name" => name, "count" => count, "attempt" => grafter_attempt, "id" => grafter_job_id }
    end
  end

  class OptionsJob < BaseJob
    queue_as :reports
    queue_with_priority 7
    grafter_options timeout: 10, expires_in: 3600, max_attempts: 5, tags: ["reports"],
                    unique: ->(job) { "report-#{job.arguments.first}" }, backoff: { base_ms: 50, factor: 2.0 }

    def perform(_id); end
  end

  class RetryThreeJob < BaseJob
    retry_on StillBroken, attempts: 3, wait: 0

    def perform(name)
      AdapterJobs.ran(name)
      raise StillBroken, "attempt #{grafter_attempt}"
    end
  end

  class DiscardJob < BaseJob
    discard_on Unwanted

    def perform(name)
      AdapterJobs.ran(name)
      raise Unwanted, "not worth doing"
    end
  end

  class Flaky < StandardError; end

  # Polls: runs again later (retry_job, no retry_on) until ready.
  class PollJob < BaseJob
    grafter_options max_attempts: 1

    def perform(name)
      runs = AdapterJobs.ran(name)
      return "ready after #{runs} runs" if runs >= 3

      retry_job(wait: 0.1)
    end
  end

  # Retries its own way: rescue_from with retry_job, no retry_on.
  class RescueRetryJob < BaseJob
    grafter_options max_attempts: 1
    rescue_from(Flaky) { retry_job wait: 0.1 }

    def perform(name)
      runs = AdapterJobs.ran(name)
      raise Flaky, "not yet" if runs < 3

      "worked after #{runs} runs"
    end
  end

  # ActiveJob ignores what perform returns, here by accident 2.4 MB.
  class BigReturnJob < BaseJob
    def perform(name)
      AdapterJobs.ran(name)
      Array.new(300_000) { "abcdef" }
    end
  end

  class FailOnceJob < BaseJob
    grafter_options backoff: { base_ms: 1500, factor: 1.0, max_ms: 1500, jitter: 0.0 }

    def perform(name)
      AdapterJobs.ran(name)
      raise ArgumentError, "first attempt fails" if grafter_attempt == 1

      "second time lucky"
    end
  end
end

class ActiveJobTest < Minitest::Test
  def setup
    Grafter.configure do |config|
      config.url = server.url
      config.enqueuer = nil
    end
  end

  # A test here that configures its own enqueuer must not leave it to the
  # next test, of whatever class (ClientTest checks the default enqueuer).
  def teardown
    Grafter.configure { |config| config.enqueuer = nil }
  end

  def test_perform_later_enqueues_the_serialized_job_and_sets_provider_job_id
    queue = unique("aj")
    job = AdapterJobs::OkJob.set(queue: queue, priority: 2).perform_later("ada", count: 3)
    stored = client.job(job.provider_job_id)
    assert_equal ["AdapterJobs::OkJob", queue, 2, "available"], stored.values_at("kind", "queue", "priority", "state")
    assert_equal job.serialize.slice("job_class", "job_id", "arguments"), stored["args"].slice("job_class", "job_id", "arguments")

    scheduled = AdapterJobs::OkJob.set(queue: queue, wait: 600).perform_later("later", count: 1)
    stored = client.job(scheduled.provider_job_id)
    assert_equal "scheduled", stored["state"]
    assert_in_delta Time.now.to_f + 600, Time.iso8601(stored["run_at"]).to_f, 5
  end

  def test_class_options_and_set_options_become_job_fields
    job = AdapterJobs::OptionsJob.perform_later(42)
    stored = client.job(job.provider_job_id)
    assert_equal ["reports", 7, 10_000, 5, ["reports"], "report-42"],
                 stored.values_at("queue", "priority", "timeout_ms", "max_attempts", "tags", "unique_key")
    assert_in_delta Time.now.to_f + 3600, Time.iso8601(stored["expires_at"]).to_f, 5
    assert_equal({ "base_ms" => 50, "factor" => 2.0 }, stored["backoff"].slice("base_ms", "factor"))

    again = AdapterJobs::OptionsJob.perform_later(42)
    assert_equal job.provider_job_id, again.provider_job_id, "the unique key holds"

    per_call = AdapterJobs::OptionsJob.set(timeout: 60, max_attempts: 2, unique: "other", tags: %w[x y]).perform_later(1)
    stored = client.job(per_call.provider_job_id)
    assert_equal [60_000, 2, "other", %w[x y]], stored.values_at("timeout_ms", "max_attempts", "unique_key", "tags")
    client.cancel(job.provider_job_id)
    client.cancel(per_call.provider_job_id)

    assert_raises(ArgumentError) { AdapterJobs::OptionsJob.grafter_options(timout: 1) }
  end

  def test_a_configured_enqueuer_takes_the_job
    taken = []
    enqueuer = Object.new
    enqueuer.define_singleton_method(:enqueue) { |**fields| taken << fields and { "id" => 999 } }
    Grafter.configure { |config| config.enqueuer = enqueuer }
    job = AdapterJobs::OkJob.perform_later("x", count: 1)
    assert_equal 999, job.provider_job_id
    assert_equal "AdapterJobs::OkJob", taken.first[:kind]
  end

  def test_a_job_enqueued_inside_with_trace_carries_it
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    job = Grafter.with_trace(traceparent, "rojo=1") { AdapterJobs::OkJob.set(queue: unique("aj-trace")).perform_later("t", count: 1) }
    stored = client.job(job.provider_job_id)
    assert_equal [traceparent, "rojo=1"], stored.values_at("traceparent", "tracestate")
    assert_nil Grafter.current_trace, "only inside the block"
    untraced = AdapterJobs::OkJob.set(queue: unique("aj-trace")).perform_later("u", count: 1)
    refute client.job(untraced.provider_job_id).key?("traceparent")
  end

  def test_perform_all_later_enqueues_all_in_one_call_and_sets_provider_job_ids
    queue = unique("aj-all")
    jobs = [AdapterJobs::OkJob.new("a", count: 1), AdapterJobs::OkJob.new("b", count: 2), AdapterJobs::OptionsJob.new(7)]
    # Rails 6.1's job instances have no #set: their attributes are what it would set.
    jobs.first(2).each { |job| job.queue_name = queue }
    jobs[1].scheduled_at = Time.now.to_f + 600
    assert_equal 3, Grafter.perform_all_later(jobs)
    stored = jobs.map { |job| client.job(job.provider_job_id) }
    assert_equal [[queue, "available"], [queue, "scheduled"], %w[reports available]],
                 stored.map { |job| job.values_at("queue", "state") }
    assert_equal "report-7", stored.last["unique_key"], "class options apply"
    assert_equal jobs.map(&:job_id), stored.map { |job| job["args"]["job_id"] }
    client.cancel(jobs.last.provider_job_id)

    calls = []
    enqueuer = Object.new
    enqueuer.define_singleton_method(:enqueue_many) { |list| calls << list and list.each_index.map { |i| { "id" => i + 1 } } }
    Grafter.configure { |config| config.enqueuer = enqueuer }
    two = [AdapterJobs::OkJob.new("c", count: 1), AdapterJobs::OkJob.new("d", count: 1)]
    Grafter.perform_all_later(*two)
    assert_equal [2], calls.map(&:size), "one call for both"
    assert_equal [1, 2], two.map(&:provider_job_id)

    invalid = [AdapterJobs::OkJob.new("e", count: 1), AdapterJobs::OptionsJob.new(8)]
    Grafter.configure { |config| config.enqueuer = nil }
    invalid.first.priority = 70_000
    assert_raises(ArgumentError) { Grafter.perform_all_later(invalid) }
  end

  # One request for all used to be refused (413) past 1 MiB of jobs, and
  # by the server past 10,000 jobs.
  def test_perform_all_later_of_many_jobs_splits_them_under_the_servers_limits_in_order
    queue = unique("aj-many")
    jobs = Array.new(10_000) { |n| AdapterJobs::OkJob.new("job-#{n}", count: n) }
    jobs.each { |job| job.queue_name = queue }
    assert_equal 10_000, Grafter.perform_all_later(jobs)
    ids = jobs.map(&:provider_job_id)
    assert_equal ids.sort, ids, "in order"
    assert_equal 10_000, ids.uniq.size
    [jobs.first, jobs[5_000], jobs.last].each do |job|
      assert_equal [job.job_id, queue], client.job(job.provider_job_id).then { |j| [j["args"]["job_id"], j["queue"]] }
    end

    calls = []
    enqueuer = Object.new
    enqueuer.define_singleton_method(:enqueue_many) do |list|
      calls << [list.size, JSON.generate("jobs" => list.map { |job| Grafter::JobFields.job_fields(job) }).bytesize]
      list.each_index.map { |i| { "id" => calls.sum(&:first) - list.size + i + 1 } }
    end
    Grafter.configure { |config| config.enqueuer = enqueuer }
    some = jobs.first(4_000)
    Grafter.perform_all_later(some)
    assert_operator calls.size, :>, 1
    assert(calls.all? { |_, bytes| bytes <= Grafter::JobFields::SERVER_BODY_LIMIT_BYTES }, calls.inspect)
    assert_equal (1..4_000).to_a, some.map(&:provider_job_id)
    assert_equal [10_000, 1], Grafter::JobFields.batches(Array.new(10_001) { { kind: "k" } }).map(&:size),
                 "at most 10,000 jobs a request"
  end

  def test_perform_all_later_and_enqueue_many_of_nothing_do_nothing
    assert_equal 0, Grafter.perform_all_later([])
    assert_equal [], client.enqueue_many([])
  end

  def test_the_worker_runs_jobs_with_results_and_progress
    queue = unique("aj-run")
    name = unique("ok")
    with_worker(queue) do
      job = AdapterJobs::OkJob.set(queue: queue).perform_later(name, count: 4)
      done = wait_state(job.provider_job_id, "completed")
      assert_equal({ "name" => name, "count" => 4, "attempt" => 1, "id" => job.provider_job_id }, done["result"])
      assert_equal({ "fraction" => 0.5, "message" => "half of 4" }, done["progress"])
    end
  end

  def test_retry_on_three_attempts_runs_exactly_three_times_then_dead
    queue = unique("aj-retry")
    name = unique("retry")
    with_worker(queue) do
      job = AdapterJobs::RetryThreeJob.set(queue: queue).perform_later(name)
      dead = wait_state(job.provider_job_id, "dead")
      assert_equal 3, dead["attempt"]
      assert_equal 3, AdapterJobs.runs(name)
      assert_equal ["AdapterJobs::StillBroken: attempt 1", "AdapterJobs::StillBroken: attempt 2",
                    "AdapterJobs::StillBroken: attempt 3"], dead["errors"].map { |e| e["error"].lines.first.chomp }
      assert_equal 1, client.jobs(queue: queue)["jobs"].size, "retries stay in one Grafter job"
    end
  end

  # retry_job without retry_on used to fail the attempt ("retry_job without
  # an error"): dead at max_attempts, where Sidekiq enqueues it again.
  def test_retry_job_without_retry_on_runs_again_without_using_up_attempts
    queue = unique("aj-poll")
    with_worker(queue) do
      polled = AdapterJobs::PollJob.set(queue: queue).perform_later(poll = unique("poll"))
      rescued = AdapterJobs::RescueRetryJob.set(queue: queue).perform_later(rescue_name = unique("rescue"))
      assert_equal ["completed", "ready after 3 runs", 1, []],
                   wait_state(polled.provider_job_id, %w[completed dead]).values_at("state", "result", "attempt", "errors")
      assert_equal ["completed", "worked after 3 runs", 1, []],
                   wait_state(rescued.provider_job_id, %w[completed dead]).values_at("state", "result", "attempt", "errors")
      assert_equal [3, 3], [AdapterJobs.runs(poll), AdapterJobs.runs(rescue_name)]
    end
  end

  # A job run first with perform_now, whose retry_on enqueued it, started
  # its executions again from 0 in Grafter: it ran attempts + 1 times.
  def test_executions_before_the_grafter_job_count_towards_retry_on
    queue = unique("aj-perform-now")
    name = unique("now-then-later")
    job = AdapterJobs::RetryThreeJob.new(name)
    job.queue_name = queue
    job.perform_now
    assert_equal 1, AdapterJobs.runs(name)
    with_worker(queue) do
      dead = wait_state(job.provider_job_id, %w[dead completed])
      assert_equal ["dead", 2], dead.values_at("state", "attempt"), "3 runs in all: 1 at once, 2 in Grafter"
      assert_equal 3, AdapterJobs.runs(name)
    end
  end

  # Such a result used to make the job dead ("its result could not be
  # recorded", 413), as if it had failed.
  def test_a_return_value_too_large_to_record_is_dropped_and_the_job_completes
    queue = unique("aj-big-return")
    name = unique("big")
    with_worker(queue) do |_worker, log|
      job = AdapterJobs::BigReturnJob.set(queue: queue).perform_later(name)
      done = wait_state(job.provider_job_id, %w[completed dead])
      assert_equal ["completed", nil, 1, []], done.values_at("state", "result", "attempt", "errors")
      assert_equal 1, log.string.scan(/job #{job.provider_job_id} completed; its result is too large/).size, log.string
      assert_equal 1, AdapterJobs.runs(name)
    end
  end

  def test_discard_on_completes_without_dead
    queue = unique("aj-discard")
    name = unique("discard")
    with_worker(queue) do
      job = AdapterJobs::DiscardJob.set(queue: queue).perform_later(name)
      done = wait_state(job.provider_job_id, %w[completed dead])
      assert_equal ["completed", { "discarded" => "AdapterJobs::Unwanted: not worth doing" }], done.values_at("state", "result")
      assert_equal 1, AdapterJobs.runs(name)
    end
  end

  def test_an_unrescued_error_is_a_failed_attempt_retried_with_grafter_backoff
    queue = unique("aj-fail")
    name = unique("fail-once")
    job = AdapterJobs::FailOnceJob.set(queue: queue).perform_later(name)
    id = job.provider_job_id
    with_worker(queue) do
      retrying = wait_state(id, "retryable")
      failed_at = Time.iso8601(retrying["errors"].first["at"])
      assert_in_delta 1.5, Time.iso8601(retrying["run_at"]) - failed_at, 0.2, "run again after the job's backoff"
      assert_match(/\AArgumentError: first attempt fails\n.*active_job_test\.rb/, retrying["errors"].first["error"])
      done = wait_state(id, "completed")
      assert_equal [2, "second time lucky"], done.values_at("attempt", "result")
      assert_equal 2, AdapterJobs.runs(name)
    end
  end

  # Each used to give an unclear or wrong error (FloatDomainError,
  # NoMethodError, a garbled or misleading refusal from the server) or none.
  def test_bad_option_values_raise_argument_errors_naming_the_option_at_enqueue
    queue = unique("bad-options")
    {
      { timeout: 0.0001 } => /timeout must be at least 1 ms/,
      { timeout: Float::NAN } => /timeout must be a finite number/,
      { timeout: Float::INFINITY } => /timeout must be a finite number/,
      { timeout: 1e20 } => /timeout must be at most .*100 years/,
      { wait: Float::NAN } => /wait must be a finite number/,
      { wait_until: Time.utc(10_001) } => /wait_until must be between 0001-01-01.* and 9999-12-31/,
      { backoff: "x" } => /backoff must be a Hash/,
      { tags: [nil] } => /tags must be an Array of non-empty strings/,
      { tags: { a: 1 } } => /tags must be an Array of non-empty strings/,
      { max_attempts: "x" } => /max_attempts must be an integer/,
      { bogus: 1 } => /unknown Grafter option bogus/,
      { push: :sync } => /push must be :async/
    }.each do |options, message|
      error = assert_raises(ArgumentError, options.inspect) do
        AdapterJobs::OkJob.set(queue: queue, **options).perform_later("never", count: 1)
      end
      assert_match message, error.message, options.inspect
    end
    assert_empty client.jobs(queue: queue)["jobs"], "nothing was enqueued"
    assert_raises(ArgumentError) { Class.new(AdapterJobs::BaseJob) { grafter_options push: :sync } }
    error = assert_raises(ArgumentError) { AdapterJobs::OkJob.new.grafter_progress(Float::NAN) }
    assert_match(/progress fraction must be a finite number from 0.0 to 1.0, got NaN/, error.message)
    error = assert_raises(ArgumentError) { client.enqueue(kind: "k", run_at: Time.utc(10_001)) }
    assert_match(/run_at must be between/, error.message)
    # What is fine still is.
    job = AdapterJobs::OkJob.set(queue: queue, timeout: 0.001, tags: "one", wait: 60).perform_later("fine", count: 1)
    assert_equal [1, ["one"], "scheduled"], client.job(job.provider_job_id).values_at("timeout_ms", "tags", "state")
  end
end
