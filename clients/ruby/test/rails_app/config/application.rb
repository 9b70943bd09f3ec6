require_relative "boot"

# Only the frameworks the seed scenarios use: no database, no views, no assets.
require "rails"
require "action_controller/railtie"
require "active_job/railtie"
require "grafter/active_job"

module RailsApp
  class Application < Rails::Application
    config.load_defaults 6.1
    config.api_only = true

    # The same behaviour in every environment: the test runs the app as it
    # would run in production (classes loaded once, before the first request).
    config.cache_classes = true
    config.eager_load = true
    config.consider_all_requests_local = false
    # A fixture: nothing here is secret, and reading it from a credentials file
    # would tie the app to one master key.
    config.secret_key_base = ENV.fetch("SECRET_KEY_BASE", "rails-app-fixture-not-a-secret")
    # Log lines go to the process's output (the test keeps each process's
    # output in a file), not into the repository.
    config.logger = ActiveSupport::Logger.new($stdout)
    config.log_level = ENV.fetch("RAILS_LOG_LEVEL", "info").to_sym

    config.active_job.queue_adapter = :grafter
  end
end
