# frozen_string_literal: true

require "json"
require "net/http"
require "openssl"
require "time"
require "uri"

require "grafter/connection"
require "grafter/errors"
require "grafter/job_fields"
require "grafter/version"
require_relative "monotonic"

module Grafter
  # The HTTP API of a Grafter server. Thread-safe: each thread keeps its own
  # keep-alive connection (Grafter::Connection), so concurrent workers never
  # share a socket. Every answer is a Hash with string keys, as the JSON came.
  class Client
    include Monotonic

    include JobFields

    DEFAULT_URL = "http://127.0.0.1:7380"
    FINISHED_STATES = %w[completed dead cancelled expired].freeze

    # Errors that mean the connection broke under a request (the server
    # restarted, or closed an idle keep-alive connection as we reused it).
    BROKEN_CONNECTION = [EOFError, IOError, Errno::ECONNRESET, Errno::EPIPE, Errno::ECONNABORTED,
                         OpenSSL::SSL::SSLError, Connection::BadResponse].freeze
    METHODS = { get: "GET", post: "POST", put: "PUT", delete: "DELETE" }.freeze
    # Idle keep-alive connections are reopened after this long, well inside
    # the server's idle timeout (60 s), so a reused one is rarely stale.
    KEEP_ALIVE_SECONDS = 30
    # The longest wait of the server's long-poll of a job.
    MAX_CHANGE_WAIT_MS = 60_000
    # An event stream sends a heartbeat every 15 s: silence for this long is a broken stream.
    EVENTS_READ_TIMEOUT = 60
    # JSON nesting read and written (see JobFields::MAX_NESTING).
    MAX_NESTING = JobFields::MAX_NESTING

    attr_reader :url, :open_timeout, :read_timeout

    # `url` and `token` default to GRAFTER_URL and GRAFTER_TOKEN. Timeouts are
    # seconds; a long-poll fetch waits longer than `read_timeout` when its
    # `wait_ms` needs it.
    def initialize(url: nil, token: nil, open_timeout: 5, read_timeout: 35)
      url = url.to_s.empty? ? ENV.fetch("GRAFTER_URL", DEFAULT_URL) : url.to_s
      @uri = parse_url(url)
      @url = redact(@uri)
      token = ENV["GRAFTER_TOKEN"] if token.nil?
      @token = token.to_s.empty? ? nil : token.to_s
      raise ArgumentError, "the Grafter token must be one line of text" if @token&.match?(/[\r\n]/)

      @open_timeout = Float(open_timeout)
      @read_timeout = Float(read_timeout)
      @connection_key = :"grafter_connection_#{object_id}"
      @base_path = @uri.path.chomp("/")
      @headers = fixed_headers
    end

    def inspect
      "#<#{self.class.name} #{@url}#{@token ? ' (with a token)' : ''}>"
    end

    # --- jobs ---------------------------------------------------------------

    # Enqueues one job; answers the job (an existing one when `unique_key` is
    # held by an unfinished job). Times may be Time, DateTime or anything with
    # #to_time; they are sent as RFC 3339 with microseconds. `traceparent:`
    # (and `tracestate:`) put the job in a W3C trace (docs/traces.md): its
    # worker gets them with the lease, a push target as headers.
    def enqueue(kind:, **fields)
      post("/v1/jobs", job_fields(fields.merge(kind: kind)))
    end

    # Enqueues all the jobs in one request, all or none; answers them in order.
    # No jobs is no request (the server refuses an empty batch).
    def enqueue_many(jobs)
      return [] if jobs.empty?

      post("/v1/jobs/batch", { "jobs" => jobs.map { |job| job_fields(job) } }).fetch("jobs")
    end

    def job(id)
      get("/v1/jobs/#{job_id(id)}")
    end

    # The jobs a job depends on (its `depends_on`), whole: state and result.
    # A job enqueued with `depends_on: [id, "ref"]` (ids, or refs of jobs in
    # the same enqueue_many or batch) is "pending" until they have finished
    # (docs/dependencies.md).
    def dependencies(id)
      get("/v1/jobs/#{job_id(id)}/dependencies").fetch("jobs")
    end

    # The batches a job waits for (its `depends_on_batches`: ids of sealed
    # batches), as #batch shows them. The job is "pending" until each has
    # finished; one that ends other than "succeeded" fails it as a failed
    # upstream job would (docs/dependencies.md).
    def dependency_batches(id)
      get("/v1/jobs/#{job_id(id)}/dependencies").fetch("batches")
    end

    def cancel(id)
      post("/v1/jobs/#{job_id(id)}/cancel")
    end

    def retry(id)
      post("/v1/jobs/#{job_id(id)}/retry")
    end

    def delete(id)
      request(:delete, "/v1/jobs/#{job_id(id)}", idempotent: true)
    end

    # Runs the job again at `run_at`, or `delay_ms` from now.
    def reschedule(id, delay_ms: nil, run_at: nil)
      post("/v1/jobs/#{job_id(id)}/reschedule", compact("delay_ms" => delay_ms, "run_at" => timestamp(run_at, "run_at")))
    end

    # One page: {"jobs" => [...], "next_cursor" => "…" or nil}.
    # `batch:` lists a batch's jobs, `depends_on:` the jobs that wait for a job.
    def jobs(state: nil, queue: nil, kind: nil, tag: nil, batch: nil, depends_on: nil, args: nil,
             limit: nil, cursor: nil, order: nil)
      query = compact("state" => state, "queue" => queue, "kind" => kind, "tag" => tag, "batch" => batch,
                      "depends_on" => depends_on, "args" => args, "limit" => limit, "cursor" => cursor,
                      "order" => order)
      get("/v1/jobs#{query.empty? ? '' : "?#{URI.encode_www_form(query)}"}")
    end

    # --- batches (docs/batches.md) -------------------------------------------

    # Creates a batch with its jobs, all or none: {"batch" => {...}, "jobs" => [...]}.
    # Callbacks are job hashes (kind:, args:, queue:, ...), each enqueued once:
    # on_success when every job completed, on_complete when every job
    # finished, on_failure when the first ends dead. An open batch takes more
    # jobs (add_to_batch) and settles only once sealed.
    def create_batch(jobs: [], open: false, on_success: nil, on_complete: nil, on_failure: nil)
      callbacks = { "on_success" => on_success, "on_complete" => on_complete, "on_failure" => on_failure }
                  .compact.transform_values { |job| job_fields(job) }
      post("/v1/batches", { "jobs" => jobs.map { |job| job_fields(job) }, "open" => open }.merge(callbacks))
    end

    # Adds jobs to an open batch (a job of the batch may, while it runs):
    # {"batch" => {...}, "jobs" => [...the jobs added]}.
    def add_to_batch(id, jobs)
      post("/v1/batches/#{batch_id(id)}/jobs", { "jobs" => jobs.map { |job| job_fields(job) } })
    end

    def seal_batch(id)
      post("/v1/batches/#{batch_id(id)}/seal")
    end

    # Cancels the batch's waiting jobs and asks its running ones to stop.
    def cancel_batch(id)
      post("/v1/batches/#{batch_id(id)}/cancel")
    end

    # The batch: "state", "counts", "progress", "callbacks_enqueued", ...
    def batch(id)
      get("/v1/batches/#{batch_id(id)}")
    end

    # One page, newest first: {"batches" => [...], "next_cursor" => "…" or nil}.
    def batches(limit: nil, cursor: nil)
      query = compact("limit" => limit, "cursor" => cursor)
      get("/v1/batches#{query.empty? ? '' : "?#{URI.encode_www_form(query)}"}")
    end

    # Waits until the job is finished (completed, dead, cancelled or
    # expired) and answers it. The block, if any, sees the job each time its
    # progress or state changes. Raises WaitTimeout after `timeout` seconds.
    # Each wait is the server's long-poll of the job's next change
    # (`GET /v1/jobs/{id}?wait=`): nothing polls.
    def wait(id, timeout: 60)
      deadline = monotonic + timeout
      job, after = change(id, after: nil, wait_ms: 0)
      seen = nil
      loop do
        now = [job["state"], job["attempt"], job["progress"]]
        yield job if block_given? && now != seen
        seen = now
        return job if FINISHED_STATES.include?(job["state"])

        left = deadline - monotonic
        if left <= 0
          raise WaitTimeout.new("job #{id} did not finish within #{timeout} s (it is #{job['state']})", job: job)
        end

        job, after = change(id, after: after, wait_ms: [(left * 1000).ceil, MAX_CHANGE_WAIT_MS].min)
      end
    end

    # The job once it changes after the event id `after` (nil: the next
    # change from now), or when `wait_ms` ends: [job, its latest event id].
    def change(id, after: nil, wait_ms: 30_000)
      query = "wait=#{Integer(wait_ms)}"
      query += "&after=#{Integer(after)}" if after
      response = request(:get, "/v1/jobs/#{job_id(id)}?#{query}", idempotent: true,
                                                                   read_timeout: (wait_ms / 1000.0) + @read_timeout,
                                                                   raw: true)
      job = answer(response, :get, "/v1/jobs/#{id}")
      [job, Integer(response.headers["grafter-event-id"] || after || 0)]
    end

    # A short-lived token that opens only these jobs' and batches' event
    # streams (`?access_token=`), for a browser's EventSource: {"token", "expires_at"}.
    def stream_token(jobs: [], batches: [], ttl_ms: nil)
      post("/v1/stream-tokens", compact(jobs: jobs, batches: batches, ttl_ms: ttl_ms))
    end

    # Streams a job's live events (docs/events.md), yielding each as
    # {"event" => "snapshot" | "state" | "progress" | "end", "id" => "...",
    # "data" => {...}} until the end. With `last_event_id`, resumes after it.
    def events(id, last_event_id: nil, &block)
      stream("/v1/jobs/#{job_id(id)}/events", "job #{id}", last_event_id, &block)
    end

    # Streams a batch's live events (docs/events.md) as #events does a
    # job's: its snapshot, its state and (coalesced) progress changes, and
    # its end when it finishes.
    def batch_events(id, last_event_id: nil, &block)
      stream("/v1/batches/#{batch_id(id)}/events", "batch #{id}", last_event_id, &block)
    end

    # --- queues and workers ---------------------------------------------------

    def queues
      get("/v1/queues")
    end

    # Sets the keys given (e.g. push: {url:, secret:} or push: nil).
    def update_queue(name, **fields)
      request(:put, "/v1/queues/#{escape(name)}", body: fields, idempotent: true)
    end

    def pause_queue(name)
      post("/v1/queues/#{escape(name)}/pause")
    end

    def resume_queue(name)
      post("/v1/queues/#{escape(name)}/resume")
    end

    def workers
      get("/v1/workers").fetch("workers")
    end

    # Registers the worker, or records that it is alive (send every few seconds).
    def register_worker(id, host:, pid:, queues:, concurrency:, kinds: [])
      body = { "id" => id, "host" => host, "pid" => pid, "queues" => queues,
               "concurrency" => concurrency, "kinds" => kinds }
      request(:put, "/v1/workers/#{escape(id)}", body: body, idempotent: true)
    end

    def remove_worker(id)
      request(:delete, "/v1/workers/#{escape(id)}", idempotent: true)
    end

    # --- the worker protocol ----------------------------------------------------

    # Leases up to `max` jobs, waiting up to `wait_ms` for one to arrive.
    def fetch(queues:, max: 1, wait_ms: 0, worker_id: nil, lease_ms: nil)
      body = compact("queues" => Array(queues), "max" => max, "wait_ms" => wait_ms,
                     "worker_id" => worker_id, "lease_ms" => lease_ms)
      # The answer may take the whole wait: give it that plus the usual slack.
      patience = [@read_timeout, (wait_ms.to_f / 1000) + 10].max
      post("/v1/fetch", body, read_timeout: patience).fetch("jobs")
    end

    def ack(id, lease:, result: nil)
      post("/v1/jobs/#{job_id(id)}/ack", compact("lease" => lease, "result" => result))
    end

    # Completes many jobs in one request; answers one {"id", "ok", "error"?,
    # "state"?, "attempt"?} per ack, in order. A stale lease fails only its item.
    def ack_many(acks)
      items = acks.map do |ack|
        ack = ack.transform_keys(&:to_s)
        compact("id" => job_id(ack.fetch("id")), "lease" => ack.fetch("lease"), "result" => ack["result"])
      end
      post("/v1/jobs/ack", { "acks" => items }).fetch("results")
    end

    # A failed attempt: retried after the job's backoff (or `retry_in_ms`), or
    # dead with `retry: false`.
    def fail(id, lease:, error:, retry: true, retry_in_ms: nil)
      # `retry` is a keyword of the language: read the argument by name.
      retrying = binding.local_variable_get(:retry)
      body = compact("lease" => lease, "error" => error.to_s, "retry" => retrying,
                     "retry_in_ms" => retry_in_ms&.round)
      post("/v1/jobs/#{job_id(id)}/fail", body)
    end

    # Extends the lease (by `lease_ms`, default the server's) and reports
    # progress: a fraction, or {fraction:, message:}. The answer's
    # "cancel_requested" asks the job to stop.
    def heartbeat(id, lease:, progress: nil, lease_ms: nil)
      body = compact("lease" => lease, "progress" => progress, "lease_ms" => lease_ms)
      # Repeating a heartbeat only extends the lease again: safe to resend.
      request(:post, "/v1/jobs/#{job_id(id)}/heartbeat", body: body, idempotent: true)
    end

    # Hands a leased job back without counting the attempt: at once, or after
    # `delay_ms`.
    def release(id, lease:, delay_ms: nil)
      post("/v1/jobs/#{job_id(id)}/release", compact("lease" => lease, "delay_ms" => delay_ms))
    end

    def ready?
      request(:get, "/readyz", idempotent: true, raw: true).success?
    rescue Error
      false
    end

    # Closes this thread's connection (the next call opens another).
    def close
      drop_connection
    end

    private

    def get(path)
      request(:get, path, idempotent: true)
    end

    def post(path, body = nil, read_timeout: nil)
      request(:post, path, body: body, read_timeout: read_timeout)
    end

    # One request on this thread's connection. A connection that broke as it
    # was reused is opened again and the request resent once, but only for
    # calls that may safely run twice (`idempotent`): an enqueue or an ack that
    # might have reached the server is never silently repeated.
    def request(method, path, body: nil, idempotent: false, read_timeout: nil, raw: false)
      payload = body.nil? ? nil : encode(body)
      head = head(method, path, payload)
      read_timeout ||= @read_timeout
      resent = false
      begin
        link, reused = connection
        response = link.request(head, payload, read_timeout)
      rescue *BROKEN_CONNECTION => e
        drop_connection
        if reused && idempotent && !resent
          resent = true
          retry
        end
        raise ConnectionError.new("#{@url}: the connection broke during #{method.upcase} #{path} " \
                                  "(#{e.class}: #{e.message})", url: @url)
      rescue Connection::OpenTimeout
        drop_connection
        raise ConnectionError.new("#{@url}: could not connect within #{@open_timeout} s", url: @url)
      rescue Connection::ReadTimeout
        drop_connection
        raise ConnectionError.new("#{@url}: no answer to #{method.upcase} #{path} within #{read_timeout} s",
                                  url: @url)
      rescue SystemCallError, SocketError => e
        drop_connection
        raise ConnectionError.new("#{@url}: could not reach the Grafter server (#{e.class}: #{e.message})",
                                  url: @url)
      end
      raw ? response : answer(response, method, path)
    end

    # This thread's connection, and whether it was used before. One idle
    # longer than KEEP_ALIVE_SECONDS, or that the server closed, is replaced
    # rather than risked; so is one opened before a fork, by the parent
    # (the thread that forked is the child's main thread, with its locals).
    def connection
      link = Thread.current[@connection_key]
      return [link, true] if link && !link.inherited? && link.idle_seconds < KEEP_ALIVE_SECONDS && !link.stale?

      link&.close
      link = Connection.new(@uri, open_timeout: @open_timeout, write_timeout: @read_timeout)
      Thread.current[@connection_key] = link
      [link, false]
    end

    def drop_connection
      Thread.current[@connection_key]&.close
      Thread.current[@connection_key] = nil
    end

    # The request line and headers: only the parts that vary are built per
    # call. Every request but a GET says its body's length (0 for none), so
    # that no proxy in front has to guess.
    def head(method, path, payload)
      verb = METHODS.fetch(method)
      line = "#{verb} #{@base_path}#{path} HTTP/1.1\r\n#{@headers}"
      return "#{line}\r\n" if method == :get

      "#{line}#{payload ? "Content-Type: application/json\r\n" : ''}Content-Length: #{payload ? payload.bytesize : 0}\r\n\r\n"
    end

    def answer(response, method, path)
      body = response.body
      return (body.empty? ? nil : parse(body, response)) if response.success?

      detail = begin
        JSON.parse(body).fetch("error")
      rescue JSON::ParserError, KeyError, TypeError, NoMethodError
        nil
      end
      detail = nil unless detail.is_a?(Hash)
      message = detail ? detail["message"].to_s : body[0, 500].to_s.strip
      message = response.reason if message.empty?
      code = detail && detail["code"]
      field = detail && detail["field"]
      text = "#{method.upcase} #{path}: #{response.status}#{code ? " #{code}" : ''}" \
             "#{field ? " (field #{field})" : ''}: #{message}"
      retry_after = retry_after_seconds(response.headers["retry-after"])
      raise ApiError.new(text, status: response.status, code: code, field: field, retry_after: retry_after)
    end

    # Retry-After in seconds from now: given as seconds, or as an HTTP date
    # (as a proxy in front may send it); nil when absent or unreadable.
    def retry_after_seconds(value)
      return nil if value.nil?
      return Integer(value, 10) if value.match?(/\A\d+\z/)

      [(Time.httpdate(value) - Time.now).ceil, 0].max
    rescue ArgumentError
      nil
    end

    def parse(body, response)
      JSON.parse(body, max_nesting: MAX_NESTING)
    rescue JSON::ParserError => e
      raise ApiError.new("#{@url}: the answer (#{response.status}) is not JSON: #{e.message[0, 200]}",
                         status: response.status)
    end

    def encode(body)
      encode_json(body)
    end

    def compact(hash)
      hash.reject { |_, value| value.nil? }
    end

    # One Server-Sent Event's block as a Hash, or nil for a comment alone.
    def sse_event(block)
      event = { "event" => nil, "id" => nil, "data" => +"" }
      block.each_line(chomp: true) do |line|
        field, value = line.split(":", 2)
        value = value.to_s.delete_prefix(" ")
        case field
        when "event" then event["event"] = value
        when "id" then event["id"] = value
        when "data" then event["data"] << value
        end
      end
      return nil unless event["event"]

      event.merge("data" => JSON.parse(event["data"], max_nesting: MAX_NESTING))
    end

    # An event stream, yielding each event until the server closes it. A
    # stream lives long and carries little, so it is Net::HTTP's own
    # connection (reading the body as it arrives), not the thread's.
    def stream(path, what, last_event_id)
      http = Net::HTTP.new(@uri.host, @uri.port)
      http.use_ssl = @uri.scheme == "https"
      http.open_timeout = @open_timeout
      http.read_timeout = EVENTS_READ_TIMEOUT
      http.start do
        request = Net::HTTP::Get.new("#{@base_path}#{path}")
        request["Accept"] = "text/event-stream"
        request["User-Agent"] = "grafter-ruby/#{VERSION}"
        request["Authorization"] = "Bearer #{@token}" if @token
        request["Last-Event-ID"] = last_event_id.to_s if last_event_id
        http.request(request) do |response|
          unless response.is_a?(Net::HTTPSuccess)
            headers = response.to_hash.transform_values(&:first)
            answer(Connection::Response.new(response.code.to_i, response.message, headers, response.body.to_s),
                   :get, path)
          end
          buffer = +""
          response.read_body do |chunk|
            buffer << chunk
            while (cut = buffer.index("\n\n"))
              event = sse_event(buffer.slice!(0, cut + 2))
              yield event if event
            end
          end
        end
      end
      nil
    rescue SystemCallError, SocketError, IOError, Net::OpenTimeout, Net::ReadTimeout => e
      raise ConnectionError.new("#{@url}: the event stream of #{what} broke (#{e.class}: #{e.message})",
                                url: @url)
    end

    def job_id(id)
      id.is_a?(Integer) ? id : Integer(id.to_s, 10)
    rescue ArgumentError, TypeError
      raise ArgumentError, "a job id is an integer, got #{id.inspect}"
    end

    def batch_id(id)
      id.is_a?(Integer) ? id : Integer(id.to_s, 10)
    rescue ArgumentError, TypeError
      raise ArgumentError, "a batch id is an integer, got #{id.inspect}"
    end

    # The headers every request carries, built once.
    def fixed_headers
      host = @uri.port == @uri.default_port ? @uri.host : "#{@uri.host}:#{@uri.port}"
      "Host: #{host}\r\nAccept: application/json\r\nUser-Agent: grafter-ruby/#{VERSION}\r\n" \
        "#{@token ? "Authorization: Bearer #{@token}\r\n" : ''}"
    end

    # Percent-encodes a path segment (a worker id like "host:1234", a queue).
    def escape(segment)
      segment.to_s.b.gsub(/[^A-Za-z0-9\-._~]/n) { |byte| format("%%%02X", byte.ord) }
    end

    def parse_url(url)
      uri = URI.parse(url)
      unless %w[http https].include?(uri.scheme) && uri.host && !uri.host.empty?
        raise ArgumentError, "the Grafter URL must be http:// or https:// with a host, got #{redact_text(url)}"
      end

      uri
    rescue URI::InvalidURIError
      raise ArgumentError, "the Grafter URL is not a URL: #{redact_text(url)}"
    end

    # The URL as shown in messages: without user and password.
    def redact(uri)
      redact_text(uri.to_s)
    end

    def redact_text(text)
      text.to_s.sub(%r{//[^/@]*@}, "//***@")
    end
  end
end
