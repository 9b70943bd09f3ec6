# No bundler: the app runs on the Ruby libraries Debian installs (ruby-rails,
# puma) and on the grafter gem straight from this repository, so it boots on a
# machine without network access to rubygems.org.
$LOAD_PATH.unshift File.expand_path("../../../lib", __dir__)
