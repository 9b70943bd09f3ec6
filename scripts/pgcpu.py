#!/usr/bin/env python3
"""Run one command against a PostgreSQL database and report the CPU its
server backends used (user + system from /proc/<pid>/stat), sampled every
200 ms: every client backend connected to DATABASE while the command runs,
the sampler's own connection excluded (it connects to `postgres`).

usage: pgcpu.py DATABASE JOBS -- command args...
prints the command's last output line, then one JSON line:
{"db":..., "pg_cpu_s":..., "pg_cpu_us_per_job":..., "backends":...,
 "command_cpu_us_per_job":... (the command's own user + system CPU), "load":...}
"""
import json
import os
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def backends(db):
    out = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-Atc",
         f"SELECT pid FROM pg_stat_activity WHERE datname = '{db}' AND backend_type = 'client backend'"],
        capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime
    except OSError:
        return None


def main():
    db, jobs = sys.argv[1], int(sys.argv[2])
    cmd = sys.argv[sys.argv.index("--") + 1:]
    load = os.getloadavg()[0]
    seen = {}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        for pid in backends(db):
            t = cpu_ticks(pid)
            if t is not None:
                seen[pid] = t
        time.sleep(0.2)
    out = proc.stdout.read().strip().splitlines()
    command_cpu = usage.ru_utime + usage.ru_stime
    # Every backend of DATABASE is the command's and started with it.
    total = sum(seen.values()) / TICK
    print(out[-1] if out else "")
    print(json.dumps({"db": db, "pg_cpu_s": round(total, 2),
                      "pg_cpu_us_per_job": round(total / jobs * 1e6, 1),
                      "backends": len(seen),
                      "command_cpu_us_per_job": round(command_cpu / jobs * 1e6, 1),
                      "load": round(load, 2)}))
    sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
