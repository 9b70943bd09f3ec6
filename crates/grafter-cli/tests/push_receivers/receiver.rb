# Test receiver for push queues: loads the Ruby snippet from docs/push.md,
# checks every request Grafter pushes with it (both signature schemes, each
# with both secrets of a rotation), and answers 200 with what it found (the
# job's result) or 500 saying which check failed.
#
# Usage: ruby receiver.rb SNIPPET_FILE NEW_SECRET OLD_SECRET. Prints its port,
# then serves.
# Plain sockets: WEBrick is no longer in Ruby's standard library.
require "json"
require "socket"

snippet_path, NEW_SECRET, OLD_SECRET = ARGV
load snippet_path

# The example published with the Standard Webhooks spec.
SPEC = ["msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="].freeze

def answer(client, status, type, text)
  reason = status == 200 ? "OK" : "Internal Server Error"
  client.write("HTTP/1.1 #{status} #{reason}\r\nContent-Type: #{type}\r\n" \
               "Content-Length: #{text.bytesize}\r\nConnection: close\r\n\r\n")
  client.write(text)
end

def handle(client)
  client.gets # request line
  headers = {}
  while (line = client.gets) && line != "\r\n"
    name, value = line.split(":", 2)
    headers[name.strip.downcase] = value.to_s.strip
  end
  body = client.read(headers.fetch("content-length", "0").to_i)
  header = headers["grafter-signature"]
  standard = headers.values_at("webhook-id", "webhook-timestamp", "webhook-signature")
  later = Time.now.to_i + 301
  checks = {
    "accepts Grafter's request with the new secret" => verify_grafter_signature(header, body, NEW_SECRET),
    "accepts Grafter's request with the old secret" => verify_grafter_signature(header, body, OLD_SECRET),
    "rejects a changed body" => !verify_grafter_signature(header, body + " ", NEW_SECRET),
    "rejects a wrong secret" => !verify_grafter_signature(header, body, "not-the-secret-0000"),
    "rejects a stale timestamp" => !verify_grafter_signature(header, body, NEW_SECRET, now: later),
    "rejects a missing header" => !verify_grafter_signature(nil, body, NEW_SECRET),
    "standard: accepts the new secret" => verify_standard_webhook(*standard, body, NEW_SECRET),
    "standard: accepts the old secret" => verify_standard_webhook(*standard, body, OLD_SECRET),
    "standard: rejects a changed body" => !verify_standard_webhook(*standard, body + " ", NEW_SECRET),
    "standard: rejects a wrong secret" => !verify_standard_webhook(*standard, body, "not-the-secret-0000"),
    "standard: rejects a stale timestamp" => !verify_standard_webhook(*standard, body, NEW_SECRET, now: later),
    "standard: rejects missing headers" => !verify_standard_webhook(nil, nil, nil, body, NEW_SECRET),
    "standard: the spec's example" => verify_standard_webhook(*SPEC, '{"test": 2432232314}',
                                                              "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", now: 1614265330),
  }
  failed = checks.reject { |_, ok| ok }.keys
  if failed.empty?
    job = JSON.parse(body)
    answer(client, 200, "application/json", JSON.generate({ lang: "ruby", verified: true, args: job["args"] }))
  else
    answer(client, 500, "text/plain", "ruby snippet failed: #{failed.join(", ")}")
  end
ensure
  client.close
end

server = TCPServer.new("127.0.0.1", 0)
$stdout.puts server.addr[1]
$stdout.flush
loop do
  client = server.accept
  Thread.new(client) { |c| handle(c) }
end
