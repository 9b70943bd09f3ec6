# frozen_string_literal: true

require "grafter/execution"

module Grafter
  # Runs one leased job on the current thread (a plain handler registered
  # with Grafter.handle, or an ActiveJob payload) and decides what to record.
  # Shared by the worker and the push endpoint.
  module Runner
    # What to tell the server: :ack (with `result`), :fail (with `error`,
    # `retry`, `retry_in_ms`), :release (run again after `retry_in_ms`, the
    # attempt not counted), or :none (the job was handed back or its lease
    # lost: nothing to record).
    Outcome = Struct.new(:action, :result, :error, :retry, :retry_in_ms, keyword_init: true) do
      def self.ack(result = nil)
        new(action: :ack, result: result)
      end

      def self.fail(error, retry: true, retry_in_ms: nil)
        new(action: :fail, error: error, retry: binding.local_variable_get(:retry), retry_in_ms: retry_in_ms)
      end

      def self.release(delay_ms)
        new(action: :release, retry_in_ms: delay_ms)
      end

      def self.none
        new(action: :none)
      end

      # A result that cannot be sent as JSON (invalid UTF-8): the job ran and
      # would return the same again, so it is dead rather than retried.
      def self.not_json(error)
        fail(Runner.clean_text("the result is not JSON: #{error.message}"), retry: false)
      end
    end

    # Longest error recorded (the server keeps 16 KiB).
    MAX_ERROR_BYTES = 16 * 1024
    BACKTRACE_LINES = 20

    module_function

    def run(execution)
      value, error = Execution.with(execution) do
        execution.run_body { within_app { perform(execution) } }
      end
      decide(execution, value, error)
    end

    # The kinds this process can run, for the worker's registration.
    def kinds
      kinds = Grafter.handlers.keys
      kinds += Grafter::ActiveJobSupport.job_class_names if defined?(Grafter::ActiveJobSupport)
      kinds.uniq.first(1000)
    end

    # Whether the job asked to finish in the background when pushed.
    def push_async?(job)
      handler = Grafter.handlers[job["kind"]]
      return handler.push == :async if handler

      active_job?(job["args"]) && load_active_job && Grafter::ActiveJobSupport.push_async?(job["args"])
    end

    # "Class: message" and the first lines of the backtrace, as valid UTF-8
    # without NUL characters (the server refuses them) and at most 16 KiB.
    # Never raises: an error that cannot be described would lose the job's
    # outcome.
    def describe(exception)
      text = headline(exception)
      backtrace = safely { exception.backtrace&.first(BACKTRACE_LINES) }
      text = "#{text}\n#{backtrace.map { |line| utf8(line) }.join("\n")}" if backtrace.is_a?(Array) && !backtrace.empty?
      clean_text(text)
    end

    # "Class: message", or the class alone when its message cannot be read.
    def headline(exception)
      name = utf8(safely { exception.class.to_s } || "an exception")
      message = safely { exception.message }
      message.nil? ? "#{name} (its message could not be read)" : "#{name}: #{utf8(message)}"
    end

    # The block's value; nil if it raises (a job's exception may define
    # #message or #backtrace to do anything).
    def safely
      yield
    rescue Exception # rubocop:disable Lint/RescueException
      nil
    end

    # The text as UTF-8: transcoded from another encoding (UTF-16, Latin-1),
    # or, for binary and UTF-8 text, its invalid bytes replaced.
    def utf8(text)
      text = text.to_s
      if [Encoding::UTF_8, Encoding::BINARY, Encoding::US_ASCII].include?(text.encoding)
        return text.dup.force_encoding(Encoding::UTF_8).scrub("?")
      end

      text.encode(Encoding::UTF_8, invalid: :replace, undef: :replace, replace: "?")
    rescue EncodingError
      text.dup.force_encoding(Encoding::UTF_8).scrub("?")
    end

    def clean_text(text)
      text = utf8(text).gsub("\u0000", "\\u0000")
      return text if text.bytesize <= MAX_ERROR_BYTES

      text.byteslice(0, MAX_ERROR_BYTES).scrub("")
    end

    # The job's code, inside Rails' executor when Rails is loaded (reloading,
    # connection pool and query cache handled as for a request).
    def within_app(&block)
      if defined?(::Rails) && ::Rails.respond_to?(:application) && ::Rails.application
        ::Rails.application.executor.wrap(&block)
      else
        yield
      end
    end

    def perform(execution)
      handler = Grafter.handlers[execution.kind]
      return handler.block.call(execution.args, execution.job) if handler

      if active_job?(execution.args) && load_active_job
        return Grafter::ActiveJobSupport.execute(execution)
      end

      raise UnknownKind, "no handler for kind '#{execution.kind}' in this process " \
                         "(Grafter.handle(\"#{execution.kind}\") { |args, job| … } or an ActiveJob class)"
    end

    def decide(execution, value, error)
      case execution.interrupt
      when :timeout
        return Outcome.fail("timed out: the job ran past its timeout_ms (#{execution.timeout_ms} ms)")
      when :cancel
        return Outcome.fail("cancelled on request", retry: false)
      when :abandoned
        return Outcome.none
      end

      if error
        return Outcome.fail("cancelled on request: #{describe(error)}", retry: false) if execution.cancelled?
        # retry_on gave up (or the job failed for good): dead now.
        return Outcome.fail(describe(error), retry: false) if execution.final_error.equal?(error)

        return Outcome.fail(describe(error))
      end

      if (request = execution.retry_request)
        # retry_on's retry_job (it passes the error) is a failed attempt, so
        # its `attempts` count; a retry_job of the job's own (a poll, a
        # rescue_from) is a new run later, as an enqueue would be, and uses
        # up no attempt.
        return Outcome.fail(describe(request[:error]), retry_in_ms: request[:delay_ms]) if request[:error]

        return Outcome.release(request[:delay_ms])
      end
      return Outcome.ack("discarded" => describe_briefly(execution.discarded)) if execution.discarded

      Outcome.ack(json_data(value))
    end

    def describe_briefly(exception)
      return "discarded" unless exception.is_a?(Exception)

      clean_text(headline(exception))
    end

    # The value if it is plain JSON data (what a job returns becomes its
    # result), else nil: an object that is not data is not stored.
    def json_data(value)
      plain?(value, 0) ? value : nil
    end

    def plain?(value, depth)
      return false if depth > 64

      case value
      when nil, true, false, String, Integer then true
      when Float then value.finite?
      when Array then value.all? { |item| plain?(item, depth + 1) }
      when Hash then value.all? { |key, item| (key.is_a?(String) || key.is_a?(Symbol)) && plain?(item, depth + 1) }
      else false
      end
    end

    def active_job?(args)
      args.is_a?(Hash) && args["job_class"].is_a?(String) && args.key?("arguments")
    end

    # ActiveJob payloads need the adapter's support; load it on first use
    # (a worker that booted an app has ActiveJob already).
    def load_active_job
      return true if defined?(Grafter::ActiveJobSupport)

      require "grafter/active_job"
      true
    rescue LoadError
      false
    end

    # No handler and no job class for a kind.
    class UnknownKind < Error; end
  end
end
