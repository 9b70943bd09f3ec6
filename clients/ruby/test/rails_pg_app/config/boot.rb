# No bundler: Debian's ruby-rails, puma and ruby-pg, and the grafter gem
# straight from this repository.
$LOAD_PATH.unshift File.expand_path("../../../lib", __dir__)
