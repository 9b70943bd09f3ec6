require_relative "boot"

# Seed 003: an app on PostgreSQL whose jobs are enqueued inside its own
# transactions. The database is DATABASE_URL (Rails reads it without a
# database.yml); Grafter's tables and SQL functions are in GRAFTER_SCHEMA.
require "rails"
require "active_record/railtie"
require "action_controller/railtie"
require "active_job/railtie"
require "grafter/active_job"

module RailsPgApp
  class Application < Rails::Application
    config.load_defaults 6.1
    config.api_only = true
    config.cache_classes = true
    config.eager_load = true
    config.consider_all_requests_local = false
    config.secret_key_base = ENV.fetch("SECRET_KEY_BASE", "rails-pg-app-fixture-not-a-secret")
    config.logger = ActiveSupport::Logger.new($stdout)
    config.log_level = ENV.fetch("RAILS_LOG_LEVEL", "info").to_sym

    config.active_job.queue_adapter = :grafter
  end
end
