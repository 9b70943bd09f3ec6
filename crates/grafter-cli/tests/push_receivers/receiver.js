// Test receiver for push queues: loads the JavaScript snippet from
// docs/push.md, checks every request Grafter pushes with it, and answers 200
// with what it found (the job's result) or 500 saying which check failed.
//
// Usage: node receiver.js SNIPPET_FILE SECRET. Prints its port, then serves.
const fs = require("node:fs");
const http = require("node:http");

const [snippetPath, secret] = process.argv.slice(2);
const snippet = fs.readFileSync(snippetPath, "utf8");
const verify = new Function("require", `${snippet}\nreturn verifyGrafterSignature;`)(require);

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (chunk) => chunks.push(chunk));
  req.on("end", () => {
    const body = Buffer.concat(chunks);
    const header = req.headers["grafter-signature"];
    const checks = {
      "accepts Grafter's request": verify(header, body, secret),
      "rejects a changed body": !verify(header, Buffer.concat([body, Buffer.from(" ")]), secret),
      "rejects a wrong secret": !verify(header, body, "not-the-secret-0000"),
      "rejects a stale timestamp": !verify(header, body, secret, { now: Date.now() / 1000 + 301 }),
      "rejects a missing header": !verify(undefined, body, secret),
    };
    const failed = Object.entries(checks).filter(([, ok]) => !ok).map(([name]) => name);
    if (failed.length > 0) {
      res.writeHead(500, { "Content-Type": "text/plain" });
      res.end(`javascript snippet failed: ${failed.join(", ")}`);
      return;
    }
    const job = JSON.parse(body.toString("utf8"));
    res.writeHead(200, { "Content-Type": "application/json" });
    res.end(JSON.stringify({ lang: "javascript", verified: true, args: job.args }));
  });
});

server.listen(0, "127.0.0.1", () => {
  process.stdout.write(`${server.address().port}\n`);
});
