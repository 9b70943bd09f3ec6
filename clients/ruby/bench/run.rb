# No-op ActiveJob jobs through Grafter (its Ruby worker, over HTTP, on a
# release `grafter serve` with SQLite) and through Sidekiq 6.4 (on the local
# Redis), run the same way and interleaved (G S G S …): enqueue --jobs jobs
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
require "optparse"
require "tmpdir"
require_relative "support"

options = {jobs: 20_000, concurrency: 10, enqueue_threads: [1, 10], rounds: 3,
           grafter: Bench::DEFAULT_GRAFTER, redis: Bench::DEFAULT_REDIS, only: nil}
OptionParser.new do |o|
  o.on("--jobs N", Integer) { |v| options[:jobs] = v }
  o.on("--concurrency N", Integer) { |v| options[:concurrency] = v }
  o.on("--enqueue-threads LIST", Array) { |v| options[:enqueue_threads] = v.map { |t| Integer(t) } }
  o.on("--rounds N", Integer) { |v| options[:rounds] = v }
  o.on("--grafter PATH") { |v| options[:grafter] = v }
  o.on("--redis URL") { |v| options[:redis] = v }
  o.on("--only BACKEND", %w[grafter sidekiq]) { |v| options[:only] = v }
end.parse!

# One run: a fresh store, enqueue, drain. Returns a Hash of figures.
def run_once(backend, threads, options)
  Dir.mktmpdir("grafter-bench-") do |dir|
    env = {"BENCH_BACKEND" => backend, "BENCH_JOBS" => options[:jobs].to_s,
           "BENCH_ENQUEUE_THREADS" => threads.to_s, "BENCH_DONE_FILE" => File.join(dir, "done.json")}
    server = Bench.start_store(backend, dir, env, grafter: options[:grafter], redis: options[:redis])
    load = File.read("/proc/loadavg").split.first(3).join(" ")

    store_cpu = -> { server ? Bench.cpu_seconds_of(server) : Bench.redis_cpu_seconds(options[:redis]) }
    store_cpu_before = store_cpu.call
    enqueue = JSON.parse(Bench.run_script("enqueue.rb", env, dir))
    store_cpu_enqueue = store_cpu.call - store_cpu_before
    store_cpu_before = store_cpu.call

    worker_log = File.join(dir, "worker.log")
    worker = Bench.start_worker(backend, env, options[:concurrency], worker_log)
    begin
      done = Bench.wait_until("#{backend} worker drained #{options[:jobs]} jobs", 600) do
        raise "the #{backend} worker exited early:\n#{File.read(worker_log)}" if Bench.exited?(worker)

        File.exist?(env["BENCH_DONE_FILE"]) && JSON.parse(File.read(env["BENCH_DONE_FILE"]))
      end
      finished = done["last"]
      if server
        # Done means acknowledged: the server's count, not the worker's.
        Bench.wait_until("every job completed on the server", 60) do
          Bench.grafter_counts(env["GRAFTER_URL"])["completed"] == options[:jobs]
        end
        finished = Bench.now
      end
      store_cpu_used = store_cpu.call - store_cpu_before
    ensure
      Bench.stop(worker)
    end
    Bench.stop(server) if server
    drain = finished - done["first"]
    {backend: backend, enqueue_threads: threads, jobs: options[:jobs], concurrency: options[:concurrency],
     enqueue_per_second: (options[:jobs] / enqueue["seconds"]).round, enqueue_cpu_seconds: enqueue["cpu_seconds"].round(2),
     store_enqueue_cpu_seconds: store_cpu_enqueue.round(2),
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
      result = run_once(backend, threads, options).merge(round: round + 1)
      puts JSON.generate(result)
      $stdout.flush
      results << result
    end
  end
end

def spread(values)
  sorted = values.sort
  middle = sorted.size / 2
  median = sorted.size.odd? ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2.0
  "#{sorted.first.round} / #{median.round} / #{sorted.last.round}"
end

puts
puts "min / median / max over #{options[:rounds]} interleaved rounds, #{options[:jobs]} jobs, concurrency #{options[:concurrency]}:"
results.group_by { |r| [r[:backend], r[:enqueue_threads]] }.each do |(backend, threads), runs|
  puts format("%-8s enqueue (%2d threads) %-22s jobs/s   processing %-22s jobs/s",
              backend, threads, spread(runs.map { |r| r[:enqueue_per_second] }),
              spread(runs.map { |r| r[:processed_per_second] }))
end
