"""Schemathesis hooks for the contract test (crates/grafter-cli/tests/openapi.rs).

The document is meant to be exact, so nothing here loosens a check for a
whole operation. Each rule below drops one kind of failure that the schema
cannot prevent, says why, and matches it by the server's own error (field
and message), so any other failure of the same operation still fails the run.
"""

import schemathesis

# Whole-float integers (`2.0` where an integer is due): JSON Schema counts
# them as integers and schemathesis sends them on purpose; serde refuses them
# ("invalid type: floating point"). Every client sends integers as integers;
# the server's answer is a 422 naming the field, not a crash.
WHOLE_FLOAT = "invalid type: floating point"

# Rules across fields or beyond JSON Schema, each answered 422 naming the
# field; the schema's description states each of them.
BEYOND_SCHEMA = [
    # GET /v1/jobs/{id}: `after` only with `wait` (OpenAPI has no
    # dependencies between query parameters).
    ("after", "only goes with wait"),
    # POST /v1/stream-tokens: at least one id among `jobs` and `batches`,
    # at most 100 in all.
    ("jobs", "name at least one job or batch"),
    ("jobs", "jobs and batches per token"),
    # ... and only jobs and batches that exist (the schema cannot know ids).
    ("jobs", "no job has id"),
    ("batches", "no batch has id"),
    # PUT /v1/workers/{id}: the body's id is the path's.
    ("id", "does not match the path's"),
    # A job's backoff: max_ms at least base_ms.
    ("backoff", "must be at least base_ms"),
    ("jobs[", "must be at least base_ms"),
    ("job.backoff", "must be at least base_ms"),
    ("on_", "must be at least base_ms"),
    # PUT /v1/queues/{name}: limits need concurrency or rate.
    ("limits", "give concurrency, rate or both"),
    # POST /v1/tokens: an expiry in the future (the schema cannot say "after now").
    ("expires_at", "must be in the future"),
    # A request's dependency graph (docs/dependencies.md): refs that name a
    # job of the same request, no cycle, ids of jobs that exist, no
    # unique_key beside depends_on.
    ("jobs[", "no job of this request has the ref"),
    ("depends_on", "no job of this request has the ref"),
    ("jobs[", "is the ref of an earlier job"),
    ("jobs[", "cannot depend on itself"),
    ("depends_on", "cannot depend on itself"),
    ("jobs[", "(a cycle)"),
    ("jobs[", "does not exist"),
    ("depends_on", "does not exist"),
    ("jobs[", "cannot have a unique_key"),
    # ... and batches that exist, are sealed and are not the job's own.
    ("jobs[", "is open: seal it first"),
    ("depends_on_batches", "is open: seal it first"),
    ("jobs[", "is this job's own batch"),
    ("unique_key", "cannot have a unique_key"),
    # Names are limited to 255 bytes of UTF-8; maxLength counts characters.
    ("", "bytes, got"),
    # Invisible characters beyond the Basic Multilingual Plane, which a
    # pattern cannot name alike in ECMAScript and Python.
    ("", "(found U+1"),
    ("", "(found U+E"),
]

# Operations whose bodies hold grammars and references the schema cannot
# check: a cron expression and an IANA time zone; which of cron or every_ms is
# given; fields a schedule's job may not set; and a push URL (its syntax, and
# the SSRF guard that resolves its host) and secrets.
GRAMMARS = {
    ("PUT", "/v1/schedules/{id}"): ("cron", "timezone", "every_ms", "end_at", "job.run_at",
                                    "job.expires_at", "job.unique_key", "job.depends_on",
                                    "job.depends_on_batches", "job.ref",
                                    "job.on_dependency_failure"),
    ("PUT", "/v1/queues/{name}"): ("push",),
}


def _error(response):
    try:
        error = response.json()["error"]
        return error.get("field") or "", error.get("message") or ""
    except Exception:
        return None


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """Keeps every failure but the refusals of schema-valid data explained above."""
    # A schema-violating body larger than the server's body_limit_bytes
    # (the coverage phase's 10,001 whole jobs for `jobs`' maxItems: over
    # 1 MiB) is refused with 413 before its items are counted: refused all
    # the same, though schemathesis lists 413 among no refusals.
    if failure.code == "ST201" and response.status_code == 413:
        error = _error(response)
        return error is None or "body_limit_bytes" not in error[1]
    if failure.code != "ST202" or response.status_code != 422:
        return True
    error = _error(response)
    if error is None:
        return True
    field, message = error
    if WHOLE_FLOAT in message:
        return False
    if any(field.startswith(f) and m in message for f, m in BEYOND_SCHEMA):
        return False
    fields = GRAMMARS.get((case.method.upper(), case.operation.path), ())
    return not any(field.startswith(f) for f in fields)


@schemathesis.hook
def before_call(context, case, kwargs):
    """Caps a job long-poll's `wait` at one second: the schema allows a
    minute, and a minute per case would make the run take hours (the wait
    itself is tested in crates/grafter-server/tests/http.rs)."""
    query = case.query or {}
    try:
        # Coverage cases carry the text that goes on the wire.
        wait = int(query.get("wait"))
    except (TypeError, ValueError):
        return
    if wait > 1000:
        query["wait"] = 1000
