"""Test receiver for push queues: loads the Python snippet from docs/push.md,
checks every request Grafter pushes with it, and answers 200 with what it
found (the job's result) or 500 saying which check failed.

Usage: python3 receiver.py SNIPPET_FILE SECRET. Prints its port, then serves.
"""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

snippet_path, secret = sys.argv[1], sys.argv[2]
namespace = {}
with open(snippet_path, encoding="utf-8") as snippet:
    exec(snippet.read(), namespace)
verify = namespace["verify_grafter_signature"]


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        header = self.headers.get("Grafter-Signature")
        checks = {
            "accepts Grafter's request": verify(header, body, secret),
            "rejects a changed body": not verify(header, body + b" ", secret),
            "rejects a wrong secret": not verify(header, body, "not-the-secret-0000"),
            "rejects a stale timestamp": not verify(header, body, secret, now=time.time() + 301),
            "rejects a missing header": not verify(None, body, secret),
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
