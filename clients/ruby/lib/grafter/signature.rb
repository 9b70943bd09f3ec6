# frozen_string_literal: true

require "openssl"

module Grafter
  # The Grafter-Signature header of push requests (docs/push.md):
  # `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`, one
  # `v1=` per secret the server signs with (secret rotation).
  module Signature
    module_function

    # The header Grafter would send for `body` signed with each of `secrets`.
    def sign(body, secrets, now: Time.now.to_i)
      timestamp = Integer(now)
      signatures = Array(secrets).map { |secret| "v1=#{digest(secret, timestamp, body)}" }
      "t=#{timestamp},#{signatures.join(',')}"
    end

    # True when `header` signs the raw `body` with any of `secrets` and its
    # timestamp is within `tolerance` seconds of `now`. Each comparison takes
    # the same time wherever the strings differ.
    def verify(header, body, secrets, tolerance: 300, now: Time.now.to_i)
      pairs = header.to_s.split(",").map { |part| part.strip.split("=", 2) }
      timestamps = pairs.select { |key, _| key == "t" }.map(&:last)
      return false unless timestamps.size == 1 && timestamps.first.to_s.match?(/\A\d{1,15}\z/)

      timestamp = timestamps.first.to_i
      return false if (Integer(now) - timestamp).abs > tolerance

      presented = pairs.select { |key, value| key == "v1" && value&.match?(/\A[0-9a-f]{64}\z/) }.map(&:last)
      Array(secrets).any? do |secret|
        expected = digest(secret, timestamp, body)
        presented.any? { |value| OpenSSL.fixed_length_secure_compare(expected, value) }
      end
    end

    def digest(secret, timestamp, body)
      OpenSSL::HMAC.hexdigest("SHA256", secret.to_s, "#{timestamp}.".b + body.to_s.b)
    end
  end
end
