# frozen_string_literal: true

require_relative "test_helper"

# The client's HTTP/1.1 connection against answers a proxy in front of
# Grafter may send (chunked, no length, closing), and against peers that
# stall or close: a loopback server that answers each request with the next
# canned answer, as raw bytes.
class ConnectionTest < Minitest::Test
  JSON_OK = %(HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"id": 42}\n)

  def test_chunked_answers_and_answers_without_a_length_are_read_whole
    answers = [
      "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{\"id\r\n6\r\n\": 7}\n\r\n0\r\nx-trailer: 1\r\n\r\n",
      JSON_OK,
      "HTTP/1.1 201 Created\r\nconnection: close\r\n\r\n{\"id\": 9}"
    ]
    with_canned(answers) do |url, requests|
      client = Grafter::Client.new(url: url)
      assert_equal({ "id" => 7 }, client.job(7))
      assert_equal({ "id" => 42 }, client.job(42), "the same connection, after a chunked answer")
      assert_equal({ "id" => 9 }, client.enqueue(kind: "k"), "a body that ends when the server closes")
      assert_equal 1, requests.map { |r| r[:connection] }.uniq.size
      assert_match(%r{\APOST /v1/jobs HTTP/1.1\r\n}, requests.last[:head])
      assert_includes requests.last[:head], "Content-Length: #{requests.last[:body].bytesize}\r\n"
      assert_equal({ "kind" => "k" }, JSON.parse(requests.last[:body]))
    end
  end

  def test_an_error_answer_keeps_its_code_field_and_retry_after
    body = '{"error":{"code":"unavailable","message":"the store is down"}}'
    answer = "HTTP/1.1 503 Service Unavailable\r\nretry-after: 3\r\ncontent-length: #{body.bytesize}\r\n\r\n#{body}"
    with_canned([answer]) do |url, _|
      error = assert_raises(Grafter::ApiError) { Grafter::Client.new(url: url).enqueue(kind: "k") }
      assert_equal [503, "unavailable", 3], [error.status, error.code, error.retry_after]
      assert error.unavailable?
      assert_equal "POST /v1/jobs: 503 unavailable: the store is down", error.message
    end
  end

  def test_a_server_that_does_not_answer_is_a_connection_error_within_the_read_timeout
    with_canned([:stall]) do |url, _|
      client = Grafter::Client.new(url: url, read_timeout: 0.3)
      started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      error = assert_raises(Grafter::ConnectionError) { client.enqueue(kind: "k") }
      assert_match(/no answer to POST \/v1\/jobs within 0.3 s/, error.message)
      assert_in_delta 0.3, Process.clock_gettime(Process::CLOCK_MONOTONIC) - started, 0.25
    end
  end

  def test_garbage_is_a_connection_error_and_the_next_call_opens_a_new_connection
    with_canned(["SSH-2.0-OpenSSH_9.2\r\n\r\n", JSON_OK]) do |url, requests|
      client = Grafter::Client.new(url: url)
      error = assert_raises(Grafter::ConnectionError) { client.enqueue(kind: "k") }
      assert_match(/not an HTTP\/1.1 answer/, error.message)
      assert_equal({ "id" => 42 }, client.enqueue(kind: "k"))
      assert_equal 2, requests.map { |r| r[:connection] }.uniq.size
    end
  end

  def test_a_connection_the_server_closed_while_idle_is_replaced_before_an_enqueue
    with_canned([JSON_OK, :close, JSON_OK]) do |url, requests|
      client = Grafter::Client.new(url: url)
      client.job(1)
      # The server closes the idle connection (as after its idle timeout).
      GrafterTest.wait_until(5, message: "the server closed the connection") { requests.size == 2 }
      sleep 0.05
      assert_equal({ "id" => 42 }, client.enqueue(kind: "k"), "not failed: it was never sent on the closed one")
      assert_equal 2, requests.reject { |r| r[:head].nil? }.map { |r| r[:connection] }.uniq.size
    end
  end

  def test_retry_after_as_an_http_date_is_seconds_from_now
    error = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nretry-after: %s\r\n\r\n"
    answers = [format(error, (Time.now + 30).httpdate), format(error, (Time.now - 30).httpdate), format(error, "soon")]
    with_canned(answers) do |url, _|
      client = Grafter::Client.new(url: url)
      retry_afters = Array.new(3) { assert_raises(Grafter::ApiError) { client.enqueue(kind: "k") }.retry_after }
      assert_includes 28..30, retry_afters[0]
      assert_equal [0, nil], retry_afters[1..]
    end
  end

  def test_a_malformed_or_oversized_answer_is_a_connection_error
    answers = ["HTTP/1.1 200 OK\r\ncontent-length: -5\r\n\r\n{}",
               "HTTP/1.1 200 OK\r\ncontent-length: #{Grafter::Connection::MAX_BODY + 1}\r\n\r\n{}",
               "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n#{' ' * (Grafter::Connection::MAX_BODY + 1)}"]
    with_canned(answers) do |url, _|
      client = Grafter::Client.new(url: url)
      [/malformed Content-Length: "-5"/, /over 67108864 bytes/, /over 67108864 bytes/].each do |message|
        assert_match(message, assert_raises(Grafter::ConnectionError) { client.enqueue(kind: "k") }.message)
      end
    end
  end

  def test_a_server_trickling_its_answer_is_cut_off_at_the_read_timeout
    trickle = lambda do |socket|
      socket.write("HTTP/1.1 200 OK\r\n")
      # For 3 s, then silence: a client reading with a timeout per read
      # fails the test rather than hanging it.
      30.times do
        sleep 0.1
        socket.write("x-slow: 1\r\n")
      end
    end
    with_canned([trickle]) do |url, _|
      client = Grafter::Client.new(url: url, read_timeout: 0.5)
      started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      error = assert_raises(Grafter::ConnectionError) { client.enqueue(kind: "k") }
      assert_match(/no answer to POST \/v1\/jobs within 0.5 s/, error.message)
      assert_in_delta 0.5, Process.clock_gettime(Process::CLOCK_MONOTONIC) - started, 0.3
    end
  end

  # A forked process used to go on with its parent's keep-alive connection:
  # both wrote into one socket and read each other's answers.
  def test_a_forked_process_opens_a_connection_of_its_own
    with_answering do |url, connections|
      client = Grafter::Client.new(url: url)
      assert_equal({ "id" => 42 }, client.job(1))
      pid = fork do
        answer = client.job(2)
        # exit!: the child runs no at_exit hook (minitest's would run the tests).
        exit!(answer == { "id" => 42 } ? 0 : 1)
      end
      assert Process.wait2(pid).last.success?, "the child got its answer"
      assert_equal 2, connections.size, "the child opened its own connection"
      assert_equal({ "id" => 42 }, client.job(3), "the parent's still works")
      assert_equal 2, connections.size
    end
  end

  private

  # A loopback server answering every request of every connection (each on
  # a thread of its own) with JSON_OK. Yields its URL and a Queue of the
  # connections it accepted.
  def with_answering
    server = TCPServer.new("127.0.0.1", 0)
    connections = Queue.new
    thread = Thread.new do
      loop do
        socket = server.accept
        connections << socket
        Thread.new(socket) do |peer|
          while (head = peer.gets("\r\n\r\n"))
            peer.read(head[/^content-length: *(\d+)/i, 1].to_i)
            peer.write(JSON_OK)
          end
        rescue IOError, SystemCallError
          nil
        end
      end
    rescue IOError, SystemCallError
      nil
    end
    yield "http://127.0.0.1:#{server.addr[1]}", connections
  ensure
    thread&.kill
    server&.close
    connections&.size&.times { connections.pop.close }
  end

  # A loopback server answering each request with the next of `answers`:
  # a String (sent as is), a Proc (called with the socket), :stall
  # (nothing), or :close (closes the connection without reading, before the
  # next request). Yields its URL and the requests it read ({connection:,
  # head:, body:}).
  def with_canned(answers)
    server = TCPServer.new("127.0.0.1", 0)
    requests = []
    thread = Thread.new do
      connection = 0
      until answers.empty?
        socket = server.accept
        connection += 1
        serve(socket, connection, answers, requests)
      end
    rescue IOError, SystemCallError
      nil
    end
    yield "http://127.0.0.1:#{server.addr[1]}", requests
  ensure
    thread&.kill
    server&.close
  end

  def serve(socket, connection, answers, requests)
    until answers.empty?
      if answers.first == :close
        answers.shift
        requests << { connection: connection, head: nil }
        socket.close
        return
      end
      head = socket.gets("\r\n\r\n") or return
      length = head[/^content-length: *(\d+)/i, 1].to_i
      requests << { connection: connection, head: head, body: socket.read(length) }
      answer = answers.shift
      next if answer == :stall
      next answer.call(socket) if answer.is_a?(Proc)

      socket.write(answer)
      return if answer.include?("connection: close")
    end
    sleep 5 # hold the connection open while the test looks at it
  ensure
    socket.close unless socket.closed?
  end
end
