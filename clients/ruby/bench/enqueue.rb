# Enqueues BENCH_JOBS jobs of BENCH_JOB_CLASS (NoopJob unless set) through
# ActiveJob's perform_later from BENCH_ENQUEUE_THREADS threads (as a web
# server's request threads would) and prints one JSON line: how long it took.
require_relative "jobs"

jobs = Integer(ENV.fetch("BENCH_JOBS"))
threads = Integer(ENV.fetch("BENCH_ENQUEUE_THREADS", "1"))
job_class = Object.const_get(ENV.fetch("BENCH_JOB_CLASS", "NoopJob"))

started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
cpu_started = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID)
Array.new(threads) do |t|
  Thread.new { t.step(jobs - 1, threads) { |n| job_class.perform_later(n) } }
end.each(&:join)
seconds = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
cpu_seconds = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID) - cpu_started
puts JSON.generate(jobs: jobs, threads: threads, seconds: seconds, cpu_seconds: cpu_seconds)
