# No-op ActiveJob jobs through Grafter (its Ruby worker, over HTTP, on a
# release `grafter serve` with SQLite) and through Sidekiq 6.4 (on the local
# Redis), run the same way and interleaved (G S G S …): enqueue BENCH_JOBS jobs
# with perform_later, then start the worker and time it draining them.
#
#   ruby clients/ruby/bench/run.rb [--jobs 20000] [--concurrency 10]
#        [--enqueue-threads 1,10] [--rounds 3] [--grafter PATH]
#        [--redis redis://127.0.0.1:6379/13] [--only grafter|sidekiq]
#
# Processing is timed from the first job's start to the moment all are done:
# for Grafter, when the server reports every job completed (acknowledged, on
# disk); for Sidekiq, when the last job ran (its free fetch has no ack).
# Redis: only the given database is flushed, before each Sidekiq run.
require "json"
require "net/http"
require "optparse"
require "socket"
require "tmpdir"

BENCH = __dir__
GEM = File.expand_path("..", BENCH)
options = {jobs: 20_000, concurrency: 10, enqueue_threads: [1, 10], rounds: 3,
           grafter: "/work/main/target/release/grafter", redis: "redis://127.0.0.1:6379/13", only: nil}
OptionParser.new do |o|
  o.on("--jobs N", Integer) { |v| options[:jobs] = v }
  o.on("--concurrency N", Integer) { |v| options[:concurrency] = v }
  o.on("--enqueue-threads LIST", Array) { |v| options[:enqueue_threads] = v.map { |t| Integer(t) } }
  o.on("--rounds N", Integer) { |v| options[:rounds] = v }
  o.on("--grafter PATH") { |v| options[:grafter] = v }
  o.on("--redis URL") { |v| options[:redis] = v }
  o.on("--only BACKEND", %w[grafter sidekiq]) { |v| options[:only] = v }
end.parse!
redis_db = options[:redis][%r{/(\d+)\z}, 1] or abort "--redis must name a database number (…/13): only it is flushed"
abort "#{options[:grafter]} is not executable" unless File.executable?(options[:grafter])

def now = Process.clock_gettime(Process::CLOCK_REALTIME)

def free_port
  server = TCPServer.new("127.0.0.1", 0)
  server.addr[1]
ensure
  server&.close
end

def wait_until(what, timeout)
  deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
  until (value = yield)
    raise "#{what}: not within #{timeout} s" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

    sleep 0.005
  end
  value
end

CLOCK_TICKS = Integer(`getconf CLK_TCK`)

def cpu_seconds_of(pid)
  fields = File.read("/proc/#{pid}/stat").split(") ").last.split
  (Integer(fields[11]) + Integer(fields[12])).fdiv(CLOCK_TICKS) # utime + stime
end

def redis_cpu_seconds(db)
  info = `redis-cli -n #{db} info cpu`
  %w[used_cpu_user used_cpu_sys].sum { |key| Float(info[/^#{key}:([\d.]+)/, 1]) }
end

def stop(pid)
  Process.kill("TERM", pid)
  100.times do
    return if Process.wait2(pid, Process::WNOHANG)

    sleep 0.1
  end
  Process.kill("KILL", pid)
  Process.wait(pid)
rescue Errno::ESRCH, Errno::ECHILD
  nil # already gone
end

# One run: a fresh store, enqueue, drain. Returns a Hash of figures.
def run_once(backend, threads, options, redis_db)
  Dir.mktmpdir("grafter-bench-") do |dir|
    env = {"BENCH_BACKEND" => backend, "BENCH_JOBS" => options[:jobs].to_s,
           "BENCH_ENQUEUE_THREADS" => threads.to_s, "BENCH_DONE_FILE" => File.join(dir, "done.json")}
    server = nil
    if backend == "grafter"
      port = free_port
      env["GRAFTER_URL"] = "http://127.0.0.1:#{port}"
      server = spawn(options[:grafter], "serve", "--database", "sqlite://#{dir}/bench.db",
                     "--listen", "127.0.0.1:#{port}", out: File::NULL, err: File.join(dir, "server.log"))
      wait_until("grafter serve up", 30) { Net::HTTP.get_response(URI("#{env["GRAFTER_URL"]}/livez")).is_a?(Net::HTTPOK) rescue false }
    else
      env["REDIS_URL"] = options[:redis]
      system("redis-cli", "-n", redis_db, "flushdb", out: File::NULL, exception: true)
    end
    load = File.read("/proc/loadavg").split.first(3).join(" ")

    enqueue_output = IO.popen(env, ["ruby", File.join(BENCH, "enqueue.rb")], err: File.join(dir, "enqueue.log"), &:read)
    raise "enqueue failed:\n#{File.read(File.join(dir, "enqueue.log"))}" unless $?.success?

    enqueue = JSON.parse(enqueue_output)
    store_cpu = -> { backend == "grafter" ? cpu_seconds_of(server) : redis_cpu_seconds(redis_db) }
    store_cpu_before = store_cpu.call

    worker_command =
      if backend == "grafter"
        ["ruby", File.join(GEM, "exe", "grafter-worker"), "--require", File.join(BENCH, "noop_job.rb"),
         "--queues", "bench", "--concurrency", options[:concurrency].to_s]
      else
        ["sidekiq", "-r", File.join(BENCH, "noop_job.rb"), "-q", "bench", "-c", options[:concurrency].to_s]
      end
    worker = spawn(env, *worker_command, out: File.join(dir, "worker.log"), err: [:child, :out])
    begin
      done = wait_until("#{backend} worker drained #{options[:jobs]} jobs", 600) do
        raise "the #{backend} worker exited early:\n#{File.read(File.join(dir, "worker.log"))}" if Process.wait2(worker, Process::WNOHANG)

        File.exist?(env["BENCH_DONE_FILE"]) && JSON.parse(File.read(env["BENCH_DONE_FILE"]))
      end
      finished = done["last"]
      if backend == "grafter"
        # Done means acknowledged: the server's count, not the worker's.
        uri = URI("#{env["GRAFTER_URL"]}/v1/queues")
        wait_until("every job completed on the server", 60) do
          queue = JSON.parse(Net::HTTP.get(uri))["queues"].find { |q| q["name"] == "bench" }
          queue && queue["counts"]["completed"] == options[:jobs]
        end
        finished = now
      end
      store_cpu_used = store_cpu.call - store_cpu_before
    ensure
      stop(worker)
    end
    stop(server) if server
    drain = finished - done["first"]
    {backend: backend, enqueue_threads: threads, jobs: options[:jobs], concurrency: options[:concurrency],
     enqueue_per_second: (options[:jobs] / enqueue["seconds"]).round, enqueue_cpu_seconds: enqueue["cpu_seconds"].round(2),
     processed_per_second: (options[:jobs] / drain).round, worker_ran_last_job_after: (done["last"] - done["first"]).round(3),
     drain_seconds: drain.round(3), worker_cpu_seconds: done["cpu_seconds"].round(2),
     store_cpu_seconds: store_cpu_used.round(2), load_before: load}
  end
end

backends = options[:only] ? [options[:only]] : %w[grafter sidekiq]
results = []
options[:rounds].times do |round|
  options[:enqueue_threads].each do |threads|
    backends.each do |backend|
      result = run_once(backend, threads, options, redis_db).merge(round: round + 1)
      puts JSON.generate(result)
      $stdout.flush
      results << result
    end
  end
end

def spread(values)
  sorted = values.sort
  median = sorted.size.odd? ? sorted[sorted.size / 2] : (sorted[sorted.size / 2 - 1] + sorted[sorted.size / 2]) / 2.0
  "#{sorted.first.round} / #{median.round} / #{sorted.last.round}"
end

puts
puts "min / median / max over #{options[:rounds]} interleaved rounds, #{options[:jobs]} jobs, concurrency #{options[:concurrency]}:"
results.group_by { |r| [r[:backend], r[:enqueue_threads]] }.each do |(backend, threads), runs|
  puts format("%-8s enqueue (%2d threads) %-22s jobs/s   processing %-22s jobs/s",
              backend, threads, spread(runs.map { |r| r[:enqueue_per_second] }), spread(runs.map { |r| r[:processed_per_second] }))
end
