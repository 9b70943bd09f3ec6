# frozen_string_literal: true

require "json"
require "socket"
require "grafter"
require "grafter/execution"
require "grafter/runner"
require "grafter/recorder"

module Grafter
  # Runs jobs from Grafter queues on `concurrency` threads.
  #
  # One fetch thread long-polls POST /v1/fetch for as many jobs as there are
  # free threads; one heartbeat thread renews every running job's lease well
  # inside it (carrying the latest progress, and learning of cancels), keeps
  # the worker registered (PUT /v1/workers/{id}) and enforces timeouts; one
  # ack thread sends successes in batches. Failures are recorded by the job's
  # own thread. No outcome is dropped while the server is briefly away: see
  # Recorder.
  #
  # Timeouts and stuck jobs: Ruby threads cannot be killed safely, so a job
  # past its `timeout_ms` gets Grafter::TimeoutError raised in its thread
  # (Thread#raise; an Exception, not a StandardError, so `rescue => e` in the
  # job does not swallow it, and its `ensure` blocks run) and the attempt is
  # failed as "timed out". A cancel asked through the API is cooperative
  # (`grafter_cancelled?`); a job still running `cancel_grace` seconds later
  # gets Grafter::Cancelled the same way. A job that ignores even that keeps
  # its thread (its slot stays taken), but after `interrupt_grace` seconds
  # the worker records its outcome and stops renewing its lease, so the job
  # is not held forever.
  #
  # Shutdown (#stop, or TERM/INT in grafter-worker): stop fetching, let
  # running jobs finish for up to `shutdown_timeout` seconds, then hand the
  # rest back with POST /v1/jobs/{id}/release (they run again at once
  # elsewhere; the attempt is not counted), and deregister.
  class Worker
    # Internal: stops the fetch thread's long-poll on shutdown.
    class FetchStop < Exception; end # rubocop:disable Lint/InheritException

    BeatState = Struct.new(:last_beat, :sent_version, :interrupted_at, :given_up)

    TICK = 0.1
    # Least time between two progress-carrying heartbeats of one job.
    PROGRESS_GAP = 0.25

    attr_reader :id, :queues, :concurrency

    def initialize(queues: ["default"], concurrency: 10, client: Grafter.client, identifier: nil,
                   lease_ms: 30_000, heartbeat_interval: nil, wait_ms: 20_000, shutdown_timeout: 25,
                   cancel_grace: 10, interrupt_grace: 5, health_port: nil, health_host: "0.0.0.0",
                   registration_interval: 5, logger: Grafter.logger, process_title: false)
      @queues = Array(queues).flat_map { |queue| queue.to_s.split(",") }.map(&:strip).reject(&:empty?)
      raise ArgumentError, "a worker needs at least one queue" if @queues.empty?

      @concurrency = Integer(concurrency)
      raise ArgumentError, "concurrency must be 1 to 1000, got #{@concurrency}" unless (1..1000).cover?(@concurrency)

      @client = client
      @id = (identifier.to_s.empty? ? "#{Socket.gethostname}:#{Process.pid}" : identifier.to_s)
      @lease_ms = Integer(lease_ms)
      @heartbeat_interval = heartbeat_interval ? Float(heartbeat_interval) : @lease_ms / 3000.0
      @wait_ms = Integer(wait_ms)
      @shutdown_timeout = Float(shutdown_timeout)
      @cancel_grace = Float(cancel_grace)
      @interrupt_grace = Float(interrupt_grace)
      @health_port = health_port
      @health_host = health_host
      @registration_interval = Float(registration_interval)
      @logger = logger
      @process_title = process_title
      @recorder = Recorder.new(client, logger: logger, grace: @lease_ms / 1000.0)

      @lock = Mutex.new
      @changed = ConditionVariable.new
      @free = @concurrency
      @running = {}
      @ready = Thread::Queue.new
      @stopping = false
      @stopped = false
      @in_fetch = false
      @fetch_ok = false
      @last_beat_ok = nil
    end

    # Starts the threads and returns at once.
    def start
      @started_at = monotonic
      register
      @acker = Acker.new(@client, recorder: @recorder, logger: @logger)
      @executors = Array.new(@concurrency) { |i| thread("grafter-job-#{i}") { execute_loop } }
      @heartbeats = thread("grafter-heartbeat") { heartbeat_loop }
      @fetcher = thread("grafter-fetch") { fetch_loop }
      start_health_server if @health_port
      @logger.info("grafter: worker #{@id} started on #{@queues.join(', ')} with #{@concurrency} threads " \
                   "against #{@client.url}")
      self
    end

    # Starts and blocks until #stop has finished (from another thread).
    def run
      start
      wait
    end

    def wait
      @lock.synchronize { @changed.wait(@lock, 1) until @stopped }
    end

    def stopping?
      @lock.synchronize { @stopping }
    end

    # Jobs running now.
    def busy
      @lock.synchronize { @running.size }
    end

    # 200-worthy: the fetch loop and the heartbeats have worked recently.
    def healthy?
      @lock.synchronize do
        !@stopping && @fetch_ok && @fetcher&.alive? && @heartbeats&.alive? &&
          !@last_beat_ok.nil? && monotonic - @last_beat_ok <= 3 * @registration_interval
      end
    end

    # Graceful stop: no more fetching; running jobs get `timeout` seconds to
    # finish, then are handed back uncounted; the worker deregisters.
    def stop(timeout = @shutdown_timeout)
      @lock.synchronize do
        return wait_locked if @stopping

        @stopping = true
        @changed.broadcast
        @fetcher.raise(FetchStop) if @in_fetch
      end
      @logger.info("grafter: worker #{@id} stopping: #{busy} jobs running, waiting up to #{timeout} s")
      @ready.close
      @lock.synchronize do
        @shutdown_deadline = [@shutdown_deadline, monotonic + timeout].compact.min
        @changed.wait(@lock, TICK) while !@running.empty? && monotonic < @shutdown_deadline
      end
      hand_back_running
      @executors.each { |thread| thread.join(2) }
      @acker.stop(5)
      @fetcher.join(1)
      @lock.synchronize do
        @heartbeats_done = true
        @changed.broadcast
      end
      @heartbeats.join(2)
      deregister
      @health_server&.close
      @lock.synchronize do
        @stopped = true
        @changed.broadcast
      end
      @logger.info("grafter: worker #{@id} stopped")
    end

    # During #stop: stop waiting for running jobs and hand them back now.
    def hand_back_now
      @lock.synchronize do
        @shutdown_deadline = monotonic
        @changed.broadcast
      end
    end

    private

    def wait_locked
      @changed.wait(@lock, 1) until @stopped
    end

    def thread(name, &block)
      thread = Thread.new do
        block.call
      rescue Exception => e # rubocop:disable Lint/RescueException
        @logger.error("grafter: #{name} thread died: #{Runner.describe(e)}")
        raise
      end
      thread.name = name
      thread.report_on_exception = false
      thread
    end

    # --- fetching ------------------------------------------------------------

    def fetch_loop
      failures = 0
      Thread.handle_interrupt(FetchStop => :never) do
        loop do
          wanted = take_free_slots
          break if wanted.zero?

          leased = fetch(wanted)
          if leased.nil?
            give_back_slots(wanted)
            failures += 1
            pause(0.1 * (2**[failures, 6].min))
            next
          end
          failures = 0
          if stopping?
            leased.each { |job| hand_back(Execution.new(job, lease_seconds: @lease_ms / 1000.0)) }
            give_back_slots(wanted)
            break
          end
          leased.each { |job| @ready << Execution.new(job, lease_seconds: @lease_ms / 1000.0) }
          give_back_slots(wanted - leased.size)
        end
      end
    rescue FetchStop
      nil
    end

    # Waits for at least one free thread and takes them all; 0 when stopping.
    def take_free_slots
      @lock.synchronize do
        @changed.wait(@lock, 1) while @free.zero? && !@stopping
        return 0 if @stopping

        taken = @free
        @free = 0
        taken
      end
    end

    def give_back_slots(count)
      return if count.zero?

      @lock.synchronize do
        @free += count
        @changed.broadcast
      end
    end

    # The leased jobs, or nil after logging a failure.
    def fetch(wanted)
      @lock.synchronize do
        return [] if @stopping

        @in_fetch = true
      end
      jobs = Thread.handle_interrupt(FetchStop => :immediate) do
        @client.fetch(queues: @queues, max: wanted, wait_ms: @wait_ms, worker_id: @id, lease_ms: @lease_ms)
      end
      @lock.synchronize { @fetch_ok = true }
      jobs
    rescue Grafter::Error => e
      @lock.synchronize { @fetch_ok = false }
      @logger.warn("grafter: fetch failed: #{e.message}")
      nil
    ensure
      @lock.synchronize { @in_fetch = false }
    end

    def pause(seconds)
      deadline = monotonic + seconds
      @lock.synchronize { @changed.wait(@lock, deadline - monotonic) while !@stopping && monotonic < deadline }
    end

    # --- running -------------------------------------------------------------

    def execute_loop
      while (execution = @ready.pop)
        if stopping?
          hand_back(execution)
          give_back_slots(1)
          next
        end
        execute(execution)
      end
    end

    # A success goes to the ack thread (which batches it with others); a
    # failure is recorded here, retried while the server is away.
    def execute(execution)
      @lock.synchronize { @running[execution] = BeatState.new(monotonic, 0, nil, false) }
      outcome = Runner.run(execution)
      @lock.synchronize { @running.delete(execution) }
      return unless execution.settle!

      if outcome.action == :ack
        @acker.push(execution, outcome.result)
      else
        @recorder.record(execution, outcome)
      end
      log_outcome(execution, outcome)
    rescue Exception => e # rubocop:disable Lint/RescueException
      @logger.error("grafter: job #{execution.id}: could not record its outcome: #{Runner.describe(e)}")
    ensure
      @lock.synchronize { @running.delete(execution) }
      give_back_slots(1)
    end

    def log_outcome(execution, outcome)
      case outcome.action
      when :fail
        @logger.warn("grafter: job #{execution.id} (#{execution.kind}) attempt #{execution.attempt} failed: " \
                     "#{outcome.error.lines.first&.chomp}")
      when :ack
        @logger.debug { "grafter: job #{execution.id} (#{execution.kind}) completed" }
      end
    end

    def hand_back(execution)
      execution.abandon!
      3.times do
        @client.release(execution.id, lease: execution.lease)
        @logger.info("grafter: job #{execution.id} handed back")
        return
      rescue ApiError => e
        return @logger.warn("grafter: job #{execution.id} not handed back: #{e.message}") if @recorder.final?(e)

        sleep 0.2
      rescue ConnectionError => e
        @logger.warn("grafter: job #{execution.id} not handed back yet: #{e.message}")
        sleep 0.2
      end
      @logger.warn("grafter: job #{execution.id} not handed back: it runs again when its lease ends")
    end

    # At the shutdown deadline: the jobs still running are handed back and
    # their threads interrupted (their results would no longer count).
    def hand_back_running
      left = @lock.synchronize { @running.keys }
      left.each do |execution|
        next unless execution.settle!

        execution.interrupt!(:abandoned, Abandoned, "the worker is shutting down; job handed back") ||
          execution.abandon!
        hand_back(execution)
      end
    end

    # --- heartbeats ----------------------------------------------------------

    def heartbeat_loop
      next_registration = monotonic + @registration_interval
      until @lock.synchronize { @heartbeats_done }
        now = monotonic
        if now >= next_registration
          register
          next_registration = now + @registration_interval
        end
        @lock.synchronize { @running.to_a }.each do |execution, state|
          next if state.given_up

          watch(execution, state)
          beat(execution, state) if beat_due?(execution, state)
        end
        @lock.synchronize { @changed.wait(@lock, TICK) unless @heartbeats_done }
      end
    end

    def beat_due?(execution, state)
      since = monotonic - state.last_beat
      return true if since >= @heartbeat_interval

      version, = execution.progress
      version != state.sent_version && since >= PROGRESS_GAP
    end

    def beat(execution, state)
      version, progress = execution.progress
      answer = @client.heartbeat(execution.id, lease: execution.lease, progress: progress, lease_ms: @lease_ms)
      execution.lease_renewed!(@lease_ms / 1000.0)
      state.last_beat = monotonic
      state.sent_version = version
      @lock.synchronize { @last_beat_ok = monotonic }
      execution.cancel_requested! if answer && answer["cancel_requested"]
    rescue ApiError => e
      raise unless @recorder.final?(e) || @recorder.transient?(e)

      return retry_beat_soon(execution, state, e) unless @recorder.final?(e)

      @logger.warn("grafter: job #{execution.id}: lease lost (#{e.message}); stopping it")
      state.given_up = true
      execution.interrupt!(:abandoned, Abandoned, "lease lost: #{e.message}") || execution.abandon!
    rescue ConnectionError => e
      retry_beat_soon(execution, state, e)
    end

    def retry_beat_soon(execution, state, error)
      @logger.warn("grafter: heartbeat of job #{execution.id} failed (#{error.message}); retrying")
      state.last_beat = monotonic - @heartbeat_interval + 1
    end

    # Timeouts, cancels that were not heeded, and jobs that ignore both.
    def watch(execution, state)
      if execution.past_deadline? &&
         execution.interrupt!(:timeout, TimeoutError, "job #{execution.id} ran past its timeout_ms (#{execution.timeout_ms} ms)")
        @logger.warn("grafter: job #{execution.id} timed out after #{execution.timeout_ms} ms; interrupted")
      end
      if (waited = execution.cancel_requested_for) && waited >= @cancel_grace &&
         execution.interrupt!(:cancel, Cancelled, "job #{execution.id} was cancelled")
        @logger.warn("grafter: job #{execution.id} did not stop #{@cancel_grace} s after its cancel; interrupted")
      end
      return unless execution.interrupt && execution.body_running?

      state.interrupted_at ||= monotonic
      return if monotonic - state.interrupted_at < @interrupt_grace

      give_up_on(execution, state)
    end

    # A job that ignored its interrupt: record what it came to and stop
    # renewing its lease. Its thread stays busy until the job returns.
    def give_up_on(execution, state)
      state.given_up = true
      @logger.error("grafter: job #{execution.id} ignored its #{execution.interrupt} interrupt for " \
                    "#{@interrupt_grace} s; its thread stays taken until it returns")
      return unless execution.settle!

      outcome = Runner.decide(execution, nil, nil)
      Thread.new { @recorder.record(execution, outcome) }
    end

    # --- registration and health ------------------------------------------

    def register
      @client.register_worker(@id, host: Socket.gethostname, pid: Process.pid, queues: @queues.first(1000),
                                   concurrency: @concurrency, kinds: Runner.kinds)
      @lock.synchronize { @last_beat_ok = monotonic }
      update_title
    rescue Grafter::Error => e
      @logger.warn("grafter: could not register worker #{@id}: #{e.message}")
    end

    def deregister
      @client.remove_worker(@id)
    rescue Grafter::Error => e
      @logger.warn("grafter: could not deregister worker #{@id}: #{e.message}")
    end

    def update_title
      return unless @process_title

      state = stopping? ? "stopping" : "#{busy}/#{@concurrency} busy"
      $0 = "grafter-worker #{@id} [#{@queues.join(',')}] #{state}"
    end

    def start_health_server
      @health_server = TCPServer.new(@health_host, Integer(@health_port))
      thread("grafter-health") do
        loop do
          socket = @health_server.accept
          answer_health(socket)
        rescue IOError, SystemCallError
          break if @health_server.closed?
        end
      end
    end

    def answer_health(socket)
      # Only the request line matters; a client that sends nothing is cut off.
      socket.wait_readable(1) && socket.read_nonblock(4096, exception: false)
      ok = healthy?
      body = JSON.generate("status" => ok ? "ok" : "unhealthy", "worker" => @id, "busy" => busy,
                           "concurrency" => @concurrency)
      socket.write("HTTP/1.1 #{ok ? '200 OK' : '503 Service Unavailable'}\r\nContent-Type: application/json\r\n" \
                   "Content-Length: #{body.bytesize}\r\nConnection: close\r\n\r\n#{body}")
    rescue IOError, SystemCallError
      nil
    ensure
      socket.close
    end

    def monotonic
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end
  end
end
