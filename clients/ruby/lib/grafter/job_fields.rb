# frozen_string_literal: true

require "json"
require "time"

module Grafter
  # A job's fields as the API takes them, whichever way they travel (HTTP or
  # the SQL enqueue function): string keys, times as RFC 3339 with
  # microseconds, nils left out; and their JSON, refused alike both ways.
  module JobFields
    # JSON nesting read and written. The server takes requests nested up to
    # 128 levels (serde_json's limit) and answers what it stored a few levels
    # deeper (args inside a job inside {"jobs": [...]}), where Ruby's default
    # of 100 would refuse both. Finite, so that a cyclic structure or a
    # hostile answer ends in an error rather than a stack overflow.
    MAX_NESTING = 128 + 16
    # The server's default `body_limit_bytes`: the largest request it takes.
    SERVER_BODY_LIMIT_BYTES = 1024 * 1024
    # The most jobs one enqueue_many takes (POST /v1/jobs/batch,
    # grafter_enqueue_many_v1).
    MAX_BATCH_JOBS = 10_000
    # `{"jobs":` and `}` around the jobs of an enqueue_many.
    BATCH_WRAPPER_BYTES = '{"jobs":}'.bytesize
    # The times the server takes: years 1 to 9999 (crates/grafter-core/src/time.rs).
    EARLIEST = Time.utc(1, 1, 1).freeze
    LATEST = Time.utc(9999, 12, 31, 23, 59, 59.999999r).freeze

    module_function

    def job_fields(fields)
      fields = fields.transform_keys(&:to_s)
      %w[run_at expires_at].each { |key| fields[key] = timestamp(fields[key], key) if fields.key?(key) }
      fields.reject { |_, value| value.nil? }
    end

    # Time, DateTime, anything with #to_time, or Unix seconds; a String as
    # given. A time outside years 1 to 9999 raises ArgumentError naming `name`.
    def timestamp(value, name = "a time")
      time = case value
             when nil, String then return value
             when Numeric
               raise ArgumentError, "#{name} must be a finite number of seconds, got #{value}" unless value.to_f.finite?

               Time.at(value)
             else
               raise ArgumentError, "#{name}: expected a time, got #{value.inspect}" unless value.respond_to?(:to_time)

               value.to_time
             end
      unless time.between?(EARLIEST, LATEST)
        raise ArgumentError, "#{name} must be between #{EARLIEST.iso8601} and #{LATEST.iso8601(6)}, " \
                             "got #{time.utc.inspect}"
      end

      time.utc.iso8601(6)
    end

    # The jobs (field Hashes), in order, cut into as few runs as one
    # enqueue_many each takes: at most MAX_BATCH_JOBS, and at most
    # `max_bytes` of request (a job over it alone is a run of its own, for
    # the server to refuse as it would refuse it enqueued alone).
    def batches(jobs, max_bytes: SERVER_BODY_LIMIT_BYTES)
      batches = []
      bytes = 0
      jobs.each do |job|
        # Its JSON, and the comma (or bracket) after it.
        size = encode_json(job_fields(job)).bytesize + 1
        if batches.empty? || batches.last.size >= MAX_BATCH_JOBS || bytes + size > max_bytes
          batches << []
          bytes = BATCH_WRAPPER_BYTES + 1
        end
        batches.last << job
        bytes += size
      end
      batches
    end

    # The request's JSON, or Grafter::Error when it cannot be sent as JSON:
    # nested deeper than the server takes, or strings that are not UTF-8.
    # JSON::NestingError is a ParserError, not a GeneratorError.
    def encode_json(body)
      JSON.generate(body, max_nesting: MAX_NESTING)
    rescue JSON::NestingError => e
      raise Grafter::Error, "the request cannot be sent as JSON: #{e.message[0, 200]} " \
                            "(the server takes at most 128 levels)"
    rescue JSON::GeneratorError, Encoding::UndefinedConversionError, EncodingError => e
      raise Grafter::Error, "the request cannot be sent as JSON (#{e.class}: #{e.message[0, 200]}); " \
                            "strings must be valid UTF-8"
    end
  end
end
