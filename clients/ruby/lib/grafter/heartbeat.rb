# frozen_string_literal: true

require "grafter/errors"

module Grafter
  # What the worker's heartbeats and those of a job pushed with
  # `push: :async` (Grafter::Rack::PushEndpoint) share: renewing a lease with
  # the job's progress, and enforcing its timeout and an unheeded cancel.
  module Heartbeat
    # How long a cancelled job may run on before Grafter::Cancelled is
    # raised in it, and how long a job may ignore its interrupt before its
    # outcome is recorded without it (the worker's defaults).
    CANCEL_GRACE = 10
    INTERRUPT_GRACE = 5

    module_function

    # Renews the lease of `execution` for `lease_ms`, carrying `progress`
    # (of `version`), and answers the job as the server sent it. A progress
    # the server refuses, or that cannot be sent, is dropped (logged, and
    # the block called) and the lease renewed without it; any other error
    # is raised. `label` names the job in the log ("job", "pushed job").
    def renew(client, execution, version, progress, lease_ms:, logger:, label: "job")
      answer = begin
        client.heartbeat(execution.id, lease: execution.lease, progress: progress, lease_ms: lease_ms)
      rescue Grafter::Error => e
        raise if progress.nil? || !progress_refused?(e)

        logger.warn("grafter: #{label} #{execution.id}: its progress was refused and is dropped (#{e.message})")
        execution.drop_progress!(version)
        yield if block_given?
        client.heartbeat(execution.id, lease: execution.lease, lease_ms: lease_ms)
      end
      execution.lease_renewed!(lease_ms / 1000.0)
      if answer.is_a?(Hash)
        # A job finished after a push's 202 learns its own timeout here (the
        # pushed body carries the request's).
        execution.timeout_learned!(answer["timeout_ms"])
        execution.cancel_requested! if answer["cancel_requested"]
      end
      answer
    end

    # The request was refused for what it carries: it could not be encoded,
    # or the server answered 4xx other than 404 and 409 (the lease is gone)
    # and 429 (try again). With progress, that is the progress.
    def progress_refused?(error)
      return true unless error.is_a?(ApiError) || error.is_a?(ConnectionError)

      error.is_a?(ApiError) && error.status.between?(400, 499) && ![404, 409, 429].include?(error.status)
    end

    # Interrupts `execution` past its timeout (Grafter::TimeoutError), or
    # `cancel_grace` seconds after a cancel it did not heed
    # (Grafter::Cancelled), logging either.
    def enforce(execution, cancel_grace:, logger:, label: "job")
      if execution.past_deadline? &&
         execution.interrupt!(:timeout, TimeoutError, "job #{execution.id} ran past its timeout_ms (#{execution.timeout_ms} ms)")
        logger.warn("grafter: #{label} #{execution.id} timed out after #{execution.timeout_ms} ms; interrupted")
      end
      return unless (waited = execution.cancel_requested_for) && waited >= cancel_grace &&
                    execution.interrupt!(:cancel, Cancelled, "job #{execution.id} was cancelled")

      logger.warn("grafter: #{label} #{execution.id} did not stop #{cancel_grace} s after its cancel; interrupted")
    end
  end
end
