# frozen_string_literal: true

require_relative "test_helper"

class ClientTest < Minitest::Test
  def test_enqueue_sends_every_field_and_reads_the_job_back
    queue = unique("client")
    run_at = Time.now + 3600.123456
    expires_at = Time.now + 7200
    job = client.enqueue(kind: "send_email", args: { to: "ada@example.com", n: [1, 2.5, nil, true] }, queue: queue,
                         priority: -3, run_at: run_at, max_attempts: 4, tags: %w[vip mail], unique_key: unique("k"),
                         timeout_ms: 1500, expires_at: expires_at,
                         backoff: { base_ms: 10, factor: 2.0, max_ms: 100, jitter: 0.0 })
    assert_kind_of Integer, job["id"]
    assert_equal "scheduled", job["state"]
    assert_equal({ "to" => "ada@example.com", "n" => [1, 2.5, nil, true] }, job["args"])
    assert_equal [queue, -3, 4, %w[vip mail], 1500], job.values_at("queue", "priority", "max_attempts", "tags", "timeout_ms")
    assert_in_delta run_at.to_f, Time.iso8601(job["run_at"]).to_f, 0.001, "run_at keeps its fraction of a second"
    assert_equal 10, job.dig("backoff", "base_ms")
    assert_equal job, client.job(job["id"]).slice(*job.keys)

    again = client.enqueue(kind: "send_email", queue: queue, unique_key: job["unique_key"])
    assert_equal job["id"], again["id"], "a held unique_key answers the existing job"
  end

  def test_a_trace_context_goes_to_the_lease_and_a_malformed_one_is_ignored
    queue = unique("traced")
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    job = client.enqueue(kind: "k", queue: queue, traceparent: traceparent, tracestate: "rojo=1")
    assert_equal [traceparent, "rojo=1"], job.values_at("traceparent", "tracestate")
    leased = client.fetch(queues: [queue]).first
    assert_equal [job["id"], traceparent, "rojo=1"], leased.values_at("id", "traceparent", "tracestate")

    ignored = client.enqueue(kind: "k", queue: queue, traceparent: traceparent.upcase)
    refute ignored.key?("traceparent"), ignored.inspect
  end

  def test_list_cancel_retry_reschedule
    queue = unique("manage")
    ids = client.enqueue_many([{ kind: "a", queue: queue }, { kind: "b", queue: queue, tags: ["t"] }]).map { |j| j["id"] }
    page = client.jobs(queue: queue, limit: 1, order: "asc")
    assert_equal [ids.first], page["jobs"].map { |j| j["id"] }
    assert_equal [ids.last], client.jobs(queue: queue, limit: 1, order: "asc", cursor: page["next_cursor"])["jobs"].map { |j| j["id"] }
    assert_equal [ids.last], client.jobs(queue: queue, tag: "t")["jobs"].map { |j| j["id"] }

    assert_equal "cancelled", client.cancel(ids.first)["state"]
    assert_equal "available", client.retry(ids.first)["state"]
    later = client.reschedule(ids.last, delay_ms: 60_000)
    assert_equal "scheduled", later["state"]
    at = Time.now + 120
    assert_in_delta at.to_f, Time.iso8601(client.reschedule(ids.last, run_at: at)["run_at"]).to_f, 0.001
  end

  def test_a_batch_with_a_bad_job_stores_nothing_and_names_it
    queue = unique("batch")
    error = assert_raises(Grafter::ApiError) { client.enqueue_many([{ kind: "ok", queue: queue }, { queue: queue }]) }
    assert_equal [422, "invalid_field", "jobs[1].kind"], [error.status, error.code, error.field]
    assert_empty client.jobs(queue: queue)["jobs"]
  end

  def test_a_batch_settles_once_and_enqueues_its_callbacks
    queue = unique("parts")
    done = unique("done")
    created = client.create_batch(jobs: [{ kind: "part", queue: queue }], open: true,
                                  on_success: { kind: "all_done", queue: done, args: { report: 1 } })
    id = created.dig("batch", "id")
    assert_equal ["running", 1], [created.dig("batch", "state"), created.dig("batch", "counts", "total")]
    assert_equal id, created["jobs"].first["batch_id"]
    added = client.add_to_batch(id, [{ kind: "part", queue: queue }])
    assert_equal 2, added.dig("batch", "counts", "total")
    assert_equal 2, client.jobs(queue: queue)["jobs"].count { |j| j["batch_id"] == id }
    assert_equal created["jobs"].map { |j| j["id"] } + added["jobs"].map { |j| j["id"] },
                 client.jobs(batch: id, order: "asc")["jobs"].map { |j| j["id"] }

    2.times do
      leased = client.fetch(queues: [queue], max: 1)
      job = leased.first
      client.ack(job["id"], lease: job["lease"])
    end
    assert_equal "running", client.batch(id)["state"], "an open batch waits for its seal"
    assert_empty client.jobs(queue: done)["jobs"]
    sealed = client.seal_batch(id)
    assert_equal ["succeeded", 1.0, ["on_success"]], sealed.values_at("state", "progress", "callbacks_enqueued")
    assert_equal [{ "report" => 1 }], client.jobs(queue: done)["jobs"].map { |j| j["args"] }
    assert_includes client.batches(limit: 10)["batches"].map { |b| b["id"] }, id

    error = assert_raises(Grafter::ApiError) { client.cancel_batch(id) }
    assert_equal [409, "batch_closed"], [error.status, error.code]
    error = assert_raises(Grafter::ApiError) { client.add_to_batch(id, [{ kind: "late" }]) }
    assert_equal [409, "batch_closed"], [error.status, error.code]
    error = assert_raises(Grafter::ApiError) { client.batch(987_654_321) }
    assert_equal [404, "not_found"], [error.status, error.code]
  end

  def test_a_dependent_waits_for_its_upstream_and_reads_its_result
    queue = unique("graph")
    extract, load = client.enqueue_many([{ kind: "extract", queue: queue, ref: "extract" },
                                         { kind: "load", queue: queue, depends_on: ["extract"],
                                           on_dependency_failure: "run" }])
    assert_equal %w[available pending], [extract["state"], load["state"]]
    assert_equal [load["id"]], client.jobs(depends_on: extract["id"])["jobs"].map { |j| j["id"] }
    assert_empty client.jobs(depends_on: extract["id"], state: "available")["jobs"]
    leased = client.fetch(queues: [queue], max: 10)
    assert_equal [extract["id"]], leased.map { |j| j["id"] }
    client.ack(extract["id"], lease: leased.first["lease"], result: { rows: 3 })
    assert_equal "available", client.job(load["id"])["state"]
    upstreams = client.dependencies(load["id"])
    assert_equal [[extract["id"], "completed", { "rows" => 3 }]], upstreams.map { |j| j.values_at("id", "state", "result") }

    error = assert_raises(Grafter::ApiError) { client.enqueue(kind: "k", queue: queue, depends_on: [987_654_321]) }
    assert_equal [422, "invalid_field", "depends_on[0]"], [error.status, error.code, error.field]
  end

  def test_a_job_waits_for_a_batch
    queue = unique("fan_in")
    batch = client.create_batch(jobs: [{ kind: "page", queue: queue }]).dig("batch", "id")
    zip = client.enqueue(kind: "zip", queue: queue, depends_on_batches: [batch])
    assert_equal "pending", zip["state"]
    assert_equal [[batch, "running"]], client.dependency_batches(zip["id"]).map { |b| b.values_at("id", "state") }
    leased = client.fetch(queues: [queue], max: 10)
    assert_equal ["page"], leased.map { |j| j["kind"] }
    client.ack(leased.first["id"], lease: leased.first["lease"])
    assert_equal "available", client.job(zip["id"])["state"]
    assert_equal ["succeeded"], client.dependency_batches(zip["id"]).map { |b| b["state"] }
    assert_equal [], client.dependencies(zip["id"])

    error = assert_raises(Grafter::ApiError) { client.enqueue(kind: "k", queue: queue, depends_on_batches: [987_654_321]) }
    assert_equal [422, "invalid_field", "depends_on_batches[0]"], [error.status, error.code, error.field]
  end

  def test_cancelling_a_batch_cancels_its_waiting_jobs
    queue = unique("cancel")
    id = client.create_batch(jobs: [{ kind: "a", queue: queue }, { kind: "b", queue: queue }]).dig("batch", "id")
    cancelled = client.cancel_batch(id)
    assert_equal ["cancelled", 2], [cancelled["state"], cancelled.dig("counts", "cancelled")]
    assert(client.jobs(queue: queue)["jobs"].all? { |j| j["state"] == "cancelled" })
  end

  def test_a_bad_field_raises_with_code_and_field
    error = assert_raises(Grafter::ApiError) { client.enqueue(kind: "x", max_atempts: 3) }
    assert_equal [422, "invalid_field", "max_atempts"], [error.status, error.code, error.field]
    assert_match(/unknown field/, error.message)

    error = assert_raises(Grafter::ApiError) { client.job(123_456_789) }
    assert_equal [404, "not_found"], [error.status, error.code]
    assert_raises(ArgumentError) { client.job("1; DROP") }
  end

  def test_unicode_round_trips_and_nul_is_refused_clearly
    args = { "text" => "héllo ✓ 🎉 שלום \u200b", "😀" => "key" }
    assert_equal args, client.job(client.enqueue(kind: "u", queue: unique("u"), args: args)["id"])["args"]

    error = assert_raises(Grafter::ApiError) { client.enqueue(kind: "u", args: { "a" => "x\u0000y" }) }
    assert_equal [422, "invalid_field", "args"], [error.status, error.code, error.field]
    assert_match(/NUL/, error.message)

    error = assert_raises(Grafter::Error) { client.enqueue(kind: "u", args: { "a" => "\xFF".dup.force_encoding("UTF-8") }) }
    assert_match(/UTF-8/, error.message)
  end

  # The server takes a request nested 128 levels deep (serde_json's limit)
  # and answers it deeper still: Ruby's default limit of 100 is not enough.
  def test_args_nested_as_deep_as_the_server_takes_round_trip
    queue = unique("deep")
    deep = nested(124)
    job = client.enqueue(kind: "deep", queue: queue, args: deep)
    assert_equal deep, client.job(job["id"])["args"]
    assert_equal nested(120), client.enqueue_many([{ kind: "deep", queue: queue, args: nested(120) }]).first["args"]
    assert_equal deep, client.fetch(queues: [queue]).first["args"], "a fetch answer nests it three levels deeper"

    error = assert_raises(Grafter::Error) { client.enqueue(kind: "deep", args: nested(1000)) }
    assert_match(/too deep/, error.message)
  end

  def test_huge_args_are_refused_by_the_body_limit
    error = assert_raises(Grafter::ApiError) { client.enqueue(kind: "big", args: { "blob" => "x" * 2_000_000 }) }
    assert_equal [413, "payload_too_large"], [error.status, error.code]
    # Just under the limit goes through, and the connection stays usable.
    job = client.enqueue(kind: "big", queue: unique("big"), args: { "blob" => "y" * 900_000 })
    assert_equal 900_000, client.job(job["id"])["args"]["blob"].size
  end

  def test_a_token_server_refuses_requests_without_the_token
    secured = GrafterTest::Server.start(token: "a-test-token-0123456789")
    error = assert_raises(Grafter::ApiError) { Grafter::Client.new(url: secured.url, token: "").job(1) }
    assert_equal [401, "unauthorized"], [error.status, error.code]
    assert_equal "k", secured.client.enqueue(kind: "k")["kind"]
  ensure
    secured&.cleanup
  end

  def test_a_server_that_is_down_raises_connection_error_naming_the_url_without_credentials
    port = GrafterTest.free_port
    down = Grafter::Client.new(url: "http://user:s3cret@127.0.0.1:#{port}", open_timeout: 1)
    error = assert_raises(Grafter::ConnectionError) { down.enqueue(kind: "x") }
    assert_includes error.message, "127.0.0.1:#{port}"
    refute_includes error.message, "s3cret"
    refute_includes down.inspect, "s3cret"
    assert_raises(ArgumentError) { Grafter::Client.new(url: "ftp://example.com") }
  end

  def test_a_restarted_server_is_reached_again_on_a_new_connection
    own = GrafterTest::Server.start
    c = own.client
    id = c.enqueue(kind: "k")["id"]
    own.restart
    assert_equal id, c.job(id)["id"], "the stale keep-alive connection is replaced"
    assert_equal "k", c.enqueue(kind: "k")["kind"]
  ensure
    own&.cleanup
  end

  def test_defaults_come_from_the_environment
    with_env("GRAFTER_URL" => server.url, "GRAFTER_TOKEN" => nil) do
      assert_equal server.url, Grafter::Client.new.url
    end
    Grafter.configure { |c| c.url = server.url }
    assert_equal server.url, Grafter.client.url
    assert_same Grafter.client, Grafter.config.enqueuer
  end

  def test_wait_yields_progress_and_times_out
    queue = unique("wait")
    id = client.enqueue(kind: "w", queue: queue)["id"]
    error = assert_raises(Grafter::WaitTimeout) { client.wait(id, timeout: 0.3) }
    assert_equal "available", error.job["state"]

    leased = client.fetch(queues: [queue], max: 1).first
    seen = []
    waiter = Thread.new { Grafter::Client.new(url: server.url).wait(id, timeout: 10) { |job| seen << job["progress"] } }
    sleep 0.2
    client.heartbeat(id, lease: leased["lease"], progress: { fraction: 0.5, message: "half" })
    sleep 0.2
    client.ack(id, lease: leased["lease"], result: { "done" => true })
    assert_equal({ "done" => true }, waiter.value["result"])
    assert_includes seen, { "fraction" => 0.5, "message" => "half" }
  end

  def test_events_stream_a_job_to_its_end_and_resume_after_an_id
    queue = unique("events")
    id = client.enqueue(kind: "e", queue: queue)["id"]
    leased = client.fetch(queues: [queue], max: 1).first
    seen = []
    streaming = Thread.new do
      Grafter::Client.new(url: server.url).events(id) { |event| seen << event }
    end
    wait_until(message: "the snapshot") { seen.any? }
    client.heartbeat(id, lease: leased["lease"], progress: 0.5)
    wait_until(message: "the progress") { seen.any? { |e| e["event"] == "progress" } }
    client.ack(id, lease: leased["lease"], result: { "rows" => 2 })
    streaming.join(GrafterTest::PATIENCE)
    assert_equal %w[snapshot progress state end], seen.map { |e| e["event"] }
    assert_equal "running", seen.first["data"]["state"]
    assert_equal({ "rows" => 2 }, seen.last["data"]["job"]["result"])

    resumed = []
    client.events(id, last_event_id: seen[1]["id"]) { |event| resumed << event }
    assert_equal [%w[state completed], ["end", nil]],
                 resumed.map { |e| [e["event"], e["data"]["state"]] }
  end

  def test_batch_events_stream_a_batch_to_its_end_and_resume_after_an_id
    queue = unique("batch-events")
    id = client.create_batch(jobs: [{ kind: "part", queue: queue }], open: true).dig("batch", "id")
    seen = []
    streaming = Thread.new do
      Grafter::Client.new(url: server.url).batch_events(id) { |event| seen << event }
    end
    wait_until(message: "the snapshot") { seen.any? }
    client.seal_batch(id)
    wait_until(message: "the seal") { seen.any? { |e| e["event"] == "state" } }
    leased = client.fetch(queues: [queue], max: 1).first
    client.ack(leased["id"], lease: leased["lease"])
    streaming.join(GrafterTest::PATIENCE)
    assert_equal "snapshot", seen.first["event"]
    assert_equal "end", seen.last["event"]
    assert_equal "succeeded", seen.last["data"]["batch"]["state"]

    resumed = []
    client.batch_events(id, last_event_id: seen[1]["id"]) { |event| resumed << event }
    assert_equal "succeeded", resumed.reverse.find { |e| e["event"] == "state" }["data"]["state"]
    assert_equal "end", resumed.last["event"]
    error = assert_raises(Grafter::Error) { client.stream_token(batches: [id + 1_000_000]) }
    assert_match(/batches/, error.message)
  end

  def test_a_stream_token_names_its_jobs
    id = client.enqueue(kind: "e", queue: unique("tokens"))["id"]
    minted = client.stream_token(jobs: [id], ttl_ms: 60_000)
    assert_match(/\Agst1\./, minted["token"])
    error = assert_raises(Grafter::Error) { client.stream_token(jobs: [], ttl_ms: 0) }
    assert_match(/jobs/, error.message)
  end

  private

  def with_env(values)
    saved = values.keys.to_h { |key| [key, ENV[key]] }
    values.each { |key, value| ENV[key] = value }
    yield
  ensure
    saved.each { |key, value| ENV[key] = value }
  end

  private

  def nested(depth)
    Array.new(depth).inject(1) { |inner, _| { "a" => inner } }
  end
end
