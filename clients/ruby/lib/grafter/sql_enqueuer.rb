# frozen_string_literal: true

require "json"

require_relative "job_fields"

begin
  require "grafter/errors"
rescue LoadError
  # Loaded on its own, without the rest of the gem: the base class is all
  # this file needs.
  module Grafter
    class Error < StandardError; end
  end
end

module Grafter
  # Enqueues through the SQL function the PostgreSQL migrations install
  # (grafter_enqueue_v1, docs/protocol.md), on the application's own database
  # connection: the job is stored if and only if the application's
  # transaction commits, and waiting workers on every Grafter node wake when
  # it does.
  #
  #   Grafter.configure { |c| c.enqueuer = Grafter::SqlEnqueuer.new(ActiveRecord::Base, schema: "grafter") }
  #
  #   ActiveRecord::Base.transaction do
  #     user = User.create!(email: email)
  #     enqueuer.enqueue(kind: "send_welcome", args: { user_id: user.id })
  #   end   # the user and the job, or neither
  #
  # `connection_source` is ActiveRecord::Base (or any class with a
  # `connection`; each call uses the connection of the current thread) or a
  # PG::Connection. `schema` is the `[postgres] schema` of the Grafter nodes
  # (nil: the connection's search_path finds the function).
  #
  # A refused job raises InvalidJob naming the field. Like any failed
  # statement, it aborts the surrounding transaction; wrap the call in
  # `transaction(requires_new: true)` to keep the transaction going.
  class SqlEnqueuer
    include JobFields

    # The job was refused (SQLSTATE 22023): `field` names it as the HTTP API
    # does ("kind", "jobs[3].run_at"); `code` is the API's "invalid_field".
    class InvalidJob < (Grafter.const_defined?(:ApiError) ? Grafter::ApiError : Grafter::Error)
      attr_reader :status, :code, :field

      def initialize(message, field:)
        if defined?(Grafter::ApiError) && is_a?(Grafter::ApiError)
          super(message, status: 422, code: "invalid_field", field: field)
        else
          @status = 422
          @code = "invalid_field"
          @field = field
          super(message)
        end
      end
    end

    INVALID_PARAMETER_VALUE = "22023"
    # The HTTP API refuses a larger request (413), and so does this
    # enqueuer, with the same error.
    MAX_BODY_BYTES = JobFields::SERVER_BODY_LIMIT_BYTES

    # `max_body_bytes`: the `body_limit_bytes` of the Grafter servers, so that
    # a job is refused here exactly when the HTTP API would refuse it.
    def initialize(connection_source, schema: nil, max_body_bytes: MAX_BODY_BYTES)
      unless connection_source.respond_to?(:connection) || connection_source.respond_to?(:exec_params)
        raise ArgumentError, "expected ActiveRecord::Base (or a model class) or a PG::Connection, " \
                             "got #{connection_source.inspect}"
      end
      if schema && (schema.to_s.empty? || schema.to_s.include?("\0"))
        raise ArgumentError, "schema must be a non-empty name without NUL, got #{schema.inspect}"
      end

      @source = connection_source
      @max_body_bytes = Integer(max_body_bytes)
      prefix = schema ? "#{quote_ident(schema.to_s)}." : ""
      @one_sql = "SELECT #{prefix}grafter_enqueue_v1($1::text::json)"
      @many_sql = "SELECT #{prefix}grafter_enqueue_many_v1($1::text::json)"
    end

    # Enqueues one job (the fields of POST /v1/jobs) in the connection's
    # current transaction; returns the job's Hash (string keys), or the
    # unfinished job already holding its unique_key.
    def enqueue(**fields)
      call(@one_sql, job_fields(fields))
    end

    # Enqueues the jobs in order, all or none; returns their Hashes in order
    # (none for no jobs, without a statement).
    def enqueue_many(jobs)
      return [] if jobs.empty?

      call(@many_sql, jobs.map { |job| job_fields(job) })
    end

    private

    # grafter_enqueue_v1 takes no trace context (it is older than it and
    # refuses unknown fields): dropped, as the server drops a malformed one.
    TRACE_FIELDS = %w[traceparent tracestate].freeze

    def call(sql, body)
      body = body.is_a?(Array) ? body.map { |job| job.except(*TRACE_FIELDS) } : body.except(*TRACE_FIELDS)
      # As Grafter::Client encodes it: the same Grafter::Error for what
      # cannot be JSON (too deep, not UTF-8), the same 413 over the limit.
      json = encode_json(body)
      check_size(json.bytesize + (body.is_a?(Array) ? BATCH_WRAPPER_BYTES : 0))
      answer = @source.respond_to?(:connection) ? via_active_record(sql, json) : via_pg(sql, json)
      answer.is_a?(String) ? JSON.parse(answer) : answer
    end

    def check_size(bytes)
      return if bytes <= @max_body_bytes

      message = "SQL enqueue: 413 payload_too_large: the request would be #{bytes} bytes, over the server's " \
                "limit of #{@max_body_bytes} (setting body_limit_bytes)"
      raise Grafter::Error, message unless Grafter.const_defined?(:ApiError)

      raise Grafter::ApiError.new(message, status: 413, code: "payload_too_large")
    end

    def via_active_record(sql, json)
      connection = @source.connection
      bind = ActiveRecord::Relation::QueryAttribute.new("job", json, ActiveRecord::Type::String.new)
      connection.exec_query(sql, "Grafter enqueue", [bind]).rows.first.first
    rescue ActiveRecord::StatementInvalid => e
      raise refused(e.cause) || e
    end

    def via_pg(sql, json)
      @source.exec_params(sql, [json]).getvalue(0, 0)
    rescue PG::Error => e
      raise refused(e) || e
    end

    # The function's refusal as InvalidJob; nil for any other error.
    def refused(error)
      result = error.respond_to?(:result) && error.result
      return nil unless result && result.error_field(PG::PG_DIAG_SQLSTATE) == INVALID_PARAMETER_VALUE

      field = result.error_field(PG::PG_DIAG_COLUMN_NAME)
      return nil unless field

      InvalidJob.new(result.error_field(PG::PG_DIAG_MESSAGE_PRIMARY), field: field)
    end

    def quote_ident(name)
      %("#{name.gsub('"', '""')}")
    end
  end
end
