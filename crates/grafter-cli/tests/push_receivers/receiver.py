"""Test receiver for push queues: loads the Python snippet from docs/push.md,
checks every request Grafter pushes with it (both signature schemes, each
with both secrets of a rotation), and answers 200 with what it found (the
job's result) or 500 saying which check failed.

Usage: python3 receiver.py SNIPPET_FILE NEW_SECRET OLD_SECRET. Prints its
port, then serves.
"""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

snippet_path, new_secret, old_secret = sys.argv[1:4]
namespace = {}
with open(snippet_path, encoding="utf-8") as snippet:
    exec(snippet.read(), namespace)
verify = namespace["verify_grafter_signature"]
verify_standard = namespace["verify_standard_webhook"]

# The example published with the Standard Webhooks spec.
SPEC = ("msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        header = self.headers.get("Grafter-Signature")
        standard = (self.headers.get("webhook-id"), self.headers.get("webhook-timestamp"), self.headers.get("webhook-signature"))
        checks = {
            "accepts Grafter's request with the new secret": verify(header, body, new_secret),
            "accepts Grafter's request with the old secret": verify(header, body, old_secret),
            "rejects a changed body": not verify(header, body + b" ", new_secret),
            "rejects a wrong secret": not verify(header, body, "not-the-secret-0000"),
            "rejects a stale timestamp": not verify(header, body, new_secret, now=time.time() + 301),
            "rejects a missing header": not verify(None, body, new_secret),
            "standard: accepts the new secret": verify_standard(*standard, body, new_secret),
            "standard: accepts the old secret": verify_standard(*standard, body, old_secret),
            "standard: rejects a changed body": not verify_standard(*standard, body + b" ", new_secret),
            "standard: rejects a wrong secret": not verify_standard(*standard, body, "not-the-secret-0000"),
            "standard: rejects a stale timestamp": not verify_standard(*standard, body, new_secret, now=time.time() + 301),
            "standard: rejects missing headers": not verify_standard(None, None, None, body, new_secret),
            "standard: the spec's example": verify_standard(*SPEC, b'{"test": 2432232314}', "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", now=1614265330),
        }
        failed = [name for name, ok in checks.items() if not ok]
        job = json.loads(body)
        if failed:
            answer, status = ("python snippet failed: " + ", ".join(failed)).encode(), 500
        else:
            answer, status = json.dumps({"lang": "python", "verified": True, "args": job["args"]}).encode(), 200
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if status == 200 else "text/plain")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
