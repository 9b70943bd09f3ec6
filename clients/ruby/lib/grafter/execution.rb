# frozen_string_literal: true

require "grafter/errors"
require_relative "monotonic"

module Grafter
  # One attempt of a leased job as it runs in this process (a worker thread
  # or a push request): its lease, the progress it reports, whether a cancel
  # was asked for, and what ActiveJob decided (retry_job, discard, retry_on
  # exhausted). `Execution.current` is the one running on this thread.
  class Execution
    include Monotonic

    attr_reader :job, :id, :lease, :attempt, :max_attempts, :kind, :queue, :args, :timeout_ms, :thread
    attr_accessor :retry_request, :discarded, :final_error, :active_job_id

    # `started_at`: when the attempt arrived (monotonic: the fetch's answer,
    # the push request), from which its lease (`lease_seconds` long) and
    # its `timeout_ms` (default the job's) run.
    def initialize(job, lease: job["lease"], lease_seconds: 30, started_at: monotonic, timeout_ms: job["timeout_ms"])
      @job = job
      @id = job.fetch("id")
      @lease = lease
      @attempt = job["attempt"].to_i
      @max_attempts = job["max_attempts"].to_i
      @kind = job["kind"]
      @queue = job["queue"]
      @args = job["args"]
      @timeout_ms = timeout_ms
      @lock = Mutex.new
      @progress = nil
      @progress_version = 0
      @cancel_requested_at = nil
      @interrupt = nil
      @body_running = false
      @body_done = false
      @started_at = started_at
      @lease_expires_at = @started_at + lease_seconds
      @deadline = @timeout_ms ? @started_at + (@timeout_ms.to_f / 1000) : nil
    end

    # The job's timeout_ms, when the execution was made without it (a job
    # finished after a push's 202 learns it from a heartbeat's answer): the
    # deadline counts from when this attempt arrived. A timeout already
    # known stays.
    def timeout_learned!(timeout_ms)
      return unless timeout_ms.is_a?(Integer) && timeout_ms.positive?

      @lock.synchronize do
        next if @timeout_ms

        @timeout_ms = timeout_ms
        @deadline = @started_at + (timeout_ms.to_f / 1000)
      end
    end

    def self.current
      Thread.current[:grafter_execution]
    end

    # Runs the block as the current execution of this thread.
    def self.with(execution)
      previous = Thread.current[:grafter_execution]
      Thread.current[:grafter_execution] = execution
      yield
    ensure
      Thread.current[:grafter_execution] = previous
    end

    # Longest progress message the server keeps, in bytes (MAX_PROGRESS_MESSAGE
    # in crates/grafter-engine/src/jobs.rs): a longer one is cut here, at a
    # character boundary, so that a heartbeat never carries more.
    MAX_PROGRESS_MESSAGE_BYTES = 1024

    # Records progress (0.0..1.0, and an optional message); the next heartbeat
    # carries it. A fraction that is not a finite number from 0 to 1 raises
    # ArgumentError here, in the job. The message is made valid UTF-8 (text in
    # another encoding transcoded, invalid bytes replaced by U+FFFD) and cut
    # to MAX_PROGRESS_MESSAGE_BYTES: the fraction is never lost to it.
    def progress!(fraction, message = nil)
      fraction = Execution.progress_fraction(fraction)
      value = { "fraction" => fraction }
      value["message"] = Execution.progress_message(message) unless message.nil?
      @lock.synchronize do
        @progress = value
        @progress_version += 1
      end
    end

    # `fraction` as a Float from 0.0 to 1.0, or ArgumentError naming the rule.
    def self.progress_fraction(fraction)
      number = begin
        fraction.is_a?(Numeric) ? fraction.to_f : Float(fraction)
      rescue TypeError, ArgumentError, RangeError
        nil
      end
      return number if number&.finite? && number.between?(0.0, 1.0)

      raise ArgumentError, "the progress fraction must be a finite number from 0.0 to 1.0, got #{fraction.inspect}"
    end

    # `message` as valid UTF-8 of at most MAX_PROGRESS_MESSAGE_BYTES.
    def self.progress_message(message)
      text = message.to_s
      text = if [Encoding::UTF_8, Encoding::BINARY, Encoding::US_ASCII].include?(text.encoding)
               text.dup.force_encoding(Encoding::UTF_8).scrub
             else
               text.encode(Encoding::UTF_8, invalid: :replace, undef: :replace)
             end
      return text if text.bytesize <= MAX_PROGRESS_MESSAGE_BYTES

      text.byteslice(0, MAX_PROGRESS_MESSAGE_BYTES).scrub("")
    rescue EncodingError
      text.dup.force_encoding(Encoding::UTF_8).scrub.byteslice(0, MAX_PROGRESS_MESSAGE_BYTES).scrub("")
    end

    # Forgets the progress of `version` (one the server refused), unless a
    # newer report replaced it: heartbeats go on without it.
    def drop_progress!(version)
      @lock.synchronize { @progress = nil if @progress_version == version }
    end

    # [version, progress]: the version grows with every report.
    def progress
      @lock.synchronize { [@progress_version, @progress] }
    end

    def cancel_requested!
      @lock.synchronize { @cancel_requested_at ||= monotonic }
    end

    def cancelled?
      !@lock.synchronize { @cancel_requested_at }.nil?
    end

    # Seconds since the cancel was first seen, or nil.
    def cancel_requested_for
      at = @lock.synchronize { @cancel_requested_at }
      at && monotonic - at
    end

    def lease_renewed!(seconds)
      @lock.synchronize { @lease_expires_at = monotonic + seconds }
    end

    # Monotonic time at which the lease runs out unless renewed.
    def lease_expires_at
      @lock.synchronize { @lease_expires_at }
    end

    def past_deadline?
      left = time_left
      !left.nil? && left <= 0
    end

    # Seconds until the timeout (negative once past it), or nil without one.
    def time_left
      deadline = @lock.synchronize { @deadline }
      deadline && deadline - monotonic
    end

    # Why the worker interrupted the job (:timeout, :cancel, :abandoned), or nil.
    def interrupt
      @lock.synchronize { @interrupt }
    end

    def body_running?
      @lock.synchronize { @body_running }
    end

    # Raises `exception` in the job's thread for `reason`, once, and only
    # while the job's own code runs (never into the worker's bookkeeping).
    # True if it was raised.
    def interrupt!(reason, exception, message)
      @lock.synchronize do
        return false unless @body_running && @interrupt.nil?

        @interrupt = reason
        @thread.raise(exception, message)
        true
      end
    end

    # True the first time only: whoever records the outcome first (the job's
    # own thread, or the worker giving up on a stuck job or handing it back at
    # shutdown) owns it.
    def settle!
      @lock.synchronize do
        return false if @settled

        @settled = true
      end
    end

    # Marks the job abandoned without raising (it is not running its body).
    def abandon!
      @lock.synchronize { @interrupt ||= :abandoned }
    end

    # Runs the job's code on this thread, interruptible by #interrupt! only
    # inside the block. Answers [value, exception]: what the block returned,
    # or what it raised (any Exception: a job's `exit` or a non-StandardError
    # fails the job, not the worker).
    def run_body
      Thread.handle_interrupt(JobInterrupt => :never) do
        @lock.synchronize do
          @thread = Thread.current
          @body_running = true
        end
        outcome = begin
          [Thread.handle_interrupt(JobInterrupt => :immediate) { yield }, nil]
        rescue Exception => e # rubocop:disable Lint/RescueException
          [nil, e]
        ensure
          # Also when the job kills its thread (Thread#kill passes every
          # rescue): no interrupt may be aimed at the worker's code after it.
          @lock.synchronize { @body_running = false }
        end
        # An interrupt raised just as the block ended is pending here: take
        # it now, so it cannot fire later in the worker's own code.
        while Thread.pending_interrupt?
          begin
            Thread.handle_interrupt(JobInterrupt => :immediate) { nil }
          rescue JobInterrupt
            nil
          end
        end
        outcome
      end
    end
  end
end
