#!/usr/bin/env python3
"""Progress heartbeats of many running jobs at once, in one batch or not.

Enqueues 200 jobs (one batch with `batch`, plain jobs with `plain`) on a
running `grafter serve`, leases them all, then 20 threads each heartbeat
their jobs with a progress fraction for 5 s over keep-alive connections.
A job in a batch moves its batch's progress in the same transaction, so
heartbeats of one batch's jobs meet on the batch's row.

usage: batch_heartbeats.py PORT batch|plain
prints: "<batch|plain> <heartbeats per second> heartbeats/s"
"""
import http.client
import json
import sys
import threading
import time

JOBS = 200
THREADS = 20
SECONDS = 5


def call(conn, method, path, body=None):
    conn.request(method, path, body=json.dumps(body) if body is not None else None,
                 headers={"content-type": "application/json"})
    answer = conn.getresponse()
    data = answer.read()
    return answer.status, json.loads(data) if data else None


def main():
    port, mode = int(sys.argv[1]), sys.argv[2]
    conn = http.client.HTTPConnection("127.0.0.1", port)
    queue = f"heartbeats-{time.time_ns()}"
    jobs = [{"kind": "k", "queue": queue} for _ in range(JOBS)]
    path = "/v1/batches" if mode == "batch" else "/v1/jobs/batch"
    status, body = call(conn, "POST", path, {"jobs": jobs})
    assert status == 201, body
    status, body = call(conn, "POST", "/v1/fetch", {"queues": [queue], "max": JOBS})
    leased = body["jobs"]
    assert len(leased) == JOBS, len(leased)
    counts = [0] * THREADS
    stop = time.time() + SECONDS

    def beat(i):
        own = http.client.HTTPConnection("127.0.0.1", port)
        mine = leased[i::THREADS]
        n = 0
        while time.time() < stop:
            job = mine[n % len(mine)]
            progress = {"fraction": (n % 100) / 100}
            status, body = call(own, "POST", f"/v1/jobs/{job['id']}/heartbeat",
                                {"lease": job["lease"], "progress": progress})
            assert status == 200, body
            n += 1
        counts[i] = n

    threads = [threading.Thread(target=beat, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(mode, round(sum(counts) / SECONDS), "heartbeats/s")


if __name__ == "__main__":
    main()
