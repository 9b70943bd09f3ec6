# frozen_string_literal: true

module Grafter
  VERSION = "0.1.0"
end
