# CPU per perform_later, on the server and in the enqueueing process, for
# builds of the server and versions of the gem side by side, interleaved
# (A B A B …): each run a fresh `grafter serve` on a new SQLite file and
# enqueue.rb (BENCH_JOBS NoopJobs from BENCH_ENQUEUE_THREADS threads).
#
#   ruby clients/ruby/bench/enqueue_cpu.rb [--jobs 5000] [--threads 10] [--rounds 3]
#        [--perf PREFIX] SERVER[,BENCH_DIR] SERVER[,BENCH_DIR] …
#
# BENCH_DIR is the bench/ directory of a checkout whose gem enqueues (this
# one by default). --perf records the server with `perf record -g` (DWARF
# call graphs) into PREFIX.<n>, one file per run.
require "optparse"
require "tmpdir"
require_relative "support"

options = {jobs: 5000, threads: 10, rounds: 3, perf: nil}
OptionParser.new do |o|
  o.on("--jobs N", Integer) { |v| options[:jobs] = v }
  o.on("--threads N", Integer) { |v| options[:threads] = v }
  o.on("--rounds N", Integer) { |v| options[:rounds] = v }
  o.on("--perf PREFIX") { |v| options[:perf] = v }
end.parse!
abort "name at least one server binary" if ARGV.empty?

def run_once(server, bench_dir, options, perf_file)
  Dir.mktmpdir("grafter-enqueue-cpu-") do |dir|
    env = {"BENCH_BACKEND" => "grafter", "BENCH_JOBS" => options[:jobs].to_s,
           "BENCH_ENQUEUE_THREADS" => options[:threads].to_s}
    pid = Bench.start_store("grafter", dir, env, grafter: server, redis: nil)
    load = File.read("/proc/loadavg").split.first
    perf = perf_file && spawn("perf", "record", "-F", "2000", "--call-graph", "dwarf,16384", "-p", pid.to_s,
                              "-o", perf_file, out: File::NULL, err: File::NULL)
    sleep 0.5 if perf # perf attached before the first request
    before = Bench.cpu_seconds_of(pid)
    log = File.join(dir, "enqueue.log")
    output = IO.popen(env, ["ruby", File.join(bench_dir, "enqueue.rb")], err: log, &:read)
    raise "enqueue.rb failed:\n#{File.read(log)}" unless $?.success?

    server_cpu = Bench.cpu_seconds_of(pid) - before
    if perf
      Process.kill("INT", perf)
      Process.wait(perf)
    end
    Bench.stop(pid)
    enqueue = JSON.parse(output)
    {enqueue_per_second: (options[:jobs] / enqueue["seconds"]).round,
     server_cpu_us: (server_cpu * 1e6 / options[:jobs]).round,
     enqueueing_cpu_us: (enqueue["cpu_seconds"] * 1e6 / options[:jobs]).round, load_before: load}
  end
end

variants = ARGV.map { |arg| arg.split(",", 2) }
results = Hash.new { |hash, key| hash[key] = [] }
options[:rounds].times do |round|
  variants.each_with_index do |(server, bench_dir), n|
    perf_file = options[:perf] && "#{options[:perf]}.#{round * variants.size + n}"
    result = run_once(server, bench_dir || Bench::DIR, options, perf_file)
    puts JSON.generate({server: server, bench: bench_dir || Bench::DIR, round: round + 1}.merge(result))
    $stdout.flush
    results[[server, bench_dir]] << result
  end
end

puts
puts "min / median / max over #{options[:rounds]} rounds, #{options[:jobs]} jobs from #{options[:threads]} threads:"
results.each do |(server, bench_dir), runs|
  figures = %i[enqueue_per_second server_cpu_us enqueueing_cpu_us].map do |key|
    sorted = runs.map { |run| run[key] }.sort
    "#{key} #{sorted.first} / #{sorted[sorted.size / 2]} / #{sorted.last}"
  end
  puts "#{server}#{bench_dir ? " (gem of #{bench_dir})" : ''}: #{figures.join(', ')}"
end
