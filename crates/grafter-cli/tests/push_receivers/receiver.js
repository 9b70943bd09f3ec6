// Test receiver for push queues: loads the JavaScript snippet from
// docs/push.md, checks every request Grafter pushes with it (both signature
// schemes, each with both secrets of a rotation), and answers 200 with what
// it found (the job's result) or 500 saying which check failed.
//
// Usage: node receiver.js SNIPPET_FILE NEW_SECRET OLD_SECRET. Prints its
// port, then serves.
const fs = require("node:fs");
const http = require("node:http");

const [snippetPath, newSecret, oldSecret] = process.argv.slice(2);
const snippet = fs.readFileSync(snippetPath, "utf8");
const [verify, verifyStandard] = new Function(
  "require",
  `${snippet}\nreturn [verifyGrafterSignature, verifyStandardWebhook];`,
)(require);

// The example published with the Standard Webhooks spec.
const SPEC = ["msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="];

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (chunk) => chunks.push(chunk));
  req.on("end", () => {
    const body = Buffer.concat(chunks);
    const changed = Buffer.concat([body, Buffer.from(" ")]);
    const header = req.headers["grafter-signature"];
    const standard = [req.headers["webhook-id"], req.headers["webhook-timestamp"], req.headers["webhook-signature"]];
    const later = { now: Date.now() / 1000 + 301 };
    const checks = {
      "accepts Grafter's request with the new secret": verify(header, body, newSecret),
      "accepts Grafter's request with the old secret": verify(header, body, oldSecret),
      "rejects a changed body": !verify(header, changed, newSecret),
      "rejects a wrong secret": !verify(header, body, "not-the-secret-0000"),
      "rejects a stale timestamp": !verify(header, body, newSecret, later),
      "rejects a missing header": !verify(undefined, body, newSecret),
      "standard: accepts the new secret": verifyStandard(...standard, body, newSecret),
      "standard: accepts the old secret": verifyStandard(...standard, body, oldSecret),
      "standard: rejects a changed body": !verifyStandard(...standard, changed, newSecret),
      "standard: rejects a wrong secret": !verifyStandard(...standard, body, "not-the-secret-0000"),
      "standard: rejects a stale timestamp": !verifyStandard(...standard, body, newSecret, later),
      "standard: rejects missing headers": !verifyStandard(undefined, undefined, undefined, body, newSecret),
      "standard: the spec's example": verifyStandard(...SPEC, Buffer.from('{"test": 2432232314}'),
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", { now: 1614265330 }),
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
