# frozen_string_literal: true

require "json"
require "grafter"
require "grafter/execution"
require "grafter/heartbeat"
require "grafter/runner"
require "grafter/recorder"
require_relative "../monotonic"

module Grafter
  module Rack
    # A Rack app that runs the jobs a Grafter push queue POSTs to it
    # (docs/push.md), inside the request:
    #
    #   mount Grafter::Rack::PushEndpoint.new(secret: ENV["GRAFTER_PUSH_SECRET"]) => "/grafter/jobs"
    #
    # A request whose Grafter-Signature (or, without one, Standard Webhooks
    # signature) does not sign its body with the secret (or `old_secrets`,
    # while rotating), or whose timestamp is more
    # than `tolerance` seconds away, gets 401 and runs nothing. Otherwise the
    # job (an ActiveJob payload or a Grafter.handle handler) runs and the
    # answer follows the outcome contract:
    #
    #   success             200 with the result as JSON (204 without one)
    #   discard_on          200 {"discarded": "Class: message"}
    #   an error            500, the body "Class: message" and the backtrace
    #                       (Grafter records it and retries with backoff)
    #   retry_on waiting    500 with Retry-After: the wait
    #   retry_on exhausted  500 with Grafter-Retry: false (dead)
    #   retry_job alone     503 with Retry-After: the wait (at least 1 s),
    #                       which Grafter does not count as an attempt
    #
    # The body's `timeout_ms` (the request timeout Grafter applies: the
    # push target's, or the job's own if shorter) is enforced as the worker
    # enforces a job's: Grafter::TimeoutError is raised in the job then,
    # counted from when the request arrived. A body without it (an older
    # server) runs as long as the job takes.
    #
    # Work longer than a push may last: declare it with `grafter_options
    # push: :async` (ActiveJob) or `Grafter.handle("kind", push: :async)`.
    # Such a job is answered 202 at once and runs in a background thread of
    # this process, which heartbeats its lease (the Grafter-Lease received)
    # and then acks or fails it through `client` (default Grafter.client),
    # retrying the outcome while Grafter is briefly away. A process that dies
    # meanwhile loses nothing: the lease runs out and Grafter pushes the job
    # again.
    class PushEndpoint
      include Monotonic

      # The largest body read, before the signature is checked. A pushed body
      # is the job's JSON (id, kind, queue, args, attempt, max_attempts,
      # enqueued_at), and its args came in a request of at most the server's
      # `body_limit_bytes` (1 MiB by default): that plus headroom. A server
      # with a larger `body_limit_bytes` needs `max_body_bytes:` raised to match.
      MAX_BODY_BYTES = JobFields::SERVER_BODY_LIMIT_BYTES + (64 * 1024)
      # The lease a 202 leaves the job under (the server's default_lease_ms).
      LEASE_MS = 30_000
      HEARTBEAT_SECONDS = 10
      # Most accepted signatures remembered to refuse replays.
      MAX_REMEMBERED = 100_000

      # The server's bounds for a push secret (crates/grafter-core/src/push.rs).
      SECRET_BYTES = (16..512).freeze
      MIN_WHSEC_KEY_BYTES = 16

      # `max_body_bytes`: the largest body read (see MAX_BODY_BYTES); a larger
      # one is answered 413 without being read whole.
      def initialize(secret:, tolerance: 300, client: nil, old_secrets: [], logger: nil,
                     max_body_bytes: MAX_BODY_BYTES)
        @secrets = [secret, *old_secrets].map(&:to_s).reject(&:empty?)
        raise ArgumentError, "Grafter::Rack::PushEndpoint needs the push queue's secret (secret:)" if @secrets.empty?

        @secrets.each { |each_secret| check_secret(each_secret) }

        @tolerance = Integer(tolerance)
        @max_body_bytes = Integer(max_body_bytes)
        raise ArgumentError, "max_body_bytes must be at least 1024, got #{@max_body_bytes}" if @max_body_bytes < 1024

        @client = client
        @logger = logger
        @accepted = {} # [timestamp, body digest] => monotonic time until which a replay is refused
        @accepted_lock = Mutex.new
      end

      def call(env)
        received_at = monotonic
        unless env["REQUEST_METHOD"] == "POST"
          return error(405, "method_not_allowed", "push requests are POSTs", headers: { "allow" => "POST" })
        end

        body = read_body(env)
        return error(413, "payload_too_large", "the body is over #{@max_body_bytes} bytes") unless body

        timestamp = signed_at(env, body)
        return error(401, "unauthorized", "the signature is missing, wrong or too old") unless timestamp

        job = parse(body)
        # Signed by Grafter yet unreadable: sending it again cannot help.
        return error(422, "invalid_job", "the body is not a Grafter job", final: true) unless job
        unless first_delivery?(timestamp, body)
          return error(409, "replayed", "this signed push (job #{job['id']}) was already accepted")
        end

        async = Runner.push_async?(job)
        # The body's timeout_ms bounds the request, not a job finished after
        # the 202: that one learns its own from its first heartbeat.
        execution = Execution.new(job, lease: env["HTTP_GRAFTER_LEASE"], lease_seconds: LEASE_MS / 1000.0,
                                       started_at: received_at, timeout_ms: async ? nil : request_timeout_ms(job))
        return finish_later(execution) if async

        respond(later_by_a_second(run_now(execution)))
      end

      private

      # Refuses a secret the server would refuse for a push queue: it cannot
      # be the queue's, and a short key (a `whsec_` one may decode to none at
      # all) would let anyone sign requests.
      def check_secret(secret)
        unless SECRET_BYTES.cover?(secret.bytesize)
          raise ArgumentError, "a push secret must be #{SECRET_BYTES.min} to #{SECRET_BYTES.max} bytes long, " \
                               "got #{secret.bytesize}"
        end
        return unless secret.start_with?("whsec_") && Signature.standard_key(secret).bytesize < MIN_WHSEC_KEY_BYTES

        raise ArgumentError, "a whsec_ push secret must be followed by the base64 of a key of at least " \
                             "#{MIN_WHSEC_KEY_BYTES} bytes"
      end

      # The timestamp the request's signature verified: Grafter-Signature's
      # when the request has it, else Standard Webhooks'. Nil when unsigned.
      def signed_at(env, body)
        if env["HTTP_GRAFTER_SIGNATURE"]
          Signature.verified_at(env["HTTP_GRAFTER_SIGNATURE"], body, @secrets, tolerance: @tolerance)
        else
          Signature.verified_standard_at(*env.values_at("HTTP_WEBHOOK_ID", "HTTP_WEBHOOK_TIMESTAMP", "HTTP_WEBHOOK_SIGNATURE"),
                                         body, @secrets, tolerance: @tolerance)
        end
      end

      # True the first time this process accepts a signature over this
      # timestamp and body: a replay is refused while its timestamp is
      # within the tolerance, after which the signature check refuses it.
      # Keyed on what the signature covers and nothing else: any other
      # header (Grafter-Lease, the header's spacing, which of the rotated
      # secrets' v1 it carries, which scheme) can be changed by whoever
      # replays it. Grafter signs every delivery anew (a new attempt's body
      # differs, and a push again after a 503 comes in a later second).
      # Per process: across processes a replay is stopped only by the lease
      # fencing of its outcome (an ack or fail under a lease that has ended
      # is refused), not from running.
      def first_delivery?(timestamp, body)
        key = [timestamp, OpenSSL::Digest::SHA256.digest(body)]
        now = monotonic
        @accepted_lock.synchronize do
          expired = @accepted.each_pair.take_while { |_, until_at| until_at <= now }.map(&:first)
          expired.each { |old| @accepted.delete(old) }
          return false if @accepted.key?(key)

          # Full of live entries: the oldest goes, as memory must stay bounded.
          @accepted.delete(@accepted.first.first) while @accepted.size >= MAX_REMEMBERED
          # A timestamp may be up to `tolerance` ahead of this clock: the
          # request verifies until twice that from now.
          @accepted[key] = now + (2 * @tolerance) + 1
          true
        end
      end

      # The timeout_ms of a pushed body (a positive integer), or nil.
      def request_timeout_ms(job)
        timeout_ms = job["timeout_ms"]
        timeout_ms if timeout_ms.is_a?(Integer) && timeout_ms.positive?
      end

      # Runs the job inside the request. Past its timeout (Grafter has
      # stopped waiting for the answer and failed the attempt) it gets
      # Grafter::TimeoutError, from a thread that sleeps until then.
      def run_now(execution)
        watch = execution.timeout_ms && Thread.new { interrupt_at_timeout(execution) }
        Runner.run(execution)
      ensure
        watch&.kill
      end

      def interrupt_at_timeout(execution)
        while (left = execution.time_left).positive?
          sleep left
        end
        Heartbeat.enforce(execution, cancel_grace: Heartbeat::CANCEL_GRACE, logger: logger, label: "pushed job")
      end

      # A run again later (retry_job) comes at least a second later, so that
      # Grafter signs its push anew: the same body signed in the same second
      # would be refused as a replay.
      def later_by_a_second(outcome)
        return outcome unless outcome.action == :release

        Runner::Outcome.release([outcome.retry_in_ms, 1000].max)
      end

      def respond(outcome)
        case outcome.action
        when :ack
          return [204, {}, []] if outcome.result.nil?

          [200, { "content-type" => "application/json" }, [JSON.generate(outcome.result)]]
        when :fail
          headers = { "content-type" => "text/plain; charset=utf-8" }
          headers["grafter-retry"] = "false" unless outcome.retry
          headers["retry-after"] = (outcome.retry_in_ms / 1000.0).ceil.to_s if outcome.retry && outcome.retry_in_ms
          [500, headers, [outcome.error]]
        when :release
          # "Not now": Grafter pushes it again then, the attempt uncounted.
          seconds = (outcome.retry_in_ms / 1000.0).ceil
          [503, { "content-type" => "text/plain; charset=utf-8", "retry-after" => seconds.to_s },
           ["retry_job: run again in #{seconds} s"]]
        else
          [503, { "content-type" => "text/plain; charset=utf-8" }, ["the job was not run"]]
        end
      rescue JSON::GeneratorError, EncodingError => e
        # A result that is not JSON (invalid UTF-8) ends the job as a worker
        # ends it, dead: raising here would be a 500, which Grafter retries,
        # running the job again.
        respond(Runner::Outcome.not_json(e))
      end

      # 202 now; the job runs on a thread of its own, with heartbeats, and
      # its outcome is recorded through the API with the lease.
      def finish_later(execution)
        unless execution.lease
          return error(422, "invalid_job", "no Grafter-Lease header: the job cannot be finished later", final: true)
        end

        Thread.new { run_in_background(execution) }
        [202, { "content-type" => "application/json" }, [JSON.generate("accepted" => execution.id)]]
      end

      def run_in_background(execution)
        client = @client || Grafter.client
        done = Queue.new
        beats = Thread.new { heartbeat(client, execution, done) }
        outcome = later_by_a_second(Runner.run(execution))
        done << true
        beats.join
        # Unless the heartbeat gave up on a job that ignored its interrupt
        # and recorded the outcome itself.
        Recorder.new(client, logger: logger, grace: LEASE_MS / 1000.0).record(execution, outcome) if execution.settle!
      rescue Exception => e # rubocop:disable Lint/RescueException
        logger.error("grafter: pushed job #{execution.id}: #{Runner.describe(e)}")
      end

      # Renews the lease every HEARTBEAT_SECONDS, sooner when progress
      # changes, until the job ends; enforces the job's timeout_ms and
      # unheeded cancels as the worker does (Grafter::TimeoutError or
      # Grafter::Cancelled raised in the job's thread), and stops the job
      # when its lease is lost (409 or 404: another attempt may run it).
      def heartbeat(client, execution, done)
        # The first heartbeat goes at once: its answer brings the job's own
        # timeout_ms (the pushed body's is the request's).
        last = monotonic - HEARTBEAT_SECONDS
        sent = 0
        interrupted_at = nil
        loop do
          break unless done.empty?

          sleep 0.1
          Heartbeat.enforce(execution, cancel_grace: Heartbeat::CANCEL_GRACE, logger: logger, label: "pushed job")
          if execution.interrupt
            interrupted_at ||= monotonic
            next unless monotonic - interrupted_at >= Heartbeat::INTERRUPT_GRACE && execution.body_running?

            give_up_on(client, execution)
            break
          end
          version, progress = execution.progress
          next unless monotonic - last >= HEARTBEAT_SECONDS || (version != sent && monotonic - last >= 0.25)

          case beat(client, execution, version, progress)
          when :lost then break
          when :ok then sent = version
          end
          last = monotonic
        end
      rescue StandardError => e
        logger.error("grafter: heartbeats of pushed job #{execution.id} ended: #{Runner.describe(e)}")
      end

      # One heartbeat: :ok (its progress sent, or refused and dropped),
      # :lost, or :failed (tried again at the next one).
      def beat(client, execution, version, progress)
        Heartbeat.renew(client, execution, version, progress, lease_ms: LEASE_MS, logger: logger, label: "pushed job")
        :ok
      rescue ApiError => e
        unless e.status == 409 || e.status == 404
          logger.warn("grafter: heartbeat of pushed job #{execution.id} failed: #{e.message}")
          return :failed
        end

        logger.warn("grafter: pushed job #{execution.id}: lease lost (#{e.message}); stopping it")
        execution.interrupt!(:abandoned, Abandoned, "lease lost: #{e.message}") || execution.abandon!
        :lost
      rescue Grafter::Error => e
        logger.warn("grafter: heartbeat of pushed job #{execution.id} failed: #{e.message}")
        :failed
      end

      # A job that ignored its interrupt: its outcome is recorded now and its
      # lease no longer renewed; its thread runs on until the job returns.
      def give_up_on(client, execution)
        logger.error("grafter: pushed job #{execution.id} ignored its #{execution.interrupt} interrupt for " \
                     "#{Heartbeat::INTERRUPT_GRACE} s; recording its outcome without it")
        return unless execution.settle!

        Recorder.new(client, logger: logger, grace: LEASE_MS / 1000.0).record(execution, Runner.decide(execution, nil, nil))
      end

      # The body, or nil when it is over @max_body_bytes: refused by its
      # Content-Length before anything is read, else once one byte more
      # than the limit has been.
      def read_body(env)
        length = env["CONTENT_LENGTH"].to_s
        return nil if length.match?(/\A\d+\z/) && length.to_i > @max_body_bytes

        input = env["rack.input"]
        return "".b unless input

        input.rewind if input.respond_to?(:rewind)
        body = input.read(@max_body_bytes + 1).to_s.b
        input.rewind if input.respond_to?(:rewind)
        body.bytesize > @max_body_bytes ? nil : body
      end

      def parse(body)
        job = JSON.parse(body.dup.force_encoding(Encoding::UTF_8), max_nesting: Client::MAX_NESTING)
        job if job.is_a?(Hash) && job["id"].is_a?(Integer) && job["kind"].is_a?(String)
      rescue JSON::ParserError, EncodingError
        nil
      end

      def error(status, code, message, final: false, headers: {})
        headers = headers.merge("content-type" => "application/json")
        headers["grafter-retry"] = "false" if final
        [status, headers, [JSON.generate("error" => { "code" => code, "message" => message })]]
      end

      def logger
        @logger || Grafter.logger
      end
    end
  end
end
