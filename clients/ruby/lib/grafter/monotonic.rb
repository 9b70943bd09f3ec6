# frozen_string_literal: true

module Grafter
  # Deadlines and durations on the monotonic clock, which a wall-clock change
  # (NTP, a manual set) cannot move.
  module Monotonic
    private

    def monotonic
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end
  end
end
