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
  # second job: inside a Grafter attempt, `retry_job` fails the running
  # attempt with `retry_in_ms` = the retry_on wait, so one Grafter job shows
  # every attempt; once `attempts` are used up the error is final (`dead`,
  # whatever Grafter attempts remain). Attempts are counted by Grafter: the
  # n-th attempt runs with `executions == n`, and retry_on counts every
  # attempt of the job (as Rails 6.0 did), not only those that raised its
  # own exception. `discard_on` ends the job `completed`, with the result
  # {"discarded" => "Class: message"}, never `dead`. retry_on's `queue:` and
  # `priority:` do not move the job: an attempt reruns where it is.
  module ActiveJobSupport
    # Grafter's options, per class (grafter_options) or per call (set).
    #   timeout:     longest an attempt may run (seconds or a Duration) → timeout_ms
    #   expires_in:  not started within this of its run time → expired (expires_at)
    #   expires_at:  a time
    #   max_attempts:, tags: (array, or a proc given the job), backoff: {base_ms:, factor:, max_ms:, jitter:}
    #   unique:      unique_key, a string or a proc given the job
    #   push:        :async lets Grafter::Rack::PushEndpoint answer 202 and finish in the background
    OPTION_KEYS = %i[timeout expires_in expires_at max_attempts tags backoff unique push].freeze

    module_function

    # The fields of the Grafter job for `job` (ActiveJob::Base), to run at
    # `scheduled_at` (a float of seconds, or nil for now).
    def fields_for(job, scheduled_at)
      options = job.class.grafter_options_hash.merge(job.grafter_call_options)
      run_at = scheduled_at && Time.at(scheduled_at.to_f).utc
      fields = { kind: job.class.name, args: job.serialize, queue: job.queue_name.to_s }
      fields[:priority] = priority(job.priority) unless job.priority.nil?
      fields[:run_at] = run_at if run_at
      fields[:timeout_ms] = milliseconds(options[:timeout], :timeout) if options[:timeout]
      fields[:expires_at] = options[:expires_at] if options[:expires_at]
      if options[:expires_in]
        fields[:expires_at] = (run_at || Time.now) + (milliseconds(options[:expires_in], :expires_in) / 1000.0)
      end
      fields[:max_attempts] = Integer(options[:max_attempts]) if options[:max_attempts]
      fields[:tags] = Array(evaluate(options[:tags], job)).map(&:to_s) if options[:tags]
      fields[:unique_key] = evaluate(options[:unique], job).to_s if options[:unique]
      fields[:backoff] = backoff(options[:backoff]) if options[:backoff]
      fields.merge!(Grafter.current_trace) if Grafter.current_trace
      fields
    end

    # Enqueues the jobs (ActiveJob instances) in one call of the enqueuer's
    # `enqueue_many` (Grafter::Client: one POST /v1/jobs/batch, one commit;
    # Grafter::SqlEnqueuer: one statement), all or none; sets each one's
    # provider_job_id. Enqueue callbacks do not run, as with Rails 7.1's
    # perform_all_later. Answers how many were enqueued: none for no jobs,
    # without a call (the server refuses an empty batch).
    def enqueue_all(jobs)
      return 0 if jobs.empty?

      enqueuer = Grafter.config.enqueuer
      fields = jobs.map { |job| fields_for(job, job.scheduled_at) }
      answers = if enqueuer.respond_to?(:enqueue_many)
                  enqueuer.enqueue_many(fields)
                else
                  fields.map { |job_fields| enqueuer.enqueue(**job_fields) }
                end
      jobs.zip(answers) do |job, answer|
        job.provider_job_id = answer["id"] || answer[:id]
        job.successfully_enqueued = true if job.respond_to?(:successfully_enqueued=)
      end
      jobs.size
    end

    # Runs the ActiveJob payload of `execution` as its attempt number
    # `execution.attempt`.
    def execute(execution)
      job_data = execution.args.merge("provider_job_id" => execution.id, "executions" => execution.attempt - 1)
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

    def check_options!(options)
      unknown = options.keys.map(&:to_sym) - OPTION_KEYS
      return if unknown.empty?

      raise ArgumentError, "unknown Grafter option#{'s' if unknown.size > 1} #{unknown.join(', ')} " \
                           "(known: #{OPTION_KEYS.join(', ')})"
    end

    def priority(value)
      value = Integer(value)
      raise ArgumentError, "a Grafter priority is -32768 to 32767, got #{value}" unless value.between?(-32_768, 32_767)

      value
    end

    def milliseconds(value, name)
      ms = (value.to_f * 1000).round
      raise ArgumentError, "#{name} must be positive, got #{value.inspect}" unless ms.positive?

      ms
    end

    def evaluate(value, job)
      value.respond_to?(:call) ? value.call(job) : value
    end

    def backoff(options)
      options.to_h.to_h do |key, value|
        value = (value.to_f * 1000).round if defined?(::ActiveSupport::Duration) && value.is_a?(::ActiveSupport::Duration)
        [key.to_s, value]
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
      def enqueue(options = {})
        call_options = options.slice(*OPTION_KEYS)
        unless call_options.empty?
          ActiveJobSupport.check_options!(call_options)
          @grafter_call_options = grafter_call_options.merge(call_options)
        end
        super
      end

      # Reports progress (0.0 to 1.0, and a message) on the running attempt;
      # the worker's next heartbeat carries it. Does nothing outside Grafter.
      def grafter_progress(fraction, message = nil)
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
          # retry_job of the running attempt: fail it, to run again after the
          # wait, instead of enqueueing a second Grafter job.
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
  # Enqueues ActiveJob instances in one request, all or none (Rails 6.1 has
  # no ActiveJob.perform_all_later):
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
