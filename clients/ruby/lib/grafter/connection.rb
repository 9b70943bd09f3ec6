# frozen_string_literal: true

require "io/wait"
require "openssl"
require "socket"

require_relative "monotonic"

module Grafter
  # One keep-alive HTTP/1.1 connection to a Grafter server, used by one
  # thread at a time (Client keeps one per thread).
  #
  # Why not Net::HTTP: a request here is a few hundred bytes each way, and
  # Net::HTTP's generality (header objects, line-by-line reads through its
  # buffer, content decoding, a response class per status) cost the
  # enqueueing process more CPU than the whole rest of a `perform_later`
  # (docs/benchmarks.md). This writes a request in one write and reads the
  # answer in as few reads as it arrives in, with the same deadlines:
  # connect within `open_timeout`, each write within the request's timeout,
  # and the whole answer within it too (a peer trickling bytes cannot hold
  # a call past it).
  #
  # Answers have a Content-Length (as the server sends them), are chunked, or
  # end when the connection closes (as a proxy in front may send them).
  class Connection
    include Monotonic

    # The connection could not be opened within the open timeout.
    class OpenTimeout < StandardError; end

    # No byte could be written, or the whole answer read, within the
    # request's timeout.
    class ReadTimeout < StandardError; end

    # The server's answer is not HTTP/1.x as this client reads it.
    class BadResponse < StandardError; end

    # An answer: its status, its headers (names in lower case) and its body
    # (tagged UTF-8: the API speaks JSON).
    Response = Struct.new(:status, :reason, :headers, :body) do
      def success?
        status.between?(200, 299)
      end
    end

    READ_SIZE = 16_384
    HEADER_END = "\r\n\r\n"
    # The largest status line and headers accepted, so a peer that is not an
    # HTTP server cannot make this read forever into memory.
    MAX_HEAD = 65_536
    # The largest body accepted, for the same reason. The server's largest
    # answers (a job with 1 MiB of args and as much result, a page of jobs
    # whose args are cut at 1 KiB) are far below it.
    MAX_BODY = 64 * 1024 * 1024

    def initialize(uri, open_timeout:, write_timeout:)
      @write_timeout = write_timeout
      @pid = Process.pid
      @socket = open(uri, open_timeout)
      @buffer = String.new(capacity: READ_SIZE, encoding: Encoding::BINARY)
      @chunk = String.new(capacity: READ_SIZE, encoding: Encoding::BINARY)
      @last_used = monotonic
      @busy = false
    end

    # Sends `head` (the request line and headers, ending in a blank line) and
    # `body`, and reads the whole answer within `read_timeout` seconds. A
    # request that did not finish (an error, or an exception raised into this
    # thread) leaves the connection closed: its bytes would be read as the
    # next answer.
    def request(head, body, read_timeout)
      raise IOError, "the connection is closed" if closed?

      @busy = true
      sent = write(body ? head + body : head)
      response = read_response(monotonic + read_timeout)
      @last_used = monotonic
      @busy = false
      close if !sent || response.headers["connection"]&.casecmp?("close")
      response
    ensure
      close if @busy
    end

    # Seconds since the last answer (or the opening).
    def idle_seconds
      monotonic - @last_used
    end

    def closed?
      @socket.closed?
    end

    # Whether another process opened it, and this one got it by forking:
    # both would write requests into the one socket and read each other's
    # answers. Such a connection is never used, only let go (#close).
    def inherited?
      @pid != Process.pid
    end

    # Whether the connection can no longer carry a request: closed, or the
    # server closed its end while it was idle (anything readable between
    # answers is that, or stray bytes; for TLS it may also be a session
    # ticket, which reads as nothing).
    def stale?
      return true if closed?
      return false unless @socket.to_io.wait_readable(0)

      !%i[wait_readable wait_writable].include?(@socket.read_nonblock(1, exception: false))
    rescue IOError, SystemCallError, OpenSSL::SSL::SSLError
      true
    end

    # Closes the connection; one #inherited? only in this process (its
    # descriptor here), without a TLS close_notify, which would end the
    # session of the process that still uses it.
    def close
      @busy = false
      socket = inherited? ? @socket.to_io : @socket
      socket.close unless socket.closed?
    rescue IOError, SystemCallError, OpenSSL::SSL::SSLError
      nil
    end

    private

    def open(uri, open_timeout)
      socket = Socket.tcp(uri.hostname, uri.port, connect_timeout: open_timeout)
      socket.setsockopt(Socket::IPPROTO_TCP, Socket::TCP_NODELAY, 1)
      return socket unless uri.scheme == "https"

      tls = OpenSSL::SSL::SSLSocket.new(socket, tls_context)
      tls.hostname = uri.hostname
      tls.sync_close = true
      handshake(tls, open_timeout)
      tls
    rescue Errno::ETIMEDOUT
      socket&.close
      raise OpenTimeout
    end

    def tls_context
      context = OpenSSL::SSL::SSLContext.new
      context.set_params(verify_mode: OpenSSL::SSL::VERIFY_PEER)
      context
    end

    def handshake(tls, timeout)
      loop do
        case tls.connect_nonblock(exception: false)
        when :wait_readable then tls.to_io.wait_readable(timeout) or raise Errno::ETIMEDOUT
        when :wait_writable then tls.to_io.wait_writable(timeout) or raise Errno::ETIMEDOUT
        else break
        end
      end
      tls.post_connection_check(tls.hostname)
    end

    # Writes the request. A server that refuses a request before reading all
    # of it (413 for a body over its limit) answers and closes: the write
    # then breaks, and the answer already sent is what counts, if it came.
    def write(data)
      until data.empty?
        written = @socket.write_nonblock(data, exception: false)
        case written
        when :wait_writable then wait(:wait_writable, @write_timeout)
        when :wait_readable then wait(:wait_readable, @write_timeout)
        else data = data.byteslice(written, data.bytesize - written)
        end
      end
      true
    rescue Errno::EPIPE, Errno::ECONNRESET
      @socket.to_io.wait_readable(0) ? false : raise
    end

    def read_response(deadline)
      @buffer.clear
      until (head_end = @buffer.index(HEADER_END))
        raise BadResponse, "the answer's headers are over #{MAX_HEAD} bytes" if @buffer.bytesize > MAX_HEAD

        fill(deadline) or raise EOFError, "the server closed the connection"
      end
      status, reason, headers = parse_head(@buffer.slice!(0, head_end + HEADER_END.bytesize))
      body = read_body(status, headers, deadline).force_encoding(Encoding::UTF_8)
      Response.new(status, reason, headers, body)
    end

    def parse_head(head)
      status_line, *lines = head.split("\r\n")
      match = %r{\AHTTP/1\.[01] (\d{3})(?: (.*))?\z}.match(status_line)
      raise BadResponse, "not an HTTP/1.1 answer: #{status_line.to_s[0, 80].inspect}" unless match

      headers = {}
      lines.each do |line|
        name, value = line.split(":", 2)
        raise BadResponse, "a malformed header line: #{line[0, 80].inspect}" unless value

        headers[name.downcase] = value.strip
      end
      [Integer(match[1], 10), match[2].to_s, headers]
    end

    def read_body(status, headers, deadline)
      if status < 200 || status == 204 || status == 304
        String.new
      elsif (length = headers["content-length"])
        read_length(content_length(length), deadline)
      elsif headers["transfer-encoding"]&.downcase&.end_with?("chunked")
        read_chunked(deadline)
      else
        # No length: the body is what comes until the server closes.
        while fill(deadline)
          raise BadResponse, "the answer is over #{MAX_BODY} bytes" if @buffer.bytesize > MAX_BODY
        end
        headers["connection"] = "close"
        @buffer.slice!(0, @buffer.bytesize)
      end
    end

    def content_length(value)
      length = Integer(value, 10)
      raise BadResponse, "a malformed Content-Length: #{value.inspect}" if length.negative?
      raise BadResponse, "the answer is over #{MAX_BODY} bytes (Content-Length: #{length})" if length > MAX_BODY

      length
    rescue ArgumentError
      raise BadResponse, "a malformed Content-Length: #{value.inspect}"
    end

    def read_length(length, deadline)
      fill(deadline) or raise EOFError, "the answer ended early" while @buffer.bytesize < length
      @buffer.slice!(0, length)
    end

    def read_chunked(deadline)
      body = String.new(encoding: Encoding::BINARY)
      loop do
        line = read_line(deadline)
        size = Integer(line[/\A\h+/] || raise(BadResponse, "a malformed chunk size"), 16)
        if size.zero?
          nil until read_line(deadline).empty? # trailers, then the blank line
          return body
        end
        raise BadResponse, "the answer is over #{MAX_BODY} bytes" if body.bytesize + size > MAX_BODY

        body << read_length(size + 2, deadline).byteslice(0, size)
      end
    end

    def read_line(deadline)
      until (eol = @buffer.index("\r\n"))
        raise BadResponse, "a line of the answer is over #{MAX_HEAD} bytes" if @buffer.bytesize > MAX_HEAD

        fill(deadline) or raise EOFError, "the answer ended early"
      end
      @buffer.slice!(0, eol + 2).chomp("\r\n")
    end

    # Reads what has arrived into the buffer, waiting until `deadline` (a
    # monotonic time) at most for something; false at the end of the
    # stream. It waits before reading: an answer is rarely there already,
    # and a read that finds nothing costs as much as one that finds it.
    def fill(deadline)
      loop do
        wait(:wait_readable, deadline - monotonic) unless buffered?
        case (read = @socket.read_nonblock(READ_SIZE, @chunk, exception: false))
        when :wait_readable then next
        when :wait_writable then wait(:wait_writable, deadline - monotonic)
        when nil then return false
        else
          @buffer << read
          return true
        end
      end
    end

    # Whether TLS holds decrypted bytes the socket will not signal.
    def buffered?
      @socket.is_a?(OpenSSL::SSL::SSLSocket) && @socket.pending.positive?
    end

    def wait(direction, timeout)
      raise ReadTimeout unless timeout.positive?

      @socket.to_io.public_send(direction, timeout) or raise ReadTimeout
    end
  end
end
