# frozen_string_literal: true

module Grafter
  # Base of every error the client raises.
  class Error < StandardError; end

  # The server answered with an error: its HTTP status and, when the answer
  # was Grafter's JSON error, the API's `code` (e.g. "invalid_field") and the
  # `field` it names (e.g. "jobs[3].kind").
  class ApiError < Error
    attr_reader :status, :code, :field, :retry_after

    def initialize(message, status:, code: nil, field: nil, retry_after: nil)
      @status = status
      @code = code
      @field = field
      @retry_after = retry_after
      super(message)
    end

    # The server or its store is unavailable for now (503): worth retrying.
    def unavailable?
      status == 503
    end

    def lease_mismatch?
      code == "lease_mismatch"
    end

    def not_found?
      status == 404
    end
  end

  # The server could not be reached, the connection broke, or no answer came
  # within the read timeout. The message names the URL (without credentials).
  class ConnectionError < Error
    attr_reader :url

    def initialize(message, url:)
      @url = url
      super(message)
    end
  end

  # `Client#wait` gave up before the job finished.
  class WaitTimeout < Error
    attr_reader :job

    def initialize(message, job:)
      @job = job
      super(message)
    end
  end

  # Raised *into* a running job's thread by the worker (Thread#raise): its
  # timeout passed, its cancel grace ran out, its lease was lost, or the worker
  # is shutting down. These descend from Exception, not StandardError, so a
  # job's `rescue => e` does not swallow them (as with Timeout's own
  # interrupt), while its `ensure` blocks still run.
  class JobInterrupt < Exception; end # rubocop:disable Lint/InheritException

  # The job ran past its `timeout_ms`.
  class TimeoutError < JobInterrupt; end

  # The job was cancelled through the API and did not stop by itself within
  # the worker's cancel grace.
  class Cancelled < JobInterrupt; end

  # The worker lost the job's lease (another attempt may run it) or is
  # shutting down and has handed the job back.
  class Abandoned < JobInterrupt; end
end
