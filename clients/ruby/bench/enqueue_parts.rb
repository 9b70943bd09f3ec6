# Where an ActiveJob enqueue's time goes, part by part, for one thread:
# wall and CPU microseconds per call of each step, each run --calls times.
#
#   BENCH_BACKEND=grafter GRAFTER_URL=http://127.0.0.1:7380 ruby clients/ruby/bench/enqueue_parts.rb
#   BENCH_BACKEND=sidekiq REDIS_URL=redis://127.0.0.1:6379/13 ruby clients/ruby/bench/enqueue_parts.rb
#
# CPU below wall is time spent waiting: on the server, the disk, the network.
# The jobs it enqueues are left in the store (use a throwaway one).
require "net/http"
require "optparse"
require_relative "jobs"

calls = 2000
OptionParser.new { |o| o.on("--calls N", Integer) { |v| calls = v } }.parse!

def measure(label, calls)
  yield # once outside the count: connections opened, code loaded
  wall = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  cpu = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID)
  calls.times { yield }
  wall = Process.clock_gettime(Process::CLOCK_MONOTONIC) - wall
  cpu = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID) - cpu
  puts format("%-58s wall %7.1f µs   cpu %7.1f µs", label, wall * 1e6 / calls, cpu * 1e6 / calls)
end

job = NoopJob.new(1)
measure("ActiveJob: job.serialize", calls) { job.serialize }

case ENV.fetch("BENCH_BACKEND")
when "grafter"
  fields = Grafter::ActiveJobSupport.fields_for(job, nil)
  body = JSON.generate(fields)
  answer = JSON.generate(Grafter.client.enqueue(**fields))
  measure("grafter: fields_for + JSON.generate", calls) { JSON.generate(Grafter::ActiveJobSupport.fields_for(job, nil)) }
  measure("grafter: JSON.parse of the answer (#{answer.bytesize} bytes)", calls) { JSON.parse(answer) }
  uri = URI(ENV.fetch("GRAFTER_URL"))
  http = Net::HTTP.start(uri.host, uri.port)
  post = lambda do
    request = Net::HTTP::Post.new("/v1/jobs", "Content-Type" => "application/json")
    request.body = body
    http.request(request).body
  end
  measure("grafter: Net::HTTP POST /v1/jobs, keep-alive (#{body.bytesize} bytes)", calls, &post)
  measure("grafter: Grafter.client.enqueue(**fields)", calls) { Grafter.client.enqueue(**fields) }
when "sidekiq"
  payload = {"class" => ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper, "wrapped" => "NoopJob",
             "queue" => "bench", "args" => [job.serialize]}
  measure("sidekiq: Sidekiq::Client.push (LPUSH, pipelined)", calls) { Sidekiq::Client.push(payload) }
end
measure("#{ENV["BENCH_BACKEND"]}: NoopJob.perform_later (all of it)", calls) { NoopJob.perform_later(1) }
