# What run.rb and crash.rb share: starting the two backends' stores and
# workers the same way, and waiting on them.
require "json"
require "net/http"
require "socket"

module Bench
  DIR = __dir__
  GEM = File.expand_path("..", DIR)
  DEFAULT_GRAFTER = "/work/main/target/release/grafter"
  DEFAULT_REDIS = "redis://127.0.0.1:6379/13"
  CLOCK_TICKS = Integer(`getconf CLK_TCK`)

  module_function

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

  # The database number of a redis:// URL: the only one a run may flush.
  def redis_db(url)
    url[%r{/(\d+)\z}, 1] or abort "the Redis URL must name a database number (…/13): only it is flushed"
  end

  # A fresh store: a `grafter serve` on a new SQLite file in `dir` (its pid),
  # or the Redis database emptied (nil). Sets GRAFTER_URL or REDIS_URL in `env`.
  def start_store(backend, dir, env, grafter:, redis:)
    if backend == "grafter"
      abort "#{grafter} is not executable" unless File.executable?(grafter)
      port = free_port
      env["GRAFTER_URL"] = "http://127.0.0.1:#{port}"
      command = [grafter, "serve", "--database", "sqlite://#{dir}/bench.db", "--listen", "127.0.0.1:#{port}"]
      pid = spawn(*command, out: File::NULL, err: File.join(dir, "server.log"))
      wait_until("grafter serve up", 30) do
        Net::HTTP.get_response(URI("#{env["GRAFTER_URL"]}/livez")).is_a?(Net::HTTPOK)
      rescue SystemCallError
        false
      end
      pid
    else
      env["REDIS_URL"] = redis
      system("redis-cli", "-n", redis_db(redis), "flushdb", out: File::NULL, exception: true)
      nil
    end
  end

  # Runs a Ruby script of this directory to its end; its stdout.
  def run_script(script, env, dir)
    log = File.join(dir, "#{File.basename(script, ".rb")}.log")
    output = IO.popen(env, ["ruby", File.join(DIR, script)], err: log, &:read)
    raise "#{script} failed:\n#{File.read(log)}" unless $?.success?

    output
  end

  # The worker under test, with the same queue and concurrency for both.
  def start_worker(backend, env, concurrency, log)
    command =
      if backend == "grafter"
        ["ruby", File.join(GEM, "exe", "grafter-worker"), "--require", File.join(DIR, "jobs.rb"),
         "--queues", "bench", "--concurrency", concurrency.to_s]
      else
        ["sidekiq", "-r", File.join(DIR, "jobs.rb"), "-q", "bench", "-c", concurrency.to_s]
      end
    spawn(env, *command, out: log, err: [:child, :out])
  end

  def exited?(pid)
    !Process.wait2(pid, Process::WNOHANG).nil?
  rescue Errno::ECHILD
    true
  end

  # TERM, and KILL if it is still there 10 s later.
  def stop(pid)
    Process.kill("TERM", pid)
    100.times do
      return if exited?(pid)

      sleep 0.1
    end
    Process.kill("KILL", pid)
    Process.wait(pid)
  rescue Errno::ESRCH, Errno::ECHILD
    nil # already gone
  end

  def kill9(pid)
    Process.kill("KILL", pid)
    Process.wait(pid)
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  end

  # The counts per state of the queue `bench` on a Grafter server.
  def grafter_counts(url)
    queue = JSON.parse(Net::HTTP.get(URI("#{url}/v1/queues")))["queues"].find { |q| q["name"] == "bench" }
    queue ? queue["counts"] : {}
  end

  def cpu_seconds_of(pid)
    fields = File.read("/proc/#{pid}/stat").split(") ").last.split
    (Integer(fields[11]) + Integer(fields[12])).fdiv(CLOCK_TICKS) # utime + stime
  end

  def redis_cpu_seconds(redis)
    info = `redis-cli -n #{redis_db(redis)} info cpu`
    %w[used_cpu_user used_cpu_sys].sum { |key| Float(info[/^#{key}:([\d.]+)/, 1]) }
  end
end
