# frozen_string_literal: true

require "optparse"

module Grafter
  # `grafter-worker`: options, booting the app, signals.
  #
  # Every option also reads an environment variable (flags win), so the rake
  # task `grafter:work` and container setups need no flags.
  class CLI
    Options = Struct.new(:queues, :concurrency, :requires, :identifier, :health_port, :health_host,
                         :shutdown_timeout, :lease_ms, :wait_ms, :prefetch, :url, :app_root, keyword_init: true)

    def self.parse(argv, env = ENV)
      options = Options.new(
        queues: env.fetch("GRAFTER_QUEUES", "default").split(","),
        concurrency: number(env, "GRAFTER_CONCURRENCY", 10),
        requires: [],
        identifier: env["GRAFTER_IDENTIFIER"],
        health_port: number(env, "GRAFTER_HEALTH_PORT", nil),
        health_host: env.fetch("GRAFTER_HEALTH_HOST", "127.0.0.1"),
        shutdown_timeout: number(env, "GRAFTER_SHUTDOWN_TIMEOUT", 25.0, Float),
        lease_ms: number(env, "GRAFTER_LEASE_MS", 30_000),
        wait_ms: number(env, "GRAFTER_WAIT_MS", 2000),
        prefetch: number(env, "GRAFTER_PREFETCH", nil),
        url: nil,
        app_root: Dir.pwd
      )
      parser(options).parse!(argv.dup)
      unless options.shutdown_timeout.finite? && options.shutdown_timeout >= 0
        raise ArgumentError, "--shutdown-timeout must be 0 or more seconds, got #{options.shutdown_timeout}"
      end

      options
    end

    # The variable `name` as a number (`kind` Integer or Float), or `default`
    # when it is unset; a clear error naming it otherwise.
    def self.number(env, name, default, kind = Integer)
      value = env[name]
      return default if value.nil? || value.empty?

      kind == Float ? Float(value) : Integer(value, 10)
    rescue ArgumentError
      raise ArgumentError, "#{name} must be #{kind == Float ? 'a number' : 'an integer'}, got #{value.inspect}"
    end

    def self.parser(options)
      OptionParser.new do |o|
        o.banner = "Usage: grafter-worker [options]\n\nRuns Grafter jobs (ActiveJob classes and Grafter.handle handlers).\n" \
                   "In a directory with config/environment.rb it boots the Rails app first.\n" \
                   "GRAFTER_URL and GRAFTER_TOKEN name the server.\n\n"
        o.on("-q", "--queues LIST", "queues to take jobs from, comma-separated (default: default)") do |list|
          options.queues = list.split(",")
        end
        o.on("-c", "--concurrency N", Integer, "jobs run at once, one thread each (default 10)") { |n| options.concurrency = n }
        o.on("-r", "--require FILE", "load FILE first (handlers, app code); repeatable") { |file| options.requires << file }
        o.on("-i", "--identifier NAME", "worker id in GET /v1/workers and the process title (default host:pid)") do |name|
          options.identifier = name
        end
        o.on("--health-port N", Integer, "answer GET on this port: 200 while fetching and heartbeats work, else 503") do |port|
          options.health_port = port
        end
        o.on("--health-host HOST", "address of the health port (default 127.0.0.1, this host only; " \
                                   "0.0.0.0 for every interface, e.g. in a container)") { |host| options.health_host = host }
        o.on("--shutdown-timeout SECONDS", Float,
             "on TERM/INT, how long running jobs may finish before they are handed back (default 25)") do |seconds|
          options.shutdown_timeout = seconds
        end
        o.on("--lease-ms N", Integer,
             "lease of each job, renewed by a heartbeat every third of it; a killed worker's jobs " \
             "run again when it ends (default 30000)") { |n| options.lease_ms = n }
        o.on("--wait-ms N", Integer,
             "longest a fetch waits for a job (long-poll; under 1000, an idle worker polls once a " \
             "second); a shutdown lets the one in flight finish (default 2000)") { |n| options.wait_ms = n }
        o.on("--prefetch N", Integer,
             "at most N leased jobs wait for a thread, for runs of short jobs (default: ten per thread, " \
             "fewer for longer jobs; 0: none)") do |n|
          options.prefetch = n
        end
        o.on("-u", "--url URL", "Grafter server (default GRAFTER_URL or http://127.0.0.1:7380)") { |url| options.url = url }
        o.on("-C", "--app-root DIR", "directory of the app to boot (default: the current one)") { |dir| options.app_root = dir }
        o.on("-v", "--version", "print the version") do
          puts "grafter-worker #{Grafter::VERSION}"
          exit
        end
        o.on("-h", "--help", "this help") do
          puts o
          exit
        end
      end
    end

    def self.run(argv)
      options = parse(argv)
      boot(options)
      new(options).run
    rescue OptionParser::ParseError, ArgumentError => e
      warn "grafter-worker: #{e.message} (see --help)"
      exit 64
    end

    # Loads the Rails app (when there is one) and the --require'd files.
    def self.boot(options)
      environment = File.join(options.app_root, "config", "environment.rb")
      if File.exist?(environment)
        require File.expand_path(environment)
        # Job classes are looked up by name; load them all now, as in production.
        ::Rails.application.eager_load! if defined?(::Rails) && ::Rails.application && !::Rails.application.config.eager_load
      end
      require "grafter"
      require "grafter/active_job" if defined?(::ActiveJob)
      options.requires.each do |file|
        path = File.expand_path(file)
        unless File.file?(path) || File.file?("#{path}.rb")
          raise ArgumentError, "--require #{file}: no such file (#{path})"
        end

        require path
      end
    end

    def initialize(options)
      @options = options
    end

    # Runs until TERM or INT; a second signal cuts the wait for running jobs
    # short (they are handed back at once). QUIT writes every thread's
    # backtrace to the log (as a JVM's thread dump) and changes nothing.
    def run
      require "grafter/worker"
      client = @options.url ? Grafter::Client.new(url: @options.url) : Grafter.client
      worker = Grafter::Worker.new(queues: @options.queues, concurrency: @options.concurrency, client: client,
                                   identifier: @options.identifier, health_port: @options.health_port,
                                   health_host: @options.health_host, shutdown_timeout: @options.shutdown_timeout,
                                   lease_ms: @options.lease_ms, wait_ms: @options.wait_ms, prefetch: @options.prefetch,
                                   process_title: true)
      signals = Thread::Queue.new
      %w[TERM INT QUIT].each { |name| Signal.trap(name) { signals << name } }
      begin
        worker.start
      rescue Grafter::ApiError => e
        # The server refuses the token: as a wrong password at boot, no retry helps.
        abort "grafter-worker: #{e.message}"
      end
      # A worker also stops by itself when the server refuses its token or fetch.
      Thread.new do
        worker.wait
        signals << :stopped
      end
      name = next_signal(signals)
      abort "grafter-worker: stopped: #{worker.failure.message}" if name == :stopped

      Grafter.logger.info("grafter: #{name} received; stopping (another signal hands running jobs back at once)")
      stopper = Thread.new { worker.stop(@options.shutdown_timeout) }
      until stopper.join(0.1)
        next if signals.empty?

        name = signals.pop
        next dump_threads if name == "QUIT"
        next if name == :stopped

        Grafter.logger.info("grafter: second signal; handing running jobs back now")
        worker.hand_back_now
      end
    end

    private

    # The next TERM, INT or :stopped; QUITs before it dump the threads.
    def next_signal(signals)
      loop do
        name = signals.pop
        return name unless name == "QUIT"

        dump_threads
      end
    end

    # Every thread's name, state and backtrace, to the log.
    def dump_threads
      Thread.list.each do |thread|
        lines = thread.backtrace || []
        Grafter.logger.warn("grafter: thread #{thread.name || thread.object_id} (#{thread.status || 'dead'}):\n  " \
                            "#{lines.join("\n  ")}")
      end
    end
  end
end
