# The benchmark's jobs, loaded by enqueue.rb, crash.rb and by the worker under
# test (`grafter-worker --require`, `sidekiq -r`). BENCH_BACKEND picks the
# ActiveJob adapter: grafter or sidekiq.
require "json"
require "logger"
require "active_job"

# Per-job log lines (ActiveJob's "Enqueued…/Performed…", Sidekiq's start/done)
# would be most of the work for a no-op job and measure the logger: off for both.
ActiveJob::Base.logger = Logger.new(IO::NULL)

case ENV.fetch("BENCH_BACKEND")
when "grafter"
  $LOAD_PATH.unshift File.expand_path("../lib", __dir__)
  require "grafter/active_job"
  ActiveJob::Base.queue_adapter = :grafter
when "sidekiq"
  require "sidekiq"
  # redis-rb 4.8 warns on every SADD (one per enqueue) unless told which
  # return value the caller wants; Sidekiq 6.4 ignores it.
  Redis.sadd_returns_boolean = false
  Sidekiq.logger.level = Logger::WARN
  # A client pool as large as the enqueueing threads, so they never wait on it.
  Sidekiq.configure_client do |config|
    config.redis = {url: ENV.fetch("REDIS_URL"), size: Integer(ENV.fetch("BENCH_ENQUEUE_THREADS", "5"))}
  end
  Sidekiq.configure_server { |config| config.redis = {url: ENV.fetch("REDIS_URL")} }
  ActiveJob::Base.queue_adapter = :sidekiq
else
  abort "BENCH_BACKEND must be grafter or sidekiq"
end

# In the worker: the wall-clock time and the process's CPU time of the first
# and the last job, written to BENCH_DONE_FILE when the last of BENCH_JOBS ran.
module BenchClock
  TOTAL = Integer(ENV.fetch("BENCH_JOBS", "0"))
  DONE_FILE = ENV["BENCH_DONE_FILE"]
  @lock = Mutex.new
  @count = 0

  def self.tick
    now = Process.clock_gettime(Process::CLOCK_REALTIME)
    cpu = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID)
    @lock.synchronize do
      @count += 1
      @first, @first_cpu = now, cpu if @count == 1
      next unless @count == TOTAL && DONE_FILE

      File.write("#{DONE_FILE}.tmp", JSON.generate(first: @first, last: now, cpu_seconds: cpu - @first_cpu, count: @count))
      File.rename("#{DONE_FILE}.tmp", DONE_FILE)
    end
  end
end

class NoopJob < ActiveJob::Base
  queue_as :bench

  def perform(_n)
    BenchClock.tick
  end
end

# crash.rb's job: takes a while, then records that it ran to its end (one
# appended line per run, so a job run twice shows twice).
class SlowJob < ActiveJob::Base
  queue_as :bench

  def perform(n)
    sleep Float(ENV.fetch("BENCH_JOB_SECONDS", "0.5"))
    File.open(ENV.fetch("BENCH_RAN_FILE"), "a") { |file| file.write("#{n}\n") }
  end
end

# BENCH_CALL_STATS=FILE (Grafter only): counts the worker's calls to the
# server and the jobs each fetch and batch ack carried, written to FILE at
# exit. Measures the gem from outside; changes nothing it does.
if ENV["BENCH_CALL_STATS"] && ENV["BENCH_BACKEND"] == "grafter"
  module BenchCallStats
    COUNTS = Hash.new(0)
    LOCK = Mutex.new

    def self.count(call, jobs = nil)
      LOCK.synchronize do
        COUNTS["#{call} calls"] += 1
        COUNTS["#{call} jobs"] += jobs if jobs
      end
    end

    def fetch(**options)
      super.tap { |jobs| BenchCallStats.count("fetch", jobs.size) }
    end

    def ack_many(acks)
      BenchCallStats.count("ack_many", acks.size)
      super
    end

    %i[ack fail heartbeat register_worker].each do |call|
      define_method(call) do |*args, **options|
        BenchCallStats.count(call)
        super(*args, **options)
      end
    end
  end
  Grafter::Client.prepend(BenchCallStats)
  at_exit { File.write(ENV["BENCH_CALL_STATS"], JSON.pretty_generate(BenchCallStats::COUNTS)) }
end
