# kill -9 of the worker while jobs run, for Grafter and for Sidekiq 6.4 run the
# same way: enqueue --jobs SlowJobs (0.5 s each), start a worker, SIGKILL it
# once a quarter of them ran, start a new one, and count which jobs ever ran
# to their end.
#
#   ruby clients/ruby/bench/crash.rb [--jobs 200] [--concurrency 10]
#        [--grafter PATH] [--redis redis://127.0.0.1:6379/13] [--only grafter|sidekiq]
#
# Grafter's worker leases for 3 s (GRAFTER_LEASE_MS), so that the killed
# worker's jobs come back within seconds rather than the default 30.
require "optparse"
require "tmpdir"
require_relative "support"

options = {jobs: 200, concurrency: 10, grafter: Bench::DEFAULT_GRAFTER, redis: Bench::DEFAULT_REDIS, only: nil}
OptionParser.new do |o|
  o.on("--jobs N", Integer) { |v| options[:jobs] = v }
  o.on("--concurrency N", Integer) { |v| options[:concurrency] = v }
  o.on("--grafter PATH") { |v| options[:grafter] = v }
  o.on("--redis URL") { |v| options[:redis] = v }
  o.on("--only BACKEND", %w[grafter sidekiq]) { |v| options[:only] = v }
end.parse!

# How long without a job finishing counts as "nothing more will come".
QUIET_SECONDS = 10

(options[:only] ? [options[:only]] : %w[grafter sidekiq]).each do |backend|
  Dir.mktmpdir("grafter-crash-") do |dir|
    ran_file = File.join(dir, "ran.txt")
    File.write(ran_file, "")
    env = {"BENCH_BACKEND" => backend, "BENCH_JOBS" => options[:jobs].to_s, "BENCH_JOB_CLASS" => "SlowJob",
           "BENCH_RAN_FILE" => ran_file, "GRAFTER_LEASE_MS" => "3000"}
    server = Bench.start_store(backend, dir, env, grafter: options[:grafter], redis: options[:redis])
    Bench.run_script("enqueue.rb", env, dir)
    ran = -> { File.readlines(ran_file, chomp: true) }

    first = Bench.start_worker(backend, env, options[:concurrency], File.join(dir, "worker-1.log"))
    Bench.wait_until("a quarter of the jobs ran", 120) { ran.call.size >= options[:jobs] / 4 }
    Bench.kill9(first)
    ran_before_kill = ran.call.size

    second = Bench.start_worker(backend, env, options[:concurrency], File.join(dir, "worker-2.log"))
    last_count = -1
    last_change = Bench.now
    until ran.call.uniq.size == options[:jobs] || Bench.now - last_change > QUIET_SECONDS
      count = ran.call.size
      last_count, last_change = count, Bench.now if count != last_count
      sleep 0.2
    end
    Bench.stop(second)
    Bench.stop(server) if server

    lines = ran.call
    unique = lines.uniq.size
    puts JSON.generate(backend: backend, jobs: options[:jobs], concurrency: options[:concurrency],
                       ran_before_kill: ran_before_kill, ran_to_the_end: unique,
                       lost: options[:jobs] - unique, ran_twice: lines.size - unique)
  end
end
