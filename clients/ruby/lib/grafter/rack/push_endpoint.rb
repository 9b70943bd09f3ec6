# frozen_string_literal: true

require "json"
require "grafter"
require "grafter/execution"
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

      MAX_BODY_BYTES = 16 * 1024 * 1024
      # The lease a 202 leaves the job under (the server's default_lease_ms).
      LEASE_MS = 30_000
      HEARTBEAT_SECONDS = 10

      # The server's bounds for a push secret (crates/grafter-core/src/push.rs).
      SECRET_BYTES = (16..512).freeze
      MIN_WHSEC_KEY_BYTES = 16

      def initialize(secret:, tolerance: 300, client: nil, old_secrets: [], logger: nil)
        @secrets = [secret, *old_secrets].map(&:to_s).reject(&:empty?)
        raise ArgumentError, "Grafter::Rack::PushEndpoint needs the push queue's secret (secret:)" if @secrets.empty?

        @secrets.each { |each_secret| check_secret(each_secret) }

        @tolerance = Integer(tolerance)
        @client = client
        @logger = logger
      end

      def call(env)
        return error(405, "method_not_allowed", "push requests are POSTs") unless env["REQUEST_METHOD"] == "POST"

        body = read_body(env)
        return error(413, "payload_too_large", "the body is over #{MAX_BODY_BYTES} bytes") unless body
        unless signed?(env, body)
          return error(401, "unauthorized", "the signature is missing, wrong or too old")
        end

        job = parse(body)
        # Signed by Grafter yet unreadable: sending it again cannot help.
        return error(422, "invalid_job", "the body is not a Grafter job", final: true) unless job

        execution = Execution.new(job, lease: env["HTTP_GRAFTER_LEASE"], lease_seconds: LEASE_MS / 1000.0)
        return finish_later(execution) if Runner.push_async?(job)

        respond(Runner.run(execution))
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

      # Grafter-Signature when the request has it, else Standard Webhooks.
      def signed?(env, body)
        if env["HTTP_GRAFTER_SIGNATURE"]
          Signature.verify(env["HTTP_GRAFTER_SIGNATURE"], body, @secrets, tolerance: @tolerance)
        else
          Signature.verify_standard(*env.values_at("HTTP_WEBHOOK_ID", "HTTP_WEBHOOK_TIMESTAMP", "HTTP_WEBHOOK_SIGNATURE"),
                                    body, @secrets, tolerance: @tolerance)
        end
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
        outcome = Runner.run(execution)
        done << true
        beats.join
        Recorder.new(client, logger: logger, grace: LEASE_MS / 1000.0).record(execution, outcome)
      rescue Exception => e # rubocop:disable Lint/RescueException
        logger.error("grafter: pushed job #{execution.id}: #{Runner.describe(e)}")
      end

      # Renews the lease every HEARTBEAT_SECONDS, sooner when progress
      # changes, until the job ends.
      def heartbeat(client, execution, done)
        last = monotonic
        sent = 0
        loop do
          break unless done.empty?

          sleep 0.1
          version, progress = execution.progress
          next unless monotonic - last >= HEARTBEAT_SECONDS || (version != sent && monotonic - last >= 0.25)

          begin
            answer = client.heartbeat(execution.id, lease: execution.lease, progress: progress, lease_ms: LEASE_MS)
            execution.lease_renewed!(LEASE_MS / 1000.0)
            execution.cancel_requested! if answer && answer["cancel_requested"]
            sent = version
          rescue Grafter::Error => e
            logger.warn("grafter: heartbeat of pushed job #{execution.id} failed: #{e.message}")
          end
          last = monotonic
        end
      end

      def read_body(env)
        input = env["rack.input"]
        return "".b unless input

        input.rewind if input.respond_to?(:rewind)
        body = input.read(MAX_BODY_BYTES + 1).to_s.b
        input.rewind if input.respond_to?(:rewind)
        body.bytesize > MAX_BODY_BYTES ? nil : body
      end

      def parse(body)
        job = JSON.parse(body.dup.force_encoding(Encoding::UTF_8), max_nesting: Client::MAX_NESTING)
        job if job.is_a?(Hash) && job["id"].is_a?(Integer) && job["kind"].is_a?(String)
      rescue JSON::ParserError, EncodingError
        nil
      end

      def error(status, code, message, final: false)
        headers = { "content-type" => "application/json" }
        headers["grafter-retry"] = "false" if final
        [status, headers, [JSON.generate("error" => { "code" => code, "message" => message })]]
      end

      def logger
        @logger || Grafter.logger
      end
    end
  end
end
