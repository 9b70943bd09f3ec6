# frozen_string_literal: true

# Runs the whole minitest suite in one process (one shared grafter serve):
#   cd clients/ruby && GRAFTER_BIN=/path/to/grafter ruby -Ilib -Itest test/run.rb
Dir[File.join(__dir__, "*_test.rb")].sort.each { |file| require File.expand_path(file) }
