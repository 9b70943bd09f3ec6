# frozen_string_literal: true

require_relative "test_helper"
require "grafter/active_job"
require "grafter/rack/push_endpoint"
require "puma"
require "puma/configuration"
require "puma/launcher"

ActiveJob::Base.logger = Logger.new(nil)

module PushJobs
  RUNS = Hash.new(0)
  LOCK = Mutex.new

  def self.ran(name)
    LOCK.synchronize { RUNS[name] += 1 }
  end

  def self.runs(name)
    LOCK.synchronize { RUNS[name] }
  end

  class Broken < StandardError; end
  class Pointless < StandardError; end

  class BaseJob < ActiveJob::Base
    self.queue_adapter = :grafter
  end

  class GreetJob < BaseJob
    def perform(name)
      PushJobs.ran(name)
      { "hello" => name, "attempt" => grafter_attempt }
    end
  end

  class GiveUpJob < BaseJob
    retry_on Broken, attempts: 2, wait: 0

    def perform(name)
      PushJobs.ran(name)
      raise Broken, "attempt #{grafter_attempt}"
    end
  end

  class DiscardJob < BaseJob
    discard_on Pointless

    def perform(name)
      PushJobs.ran(name)
      raise Pointless, "skip it"
    end
  end

  # Polls: runs again later (retry_job) until ready, using up no attempt.
  class PollJob < BaseJob
    grafter_options max_attempts: 1

    def perform(name)
      runs = PushJobs.ran(name)
      return "ready after #{runs} runs" if runs >= 3

      retry_job(wait: 0)
    end
  end

  # The same, finished after a 202.
  class AsyncPollJob < PollJob
    grafter_options push: :async
  end

  # Longer than a push may last: answered 202, finished through the API.
  class LongExportJob < BaseJob
    grafter_options push: :async

    def perform(name)
      PushJobs.ran(name)
      grafter_progress(0.5, "half way")
      sleep 0.8
      { "exported" => name }
    end
  end
end

class PushEndpointTest < Minitest::Test
  SECRET = "push-secret-0123456789abcdef"

  def setup
    Grafter.configure do |config|
      config.url = server.url
      config.enqueuer = nil
    end
    @port = GrafterTest.free_port
    endpoint = Grafter::Rack::PushEndpoint.new(secret: SECRET, client: client, logger: GrafterTest.logger)
    @puma = Puma::Server.new(endpoint, Puma::Events.strings, { min_threads: 0, max_threads: 4 })
    @puma.add_tcp_listener("127.0.0.1", @port)
    @puma.run
    @queue = unique("push")
    client.update_queue(@queue, push: { url: "http://127.0.0.1:#{@port}/grafter/jobs", secret: SECRET,
                                        timeout_ms: 5000, concurrency: 4 })
  end

  def teardown
    client.update_queue(@queue, push: nil)
    @puma&.stop(true)
  end

  def test_a_signed_push_runs_the_job_and_its_result_completes_it
    name = unique("ada")
    job = PushJobs::GreetJob.set(queue: @queue).perform_later(name)
    done = wait_state(job.provider_job_id, "completed")
    assert_equal({ "hello" => name, "attempt" => 1 }, done["result"])
    assert_equal 1, PushJobs.runs(name)

    kind = unique("plain")
    Grafter.handle(kind) { |args, pushed| { "sum" => args["a"] + args["b"], "id" => pushed["id"] } }
    id = client.enqueue(kind: kind, queue: @queue, args: { a: 2, b: 3 })["id"]
    assert_equal({ "sum" => 5, "id" => id }, wait_state(id, "completed")["result"])
  end

  def test_an_error_is_retried_and_retry_on_exhausted_is_dead
    kind = unique("fails-once")
    Grafter.handle(kind) do |_args, pushed|
      raise IOError, "first push fails" if pushed["attempt"] == 1

      "ok"
    end
    id = client.enqueue(kind: kind, queue: @queue)["id"]
    done = wait_state(id, "completed")
    assert_equal 2, done["attempt"]
    assert_match(/\A500 .*IOError: first push fails/, done["errors"].first["error"])

    name = unique("give-up")
    job = PushJobs::GiveUpJob.set(queue: @queue).perform_later(name)
    dead = wait_state(job.provider_job_id, %w[dead completed])
    assert_equal ["dead", 2], dead.values_at("state", "attempt"), "retry_on attempts: 2 then Grafter-Retry: false"
    assert_equal 2, PushJobs.runs(name)
  end

  def test_discard_on_answers_200_and_the_job_completes
    name = unique("discard")
    job = PushJobs::DiscardJob.set(queue: @queue).perform_later(name)
    done = wait_state(job.provider_job_id, %w[completed dead])
    assert_equal ["completed", { "discarded" => "PushJobs::Pointless: skip it" }], done.values_at("state", "result")
  end

  def test_a_result_that_is_not_json_is_dead_without_running_again
    kind = unique("binary-result")
    Grafter.handle(kind) { PushJobs.ran(kind) && "\xFF".b }
    id = client.enqueue(kind: kind, queue: @queue, max_attempts: 3)["id"]
    dead = wait_state(id, %w[dead completed])
    assert_equal ["dead", 1], dead.values_at("state", "attempt")
    assert_match(/the result is not JSON/, dead["errors"].last["error"])
    assert_equal 1, PushJobs.runs(kind)
  end

  # The async path used to drop such an outcome: the job stayed running
  # until its lease ran out, then ran again.
  def test_an_async_result_that_is_not_json_is_dead_without_running_again
    kind = unique("async-binary-result")
    Grafter.handle(kind, push: :async) { PushJobs.ran(kind) && "\xFF".b }
    id = client.enqueue(kind: kind, queue: @queue, max_attempts: 3)["id"]
    dead = wait_state(id, %w[dead completed], timeout: 10)
    assert_equal ["dead", 1], dead.values_at("state", "attempt")
    assert_match(/the result is not JSON/, dead["errors"].last["error"])
    assert_equal 1, PushJobs.runs(kind)
  end

  def test_args_nested_as_deep_as_the_server_takes_are_pushed
    kind = unique("deep")
    deep = Array.new(120).inject(1) { |inner, _| [inner] }
    Grafter.handle(kind) { |args| args == deep }
    id = client.enqueue(kind: kind, queue: @queue, args: deep)["id"]
    assert_equal true, wait_state(id, %w[completed dead])["result"]
  end

  def test_an_async_job_is_answered_202_and_finished_through_the_client
    name = unique("export")
    job = PushJobs::LongExportJob.set(queue: @queue).perform_later(name)
    id = job.provider_job_id
    wait_until(message: "progress through a heartbeat") { client.job(id)["progress"] }
    assert_equal "running", client.job(id)["state"]
    done = wait_state(id, "completed")
    assert_equal [{ "exported" => name }, 1, []], done.values_at("result", "attempt", "errors")
  end

  def test_a_wrong_or_stale_signature_is_refused_and_runs_nothing
    client.update_queue(@queue, push: nil)
    name = unique("forged")
    body = JSON.generate("id" => 1, "kind" => "PushJobs::GreetJob", "queue" => @queue, "attempt" => 1,
                         "max_attempts" => 25, "args" => PushJobs::GreetJob.new(name).serialize)
    forged = Grafter::Signature.sign(body, ["not-the-secret-0123456789"])
    stale = Grafter::Signature.sign(body, [SECRET], now: Time.now.to_i - 301)
    tampered = Grafter::Signature.sign(body.sub(name, "other"), [SECRET])
    [forged, stale, tampered, nil, "t=abc,v1=zz"].each do |signature|
      response = post(body, signature)
      assert_equal "401", response.code, "signature #{signature.inspect}"
      assert_equal "unauthorized", JSON.parse(response.body).dig("error", "code")
    end
    assert_equal 0, PushJobs.runs(name), "nothing ran"

    response = post(body, Grafter::Signature.sign(body, ["old-secret-0123456789", SECRET]))
    assert_equal "200", response.code, "any v1 may match (rotation)"
    assert_equal 1, PushJobs.runs(name)
    not_allowed = Net::HTTP.get_response(URI("http://127.0.0.1:#{@port}/grafter/jobs"))
    assert_equal %w[405 POST], [not_allowed.code, not_allowed["allow"]]
  end

  def test_standard_webhooks_signatures_are_checked_too
    client.update_queue(@queue, push: { url: "http://127.0.0.1:#{@port}/grafter/jobs", secret: SECRET,
                                        signing: "standard-webhooks" })
    name = unique("standard")
    job = PushJobs::GreetJob.set(queue: @queue).perform_later(name)
    assert_equal({ "hello" => name, "attempt" => 1 }, wait_state(job.provider_job_id, "completed")["result"])

    client.update_queue(@queue, push: nil)
    other = unique("standard-refused")
    body = JSON.generate("id" => 2, "kind" => "PushJobs::GreetJob", "queue" => @queue, "attempt" => 1,
                         "max_attempts" => 25, "args" => PushJobs::GreetJob.new(other).serialize)
    stale_at = Time.now.to_i - 301
    stale = standard_headers("job_2", stale_at, Grafter::Signature.sign_standard("job_2", body, [SECRET], now: stale_at))
    forged = standard_headers("job_2", Time.now.to_i, Grafter::Signature.sign_standard("job_2", body, ["whsec_#{['k' * 24].pack('m0')}"]))
    [stale, forged, standard_headers("job_2", Time.now.to_i, nil)].each do |headers|
      assert_equal "401", post(body, nil, headers).code, headers.inspect
    end
    assert_equal 0, PushJobs.runs(other), "nothing ran"
    signed = standard_headers("job_2", Time.now.to_i, Grafter::Signature.sign_standard("job_2", body, ["old-secret-0123456789", SECRET]))
    assert_equal "200", post(body, nil, signed).code, "any v1, may match (rotation)"
  end

  def test_a_secret_the_server_would_refuse_is_refused_and_an_empty_key_verifies_nothing
    ["whsec_", "whsec_!!!!", "whsec_ ", "whsec_#{'x' * 20}", "whsec_#{['k' * 15].pack('m0')}", "short", "s" * 513].each do |secret|
      error = assert_raises(ArgumentError, secret) { Grafter::Rack::PushEndpoint.new(secret: secret) }
      assert_match(/push secret/, error.message)
    end
    assert_raises(ArgumentError) { Grafter::Rack::PushEndpoint.new(secret: SECRET, old_secrets: ["whsec_"]) }
    Grafter::Rack::PushEndpoint.new(secret: "whsec_#{['k' * 16].pack('m0')}")

    body = '{"id":1,"kind":"k"}'
    refute Grafter::Signature.verify(Grafter::Signature.sign(body, [""]), body, [""])
    ["", "whsec_", "whsec_!!!!"].each do |secret|
      forged = Grafter::Signature.sign_standard("job_1", body, [secret])
      refute Grafter::Signature.verify_standard("job_1", Time.now.to_i, forged, body, [secret]), secret
    end
  end

  # The background thread of an async job ran on past its timeout_ms, its
  # heartbeats going on after the server had failed the attempt.
  def test_an_async_job_past_its_timeout_is_interrupted
    kind = unique("async-forever")
    stopped = Queue.new
    Grafter.handle(kind, push: :async) do
      sleep 30
    rescue StandardError
      sleep 30 # Grafter::TimeoutError is not a StandardError
    ensure
      stopped << $!.class
    end
    id = client.enqueue(kind: kind, queue: @queue, timeout_ms: 500, max_attempts: 1)["id"]
    assert_equal Grafter::TimeoutError, pop_within(stopped, 5)
    dead = wait_state(id, %w[dead completed])
    assert_equal ["dead", 1], dead.values_at("state", "attempt")
    assert_match(/\Atimed out/, dead["errors"].last["error"])
  end

  # An async job whose lease is lost (409) is stopped, as a worker stops it,
  # instead of running on beside the attempt that replaced it.
  def test_an_async_job_whose_lease_is_lost_is_stopped
    kind = unique("async-lost")
    stopped = Queue.new
    runs = Queue.new
    Grafter.handle(kind, push: :async) do |_args, pushed|
      runs << pushed["attempt"]
      next "the second delivery" if runs.size > 1

      execution = Grafter::Execution.current
      # As if the lease ran out meanwhile: the job is pushed again.
      client.release(execution.job["id"], lease: execution.lease)
      begin
        150.times do |n|
          execution.progress!(n / 150.0) # each report brings a heartbeat soon
          sleep 0.1
        end
      ensure
        stopped << $!.class
      end
    end
    id = client.enqueue(kind: kind, queue: @queue)["id"]
    assert_equal Grafter::Abandoned, pop_within(stopped, 5)
    assert_equal "the second delivery", wait_state(id, "completed")["result"]
  end

  # A message that is not UTF-8 used to drop the whole progress, the
  # fraction too.
  def test_an_async_progress_message_that_is_not_utf8_keeps_its_fraction
    kind = unique("async-binary-progress")
    Grafter.handle(kind, push: :async) do
      Grafter::Execution.current.progress!(0.5, "\xFFhalf".b)
      sleep 1
      "done"
    end
    id = client.enqueue(kind: kind, queue: @queue)["id"]
    wait_until(5, message: "progress through a heartbeat") { client.job(id)["progress"] }
    assert_equal({ "fraction" => 0.5, "message" => "\uFFFDhalf" }, client.job(id)["progress"])
    assert_equal "done", wait_state(id, "completed")["result"]
  end

  # Replays used to be told apart by Grafter-Lease or the raw signature
  # header, which the signature does not cover: changing, dropping or
  # respacing them ran the job again.
  def test_a_replayed_push_is_refused_and_runs_nothing_whatever_its_unsigned_headers
    client.update_queue(@queue, push: nil)
    name = unique("replayed")
    job = { "id" => 3, "kind" => "PushJobs::GreetJob", "queue" => @queue, "attempt" => 1, "max_attempts" => 25,
            "args" => PushJobs::GreetJob.new(name).serialize }
    body = JSON.generate(job)
    now = Time.now.to_i
    signature = Grafter::Signature.sign(body, [SECRET], now: now)
    assert_equal "200", post(body, signature, { "Grafter-Lease" => "lease-one" }).code
    replays = { "the same" => [signature, { "Grafter-Lease" => "lease-one" }],
                "another lease" => [signature, { "Grafter-Lease" => "lease-two" }],
                "no lease" => [signature, { "Grafter-Lease" => nil }],
                "respaced" => [signature.sub(",", ", "), {}],
                "as Standard Webhooks" => [nil, standard_headers("job_3", now, Grafter::Signature.sign_standard("job_3", body, [SECRET], now: now))] }
    replays.each do |what, (header, headers)|
      replay = post(body, header, headers)
      assert_equal ["409", "replayed"], [replay.code, JSON.parse(replay.body).dig("error", "code")], what
    end
    assert_equal 1, PushJobs.runs(name), "no replay ran"

    # While rotating: the v1 of either secret is the same signed request.
    endpoint = Grafter::Rack::PushEndpoint.new(secret: SECRET, old_secrets: ["old-secret-0123456789"])
    both = Grafter::Signature.sign(body, [SECRET, "old-secret-0123456789"], now: now)
    old_only = Grafter::Signature.sign(body, ["old-secret-0123456789"], now: now)
    statuses = [both, old_only].map do |header|
      endpoint.call("REQUEST_METHOD" => "POST", "rack.input" => StringIO.new(body), "HTTP_GRAFTER_SIGNATURE" => header,
                    "HTTP_GRAFTER_LEASE" => "lease-one").first
    end
    assert_equal [200, 409], statuses
    assert_equal 2, PushJobs.runs(name)

    again = JSON.generate(job.merge("attempt" => 2))
    assert_equal "200", post(again, Grafter::Signature.sign(again, [SECRET], now: now)).code,
                 "another attempt is another signed body"
    assert_equal 3, PushJobs.runs(name)
  end

  # Only a job finished after a 202 learnt a timeout (from its heartbeat):
  # one run inside the request ran on past the request's timeout_ms, which
  # the body carries.
  def test_a_job_run_inside_the_request_is_interrupted_at_the_bodys_timeout_ms
    client.update_queue(@queue, push: nil)
    kind = unique("sync-too-long")
    stopped = Queue.new
    Grafter.handle(kind) do
      sleep 3
    rescue StandardError
      sleep 3 # Grafter::TimeoutError is not a StandardError
    ensure
      stopped << $!.class
    end
    body = JSON.generate("id" => 5, "kind" => kind, "queue" => @queue, "attempt" => 1, "max_attempts" => 25,
                         "timeout_ms" => 300)
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    response = post(body, Grafter::Signature.sign(body, [SECRET]), read_timeout: 2)
    assert_in_delta 0.3, Process.clock_gettime(Process::CLOCK_MONOTONIC) - started, 0.25
    assert_equal "500", response.code
    assert_match(/\Atimed out: the job ran past its timeout_ms \(300 ms\)/, response.body)
    assert_equal Grafter::TimeoutError, pop_within(stopped, 1)
  end

  # The body's timeout_ms is the request's: a job answered 202 runs past it,
  # bound by its own (none here).
  def test_an_async_job_is_not_held_to_the_requests_timeout_ms
    client.update_queue(@queue, push: nil)
    kind = unique("async-past-the-request")
    Grafter.handle(kind, push: :async) do
      sleep 1
      "done"
    end
    other = unique("pull")
    id = client.enqueue(kind: kind, queue: other)["id"]
    leased = client.fetch(queues: [other]).first
    body = JSON.generate("id" => id, "kind" => kind, "queue" => other, "attempt" => 1, "max_attempts" => 25,
                         "timeout_ms" => 300)
    assert_equal "202", post(body, Grafter::Signature.sign(body, [SECRET]), { "Grafter-Lease" => leased["lease"] }).code
    assert_equal ["done", []], wait_state(id, %w[completed dead], timeout: 5).values_at("result", "errors")
  end

  # retry_job without retry_on used to answer 500: a failed attempt, and
  # dead at max_attempts.
  def test_retry_job_is_answered_503_and_runs_again_without_using_an_attempt
    [PushJobs::PollJob, PushJobs::AsyncPollJob].each do |job_class|
      name = unique("poll")
      job = job_class.set(queue: @queue).perform_later(name)
      done = wait_state(job.provider_job_id, %w[completed dead], timeout: 10)
      assert_equal ["completed", "ready after 3 runs", 1, []], done.values_at("state", "result", "attempt", "errors"),
                   job_class.name
      assert_equal 3, PushJobs.runs(name)
    end
  end

  # 16 MiB of an unauthenticated body used to be read before the signature
  # was checked.
  def test_a_body_over_what_grafter_pushes_is_refused_unread
    client.update_queue(@queue, push: nil)
    name = unique("too-big")
    job = { "id" => 4, "kind" => "PushJobs::GreetJob", "queue" => @queue, "attempt" => 1, "max_attempts" => 25,
            "args" => PushJobs::GreetJob.new(name).serialize }
    body = JSON.generate(job.merge("padding" => "x" * (Grafter::Rack::PushEndpoint::MAX_BODY_BYTES)))
    response = post(body, Grafter::Signature.sign(body, [SECRET]))
    assert_equal ["413", "payload_too_large"], [response.code, JSON.parse(response.body).dig("error", "code")]
    assert_equal 0, PushJobs.runs(name)
    assert_operator Grafter::Rack::PushEndpoint::MAX_BODY_BYTES, :<, 2 * 1024 * 1024

    # A declared length over the limit is refused without reading the body.
    endpoint = Grafter::Rack::PushEndpoint.new(secret: SECRET)
    unreadable = Object.new
    def unreadable.read(*) = raise("the body was read")
    def unreadable.rewind = raise("the body was read")
    status, = endpoint.call("REQUEST_METHOD" => "POST", "CONTENT_LENGTH" => (100 * 1024 * 1024).to_s,
                            "rack.input" => unreadable)
    assert_equal 413, status
  end

  private

  def standard_headers(id, timestamp, signature)
    { "webhook-id" => id, "webhook-timestamp" => timestamp.to_s, "webhook-signature" => signature }.compact
  end

  # A header given as nil is left out.
  def post(body, signature, headers = {}, read_timeout: 60)
    request = Net::HTTP::Post.new("/grafter/jobs", "Content-Type" => "application/json")
    request["Grafter-Signature"] = signature if signature
    request["Grafter-Lease"] = "lease"
    headers.each { |name, value| value.nil? ? request.delete(name) : request[name] = value }
    request.body = body
    Net::HTTP.start("127.0.0.1", @port, read_timeout: read_timeout) { |http| http.request(request) }
  end
end
