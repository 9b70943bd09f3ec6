# frozen_string_literal: true

require "json"
require "grafter/errors"
require_relative "monotonic"

module Grafter
  # Records outcomes (ack, fail, release) so that none is lost to a blip: a
  # server that cannot be reached, or answers 503 (its store is away) or 429
  # (this address sent too many wrong tokens), is asked again with backoff,
  # never sooner than its Retry-After, for as long as the lease makes it
  # worth it. A 409 lease_mismatch or a 404 is final: the job was rescued,
  # cancelled or deleted meanwhile, and is logged and dropped; so is a 401
  # (the token is refused), which no retry changes.
  class Recorder
    include Monotonic

    FIRST_PAUSE = 0.05
    LONGEST_PAUSE = 2.0

    # `grace`: seconds past the lease's end during which it is still worth
    # trying. A server that was down rescued nothing meanwhile, so an outcome
    # that arrives soon after it is back usually still lands.
    def initialize(client, logger:, grace:)
      @client = client
      @logger = logger
      @grace = grace
    end

    # Records the outcome of `execution`; true if the server took it.
    def record(execution, outcome)
      case outcome.action
      when :ack then ack(execution, outcome.result)
      when :fail
        persist(execution, "fail") do
          @client.fail(execution.id, lease: execution.lease, error: outcome.error, retry: outcome.retry,
                                     retry_in_ms: outcome.retry_in_ms)
        end
      when :release then release(execution, outcome.retry_in_ms)
      else true
      end
    end

    def ack(execution, result)
      persist(execution, "ack") { @client.ack(execution.id, lease: execution.lease, result: result) }
    rescue ApiError => e
      if e.status == 413 && !result.nil?
        # A result over the server's body limit: the job succeeded, and only
        # its result is lost (as a push's answer over 64 KiB is; ActiveJob
        # ignores what perform returns, often by accident a large value).
        @logger.warn("grafter: job #{execution.id} completed; its result is too large to keep and is dropped " \
                     "(#{e.message})")
        return ack(execution, nil)
      end
      # The result itself was refused (NUL in it): the job ran, but its
      # result cannot be kept; record that instead of losing the run.
      error = "Grafter::ApiError: the job finished but its result could not be recorded: #{e.message}"
      record(execution, Runner::Outcome.fail(Runner.clean_text(error), retry: false))
    rescue Error => e
      # The only other error persist lets through: the client could not
      # encode the request, i.e. the result is not JSON.
      record(execution, Runner::Outcome.not_json(e))
    end

    # Hands the job back, the attempt not counted, to run again after
    # `delay_ms` (at once without).
    def release(execution, delay_ms = nil)
      persist(execution, "release") { @client.release(execution.id, lease: execution.lease, delay_ms: delay_ms) }
    end

    def give_up_at(execution)
      execution.lease_expires_at + @grace
    end

    # Calls the block until it succeeds, the answer is final, or the lease is
    # past hope. Raises ApiError only for a request the server refused as
    # malformed (4xx other than 401/404/409/429), which no retry can fix.
    def persist(execution, what)
      pause = FIRST_PAUSE
      loop do
        begin
          yield
          return true
        rescue ConnectionError, ApiError => e
          raise unless transient?(e) || final?(e) || unauthorized?(e)

          wait = wait_after(e, pause)
          if final?(e) || unauthorized?(e) || monotonic + wait > give_up_at(execution)
            @logger.warn("grafter: #{what} of job #{execution.id} not recorded, dropped: #{e.message}" \
                         "#{transient?(e) ? ' (the lease is over: the job will run again)' : ''}")
            return false
          end
          @logger.warn("grafter: could not #{what} job #{execution.id} (#{e.message}); retrying in #{wait.round(2)} s")
          sleep wait
          pause = [pause * 2, LONGEST_PAUSE].min
        end
      end
    end

    def transient?(error)
      error.is_a?(ConnectionError) || [429, 502, 503, 504].include?(error.status)
    end

    # How long to wait before trying again after `error`: `pause`, or the
    # server's Retry-After if longer.
    def wait_after(error, pause)
      [pause, (error.retry_after if error.is_a?(ApiError))].compact.max
    end

    # The server refuses the token (wrong, revoked, expired): every request
    # with it will be refused.
    def unauthorized?(error)
      error.is_a?(ApiError) && error.status == 401
    end

    def final?(error)
      error.is_a?(ApiError) && (error.status == 409 || error.status == 404)
    end
  end

  # Sends the successes of jobs that finish close together in one
  # POST /v1/jobs/ack, like a group commit: while one batch travels the next
  # gathers, and a batch smaller than `target` waits up to `linger` seconds
  # for more (every request is a disk commit on the server, so a few
  # milliseconds here save many of them when short jobs finish one by one).
  # Each ack is still retried on its own rules (Recorder) when a batch
  # cannot be sent.
  class Acker
    include Monotonic

    MAX_BATCH = 1000
    # Keeps a batch well under the server's 1 MiB body limit.
    MAX_BATCH_BYTES = 512 * 1024
    # Successes waiting to be sent; past this, finishing jobs wait for room,
    # so a slow server slows the worker instead of piling up acks.
    MAX_BACKLOG = 2000

    Pending = Struct.new(:execution, :result, :bytes)

    def initialize(client, recorder:, logger:, target: 1, linger: 0)
      @client = client
      @target = target
      @linger = linger
      @recorder = recorder
      @logger = logger
      @lock = Mutex.new
      @changed = ConditionVariable.new
      @pending = []
      @sending = 0
      @stopped = false
      @thread = Thread.new { run }
      @thread.name = "grafter-acks" if @thread.respond_to?(:name=)
    end

    # Queues the success of `execution`; waits while the backlog is full.
    def push(execution, result)
      bytes = result.nil? ? 64 : JSON.generate(result).bytesize + 64
      @lock.synchronize do
        @changed.wait(@lock, 1) while @pending.size >= MAX_BACKLOG && !@stopped
        @pending << Pending.new(execution, result, bytes)
        @changed.broadcast
      end
    rescue JSON::GeneratorError => e
      @recorder.record(execution, Runner::Outcome.not_json(e))
    end

    # Waits until every queued ack is sent or dropped, at most `timeout` s.
    def drain(timeout)
      deadline = monotonic + timeout
      @lock.synchronize do
        while (!@pending.empty? || @sending.positive?) && monotonic < deadline
          @changed.wait(@lock, [deadline - monotonic, 0.1].min)
        end
      end
    end

    def stop(timeout)
      drain(timeout)
      @lock.synchronize do
        @stopped = true
        @changed.broadcast
      end
      @thread.join(1)
    end

    private

    def run
      loop do
        batch = take
        return if batch.nil?

        send_batch(batch)
        @lock.synchronize do
          @sending = 0
          @changed.broadcast
        end
      end
    end

    def take
      @lock.synchronize do
        @changed.wait(@lock) while @pending.empty? && !@stopped
        return nil if @pending.empty?

        deadline = monotonic + @linger
        while @pending.size < @target && !@stopped && (left = deadline - monotonic).positive?
          @changed.wait(@lock, left)
        end

        batch = []
        bytes = 0
        while (item = @pending.first) && batch.size < MAX_BATCH && (batch.empty? || bytes + item.bytes <= MAX_BATCH_BYTES)
          batch << @pending.shift
          bytes += item.bytes
        end
        @sending = batch.size
        @changed.broadcast
        batch
      end
    end

    def send_batch(batch)
      return @recorder.ack(batch.first.execution, batch.first.result) if batch.size == 1

      pause = Recorder::FIRST_PAUSE
      until batch.empty?
        begin
          acks = batch.map { |item| { id: item.execution.id, lease: item.execution.lease, result: item.result } }
          results = @client.ack_many(acks)
          batch.zip(results).each do |item, answer|
            next if answer && answer["ok"]

            @logger.warn("grafter: ack of job #{item.execution.id} not recorded, dropped: " \
                         "#{answer ? answer['error'].inspect : 'no answer for it'}")
          end
          return
        rescue ConnectionError, ApiError => e
          if @recorder.unauthorized?(e)
            return @logger.warn("grafter: acks of #{batch.size} jobs not recorded, dropped: #{e.message}")
          end
          # A batch the server refused as such (too large, a result it
          # rejects): each job is acked alone, by the recorder's rules.
          return batch.each { |item| @recorder.ack(item.execution, item.result) } unless @recorder.transient?(e)

          wait = @recorder.wait_after(e, pause)
          batch = batch.select do |item|
            keep = monotonic + wait <= @recorder.give_up_at(item.execution)
            @logger.warn("grafter: ack of job #{item.execution.id} not recorded, dropped (the lease is over: " \
                         "the job will run again): #{e.message}") unless keep
            keep
          end
          @logger.warn("grafter: could not ack #{batch.size} jobs (#{e.message}); retrying in #{wait.round(2)} s") unless batch.empty?
          sleep wait unless batch.empty?
          pause = [pause * 2, Recorder::LONGEST_PAUSE].min
        end
      end
    end
  end
end
