# frozen_string_literal: true

module Grafter
  # Under Rails: the rake task `grafter:work`, configured like grafter-worker
  # through GRAFTER_QUEUES, GRAFTER_CONCURRENCY, GRAFTER_IDENTIFIER,
  # GRAFTER_HEALTH_PORT and GRAFTER_SHUTDOWN_TIMEOUT.
  class Railtie < ::Rails::Railtie
    rake_tasks do
      namespace :grafter do
        desc "Run a Grafter worker (GRAFTER_QUEUES=default,mail GRAFTER_CONCURRENCY=10)"
        task work: :environment do
          require "grafter/cli"
          options = Grafter::CLI.parse([])
          options.app_root = ::Rails.root.to_s
          Grafter::CLI.boot(options)
          Grafter::CLI.new(options).run
        end
      end
    end
  end
end
