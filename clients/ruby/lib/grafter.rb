# frozen_string_literal: true

require "grafter/version"
require "grafter/errors"
require "grafter/client"
require "grafter/signature"

# Grafter's Ruby client: see Grafter::Client, Grafter::Worker,
# `require "grafter/active_job"` and Grafter::Rack::PushEndpoint.
module Grafter
  # Settings for Grafter.client and the ActiveJob adapter.
  class Config
    attr_accessor :url, :token, :open_timeout, :read_timeout, :logger
    attr_writer :enqueuer

    def initialize
      @url = nil # GRAFTER_URL, else http://127.0.0.1:7380
      @token = nil # GRAFTER_TOKEN
      @open_timeout = 5
      @read_timeout = 35
      @logger = nil
      @enqueuer = nil
    end

    # What the ActiveJob adapter enqueues through: anything answering
    # `enqueue(**fields)` with a Hash holding "id". Default: Grafter.client.
    def enqueuer
      @enqueuer || Grafter.client
    end
  end

  autoload :Worker, "grafter/worker"
  autoload :CLI, "grafter/cli"
  autoload :SqlEnqueuer, "grafter/sql_enqueuer"

  # Rack integration: Grafter::Rack::PushEndpoint.
  module Rack
    autoload :PushEndpoint, "grafter/rack/push_endpoint"
  end

  # A plain-Ruby job handler, registered with Grafter.handle.
  Handler = Struct.new(:kind, :block, :push, keyword_init: true)

  @config = Config.new
  @client = nil
  @handlers = {}
  @lock = Mutex.new

  class << self
    attr_reader :config

    # Grafter.configure { |c| c.url = "…"; c.enqueuer = Grafter::SqlEnqueuer.new(…) }
    def configure
      yield config
      @lock.synchronize { @client = nil }
      config
    end

    # The default client, from the configuration or GRAFTER_URL / GRAFTER_TOKEN.
    def client
      @client || @lock.synchronize do
        @client ||= Client.new(url: config.url, token: config.token,
                               open_timeout: config.open_timeout, read_timeout: config.read_timeout)
      end
    end

    # Runs jobs of `kind` with the block, given the job's args and the whole
    # leased job (a Hash); the block's value, if it is plain JSON data, is
    # the job's result. `push: :async` lets a push endpoint answer 202 at once
    # and finish the job in the background (see Grafter::Rack::PushEndpoint).
    def handle(kind, push: nil, &block)
      raise ArgumentError, "Grafter.handle(#{kind.inspect}) needs a block" unless block

      @lock.synchronize { @handlers = @handlers.merge(kind.to_s => Handler.new(kind: kind.to_s, block: block, push: push)) }
    end

    # kind => Handler; a frozen snapshot, safe to read from any thread.
    def handlers
      @handlers
    end

    # Runs the block with a W3C trace context that the ActiveJob adapter
    # gives every job enqueued in it (docs/traces.md), e.g. the current
    # request's `traceparent` header:
    #
    #   Grafter.with_trace(request.headers["traceparent"]) { SendWelcomeJob.perform_later(user) }
    #
    # Kept per thread (and fiber); nil or a malformed value is harmless
    # (the server ignores a malformed one).
    def with_trace(traceparent, tracestate = nil)
      previous = Thread.current[:grafter_trace]
      Thread.current[:grafter_trace] = traceparent && { traceparent: traceparent, tracestate: tracestate }.compact
      yield
    ensure
      Thread.current[:grafter_trace] = previous
    end

    # The trace context Grafter.with_trace set on this thread: a Hash with
    # :traceparent (and :tracestate), or nil.
    def current_trace
      Thread.current[:grafter_trace]
    end

    def logger
      config.logger || (defined?(::Rails) && ::Rails.respond_to?(:logger) && ::Rails.logger) || default_logger
    end

    private

    def default_logger
      @default_logger ||= begin
        require "logger"
        Logger.new($stderr, level: Logger::INFO)
      end
    end
  end
end

require "grafter/railtie" if defined?(Rails::Railtie)
