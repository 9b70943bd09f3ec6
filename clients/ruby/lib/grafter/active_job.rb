# frozen_string_literal: true

require "active_job"
require "active_support/notifications"
require "grafter"
require "grafter/execution"
require "grafter/runner"

module Grafter
  # Grafter as ActiveJob's backend (`config.active_job.queue_adapter =
  # :grafter`).
  #
  # A job is enqueued with `kind` = the job class's name, `args` = ActiveJob's
  # own `job.serialize`, its queue and priority, and the Grafter options of
  # its class (`grafter_options`) and of the call (`MyJob.set(...)`).
  #
  # The retry rule: Grafter owns retries. An error that escapes `perform` is
  # a failed attempt, retried with Grafter's backoff and `dead` when
  # `max_attempts` run out. `retry_on` keeps its documented meaning without a
  # second job: inside a Grafter attempt, its `retry_job` fails the running
  # attempt with `retry_in_ms` = the retry_on wait, so one Grafter job shows
  # every attempt; once `attempts` are used up the error is final (`dead`,
  # whatever Grafter attempts remain). A `retry_job` of the job's own
  # (polling, or in a rescue_from: no error given) is a new run, as an
  # enqueue would be: the attempt is released to run again after the wait,
  # not counted, as often as the job asks (and `executions` does not grow:
  # Grafter counts attempts, not releases). Attempts are counted by
  # Grafter: the n-th attempt runs with `executions == n` (plus the runs
  # before it was enqueued, e.g. a perform_now whose retry_on enqueued it),
  # and retry_on counts every attempt of the job (as Rails 6.0 did), not
  # only those that raised its own exception. `discard_on` ends the job
  # `completed`, with the result {"discarded" => "Class: message"}, never
  # `dead`. retry_on's `queue:` and `priority:` do not move the job: an
  # attempt reruns where it is.
  module ActiveJobSupport
    # Grafter's options, per class (grafter_options) or per call (set).
    #   timeout:     longest an attempt may run (seconds or a Duration) → timeout_ms
    #   expires_in:  not started within this of its run time → expired (expires_at)
    #   expires_at:  a time
    #   max_attempts:, tags: (array, or a proc given the job), backoff: {base_ms:, factor:, max_ms:, jitter:}
    #   unique:      unique_key, a string or a proc given the job
    #   push:        :async lets Grafter::Rack::PushEndpoint answer 202 and finish in the background
    OPTION_KEYS = %i[timeout expires_in expires_at max_attempts tags backoff unique push].freeze
    # What ActiveJob's own `set` (and retry_job) passes to #enqueue.
    ACTIVE_JOB_KEYS = %i[wait wait_until queue priority error].freeze
    # The longest duration the server takes: 100 years (crates/grafter-core/src/time.rs).
    MAX_DURATION_MS = 100 * 365 * 24 * 3_600 * 1000
    BACKOFF_KEYS = %w[base_ms factor max_ms jitter].freeze
    MAX_ATTEMPTS = (1..2_147_483_647).freeze

    module_function

    # The fields of the Grafter job for `job` (ActiveJob::Base), to run at
    # `scheduled_at` (a float of seconds, or nil for now).
    def fields_for(job, scheduled_at)
      options = job.class.grafter_options_hash.merge(job.grafter_call_options)
      check_options!(options)
      run_at = scheduled_at && (scheduled_at.is_a?(Numeric) ? Time.at(seconds(scheduled_at, :wait)) : scheduled_at.to_time).utc
      fields = { kind: job.class.name, args: job.serialize, queue: job.queue_name.to_s }
      fields[:priority] = priority(job.priority) unless job.priority.nil?
      fields[:run_at] = time(run_at, :run_at) if run_at
      fields[:timeout_ms] = milliseconds(options[:timeout], :timeout) unless options[:timeout].nil?
      fields[:expires_at] = time(options[:expires_at], :expires_at) unless options[:expires_at].nil?
      unless options[:expires_in].nil?
        expires_at = (run_at || Time.now) + (milliseconds(options[:expires_in], :expires_in) / 1000.0)
        fields[:expires_at] = time(expires_at, :expires_in)
      end
      fields[:max_attempts] = max_attempts(options[:max_attempts]) unless options[:max_attempts].nil?
      fields[:tags] = tags(evaluate(options[:tags], job)) unless options[:tags].nil?
      fields[:unique_key] = evaluate(options[:unique], job).to_s if options[:unique]
      fields[:backoff] = backoff(options[:backoff]) unless options[:backoff].nil?
      fields.merge!(Grafter.current_trace) if Grafter.current_trace
      fields
    end

    # Enqueues the jobs (ActiveJob instances) with the enqueuer's
    # `enqueue_many` (Grafter::Client: one POST /v1/jobs/batch, one commit;
    # Grafter::SqlEnqueuer: one statement), all or none, in as few calls as
    # the server's limits allow (JobFields.batches: 10,000 jobs, 1 MiB), in
    # order; sets each one's provider_job_id as its call returns (a call
    # that fails leaves the earlier ones enqueued). Every job is checked
    # before the first call. Enqueue callbacks do not run, as with Rails
    # 7.1's perform_all_later. Answers how many were enqueued: none for no
    # jobs, without a call (the server refuses an empty batch).
    def enqueue_all(jobs)
      return 0 if jobs.empty?

      enqueuer = Grafter.config.enqueuer
      fields = jobs.map { |job| fields_for(job, job.scheduled_at) }
      done = 0
      JobFields.batches(fields).each do |batch|
        answers = if enqueuer.respond_to?(:enqueue_many)
                    enqueuer.enqueue_many(batch)
                  else
                    batch.map { |job_fields| enqueuer.enqueue(**job_fields) }
                  end
        jobs[done, batch.size].zip(answers) do |job, answer|
          job.provider_job_id = answer["id"] || answer[:id]
          job.successfully_enqueued = true if job.respond_to?(:successfully_enqueued=)
        end
        done += batch.size
      end
      jobs.size
    end

    # Runs the ActiveJob payload of `execution` as its attempt number
    # `execution.attempt`. Its `executions` count the runs before the
    # Grafter job was enqueued (a perform_now whose retry_on enqueued it)
    # and its attempts before this one.
    def execute(execution)
      executions = execution.args["executions"].to_i + execution.attempt - 1
      job_data = execution.args.merge("provider_job_id" => execution.id, "executions" => executions)
      execution.active_job_id = job_data["job_id"]
      ::ActiveJob::Base.execute(job_data)
    end

    def push_async?(job_data)
      job_class = job_data["job_class"].safe_constantize
      job_class.respond_to?(:grafter_options_hash) && job_class.grafter_options_hash[:push] == :async
    end

    def job_class_names
      ::ActiveJob::Base.descendants.filter_map(&:name)
    end

    # Raises ArgumentError for an option Grafter does not know (beyond
    # `also`, the ones ActiveJob itself takes) or a `push` other than :async.
    def check_options!(options, also: [])
      unknown = options.keys.map(&:to_sym) - OPTION_KEYS - also
      unless unknown.empty?
        raise ArgumentError, "unknown Grafter option#{'s' if unknown.size > 1} #{unknown.join(', ')} " \
                             "(known: #{(OPTION_KEYS + also).join(', ')})"
      end
      push = options[:push]
      return if push.nil? || push == :async

      raise ArgumentError, "push must be :async (or left out), got #{push.inspect}"
    end

    # ActiveJob's own scheduling options, checked before ActiveJob reads
    # them (a NaN wait would raise FloatDomainError there, a time past year
    # 9999 a garbled refusal from the server).
    def check_schedule!(options)
      seconds(options[:wait], :wait) unless options[:wait].nil?
      time(options[:wait_until], :wait_until) unless options[:wait_until].nil?
      time(Time.now + seconds(options[:wait], :wait), :wait) unless options[:wait].nil?
    end

    def priority(value)
      value = integer(value, :priority)
      raise ArgumentError, "a Grafter priority is -32768 to 32767, got #{value}" unless value.between?(-32_768, 32_767)

      value
    end

    def integer(value, name)
      return value if value.is_a?(Integer)

      Integer(value, 10)
    rescue ArgumentError, TypeError
      raise ArgumentError, "#{name} must be an integer, got #{value.inspect}"
    end

    def max_attempts(value)
      value = integer(value, :max_attempts)
      return value if MAX_ATTEMPTS.cover?(value)

      raise ArgumentError, "max_attempts must be #{MAX_ATTEMPTS.min} to #{MAX_ATTEMPTS.max}, got #{value}"
    end

    # A finite number of seconds (a Numeric or an ActiveSupport::Duration).
    def seconds(value, name)
      number = value.is_a?(Numeric) ? value.to_f : nil
      return number if number&.finite?

      raise ArgumentError, "#{name} must be a finite number of seconds (or a Duration), got #{value.inspect}"
    end

    # Whole milliseconds from seconds: 1 ms to 100 years, as the server takes.
    def milliseconds(value, name)
      ms = (seconds(value, name) * 1000).round
      if ms < 1
        raise ArgumentError, "#{name} must be at least 1 ms (0.001 seconds), got #{value.inspect} " \
                             "(#{value.is_a?(Numeric) && value.to_f.positive? ? 'rounds to 0 ms' : 'not positive'})"
      end
      return ms if ms <= MAX_DURATION_MS

      raise ArgumentError, "#{name} must be at most #{MAX_DURATION_MS / 1000} seconds (100 years), got #{value.inspect}"
    end

    # The time, checked to be within the years the server takes.
    def time(value, name)
      JobFields.timestamp(value, name.to_s)
      value
    end

    def evaluate(value, job)
      value.respond_to?(:call) ? value.call(job) : value
    end

    # An Array of tags (or one tag): each a non-empty String, Symbol or Integer.
    def tags(value)
      list = value.is_a?(String) || value.is_a?(Symbol) ? [value] : value
      unless list.is_a?(Array) && list.all? { |tag| [String, Symbol, Integer].any? { |type| tag.is_a?(type) } && !tag.to_s.empty? }
        raise ArgumentError, "tags must be an Array of non-empty strings, got #{value.inspect}"
      end

      list.map(&:to_s)
    end

    # {base_ms:, factor:, max_ms:, jitter:} (any of them); base_ms and max_ms
    # may be Durations.
    def backoff(options)
      unless options.is_a?(Hash) && (options.keys.map(&:to_s) - BACKOFF_KEYS).empty?
        raise ArgumentError, "backoff must be a Hash with any of #{BACKOFF_KEYS.join(', ')}, got #{options.inspect}"
      end

      options.to_h do |key, value|
        key = key.to_s
        number = seconds(value, "backoff #{key}")
        value = (number * 1000).round if defined?(::ActiveSupport::Duration) && value.is_a?(::ActiveSupport::Duration)
        [key, value]
      end
    end

    # The running Grafter attempt of `job`, if this thread runs one.
    def execution_of(job)
      execution = Execution.current
      execution if execution && execution.active_job_id == job.job_id
    end

    # Methods of every ActiveJob::Base subclass.
    module JobExtensions
      extend ActiveSupport::Concern

      included do
        class_attribute :grafter_options_hash, instance_writer: false, default: {}
      end

      class_methods do
        # grafter_options timeout: 10.seconds, expires_in: 1.hour, max_attempts: 5,
        #                 unique: ->(job) { "export-#{job.arguments.first}" }, tags: ["exports"]
        def grafter_options(**options)
          ActiveJobSupport.check_options!(options)
          self.grafter_options_hash = grafter_options_hash.merge(options)
        end
      end

      # The Grafter options given to set(...) for this enqueue.
      def grafter_call_options
        @grafter_call_options || {}
      end

      # MyJob.set(timeout: 1.minute, max_attempts: 3).perform_later(...)
      # Unknown options and bad values raise ArgumentError here, naming them.
      def enqueue(options = {})
        ActiveJobSupport.check_options!(options, also: ACTIVE_JOB_KEYS)
        ActiveJobSupport.check_schedule!(options)
        call_options = options.slice(*OPTION_KEYS)
        @grafter_call_options = grafter_call_options.merge(call_options) unless call_options.empty?
        super
      end

      # Reports progress (0.0 to 1.0, and a message) on the running attempt;
      # the worker's next heartbeat carries it. Does nothing outside Grafter,
      # but a fraction that is not a finite number from 0 to 1 raises
      # ArgumentError either way. The message is made valid UTF-8 and cut to
      # the server's 1024 bytes (Execution#progress!).
      def grafter_progress(fraction, message = nil)
        Execution.progress_fraction(fraction)
        ActiveJobSupport.execution_of(self)&.progress!(fraction, message)
        nil
      end

      # True once a cancel of this job was asked for through the API.
      def grafter_cancelled?
        ActiveJobSupport.execution_of(self)&.cancelled? || false
      end

      def grafter_job_id
        ActiveJobSupport.execution_of(self)&.id || provider_job_id
      end

      def grafter_attempt
        ActiveJobSupport.execution_of(self)&.attempt || executions
      end

      def retry_job(options = {})
        @grafter_retry_error = options[:error] if ActiveJobSupport.execution_of(self)
        super
      end

      private

      # Inside a Grafter attempt, retry_on counts the job's attempts (the
      # per-exception counts of a serialized job are not carried from one
      # Grafter attempt to the next: the stored args never change).
      def executions_for(exceptions)
        ActiveJobSupport.execution_of(self) ? executions : super
      end
    end

    ActiveSupport::Notifications.subscribe("retry_stopped.active_job") do |*, payload|
      execution = payload[:job] && execution_of(payload[:job])
      execution.final_error = payload[:error] if execution
    end

    ActiveSupport::Notifications.subscribe("discard.active_job") do |*, payload|
      execution = payload[:job] && execution_of(payload[:job])
      execution.discarded = payload[:error] || true if execution
    end
  end
end

module ActiveJob
  module QueueAdapters
    # `config.active_job.queue_adapter = :grafter`. Enqueues through
    # Grafter.config.enqueuer (by default Grafter.client; or e.g. a
    # Grafter::SqlEnqueuer, to enqueue inside the app's transaction).
    class GrafterAdapter
      # Rails 7.1's ActiveJob.perform_all_later; on older Rails,
      # Grafter.perform_all_later.
      def enqueue_all(jobs)
        Grafter::ActiveJobSupport.enqueue_all(jobs)
      end

      def enqueue(job)
        enqueue_at(job, nil)
      end

      def enqueue_at(job, timestamp)
        if (execution = Grafter::ActiveJobSupport.execution_of(job))
          # retry_job of the running attempt: it runs again after the wait
          # (Runner.decide: a failed attempt for retry_on, else a release)
          # instead of enqueueing a second Grafter job.
          delay_ms = timestamp ? [((timestamp.to_f - Time.now.to_f) * 1000).round, 0].max : 0
          execution.retry_request = { delay_ms: delay_ms, error: job.instance_variable_get(:@grafter_retry_error) }
          return
        end
        answer = Grafter.config.enqueuer.enqueue(**Grafter::ActiveJobSupport.fields_for(job, timestamp))
        job.provider_job_id = answer["id"] || answer[:id]
      end
    end
  end
end

ActiveSupport.on_load(:active_job) { include Grafter::ActiveJobSupport::JobExtensions }

module Grafter
  # Enqueues ActiveJob instances in one request per 10,000 jobs or 1 MiB,
  # all or none each (Rails 6.1 has no ActiveJob.perform_all_later):
  #   Grafter.perform_all_later(users.map { |user| WelcomeJob.new(user.id) })
  # Each job's class must use the :grafter adapter.
  def self.perform_all_later(*jobs)
    jobs = jobs.flatten
    others = jobs.reject { |job| job.class.queue_adapter.is_a?(ActiveJob::QueueAdapters::GrafterAdapter) }
    unless others.empty?
      raise ArgumentError, "Grafter.perform_all_later: #{others.map { |job| job.class.name }.uniq.join(', ')} " \
                           "do not use the :grafter queue adapter"
    end

    ActiveJobSupport.enqueue_all(jobs)
  end
end
