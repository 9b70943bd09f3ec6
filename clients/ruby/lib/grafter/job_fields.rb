# frozen_string_literal: true

require "time"

module Grafter
  # A job's fields as the API takes them, whichever way they travel (HTTP or
  # the SQL enqueue function): string keys, times as RFC 3339 with
  # microseconds, nils left out.
  module JobFields
    module_function

    def job_fields(fields)
      fields = fields.transform_keys(&:to_s)
      %w[run_at expires_at].each { |key| fields[key] = timestamp(fields[key]) if fields.key?(key) }
      fields.reject { |_, value| value.nil? }
    end

    # Time, DateTime, anything with #to_time, or Unix seconds; a String as given.
    def timestamp(value)
      case value
      when nil, String then value
      when Numeric then Time.at(value).utc.iso8601(6)
      else
        raise ArgumentError, "expected a time, got #{value.inspect}" unless value.respond_to?(:to_time)

        value.to_time.utc.iso8601(6)
      end
    end
  end
end
