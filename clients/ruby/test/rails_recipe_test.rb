# frozen_string_literal: true

require_relative "test_helper"
require "rbconfig"

# The main README's recipe for a Rails app without bundler ("Rails:
# ActiveJob on Grafter", step 1), followed on a fresh `rails new` of the
# installed Rails (Debian's 6.1): the app must boot with the :grafter
# adapter. Following the recipe as it was, bin/rails stopped on the `listen`
# gem that the generated development.rb loads.
class RailsRecipeTest < Minitest::Test
  README = File.expand_path("../../../README.md", __dir__)
  LIB = File.expand_path("../lib", __dir__)

  def test_a_fresh_rails_app_boots_without_bundler_as_the_readme_says
    rails = ENV.fetch("PATH", "").split(File::PATH_SEPARATOR).map { |dir| File.join(dir, "rails") }
               .find { |path| File.executable?(path) }
    assert rails, "no rails executable on the PATH (Debian's ruby-railties has it)"

    recipe = File.read(README)[/^## Rails: ActiveJob on Grafter$.*?^\*\*2\./m]
    ['gem "railties"', 'require "bundler/setup"', 'require "bootsnap/setup"', "Bundler.require(*Rails.groups)",
     "ActiveSupport::EventedFileUpdateChecker", "ActiveSupport::FileUpdateChecker"].each do |step|
      assert_includes recipe, step, "the README's recipe says so"
    end

    Dir.mktmpdir("grafter-rails-new-") do |dir|
      assert system(rails, "new", "app", "--skip-bundle", "--skip-git", "--skip-webpack-install", "--no-rc",
                    chdir: dir, out: File::NULL, err: File::NULL), "rails new"
      app = File.join(dir, "app")
      edit(app, "config/boot.rb") do |text|
        kept = text.lines.grep_v(%r{\Arequire "(bundler|bootsnap)/setup"}).join
        %(gem "railties"\n#{kept}$LOAD_PATH.unshift #{LIB.inspect}\n)
      end
      edit(app, "config/application.rb") do |text|
        text.sub(/^ *Bundler\.require\(\*Rails\.groups\)\n/, "")
            .sub(%(require "rails/all"\n), %(require "rails/all"\nrequire "grafter/active_job"\n))
            .sub(/^( *)config\.load_defaults.*\n/) { "#{$&}#{$1}config.active_job.queue_adapter = :grafter\n" }
      end
      edit(app, "config/environments/development.rb") do |text|
        text.sub("ActiveSupport::EventedFileUpdateChecker", "ActiveSupport::FileUpdateChecker")
      end
      output = IO.popen({ "BUNDLE_GEMFILE" => nil, "RUBYOPT" => nil, "RAILS_ENV" => nil },
                        [RbConfig.ruby, "bin/rails", "runner", "print ActiveJob::Base.queue_adapter.class"],
                        chdir: app, err: %i[child out], &:read)
      assert_equal "ActiveJob::QueueAdapters::GrafterAdapter", output.lines.last, output
    end
  end

  private

  def edit(app, file)
    path = File.join(app, file)
    File.write(path, yield(File.read(path)))
  end
end
