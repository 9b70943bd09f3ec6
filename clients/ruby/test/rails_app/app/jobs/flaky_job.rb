# Seed 000: fails its first attempt (an unrescued error: Grafter records it and
# retries with its backoff), succeeds on the next.
class FlakyJob < ApplicationJob
  queue_as :pushed

  class FirstAttemptError < StandardError; end

  def perform
    raise FirstAttemptError, "attempt #{grafter_attempt} fails on purpose" if grafter_attempt == 1

    {"recovered_on_attempt" => grafter_attempt}
  end
end
