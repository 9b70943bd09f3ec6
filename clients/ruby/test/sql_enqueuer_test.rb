# frozen_string_literal: true

# Grafter::SqlEnqueuer against a real PostgreSQL (127.0.0.1:5432, db test,
# user postgres; GRAFTER_TEST_POSTGRES_URL to change it), on a fresh schema
# migrated by the suite's grafter binary (GRAFTER_BIN). Under CI=true a
# missing prerequisite (ruby-pg, ActiveRecord, PostgreSQL) fails; otherwise
# the tests skip, saying why.

require_relative "test_helper"
require "open3"
require "securerandom"

class SqlEnqueuerTest < Minitest::Test
  URL = ENV.fetch("GRAFTER_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")

  def setup
    missing = prerequisite_missing
    skip_or_fail(missing) if missing
    # Odd on purpose: the enqueuer must quote it.
    @schema = "grafter_rb_#{SecureRandom.hex(4)} o'd\"d"
    Dir.mktmpdir do |dir|
      config = File.join(dir, "grafter.toml")
      File.write(config, "[postgres]\nschema = #{@schema.to_s.dump}\n")
      output, status = Open3.capture2e(GrafterTest::BIN, "migrate", "--database", URL, "--config", config)
      assert status.success?, "grafter migrate failed: #{output}"
    end
    @pg = PG.connect(URL)
    @qualified = %("#{@schema.gsub('"', '""')}")
  end

  def teardown
    return unless @pg

    # A test that failed inside its own BEGIN left the transaction open.
    @pg.exec("ROLLBACK") unless @pg.transaction_status == PG::PQTRANS_IDLE
    @pg.exec("SET client_min_messages TO warning")
    @pg.exec("DROP SCHEMA IF EXISTS #{@qualified} CASCADE")
    @pg.close
    ActiveRecord::Base.remove_connection if defined?(ActiveRecord::Base) && ActiveRecord::Base.connected?
  end

  def test_active_record_rollback_leaves_no_job_and_commit_stores_it
    connect_active_record
    enqueuer = Grafter::SqlEnqueuer.new(ActiveRecord::Base, schema: @schema)
    rolled_back = nil
    ActiveRecord::Base.transaction do
      rolled_back = enqueuer.enqueue(kind: "welcome", args: { "user" => 1 })
      raise ActiveRecord::Rollback
    end
    assert_equal "welcome", rolled_back["kind"]
    assert_nil job_row(rolled_back["id"]), "a rolled-back job exists"

    run_at = Time.now + 3600
    job = ActiveRecord::Base.transaction do
      enqueuer.enqueue(kind: "welcome", args: { "user" => 2 }, queue: "mail", run_at: run_at,
                       tags: ["signup"], backoff: { base_ms: 10 })
    end
    row = job_row(job["id"])
    refute_nil row, "a committed job is missing"
    assert_equal %w[welcome mail scheduled], row.values_at("kind", "queue", "state")
    assert_equal({ "user" => 2 }, job["args"])
    assert_in_delta run_at.to_f, Time.iso8601(job["run_at"]).to_f, 0.001
    assert_equal({ "base_ms" => 10, "factor" => 2.0, "max_ms" => 3_600_000, "jitter" => 0.1 }, job["backoff"])

    jobs = enqueuer.enqueue_many([{ kind: "a" }, { kind: "b", unique_key: "k" }, { kind: "b", unique_key: "k" }])
    assert_equal %w[a b b], jobs.map { |j| j["kind"] }
    assert_equal jobs[1]["id"], jobs[2]["id"], "the unique key's holder is returned"
  end

  def test_raw_pg_connection
    enqueuer = Grafter::SqlEnqueuer.new(@pg, schema: @schema)
    @pg.exec("BEGIN")
    gone = enqueuer.enqueue(kind: "raw")
    @pg.exec("ROLLBACK")
    assert_nil job_row(gone["id"])
    kept = enqueuer.enqueue(kind: "raw", priority: -1) # autocommit
    assert_equal "-1", job_row(kept["id"])["priority"]
    traced = enqueuer.enqueue(kind: "raw", traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    assert_nil traced["traceparent"], "grafter_enqueue_v1 takes no trace context: dropped, not refused"
  end

  def test_a_refused_field_is_named
    enqueuer = Grafter::SqlEnqueuer.new(@pg, schema: @schema)
    error = assert_raises(Grafter::SqlEnqueuer::InvalidJob) { enqueuer.enqueue(kind: "") }
    assert_equal "kind", error.field
    assert_equal "invalid_field", error.code
    assert_match(/\Akind: must not be empty/, error.message)
    error = assert_raises(Grafter::SqlEnqueuer::InvalidJob) { enqueuer.enqueue(kind: "a", priorty: 1) }
    assert_equal "priorty", error.field
    error = assert_raises(Grafter::SqlEnqueuer::InvalidJob) do
      enqueuer.enqueue_many([{ kind: "ok" }, { kind: "a", args: { "x" => "\u0000" } }])
    end
    assert_equal "jobs[1].args", error.field

    connect_active_record
    enqueuer = Grafter::SqlEnqueuer.new(ActiveRecord::Base, schema: @schema)
    error = assert_raises(Grafter::SqlEnqueuer::InvalidJob) { enqueuer.enqueue(kind: "a", max_attempts: 0) }
    assert_equal "max_attempts", error.field
    # Anything else (here: no such schema) is the driver's own error.
    other = Grafter::SqlEnqueuer.new(ActiveRecord::Base, schema: "no such schema")
    assert_raises(ActiveRecord::StatementInvalid) { other.enqueue(kind: "a") }
  end

  # The SQL enqueuer took 2 MB args the HTTP API refuses (413) and raised
  # raw JSON errors where the client raises Grafter::Error.
  def test_bad_input_raises_what_the_http_client_raises
    enqueuer = Grafter::SqlEnqueuer.new(@pg, schema: @schema)
    deep = Array.new(200).inject(1) { |inner, _| [inner] }
    cases = {
      "huge args" => [{ kind: "big", args: { "blob" => "x" * 2_000_000 } }, Grafter::ApiError, /payload_too_large/],
      "nested 200 deep" => [{ kind: "deep", args: deep }, Grafter::Error, /too deep/],
      "not UTF-8" => [{ kind: "bin", args: { "b" => "\xFF".b } }, Grafter::Error, /UTF-8/]
    }
    cases.each do |what, (job, error_class, message)|
      over_http = assert_raises(Grafter::Error, what) { client.enqueue(**job) }
      over_sql = assert_raises(Grafter::Error, what) { enqueuer.enqueue(**job) }
      assert_equal over_http.class, over_sql.class, what
      assert_equal error_class, over_sql.class, what
      assert_match message, over_sql.message, what
      assert_raises(error_class, what) { enqueuer.enqueue_many([job]) }
    end
    big = assert_raises(Grafter::ApiError) { enqueuer.enqueue(kind: "big", args: { "blob" => "x" * 2_000_000 }) }
    assert_equal [413, "payload_too_large"], [big.status, big.code]
    assert_equal 900_000, enqueuer.enqueue(kind: "big", args: { "blob" => "y" * 900_000 })["args"]["blob"].size,
                 "under the limit goes through, as over HTTP"
  end

  private

  def prerequisite_missing
    begin
      require "pg"
    rescue LoadError => e
      return "ruby-pg is not installed (#{e.message})"
    end
    return "no grafter binary at #{GrafterTest::BIN} (set GRAFTER_BIN)" unless File.executable?(GrafterTest::BIN)

    PG.connect(URL).close
    nil
  rescue PG::Error => e
    "PostgreSQL not reachable at #{URL}: #{e.message.strip}"
  end

  def connect_active_record
    require "active_record"
    ActiveRecord::Base.establish_connection(URL)
  rescue LoadError => e
    skip_or_fail("ActiveRecord is not installed (#{e.message})")
  end

  # Under CI a missing prerequisite fails the test; elsewhere it is skipped,
  # and said so on stderr (minitest only counts skips).
  def skip_or_fail(why)
    flunk("CI is set, so this fails instead of skipping: #{why}") if ENV["CI"]
    warn "SKIPPING #{self.class}##{name}: #{why}"
    skip(why)
  end

  def job_row(id)
    @pg.exec_params("SELECT kind, queue, state, priority FROM #{@qualified}.jobs WHERE id = $1", [id]).first
  end
end
