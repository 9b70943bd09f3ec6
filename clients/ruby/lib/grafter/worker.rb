# frozen_string_literal: true

require "json"
require "socket"
require "grafter"
require "grafter/execution"
require "grafter/heartbeat"
require "grafter/runner"
require "grafter/recorder"
require_relative "monotonic"

module Grafter
  # Runs jobs from Grafter queues on `concurrency` threads.
  #
  # One fetch thread long-polls POST /v1/fetch for as many jobs as there is
  # room for: one per thread, plus a short prefetch buffer so that threads
  # finishing short jobs find the next one waiting instead of waiting for a
  # round trip (see #prefetch_limit). One heartbeat thread renews the lease of
  # every job the worker holds, buffered or running, well inside it (carrying
  # the latest progress, and learning of cancels), keeps the worker registered
  # (PUT /v1/workers/{id}) and enforces timeouts; one ack thread sends
  # successes in batches. Failures are recorded by the job's own thread. No
  # outcome is dropped while the server is briefly away: see Recorder.
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
  # A server that refuses the worker's token (401), or its token the work
  # of its queues (403), refuses every try: #start raises it at the
  # registration, and later in life (a token revoked) the worker stops as
  # on #stop, with the error as its #failure. A 429 (its address sent too
  # many wrong tokens) is waited out, not prolonged.
  #
  # Shutdown (#stop, or TERM/INT in grafter-worker): stop fetching, hand the
  # buffered jobs back, let running jobs finish for up to `shutdown_timeout`
  # seconds, then hand the rest back with POST /v1/jobs/{id}/release (they
  # run again at once elsewhere; the attempt is not counted), and deregister.
  # A fetch in flight is let finish (it waits at most `wait_ms`) and what it
  # brings is handed back too.
  class Worker
    include Monotonic

    # Internal: stops the fetch thread's long-poll when the shutdown cannot
    # wait for it.
    class FetchStop < Exception; end # rubocop:disable Lint/InheritException

    # The error of a job that killed its own thread (Thread#kill, Thread.exit).
    class ThreadKilled < Error; end

    BeatState = Struct.new(:leased_at, :last_beat, :sent_version, :interrupted_at, :given_up)

    TICK = 0.1
    # Least time between two progress-carrying heartbeats of one job.
    PROGRESS_GAP = 0.25
    # A buffered job should start within about this many seconds: the
    # prefetch holds only as many jobs as the threads are expected to start
    # in that time, judged by how long recent jobs ran (for no-op jobs, about
    # a tenth of a second of the worker's throughput). Jobs held longer would
    # wait here while another worker could run them.
    PREFETCH_HORIZON = 0.1
    # A buffered job still waiting after this long (the jobs before it turned
    # out slower than the recent ones) is handed back, uncounted, for any
    # worker to take.
    PREFETCH_HOLD = 1.0
    # The server's largest `max` for one fetch.
    MAX_FETCH = 1000
    # Fetches that bring nothing come at most this often: with a `wait_ms`
    # under it (0: no long-poll), the worker polls every POLL_INTERVAL.
    POLL_INTERVAL = 1.0
    # How long the server refuses an address that sent too many wrong tokens
    # (429), when its answer does not say.
    LOCKOUT = 60
    # Answers no retry can change: the token refused (401) or not allowed
    # this work (403), and, for a fetch, its settings refused (422).
    TOKEN_REFUSED = [401, 403].freeze
    REFUSED = (TOKEN_REFUSED + [422]).freeze
    # Longest a success waits for others to share its ack request.
    ACK_LINGER = 0.005
    # Weight of the latest job in the running mean of job durations.
    DURATION_WEIGHT = 0.1
    # What the server takes (settings it refuses would fail every fetch):
    # names (queues, the worker id) of 1 to 255 bytes, a lease of 1 s to a
    # day, a long-poll of at most its max_wait_ms (30 s by default, at most
    # 10 minutes: a fetch refused as too long stops the worker, see #fetch).
    MAX_NAME_BYTES = 255
    LEASE_MS = (1000..86_400_000).freeze
    WAIT_MS = (0..600_000).freeze
    PORTS = (1..65_535).freeze
    # Longest a health connection is given to send its request, and how
    # many are answered at once (each on a thread of its own, so that idle
    # ones hold up no probe); connections past that are closed unanswered.
    HEALTH_READ_WAIT = 1.0
    HEALTH_CONNECTIONS = 32

    attr_reader :id, :queues, :concurrency

    # The error that stopped the worker by itself (the server refusing its
    # token or its fetch), or nil.
    def failure
      @lock.synchronize { @failure }
    end

    # `prefetch`: at most this many leased jobs wait for a thread (default:
    # ten per thread; 0 turns the buffer off), fewer when jobs take longer
    # (PREFETCH_HORIZON).
    def initialize(queues: ["default"], concurrency: 10, client: Grafter.client, identifier: nil,
                   lease_ms: 30_000, heartbeat_interval: nil, wait_ms: 2_000, shutdown_timeout: 25,
                   cancel_grace: Heartbeat::CANCEL_GRACE, interrupt_grace: Heartbeat::INTERRUPT_GRACE,
                   health_port: nil, health_host: "127.0.0.1", registration_interval: 5, prefetch: nil,
                   logger: Grafter.logger, process_title: false)
      @queues = Array(queues).flat_map { |queue| queue.to_s.split(",") }.map(&:strip).reject(&:empty?)
      raise ArgumentError, "a worker needs at least one queue" if @queues.empty?

      @queues.each { |queue| check_name("a queue name", queue) }

      @concurrency = Integer(concurrency)
      raise ArgumentError, "concurrency must be 1 to 1000, got #{@concurrency}" unless (1..1000).cover?(@concurrency)

      @client = client
      @id = (identifier.to_s.empty? ? "#{Socket.gethostname}:#{Process.pid}" : identifier.to_s)
      check_name("the worker identifier", @id)
      @lease_ms = within(LEASE_MS, "lease_ms", lease_ms)
      @heartbeat_interval = heartbeat_interval ? Float(heartbeat_interval) : @lease_ms / 3000.0
      @wait_ms = within(WAIT_MS, "wait_ms", wait_ms)
      @shutdown_timeout = Float(shutdown_timeout)
      unless @shutdown_timeout.finite? && @shutdown_timeout >= 0
        raise ArgumentError, "shutdown_timeout must be 0 or more seconds, got #{shutdown_timeout.inspect}"
      end
      @cancel_grace = Float(cancel_grace)
      @interrupt_grace = Float(interrupt_grace)
      @health_port = health_port && within(PORTS, "the health port", health_port)
      @health_host = health_host
      @registration_interval = Float(registration_interval)
      @prefetch = prefetch.nil? ? [10 * @concurrency, MAX_FETCH - @concurrency].min : Integer(prefetch)
      raise ArgumentError, "prefetch must be 0 or more, got #{@prefetch}" if @prefetch.negative?

      @logger = logger
      @process_title = process_title
      @recorder = Recorder.new(client, logger: logger, grace: @lease_ms / 1000.0)

      @lock = Mutex.new
      @changed = ConditionVariable.new # stopping, stopped, heartbeats done
      @room = ConditionVariable.new    # a job left the buffer or finished: the fetch thread may fetch
      @job_ready = ConditionVariable.new # a job entered the buffer
      @leased = {}   # every job whose lease this worker holds => its BeatState
      @buffer = []   # leased jobs waiting for a thread, oldest first
      @running = {}  # jobs running now => their BeatState
      @mean_duration = nil
      @fetching_timeouts = false # the last fetch brought jobs with a timeout_ms
      @stopping = false
      @stopped = false
      @in_fetch = false
      @fetch_ok = false
      @last_beat_ok = nil
    end

    # Starts the threads and returns at once. The health port is opened
    # first: a worker that cannot open it registers and fetches nothing.
    # Raises Grafter::ApiError, starting nothing, when the server refuses
    # the registration for the token (401, 403).
    def start
      @started_at = monotonic
      start_health_server if @health_port
      begin
        @next_registration = register
      rescue ApiError
        @health_server&.close
        raise
      end
      @acker = Acker.new(@client, recorder: @recorder, logger: @logger, target: @concurrency, linger: ACK_LINGER)
      @executors = Array.new(@concurrency) { |i| thread("grafter-job-#{i}") { execute_loop(i) } }
      @heartbeats = thread("grafter-heartbeat") { heartbeat_loop }
      @fetcher = thread("grafter-fetch") { fetch_loop }
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

    # Graceful stop: no more fetching; buffered jobs are handed back at once,
    # running jobs get `timeout` seconds to finish, then are handed back
    # uncounted; the worker deregisters.
    def stop(timeout = @shutdown_timeout)
      buffered = @lock.synchronize do
        return wait_locked if @stopping

        @stopping = true
        @shutdown_deadline = [@shutdown_deadline, monotonic + timeout].compact.min
        [@changed, @room, @job_ready].each(&:broadcast)
        @buffer.slice!(0..)
      end
      @logger.info("grafter: worker #{@id} stopping: #{busy} jobs running, waiting up to #{timeout} s")
      buffered.each { |execution| hand_back(execution) }
      @lock.synchronize do
        @changed.wait(@lock, TICK) while !@running.empty? && monotonic < @shutdown_deadline
      end
      hand_back_running
      @executors.each { |thread| thread.join(2) }
      @acker.stop(5)
      finish_fetch
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

    def within(range, name, value)
      number = Integer(value)
      raise ArgumentError, "#{name} must be #{range.min} to #{range.max}, got #{number}" unless range.cover?(number)

      number
    end

    def check_name(what, name)
      return if name.bytesize <= MAX_NAME_BYTES

      raise ArgumentError, "#{what} must be at most #{MAX_NAME_BYTES} bytes, got #{name.bytesize}: #{name[0, 40]}…"
    end

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
          wanted = wait_for_room
          break if wanted.zero?

          asked_at = monotonic
          leased = fetch(wanted)
          break if leased == :refused

          if leased.is_a?(Grafter::Error)
            failures += 1
            pause(fetch_pause(leased, failures))
            next
          end
          failures = 0
          # Nothing came, sooner than the poll interval (no long-poll, or a
          # short one): not asked again at once, which would busy-poll.
          next pause(POLL_INTERVAL - (monotonic - asked_at)) if leased.empty?

          executions = leased.map { |job| Execution.new(job, lease_seconds: @lease_ms / 1000.0) }
          unheld = take_in(executions)
          unless unheld
            # Stopping: what the last fetch brought goes back, uncounted.
            executions.each { |execution| hand_back(execution) }
            break
          end
          hand_back_unheld(unheld)
        end
      end
    rescue FetchStop
      nil
    end

    # After a failed fetch: 0.1 s doubling to 6.4 s, or the server's
    # Retry-After when longer; after a 429, the lockout.
    def fetch_pause(error, failures)
      lockout(error) || @recorder.wait_after(error, 0.1 * (2**[failures, 6].min))
    end

    # After a 429 (this address sent too many wrong tokens): the seconds
    # until the server takes its requests again (its Retry-After, else
    # LOCKOUT), which retrying sooner cannot shorten, only prolong with a
    # wrong token. Nil after any other error.
    def lockout(error)
      error.retry_after || LOCKOUT if error.is_a?(ApiError) && error.status == 429
    end

    # Waits until there is room for a job and answers how many: one per free
    # thread plus the prefetch; 0 when stopping.
    def wait_for_room
      @lock.synchronize do
        loop do
          return 0 if @stopping

          room = @concurrency + prefetch_limit - @running.size - @buffer.size
          return [room, MAX_FETCH].min if room.positive?

          @room.wait(@lock)
        end
      end
    end

    # How many jobs may wait for a thread: as many as the threads should
    # start within PREFETCH_HORIZON at the jobs' recent pace, up to
    # `prefetch`. None until a job has finished (a worker starting on a queue
    # of long jobs holds only what it runs), none for jobs that take longer,
    # none while the fetches bring jobs with a timeout_ms (#take_in would
    # hand them back).
    def prefetch_limit
      return 0 if @mean_duration.nil? || @prefetch.zero? || @fetching_timeouts

      # A job may finish within the clock's resolution: never divide by 0.
      [(PREFETCH_HORIZON * @concurrency / [@mean_duration, 1e-6].max).floor, @prefetch].min
    end

    # Buffers the jobs for the threads, and answers those it does not take
    # (nil, taking none, when stopping): a job with a timeout_ms waits for
    # no thread. The server ends its lease at that timeout from the fetch,
    # waiting included, so a wait would use up its time, or its attempt.
    def take_in(executions)
      @lock.synchronize do
        return nil if @stopping

        @fetching_timeouts = executions.any?(&:timeout_ms)
        now = monotonic
        executions.select do |execution|
          next true if execution.timeout_ms && @buffer.size >= @concurrency - @running.size

          @leased[execution] = BeatState.new(now, now, 0, nil, false)
          @buffer << execution
          @job_ready.signal
          false
        end
      end
    end

    # Jobs with a timeout_ms that found no free thread go back at once,
    # uncounted, for this worker or another to start when a thread is free.
    def hand_back_unheld(unheld)
      return if unheld.empty?

      @logger.info("grafter: #{unheld.size} fetched jobs with a timeout_ms found no free thread; handing them back")
      unheld.each { |execution| hand_back(execution) }
    end

    # The leased jobs, the Grafter::Error of a fetch that failed (logged),
    # or :refused when the server refused the fetch itself (REFUSED: the
    # token, or a queue name or a wait it does not take), which no retry can
    # change: the worker then stops, with that error as its #failure.
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
      return refused(e) if refused?(e)

      @logger.warn("grafter: fetch failed: #{e.message}")
      e
    ensure
      @lock.synchronize { @in_fetch = false }
    end

    def refused?(error, statuses = REFUSED)
      error.is_a?(ApiError) && statuses.include?(error.status)
    end

    # `error` (REFUSED) explained, for the log and grafter-worker's last line.
    def refusal(error)
      why = case error.status
            when 401 then "the server refuses this worker's token (set GRAFTER_TOKEN to a token it accepts)"
            when 403 then "the server does not let this worker's token work its queues (it needs the work scope)"
            else "the server refuses this worker's fetch, which no retry can change"
            end
      ApiError.new("#{why}: #{error.message}", status: error.status, code: error.code, field: error.field)
    end

    # Stops the worker as #stop does (running jobs finish, up to the
    # shutdown timeout), with `error` explained as its #failure.
    def refused(error)
      failure = refusal(error)
      @lock.synchronize do
        return :refused if @failure

        @failure = failure
      end
      @logger.error("grafter: #{failure.message}; stopping")
      # #stop waits for the fetch and heartbeat threads: it runs on another.
      Thread.new { stop }
      :refused
    end

    # At shutdown: the fetch in flight is let answer (within `wait_ms`) so
    # that the jobs the server leased to it are handed back uncounted. Only if
    # the shutdown deadline (or a second signal) comes first is it cut off:
    # jobs leased in that same instant then come back when their lease ends,
    # that attempt counted.
    def finish_fetch
      loop do
        wait = @lock.synchronize { @shutdown_deadline } - monotonic
        return if @fetcher.join([[wait, TICK].min, 0].max)
        break if wait <= 0
      end
      @lock.synchronize { @fetcher.raise(FetchStop) if @in_fetch }
      @fetcher.join(1)
    end

    def pause(seconds)
      deadline = monotonic + seconds
      @lock.synchronize { @changed.wait(@lock, deadline - monotonic) while !@stopping && monotonic < deadline }
    end

    # --- running -------------------------------------------------------------

    def execute_loop(index)
      while (execution = next_job)
        execute(execution)
      end
    ensure
      # Unless stopping, the loop ended early (a job killed its thread):
      # another thread takes this one's place, or the worker would run fewer
      # jobs at once than it fetches for.
      replace_executor(index)
    end

    def replace_executor(index)
      @lock.synchronize do
        return if @stopping

        @executors[index] = thread("grafter-job-#{index}") { execute_loop(index) }
      end
      @logger.warn("grafter: thread grafter-job-#{index} ended early; another took its place")
    end

    # Buffered jobs that waited past PREFETCH_HOLD go back to the server.
    def hand_back_stale_buffered
      oldest = monotonic - PREFETCH_HOLD
      stale = @lock.synchronize do
        stale = @buffer.select { |execution| @leased[execution].leased_at < oldest }
        unless stale.empty?
          @buffer -= stale
          # The recent pace no longer holds: prefetch nothing until a job
          # finishes and shows the new one.
          @mean_duration = nil
        end
        stale
      end
      return if stale.empty?

      @logger.info("grafter: #{stale.size} prefetched jobs waited over #{PREFETCH_HOLD} s; handing them back")
      stale.each { |execution| hand_back(execution) }
    end

    # The oldest buffered job, now counted as running; nil when stopping.
    def next_job
      @lock.synchronize do
        loop do
          @job_ready.wait(@lock) while @buffer.empty? && !@stopping
          return nil if @stopping

          execution = @buffer.shift
          if execution.interrupt
            # Its lease was lost while it waited (a heartbeat said so): not run.
            @leased.delete(execution)
            @room.signal
            next
          end
          @running[execution] = @leased[execution]
          return execution
        end
      end
    end

    def execute(execution)
      started = monotonic
      outcome = Runner.run(execution)
      @lock.synchronize do
        duration = monotonic - started
        @mean_duration = @mean_duration ? @mean_duration + (DURATION_WEIGHT * (duration - @mean_duration)) : duration
      end
      finish(execution, outcome)
    ensure
      # Runner.run did not return: the job killed its thread (Thread#kill
      # passes every rescue). Its attempt fails here, as the thread ends,
      # instead of waiting for the lease to run out.
      unless outcome
        finish(execution, Runner.decide(execution, nil, ThreadKilled.new("the job killed its worker thread")))
      end
      @lock.synchronize do
        @running.delete(execution)
        @leased.delete(execution)
        @room.signal
      end
    end

    # A success goes to the ack thread (which batches it with others); a
    # failure is recorded here, retried while the server is away. Progress
    # reported since the last heartbeat is sent first, so the job's last
    # progress is what it ends with.
    def finish(execution, outcome)
      state = @lock.synchronize { @running.delete(execution) }
      return unless execution.settle!

      send_pending_progress(execution, state) unless outcome.action == :none
      if outcome.action == :ack
        @acker.push(execution, outcome.result)
      else
        @recorder.record(execution, outcome)
      end
      log_outcome(execution, outcome)
    rescue Exception => e # rubocop:disable Lint/RescueException
      @logger.error("grafter: job #{execution.id}: could not record its outcome: #{Runner.describe(e)}")
    end

    def send_pending_progress(execution, state)
      version, progress = execution.progress
      return if state.nil? || version == state.sent_version

      @client.heartbeat(execution.id, lease: execution.lease, progress: progress, lease_ms: @lease_ms)
      state.sent_version = version
    rescue Grafter::Error => e
      @logger.warn("grafter: job #{execution.id}: its last progress was not recorded: #{e.message}")
    end

    def log_outcome(execution, outcome)
      case outcome.action
      when :fail
        @logger.warn("grafter: job #{execution.id} (#{execution.kind}) attempt #{execution.attempt} failed: " \
                     "#{outcome.error.lines.first&.chomp}")
      when :ack
        @logger.debug { "grafter: job #{execution.id} (#{execution.kind}) completed" }
      when :release
        @logger.debug { "grafter: job #{execution.id} (#{execution.kind}) runs again in #{outcome.retry_in_ms} ms" }
      end
    end

    def hand_back(execution)
      execution.abandon!
      # No more heartbeats for it: the release ends the lease.
      @lock.synchronize { @leased.delete(execution) }
      3.times do
        @client.release(execution.id, lease: execution.lease)
        @logger.info("grafter: job #{execution.id} handed back")
        return
      rescue ApiError => e
        if @recorder.final?(e) || @recorder.unauthorized?(e)
          return @logger.warn("grafter: job #{execution.id} not handed back: #{e.message}")
        end

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
      until @lock.synchronize { @heartbeats_done }
        if monotonic >= @next_registration
          @next_registration = begin
            register
          rescue ApiError => e
            # The token was revoked (or the server's changed) meanwhile.
            refused(e)
            Float::INFINITY
          end
        end
        carry_on("handing back stale jobs") { hand_back_stale_buffered }
        @lock.synchronize { @leased.to_a }.each do |execution, state|
          next if state.given_up

          carry_on("watching job #{execution.id}") { watch(execution, state) }
          carry_on("heartbeat of job #{execution.id}") { beat(execution, state) if beat_due?(execution, state) }
        end
        @lock.synchronize { @changed.wait(@lock, TICK) unless @heartbeats_done }
      end
    end

    # Runs one step of the heartbeat loop: an error in it is logged, and the
    # loop (which renews every lease and enforces every timeout) goes on.
    def carry_on(what)
      yield
    rescue StandardError => e
      @logger.error("grafter: #{what} failed: #{Runner.describe(e)}")
    end

    def beat_due?(execution, state)
      since = monotonic - state.last_beat
      return true if since >= @heartbeat_interval

      version, = execution.progress
      version != state.sent_version && since >= PROGRESS_GAP
    end

    # Renews the lease of `execution`, carrying its latest progress. No
    # answer ends the heartbeats: a progress the server refuses (or that
    # cannot be sent) is dropped, logged, and the lease renewed without it;
    # a lost lease (409, 404) stops the job; anything else is retried soon.
    def beat(execution, state)
      version, progress = execution.progress
      Heartbeat.renew(@client, execution, version, progress, lease_ms: @lease_ms, logger: @logger) do
        state.sent_version = version
      end
      state.last_beat = monotonic
      state.sent_version = version
      @lock.synchronize { @last_beat_ok = monotonic }
    rescue ApiError => e
      return retry_beat_soon(execution, state, e) unless @recorder.final?(e)

      @logger.warn("grafter: job #{execution.id}: lease lost (#{e.message}); stopping it")
      state.given_up = true
      execution.interrupt!(:abandoned, Abandoned, "lease lost: #{e.message}") || execution.abandon!
    rescue StandardError => e
      retry_beat_soon(execution, state, e)
    end

    # In a second, or the server's Retry-After; a refused token not before
    # the next beat is due anyway (every try is refused, and counted against
    # this address if the token is a wrong one).
    def retry_beat_soon(execution, state, error)
      @logger.warn("grafter: heartbeat of job #{execution.id} failed (#{error.message}); retrying")
      wait = @recorder.unauthorized?(error) ? @heartbeat_interval : @recorder.wait_after(error, 1)
      state.last_beat = monotonic - @heartbeat_interval + wait
    end

    # Timeouts, cancels that were not heeded, and jobs that ignore both.
    def watch(execution, state)
      Heartbeat.enforce(execution, cancel_grace: @cancel_grace, logger: @logger)
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

    # Registers the worker (or renews its registration) and answers when
    # to do so next: after the registration interval, or after a 429's
    # lockout. Raises, explained, a refusal of the token (401, 403); any
    # other failure is logged.
    def register
      @client.register_worker(@id, host: Socket.gethostname, pid: Process.pid, queues: @queues.first(1000),
                                   concurrency: @concurrency, kinds: Runner.kinds)
      @lock.synchronize { @last_beat_ok = monotonic }
      update_title
      monotonic + @registration_interval
    rescue Grafter::Error => e
      raise refusal(e) if refused?(e, TOKEN_REFUSED)

      @logger.warn("grafter: could not register worker #{@id}: #{e.message}")
      monotonic + (lockout(e) || @registration_interval)
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
      @health_server = begin
        TCPServer.new(@health_host, @health_port)
      rescue SystemCallError, SocketError => e
        raise ArgumentError, "the health port #{@health_host}:#{@health_port} cannot be opened (#{e.message})"
      end
      thread("grafter-health") do
        answering = []
        loop do
          socket = @health_server.accept
          answering.select!(&:alive?)
          if answering.size < HEALTH_CONNECTIONS
            answering << thread("grafter-health-answer") { answer_health(socket) }
          else
            socket.close
          end
        rescue IOError, SystemCallError
          break if @health_server.closed?
        end
      end
    end

    def answer_health(socket)
      # Only the request line matters; a client that sends nothing is cut off.
      socket.wait_readable(HEALTH_READ_WAIT) && socket.read_nonblock(4096, exception: false)
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
  end
end
