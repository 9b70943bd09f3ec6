# frozen_string_literal: true

require "openssl"

module Grafter
  # The signatures of push requests (docs/push.md). Grafter-Signature:
  # `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`, one
  # `v1=` per secret the server signs with (secret rotation). Standard
  # Webhooks: `webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<t>.<raw
  # body>")>`, space-separated, where a `whsec_` secret's key is its base64
  # decoded and any other secret's key is its own bytes.
  module Signature
    module_function

    # The header Grafter would send for `body` signed with each of `secrets`.
    def sign(body, secrets, now: Time.now.to_i)
      timestamp = Integer(now)
      signatures = Array(secrets).map { |secret| "v1=#{digest(secret, timestamp, body)}" }
      "t=#{timestamp},#{signatures.join(',')}"
    end

    # True when `header` signs the raw `body` with any of `secrets` and its
    # timestamp is within `tolerance` seconds of `now`.
    def verify(header, body, secrets, tolerance: 300, now: Time.now.to_i)
      !verified_at(header, body, secrets, tolerance: tolerance, now: now).nil?
    end

    # The timestamp (unix seconds) `header` signs the raw `body` at, when it
    # signs it with any of `secrets` and the timestamp is within `tolerance`
    # seconds of `now`; else nil. The timestamp and the body are all a
    # signature covers: what identifies a signed request. Each comparison
    # takes the same time wherever the strings differ.
    def verified_at(header, body, secrets, tolerance: 300, now: Time.now.to_i)
      pairs = header.to_s.split(",").map { |part| part.strip.split("=", 2) }
      timestamps = pairs.select { |key, _| key == "t" }.map(&:last)
      return nil unless timestamps.size == 1 && timestamps.first.to_s.match?(/\A\d{1,15}\z/)

      timestamp = timestamps.first.to_i
      return nil if (Integer(now) - timestamp).abs > tolerance

      presented = pairs.select { |key, value| key == "v1" && value&.match?(/\A[0-9a-f]{64}\z/) }.map(&:last)
      signed = Array(secrets).any? do |secret|
        # Anyone can sign with an empty key: it proves nothing.
        next false if secret.to_s.empty?

        expected = digest(secret, timestamp, body)
        presented.any? { |value| OpenSSL.fixed_length_secure_compare(expected, value) }
      end
      timestamp if signed
    end

    # The webhook-signature value Grafter would send for `body` as message `id`.
    def sign_standard(id, body, secrets, now: Time.now.to_i)
      Array(secrets).map { |secret| "v1,#{standard_digest(secret, id, Integer(now), body)}" }.join(" ")
    end

    # True when `signatures` (webhook-signature) signs `id` (webhook-id),
    # `timestamp` (webhook-timestamp) and the raw `body` with any of
    # `secrets`, and the timestamp is within `tolerance` seconds of `now`.
    def verify_standard(id, timestamp, signatures, body, secrets, tolerance: 300, now: Time.now.to_i)
      !verified_standard_at(id, timestamp, signatures, body, secrets, tolerance: tolerance, now: now).nil?
    end

    # The timestamp (unix seconds) when #verify_standard would be true, else nil.
    def verified_standard_at(id, timestamp, signatures, body, secrets, tolerance: 300, now: Time.now.to_i)
      return nil if id.to_s.empty? || !timestamp.to_s.match?(/\A\d{1,15}\z/)
      return nil if (Integer(now) - timestamp.to_i).abs > tolerance

      presented = signatures.to_s.split(" ").select { |value| value.start_with?("v1,") }.map { |value| value[3..] }
      signed = Array(secrets).any? do |secret|
        # Anyone can sign with an empty key (e.g. "whsec_" alone): it proves nothing.
        next false if standard_key(secret).empty?

        expected = standard_digest(secret, id, timestamp.to_i, body)
        presented.any? { |value| OpenSSL.secure_compare(expected, value) }
      end
      timestamp.to_i if signed
    end

    def standard_digest(secret, id, timestamp, body)
      [OpenSSL::HMAC.digest("SHA256", standard_key(secret), "#{id}.#{timestamp}.".b + body.to_s.b)].pack("m0")
    end

    # The Standard Webhooks key of a secret: a `whsec_` secret's base64
    # decoded (strictly, as the server does; "" when it is not base64), any
    # other secret's own bytes.
    def standard_key(secret)
      secret = secret.to_s
      return secret unless secret.start_with?("whsec_")

      secret.delete_prefix("whsec_").unpack1("m0")
    rescue ArgumentError
      ""
    end

    def digest(secret, timestamp, body)
      OpenSSL::HMAC.hexdigest("SHA256", secret.to_s, "#{timestamp}.".b + body.to_s.b)
    end
  end
end
