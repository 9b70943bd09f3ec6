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

    # `lease_seconds`: how long the lease runs from now (the fetch's or push's).
    def initialize(job, lease: job["lease"], lease_seconds: 30)
      @job = job
      @id = job.fetch("id")
      @lease = lease
      @attempt = job["attempt"].to_i
      @max_attempts = job["max_attempts"].to_i
      @kind = job["kind"]
      @queue = job["queue"]
      @args = job["args"]
      @timeout_ms = job["timeout_ms"]
      @lock = Mutex.new
      @progress = nil
      @progress_version = 0
      @cancel_requested_at = nil
      @interrupt = nil
      @body_running = false
      @body_done = false
      @lease_expires_at = monotonic + lease_seconds
      @deadline = @timeout_ms ? monotonic + (@timeout_ms.to_f / 1000) : nil
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

    # Records progress (0.0..1.0, and an optional message); the next heartbeat
    # carries it.
    def progress!(fraction, message = nil)
      fraction = Float(fraction)
      raise ArgumentError, "progress is a fraction from 0 to 1, got #{fraction}" unless fraction.between?(0.0, 1.0)

      value = { "fraction" => fraction }
      value["message"] = message.to_s unless message.nil?
      @lock.synchronize do
        @progress = value
        @progress_version += 1
      end
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
      !@deadline.nil? && monotonic >= @deadline
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
