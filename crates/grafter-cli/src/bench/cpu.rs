//! Where the CPU time of a phase went: this process, the server process (in
//! HTTP mode), and the whole machine. Figures from `/proc`, in the kernel's
//! clock ticks (USER_HZ, 100 per second on Linux).

use std::time::Duration;

const TICKS_PER_SECOND: f64 = 100.0;

/// CPU counters at one moment.
#[derive(Clone, Copy)]
pub struct Sample {
    /// User + system time of this process, in ticks.
    this: u64,
    /// Same for the server process, if there is one.
    server: Option<u64>,
    /// All CPUs of the machine: (busy, total) ticks.
    machine: Option<(u64, u64)>,
    /// The SQLite writer thread, in whichever process holds the store.
    writer: Option<u64>,
}

/// User + system ticks of a process (or `PID/task/TID` thread), from its `stat`.
fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are fixed.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// (busy, total) ticks of all CPUs, from `/proc/stat`.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …: idle and iowait are not busy.
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// The SQLite store's writer thread's name, as the kernel keeps it (15 bytes).
const WRITER_THREAD: &str = "grafter-sqlite-";

/// User + system ticks of the SQLite writer threads of a process (there may
/// be a finished one of a store opened and dropped before).
fn writer_ticks(pid: &str) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let writers: Vec<u64> = tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.trim() == WRITER_THREAD)
        })
        .filter_map(|task| {
            process_ticks(&format!(
                "{pid}/task/{}",
                task.file_name().to_string_lossy()
            ))
        })
        .collect();
    (!writers.is_empty()).then(|| writers.iter().sum())
}

impl Sample {
    /// Reads the counters now; `server` is the server's process id.
    pub fn now(server: Option<u32>) -> Self {
        let holder = server.map_or_else(|| "self".to_owned(), |pid| pid.to_string());
        Sample {
            this: process_ticks("self").unwrap_or(0),
            server: server.and_then(|pid| process_ticks(&pid.to_string())),
            machine: machine_ticks(),
            writer: writer_ticks(&holder),
        }
    }

    /// The server process's CPU seconds between `self` and `later`.
    pub fn server_seconds_until(&self, later: &Sample) -> Option<f64> {
        let (a, b) = (self.server?, later.server?);
        Some(b.saturating_sub(a) as f64 / TICKS_PER_SECOND)
    }

    /// A line saying where the CPU went between `self` and `later`, for `jobs` jobs.
    pub fn describe(&self, later: &Sample, jobs: u64, wall: Duration) -> String {
        let seconds = |ticks: u64| ticks as f64 / TICKS_PER_SECOND;
        let this = seconds(later.this.saturating_sub(self.this));
        let server = match (self.server, later.server) {
            (Some(a), Some(b)) => Some(seconds(b.saturating_sub(a))),
            _ => None,
        };
        let ours = this + server.unwrap_or(0.0);
        let mut line = match server {
            Some(server) => format!("bench {this:.2} s + server {server:.2} s"),
            None => format!("process {this:.2} s"),
        };
        if jobs > 0 {
            line.push_str(&format!(" = {:.1} µs/job", ours * 1e6 / jobs as f64));
        }
        if let (Some(a), Some(b)) = (self.writer, later.writer) {
            line.push_str(&format!(
                " (SQLite writer thread {:.2} s)",
                seconds(b.saturating_sub(a))
            ));
        }
        if let (Some((busy_a, total_a)), Some((busy_b, total_b))) = (self.machine, later.machine) {
            let cores = std::thread::available_parallelism()
                .map(|n| n.get() as f64)
                .unwrap_or(1.0);
            let total = total_b.saturating_sub(total_a).max(1) as f64;
            let busy = busy_b.saturating_sub(busy_a) as f64 / total * cores;
            line.push_str(&format!(
                "; machine busy {busy:.2} of {cores:.0} cores over {:.2} s",
                wall.as_secs_f64()
            ));
        }
        line
    }
}
