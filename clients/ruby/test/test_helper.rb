# frozen_string_literal: true

# The gem's tests run against a real `grafter serve`: the binary in
# GRAFTER_BIN (the Rust test crates/grafter-cli/tests/ruby_gem.rs passes the
# one it built), each server on a SQLite file in a temp dir and a free
# loopback port, killed when the tests end however they end.
#
#   cd clients/ruby && GRAFTER_BIN=/path/to/grafter ruby -Ilib -Itest test/run.rb

$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))

require "minitest/autorun"
require "fileutils"
require "json"
require "logger"
require "net/http"
require "socket"
require "stringio"
require "tmpdir"
require "grafter"

module GrafterTest
  BIN = ENV.fetch("GRAFTER_BIN", "/work/main/target/release/grafter")
  PATIENCE = 20

  # Fast maintenance and a short deterministic backoff, as the Rust process
  # tests use.
  FAST_CONFIG = <<~TOML
    [retry]
    base_ms = 100
    max_ms = 200
    jitter = 0.0

    [maintenance]
    schedule_interval_ms = 100
    rescue_interval_ms = 100
    expire_interval_ms = 100
    leader_ttl_ms = 1000

    # The push endpoints under test listen on loopback, which pushes may
    # not reach unless allowed.
    [push]
    allow_private = true
  TOML

  def self.free_port
    server = TCPServer.new("127.0.0.1", 0)
    server.addr[1]
  ensure
    server&.close
  end

  def self.wait_until(timeout = PATIENCE, interval: 0.05, message: "condition")
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    loop do
      value = yield
      return value if value
      raise Minitest::Assertion, "#{message} not met within #{timeout} s" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

      sleep interval
    end
  end

  # A `grafter serve` child process.
  class Server
    ALL = []

    attr_reader :dir, :port, :token

    def self.start(token: nil, port: nil)
      server = new(Dir.mktmpdir("grafter-ruby-"), token: token)
      server.start(port || GrafterTest.free_port)
      server
    end

    def initialize(dir, token:)
      @dir = dir
      @token = token
      @starts = 0
      File.write(File.join(dir, "grafter.toml"), FAST_CONFIG)
      ALL << self
    end

    def url
      "http://127.0.0.1:#{@port}"
    end

    def client(**options)
      Grafter::Client.new(url: url, token: @token, **options)
    end

    # Starts on `port` (again, after a kill: same file, same address).
    def start(port)
      raise "GRAFTER_BIN=#{BIN} is not an executable grafter binary" unless File.executable?(BIN)

      @port = port
      @starts += 1
      log = File.join(@dir, "server-#{@starts}.log")
      env = ENV.to_h.select { |key, _| key.start_with?("GRAFTER_") }.transform_values { nil }
      args = [BIN, "serve", "--database", "sqlite://#{File.join(@dir, 'jobs.db')}", "--listen", "127.0.0.1:#{port}",
              "--config", File.join(@dir, "grafter.toml")]
      args += ["--token", @token] if @token
      @pid = Process.spawn(env, *args, out: File::NULL, err: log, in: File::NULL)
      GrafterTest.wait_until(message: "grafter serve ready on #{url} (log: #{log})") do
        raise "grafter serve exited early; its log:\n#{File.read(log)}" if Process.wait(@pid, Process::WNOHANG)

        ready?
      end
      self
    end

    def ready?
      Net::HTTP.get_response(URI("#{url}/readyz")).is_a?(Net::HTTPSuccess)
    rescue SystemCallError, IOError, Net::ReadTimeout, Net::OpenTimeout
      false
    end

    # SIGKILL: a crash, no chance to clean up.
    def kill
      return unless @pid

      Process.kill("KILL", @pid)
      Process.wait(@pid)
      @pid = nil
    rescue Errno::ESRCH, Errno::ECHILD
      @pid = nil
    end

    def restart
      kill
      start(@port)
    end

    def cleanup
      kill
      FileUtils.rm_rf(@dir)
    end
  end

  # Minitest runs the tests in its own at_exit hook: an at_exit added here
  # would run before them. After the run, every server goes.
  Minitest.after_run { Server::ALL.each(&:cleanup) }

  # One server for the tests that need nothing special; each test uses
  # queues of its own.
  def self.shared
    @shared ||= Server.start
  end

  # A logger whose output a test can read.
  def self.logger(io = StringIO.new)
    Logger.new(io, level: Logger::INFO)
  end

  # Helpers mixed into every test class.
  module Helpers
    def server
      GrafterTest.shared
    end

    def client
      @client ||= server.client
    end

    def unique(name)
      "#{name}-#{Process.pid}-#{rand(1 << 30)}"
    end

    def wait_until(timeout = PATIENCE, message: "condition", &block)
      GrafterTest.wait_until(timeout, message: message, &block)
    end

    def wait_state(id, states, client: self.client, timeout: PATIENCE)
      states = Array(states)
      job = nil
      wait_until(timeout, message: "job #{id} in #{states.join('/')}") do
        job = client.job(id)
        states.include?(job["state"])
      end
      job
    rescue Minitest::Assertion
      raise Minitest::Assertion, "job #{id} never reached #{states.join('/')}: #{job.inspect}"
    end

    # Queue#pop(timeout:) is Ruby 3.2's: this is the same on 3.1.
    def pop_within(queue, seconds)
      wait_until(seconds, message: "a value in the queue") { !queue.empty? }
      queue.pop
    end

    # A worker on `queue` for the block's length; stopped (and its threads
    # ended) even when the block fails.
    def with_worker(queue, client: self.client, **options)
      log = StringIO.new
      # A short long-poll: stopping lets the fetch in flight finish.
      worker = Grafter::Worker.new(queues: [queue], client: client, concurrency: 2, heartbeat_interval: 0.3,
                                   wait_ms: 500, shutdown_timeout: 2, logger: GrafterTest.logger(log), **options)
      worker.start
      yield worker, log
    ensure
      worker&.stop(options.fetch(:shutdown_timeout, 2)) unless worker&.stopping?
    end
  end
end

Minitest::Test.include(GrafterTest::Helpers)
