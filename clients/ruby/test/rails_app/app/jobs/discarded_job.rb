# Seed 000: discard_on ends the job without making it dead.
class DiscardedJob < ApplicationJob
  queue_as :pushed

  class UnwantedError < StandardError; end
  discard_on UnwantedError

  def perform
    raise UnwantedError, "nothing to do any more"
  end
end
