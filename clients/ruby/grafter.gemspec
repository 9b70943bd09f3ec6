# frozen_string_literal: true

require_relative "lib/grafter/version"

Gem::Specification.new do |spec|
  spec.name = "grafter"
  spec.version = Grafter::VERSION
  spec.summary = "Client, worker, ActiveJob adapter and Rack push endpoint for Grafter"
  spec.description = "Talks to a Grafter server over HTTP: enqueue and manage jobs, run them " \
                     "in a threaded worker, use Grafter as ActiveJob's queue adapter, or run " \
                     "pushed jobs inside a Rack app."
  spec.authors = ["Grafter contributors"]
  spec.license = "MIT"
  spec.required_ruby_version = ">= 3.1"
  spec.files = Dir["lib/**/*.rb", "exe/*", "README.md"]
  spec.bindir = "exe"
  spec.executables = ["grafter-worker"]
  spec.require_paths = ["lib"]
end
