# frozen_string_literal: true

require_relative "test_helper"
require "grafter/worker"

class WorkerTest < Minitest::Test
  # Raised by a job: not a StandardError.
  class Catastrophe < Exception; end # rubocop:disable Lint/InheritException

  # Counts the fetches sent through it.
  class CountingClient < Grafter::Client
    def fetches
      @fetches || 0
    end

    def fetch(**)
      @fetches = fetches + 1
      super
    end
  end

  def test_runs_jobs_and_registers_under_its_identifier
    queue = unique("run")
    kind = unique("double")
    Grafter.handle(kind) { |args, job| { "double" => args["n"] * 2, "attempt" => job["attempt"] } }
    identifier = unique("worker-a")
    with_worker(queue, identifier: identifier) do |worker|
      ids = client.enqueue_many(Array.new(20) { |n| { kind: kind, queue: queue, args: { n: n } } }).map { |j| j["id"] }
      results = ids.map { |id| wait_state(id, "completed")["result"] }
      assert_equal Array.new(20) { |n| { "double" => n * 2, "attempt" => 1 } }, results
      registered = client.workers.find { |w| w["id"] == identifier }
      assert registered, "GET /v1/workers lists #{identifier}"
      assert_equal [[queue], 2], registered.values_at("queues", "concurrency")
      assert_includes registered["kinds"], kind
      assert_equal identifier, worker.id
    end
    refute(client.workers.any? { |w| w["id"] == identifier }, "deregistered on stop")
  end

  def test_progress_shows_in_the_job_and_cancellation_reaches_the_job
    queue = unique("cancel")
    kind = unique("loop")
    seen_cancel = Queue.new
    Grafter.handle(kind) do
      execution = Grafter::Execution.current
      execution.progress!(0.25, "a quarter")
      sleep 0.05 until execution.cancelled?
      seen_cancel << true
      raise "stopping on request"
    end
    with_worker(queue) do
      id = client.enqueue(kind: kind, queue: queue)["id"]
      wait_until(message: "progress visible") { client.job(id)["progress"] == { "fraction" => 0.25, "message" => "a quarter" } }
      client.cancel(id)
      assert pop_within(seen_cancel, 10), "the job saw grafter_cancelled?"
      job = wait_state(id, "cancelled")
      assert_match(/cancelled on request/, job["errors"].last["error"])
    end
  end

  def test_a_job_past_its_timeout_is_interrupted_and_failed_as_timed_out
    queue = unique("timeout")
    kind = unique("forever")
    ensured = Queue.new
    Grafter.handle(kind) do
      sleep
    rescue StandardError
      # Grafter::TimeoutError is not a StandardError: this does not catch it.
      sleep
    ensure
      ensured << true
    end
    with_worker(queue) do
      id = client.enqueue(kind: kind, queue: queue, timeout_ms: 300, max_attempts: 1)["id"]
      job = wait_state(id, "dead")
      assert_match(/\Atimed out/, job["errors"].last["error"])
      assert pop_within(ensured, 5), "the job's ensure ran"
    end
  end

  def test_exceptions_that_are_not_standard_errors_and_exit_fail_the_job_not_the_worker
    queue = unique("exit")
    Grafter.handle(kind_exit = unique("exit")) { exit 3 }
    Grafter.handle(kind_bad = unique("catastrophe")) { raise Catastrophe, "beyond repair" }
    Grafter.handle(kind_ok = unique("ok")) { "fine" }
    with_worker(queue) do
      exited = client.enqueue(kind: kind_exit, queue: queue, max_attempts: 1)["id"]
      broken = client.enqueue(kind: kind_bad, queue: queue, max_attempts: 1)["id"]
      assert_match(/\ASystemExit: exit/, wait_state(exited, "dead")["errors"].last["error"])
      error = wait_state(broken, "dead")["errors"].last["error"]
      assert_match(/\AWorkerTest::Catastrophe: beyond repair\n.*worker_test\.rb/, error, "class, message and backtrace")
      ok = client.enqueue(kind: kind_ok, queue: queue)["id"]
      assert_equal "fine", wait_state(ok, "completed")["result"]
    end
  end

  # Such a job used to take its thread with it for good, its attempt ending
  # only when the lease ran out.
  def test_a_job_that_kills_its_thread_fails_and_the_thread_is_replaced
    queue = unique("kill-thread")
    Grafter.handle(killer = unique("kill")) { Thread.current.kill }
    running = Queue.new
    go = Queue.new
    Grafter.handle(pair = unique("pair")) { running << true; go.pop; "both ran" }
    with_worker(queue, lease_ms: 30_000) do |worker, log|
      ids = Array.new(2) { client.enqueue(kind: killer, queue: queue, max_attempts: 1)["id"] }
      ids.each do |id|
        assert_match(/\AGrafter::Worker::ThreadKilled: the job killed its worker thread/,
                     wait_state(id, "dead", timeout: 5)["errors"].last["error"])
      end
      ids = Array.new(2) { client.enqueue(kind: pair, queue: queue)["id"] }
      wait_until(5, message: "both jobs running at once on the 2 threads") { running.size == 2 }
      assert_equal 2, worker.busy
      2.times { go << true }
      ids.each { |id| assert_equal "both ran", wait_state(id, "completed")["result"] }
      assert_match(/thread grafter-job-\d ended early; another took its place/, log.string)
    end
  end

  # Exceptions whose description used to raise: the outcome was lost.
  Ünreadable = Class.new(StandardError) # rubocop:disable Naming/AsciiIdentifiers
  class Mute < StandardError
    def message
      raise "no message today"
    end
  end

  def test_an_exception_that_cannot_be_described_plainly_still_fails_the_job
    assert_equal "RuntimeError: héllo", Grafter::Runner.describe(RuntimeError.new("héllo".encode("UTF-16"))).lines.first.chomp
    binary = Grafter::Runner.describe(Ünreadable.new("\xFF bytes".b))
    assert_equal "WorkerTest::Ünreadable: ? bytes", binary
    assert_equal "WorkerTest::Mute (its message could not be read)", Grafter::Runner.describe(Mute.new)

    queue = unique("undescribable")
    Grafter.handle(kind = unique("utf16")) { raise "tüdelü".encode("UTF-16LE") }
    Grafter.handle(mute = unique("mute")) { raise Mute }
    with_worker(queue) do
      id = client.enqueue(kind: kind, queue: queue, max_attempts: 1)["id"]
      assert_match(/\ARuntimeError: tüdelü\n/, wait_state(id, "dead", timeout: 5)["errors"].last["error"])
      id = client.enqueue(kind: mute, queue: queue, max_attempts: 1)["id"]
      assert_match(/\AWorkerTest::Mute \(its message/, wait_state(id, "dead", timeout: 5)["errors"].last["error"])
    end
  end

  def test_an_unknown_kind_fails_with_a_clear_error
    queue = unique("unknown")
    with_worker(queue) do
      id = client.enqueue(kind: "nobody_handles_this", queue: queue, max_attempts: 1)["id"]
      assert_match(/no handler for kind 'nobody_handles_this'/, wait_state(id, "dead")["errors"].last["error"])
    end
  end

  def test_graceful_shutdown_lets_short_jobs_finish_and_hands_long_ones_back_uncounted
    queue = unique("shutdown")
    # The short job runs long enough that both are seen running on a busy
    # machine, and ends well within the shutdown's deadline.
    Grafter.handle(short = unique("short")) { sleep 1; "done" }
    Grafter.handle(long = unique("long")) { sleep 30 }
    worker = nil
    with_worker(queue, shutdown_timeout: 3) do |w|
      worker = w
      quick = client.enqueue(kind: short, queue: queue)["id"]
      slow = client.enqueue(kind: long, queue: queue)["id"]
      wait_until(message: "both running") { [quick, slow].all? { |id| client.job(id)["state"] == "running" } }
      started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      worker.stop(3)
      assert_operator Process.clock_gettime(Process::CLOCK_MONOTONIC) - started, :<, 6
      assert_equal "completed", client.job(quick)["state"]
      handed_back = client.job(slow)
      assert_equal ["available", 0, []], handed_back.values_at("state", "attempt", "errors"),
                   "handed back at once, the attempt not counted"
    end
  end

  def test_a_job_leased_by_the_fetch_in_flight_at_shutdown_is_handed_back_uncounted
    queue = unique("stop-race")
    with_worker(queue, wait_ms: 3000) do |worker, log|
      wait_until(message: "registered") { client.workers.any? { |w| w["id"] == worker.id } }
      sleep 0.3 # its long-poll is waiting
      stopper = Thread.new { worker.stop(5) }
      sleep 0.3
      # Leased to the long-poll of a worker that is already stopping.
      id = client.enqueue(kind: unique("never-run"), queue: queue)["id"]
      stopper.join
      assert_match(/job #{id} handed back/, log.string)
      assert_equal ["available", 0, []], client.job(id).values_at("state", "attempt", "errors"),
                   "handed back, the attempt not counted"
    end
  end

  def test_prefetched_jobs_stuck_behind_a_slow_job_are_handed_back_for_other_workers
    queue = unique("prefetch")
    Grafter.handle(fast = unique("fast")) { "fast" }
    Grafter.handle(slow = unique("slow")) { sleep 4; "slow" }
    with_worker(queue, concurrency: 1) do |_worker, log|
      jobs = client.enqueue_many([{ kind: fast, queue: queue }] * 5 + [{ kind: slow, queue: queue }] +
                                 [{ kind: fast, queue: queue }] * 5)
      behind = jobs.last["id"]
      wait_until(message: "the slow job running") { client.job(jobs[5]["id"])["state"] == "running" }
      # Prefetched behind the slow job, then handed back while it still runs.
      wait_until(3, message: "a job behind the slow one available again") do
        client.job(behind)["state"] == "available"
      end
      assert_equal "running", client.job(jobs[5]["id"])["state"]
      assert_match(/prefetched jobs waited over/, log.string)
      done = jobs.map { |job| wait_state(job["id"], "completed") }
      assert_equal [1] * 11, done.map { |job| job["attempt"] }, "handing back does not count an attempt"
    end
  end

  # 16 of 20 such jobs used to go dead without starting, their lease (capped
  # at the fetch plus their timeout) running out in the prefetch buffer.
  def test_prefetched_jobs_with_a_timeout_never_wait_out_their_lease_in_the_buffer
    queue = unique("prefetch-timeout")
    Grafter.handle(fast = unique("fast")) { "fast" }
    Grafter.handle(slow = unique("slow")) { sleep 1.5; "slow" }
    Grafter.handle(short = unique("short")) { "short" }
    with_worker(queue, concurrency: 1) do |_worker, log|
      jobs = client.enqueue_many([{ kind: fast, queue: queue }] * 20 + [{ kind: slow, queue: queue }] +
                                 [{ kind: short, queue: queue, timeout_ms: 400, max_attempts: 1 }] * 10)
      done = jobs.map { |job| wait_state(job["id"], %w[completed dead]) }
      assert_equal [["completed", 1, []]] * 31, done.map { |job| job.values_at("state", "attempt", "errors") }
      assert_match(/jobs with a timeout_ms found no free thread; handing them back/, log.string)
      refute_match(/not handed back/, log.string)
    end
  end

  # With no long-poll an idle worker used to ask again at once: some 600
  # fetches a second.
  def test_an_idle_worker_without_a_long_poll_fetches_once_a_second
    queue = unique("no-long-poll")
    counting = CountingClient.new(url: server.url)
    Grafter.handle(kind = unique("polled")) { "found" }
    with_worker(queue, client: counting, wait_ms: 0) do
      sleep 2.5
      assert_includes 2..4, counting.fetches
      id = client.enqueue(kind: kind, queue: queue)["id"]
      assert_equal "found", wait_state(id, "completed", timeout: 3)["result"]
    end
  end

  # A wrong token used to be retried forever, keeping the whole host locked
  # out (429) by the server's throttle of wrong tokens.
  def test_grafter_worker_with_a_wrong_token_exits_at_once_naming_it
    own = GrafterTest::Server.start(token: "the-right-token-#{rand(1 << 30)}")
    identifier = unique("wrong-token")
    status, output = grafter_worker("--identifier", identifier, server: own, token: "a-wrong-token")
    assert_equal 1, status, output
    assert_match(/grafter-worker: the server refuses this worker's token \(set GRAFTER_TOKEN to a token it accepts\): .*401/,
                 output)
    refute_match(/\.rb:\d+:in/, output, "no backtrace")
    refute(own.client.workers.any? { |w| w["id"] == identifier }, "nothing registered")
  ensure
    own&.cleanup
  end

  # A 429 (this address sent too many wrong tokens) used to be retried
  # within the second, and on.
  def test_a_locked_out_worker_waits_for_the_lockout_to_end
    own = GrafterTest::Server.start(token: "the-right-token-#{rand(1 << 30)}")
    guesser = Grafter::Client.new(url: own.url, token: "a-guess")
    10.times { assert_raises(Grafter::ApiError) { guesser.queues } }
    assert_equal 429, assert_raises(Grafter::ApiError) { own.client.queues }.status, "the address is locked out"
    counting = CountingClient.new(url: own.url, token: own.token)
    with_worker(unique("locked-out"), client: counting, wait_ms: 0, registration_interval: 0.2) do |_worker, log|
      sleep 2
      assert_equal 1, counting.fetches
      assert_equal 1, log.string.scan("could not register").size, log.string
      assert_match(/fetch failed: .*429 too_many_requests/, log.string)
    end
  ensure
    own&.cleanup
  end

  # A revoked token used to leave the worker fetching (401) forever.
  def test_a_worker_whose_token_is_revoked_stops_once_its_running_jobs_end
    own = GrafterTest::Server.start(token: "the-right-token-#{rand(1 << 30)}")
    admin = own.client
    token = admin.send(:post, "/v1/tokens", { "name" => unique("worker"), "scopes" => ["worker"] })
    queue = unique("revoked")
    running = Queue.new
    ended = Queue.new
    Grafter.handle(kind = unique("outlives-its-token")) do
      running << true
      sleep 2
    ensure
      ended << $!
    end
    worker = Grafter::Worker.new(queues: [queue], client: Grafter::Client.new(url: own.url, token: token["token"]),
                                 wait_ms: 200, shutdown_timeout: 5, logger: GrafterTest.logger(log = StringIO.new))
    worker.start
    admin.enqueue(kind: kind, queue: queue)
    pop_within(running, 5)
    admin.send(:request, :delete, "/v1/tokens/#{token['id']}", idempotent: true)
    wait_until(10, message: "the worker stopped by itself") { worker.failure && worker.busy.zero? }
    assert_equal 401, worker.failure.status
    assert_match(/the server refuses this worker's token .*; stopping/, log.string)
    assert_nil pop_within(ended, 1), "the running job was let finish"
    worker.wait
  ensure
    worker&.stop(1)
    own&.cleanup
  end

  # Outcomes used to be retried within the second through a 429's lockout,
  # and a refused token's failure recorded as the job's own.
  def test_an_outcome_waits_for_retry_after_and_a_refused_token_is_not_retried
    asked = []
    answers = [Grafter::ApiError.new("locked out", status: 429, retry_after: 1), nil,
               Grafter::ApiError.new("unauthorized", status: 401)]
    fake = Object.new
    fake.define_singleton_method(:ack) do |_id, lease:, result:|
      asked << Process.clock_gettime(Process::CLOCK_MONOTONIC)
      error = answers.shift
      raise error if error

      {}
    end
    recorder = Grafter::Recorder.new(fake, logger: GrafterTest.logger(log = StringIO.new), grace: 30)
    execution = Grafter::Execution.new({ "id" => 1, "lease" => "lease" })
    assert recorder.ack(execution, nil)
    assert_operator asked[1] - asked[0], :>=, 1, "not before the Retry-After"
    refute recorder.ack(execution, nil)
    assert_equal 3, asked.size, "a refused token is not asked again"
    assert_match(/ack of job 1 not recorded, dropped: unauthorized/, log.string)
  end

  def test_an_outcome_is_retried_while_the_server_is_down_and_recorded_when_it_is_back
    own = GrafterTest::Server.start
    c = own.client(open_timeout: 1)
    queue = unique("outage")
    kind = unique("through-outage")
    finishing = Queue.new
    Grafter.handle(kind) do
      finishing << true
      sleep 1 # the server dies meanwhile
      { "survived" => true }
    end
    Grafter.handle(failing = unique("fails-through-outage")) do
      finishing << true
      sleep 1
      raise ArgumentError, "recorded later"
    end
    with_worker(queue, client: c) do |_worker, log|
      ok = c.enqueue(kind: kind, queue: queue)["id"]
      bad = c.enqueue(kind: failing, queue: queue, max_attempts: 1)["id"]
      2.times { pop_within(finishing, 10) }
      own.kill
      wait_until(message: "the worker retrying its outcomes") { log.string.include?("retrying") }
      sleep 0.5
      own.start(own.port)
      assert_equal [{ "survived" => true }, 1], wait_state(ok, "completed", client: c).values_at("result", "attempt")
      assert_match(/\AArgumentError: recorded later/, wait_state(bad, "dead", client: c)["errors"].last["error"])
    end
  ensure
    own&.cleanup
  end

  def test_health_port_answers_200_while_working_and_503_when_the_server_is_gone
    own = GrafterTest::Server.start
    port = GrafterTest.free_port
    with_worker(unique("health"), client: own.client(open_timeout: 1), health_port: port, health_host: "127.0.0.1",
                                  registration_interval: 0.2, wait_ms: 200) do
      wait_until(message: "healthy") { health(port) == 200 }
      own.kill
      wait_until(message: "unhealthy") { health(port) == 503 }
    end
  ensure
    own&.cleanup
  end

  # Connections used to be answered one at a time, each given 1 s to speak:
  # ten idle ones held a probe up for 10 s.
  def test_idle_connections_do_not_hold_up_the_health_port
    port = GrafterTest.free_port
    with_worker(unique("health-idle"), health_port: port, health_host: "127.0.0.1", registration_interval: 0.2) do
      wait_until(message: "healthy") { health(port) == 200 }
      idle = Array.new(10) { TCPSocket.new("127.0.0.1", port) }
      probe = Net::HTTP.new("127.0.0.1", port)
      probe.open_timeout = probe.read_timeout = 3
      probe.max_retries = 0
      assert_equal "200", probe.get("/").code
    ensure
      idle&.each(&:close)
    end
  end

  def test_bad_settings_are_refused
    assert_raises(ArgumentError) { Grafter::Worker.new(queues: [], client: client) }
    assert_raises(ArgumentError) { Grafter::Worker.new(queues: ["q"], concurrency: 0, client: client) }
    assert_raises(ArgumentError) { Grafter::Worker.new(queues: ["q"], lease_ms: 999, client: client) }
    assert_raises(ArgumentError) { Grafter::Worker.new(queues: ["q"], prefetch: -1, client: client) }
    # What the server always refuses: the worker would retry it forever.
    [{ wait_ms: -1 }, { wait_ms: 99_999_999 }, { lease_ms: 999_999_999_999 }, { identifier: "w" * 256 },
     { queues: ["q" * 256] }, { health_port: -1 }, { health_port: 0 }, { health_port: 99_999 }].each do |bad|
      assert_raises(ArgumentError, bad.inspect) { Grafter::Worker.new(**{ queues: ["q"], client: client }.merge(bad)) }
    end
  end

  def test_a_fetch_the_server_refuses_stops_the_worker
    worker = Grafter::Worker.new(queues: [unique("refused")], client: client, wait_ms: 40_000,
                                 logger: GrafterTest.logger(log = StringIO.new))
    worker.start
    wait_until(10, message: "the worker stopped by itself") { worker.failure && !client.workers.any? { |w| w["id"] == worker.id } }
    assert_equal 422, worker.failure.status
    assert_match(/refuses this worker's fetch/, log.string)
    assert_equal 1, log.string.scan("refuses this worker's fetch").size, "not retried"
  ensure
    worker&.stop(1)
  end

  def test_grafter_worker_refuses_a_bad_or_taken_health_port_before_registering
    taken = TCPServer.new("127.0.0.1", 0)
    identifier = unique("health-taken")
    [["99999", /the health port must be 1 to 65535, got 99999/],
     ["-1", /the health port must be 1 to 65535, got -1/],
     [taken.addr[1].to_s, /the health port 127.0.0.1:#{taken.addr[1]} cannot be opened/]].each do |port, message|
      status, output = grafter_worker("--health-port", port, "--health-host", "127.0.0.1", "--identifier", identifier)
      assert_equal 64, status, output
      assert_match(message, output)
      refute_match(/\.rb:\d+:in/, output, "no backtrace")
    end
    refute(client.workers.any? { |w| w["id"] == identifier }, "nothing registered")
    status, output = grafter_worker("--wait-ms", "99999999")
    assert_equal [64, true], [status, output.include?("wait_ms must be 0 to 600000")], output
  ensure
    taken&.close
  end

  def test_worker_options_come_from_flags_or_the_environment
    require "grafter/cli"
    env = { "GRAFTER_LEASE_MS" => "1500", "GRAFTER_WAIT_MS" => "20000", "GRAFTER_PREFETCH" => "0" }
    options = Grafter::CLI.parse([], env)
    assert_equal [1500, 20_000, 0], options.to_h.values_at(:lease_ms, :wait_ms, :prefetch)
    options = Grafter::CLI.parse(%w[--lease-ms 3000 --wait-ms 500 --prefetch 7], env)
    assert_equal [3000, 500, 7], options.to_h.values_at(:lease_ms, :wait_ms, :prefetch), "flags win"
    assert_equal [30_000, 2000, nil], Grafter::CLI.parse([], {}).to_h.values_at(:lease_ms, :wait_ms, :prefetch)
    error = assert_raises(ArgumentError) { Grafter::CLI.parse([], "GRAFTER_LEASE_MS" => "soon") }
    assert_equal 'GRAFTER_LEASE_MS must be an integer, got "soon"', error.message
  end

  # A job reporting a message that is not UTF-8 used to kill the heartbeat
  # thread: no lease renewed, no timeout enforced, attempts overlapping.
  def test_a_progress_message_that_is_not_utf8_or_too_long_is_cleaned_and_the_heartbeats_go_on
    queue = unique("bad-progress")
    Grafter.handle(binary = unique("binary-progress")) do
      Grafter::Execution.current.progress!(0.5, "\xFFok".b)
      sleep 2.5 # past the 1 s lease: only heartbeats keep it
      "done"
    end
    Grafter.handle(huge = unique("huge-progress")) do
      Grafter::Execution.current.progress!(0.25, "é" * 1_000_000)
      sleep 2.5
      "done"
    end
    with_worker(queue, lease_ms: 1000) do |worker, log|
      a = client.enqueue(kind: binary, queue: queue, max_attempts: 1)["id"]
      b = client.enqueue(kind: huge, queue: queue, max_attempts: 1)["id"]
      wait_until(5, message: "both progresses shown") { client.job(a)["progress"] && client.job(b)["progress"] }
      assert_equal({ "fraction" => 0.5, "message" => "\uFFFDok" }, client.job(a)["progress"], "the fraction kept")
      progress = client.job(b)["progress"]
      assert_equal [0.25, "é" * 512], [progress["fraction"], progress["message"]], "cut to the server's 1024 bytes"
      [a, b].each { |id| assert_equal ["done", 1, []], wait_state(id, "completed").values_at("result", "attempt", "errors") }
      refute_match(/thread died/, log.string)
      assert worker.instance_variable_get(:@heartbeats).alive?
    end
  end

  # One refused heartbeat (here: progress the server refuses, 422 and 413,
  # set past the checks of progress!) used to end the heartbeat loop.
  def test_a_heartbeat_the_server_refuses_drops_its_progress_and_the_heartbeats_go_on
    queue = unique("refused-beat")
    refused = [[unique("out-of-range"), { "fraction" => 2.0 }],
               [unique("too-large"), { "fraction" => 0.5, "message" => "x" * 2_000_000 }]]
    refused.each do |kind, progress|
      Grafter.handle(kind) do
        execution = Grafter::Execution.current
        execution.instance_variable_get(:@lock).synchronize do
          execution.instance_variable_set(:@progress, progress)
          execution.instance_variable_set(:@progress_version, 1)
        end
        sleep 2.5 # past the 1 s lease
        "done"
      end
    end
    interrupted = Queue.new
    Grafter.handle(timed = unique("times-out")) do
      sleep 10
    rescue Grafter::TimeoutError
      interrupted << true
      raise
    end
    with_worker(queue, lease_ms: 1000) do |_worker, log|
      ids = refused.map { |kind, _| client.enqueue(kind: kind, queue: queue, max_attempts: 1)["id"] }
      ids.each { |id| assert_equal ["done", 1, []], wait_state(id, "completed").values_at("result", "attempt", "errors") }
      assert_match(/progress was refused and is dropped.*422/, log.string)
      assert_match(/progress was refused and is dropped.*413/, log.string)
      assert_equal 2, log.string.scan("progress was refused").size, "each dropped once, not sent again"
      # The watcher runs in the heartbeat loop: timeouts are still enforced.
      id = client.enqueue(kind: timed, queue: queue, timeout_ms: 300, max_attempts: 1)["id"]
      assert_match(/timed out/, wait_state(id, "dead", timeout: 5)["errors"].last["error"])
      assert pop_within(interrupted, 5), "the job was interrupted at its timeout"
      refute_match(/thread died/, log.string)
    end
  end

  def test_grafter_worker_refuses_a_negative_shutdown_timeout_and_a_missing_require
    status, output = grafter_worker("--shutdown-timeout", "-5")
    assert_equal 64, status, output
    assert_match(/--shutdown-timeout must be 0 or more seconds, got -5.0/, output)
    status, output = grafter_worker("--require", "/nonexistent-#{Process.pid}.rb")
    assert_equal 64, status, output
    assert_equal 1, output.lines.size, output
    assert_match(%r{--require /nonexistent-\d+\.rb: no such file}, output)
    assert_raises(ArgumentError) { Grafter::Worker.new(queues: ["q"], shutdown_timeout: -1, client: client) }
  end

  def test_the_health_port_listens_on_loopback_unless_told_otherwise
    require "grafter/cli"
    assert_equal "127.0.0.1", Grafter::CLI.parse([], {}).health_host
    assert_equal "0.0.0.0", Grafter::CLI.parse(%w[--health-host 0.0.0.0], {}).health_host
    port = GrafterTest.free_port
    with_worker(unique("health-default"), health_port: port) do |worker|
      assert_equal "127.0.0.1", worker.instance_variable_get(:@health_server).addr[3]
    end
  end

  # QUIT was silently ignored; it now writes every thread's backtrace to
  # the log and the worker runs on.
  def test_quit_dumps_the_threads_to_the_log_and_the_worker_runs_on
    exe = File.expand_path("../exe/grafter-worker", __dir__)
    identifier = unique("quit")
    reader, writer = IO.pipe
    pid = Process.spawn({ "GRAFTER_URL" => server.url }, RbConfig.ruby, exe, "--queues", unique("cli"),
                        "--identifier", identifier, "--wait-ms", "200", out: writer, err: writer)
    writer.close
    output = +""
    wait_until(10, message: "registered") { client.workers.any? { |w| w["id"] == identifier } }
    Process.kill("QUIT", pid)
    wait_until(10, message: "a thread dump") do
      output << reader.read_nonblock(65_536, exception: false).to_s
      output.include?("thread grafter-heartbeat") && output.include?("thread grafter-fetch")
    end
    assert_nil Process.wait(pid, Process::WNOHANG), "still running"
    assert(client.workers.any? { |w| w["id"] == identifier })
    Process.kill("TERM", pid)
    status = wait_until(10, message: "grafter-worker exits") { Process.wait2(pid, Process::WNOHANG)&.last }
    pid = nil
    assert_equal 0, status.exitstatus
  ensure
    if pid
      Process.kill("KILL", pid)
      Process.wait(pid)
    end
    reader&.close
  end

  private

  # Runs exe/grafter-worker against `server` (the shared one), with `token`:
  # [exit status, output]. One still running after 10 s (it took settings
  # it should have refused) is killed.
  def grafter_worker(*args, server: self.server, token: nil)
    exe = File.expand_path("../exe/grafter-worker", __dir__)
    reader, writer = IO.pipe
    pid = Process.spawn({ "GRAFTER_URL" => server.url, "GRAFTER_TOKEN" => token }, RbConfig.ruby, exe,
                        "--queues", unique("cli"), *args, out: writer, err: writer)
    writer.close
    status = wait_until(10, message: "grafter-worker exits") { Process.wait2(pid, Process::WNOHANG)&.last }
    pid = nil
    [status.exitstatus, reader.read]
  ensure
    if pid
      Process.kill("KILL", pid)
      Process.wait(pid)
    end
    reader&.close
  end

  def health(port)
    Net::HTTP.get_response(URI("http://127.0.0.1:#{port}/")).code.to_i
  rescue SystemCallError, IOError
    nil
  end
end
