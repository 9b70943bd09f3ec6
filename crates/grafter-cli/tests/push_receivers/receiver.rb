# Test receiver for push queues: loads the Ruby snippet from docs/push.md,
# checks every request Grafter pushes with it, and answers 200 with what it
# found (the job's result) or 500 saying which check failed.
#
# Usage: ruby receiver.rb SNIPPET_FILE SECRET. Prints its port, then serves.
# Plain sockets: WEBrick is no longer in Ruby's standard library.
require "json"
require "socket"

snippet_path, SECRET = ARGV
load snippet_path

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
  checks = {
    "accepts Grafter's request" => verify_grafter_signature(header, body, SECRET),
    "rejects a changed body" => !verify_grafter_signature(header, body + " ", SECRET),
    "rejects a wrong secret" => !verify_grafter_signature(header, body, "not-the-secret-0000"),
    "rejects a stale timestamp" => !verify_grafter_signature(header, body, SECRET, now: Time.now.to_i + 301),
    "rejects a missing header" => !verify_grafter_signature(nil, body, SECRET),
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
