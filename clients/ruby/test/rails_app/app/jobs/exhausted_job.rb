# Seed 000: retry_on as Rails documents it: 3 executions in all, then the
# error is final and the Grafter job dead.
class ExhaustedJob < ApplicationJob
  queue_as :pushed

  class StillBrokenError < StandardError; end
  retry_on StillBrokenError, attempts: 3, wait: 0

  def perform
    raise StillBrokenError, "attempt #{grafter_attempt} fails too"
  end
end
