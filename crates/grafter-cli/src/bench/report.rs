//! The benchmark's output: a progress line on stderr while it runs, then a
//! readable summary and, last, one JSON line on stdout.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use grafter::JobId;

use crate::{outln, Failure};

/// Resident memory is sampled at every tenth of the jobs.
const RSS_MARKS: u64 = 10;

/// A progress line for one phase.
pub struct Progress {
    phase: &'static str,
    /// Jobs in the phase, or `None` for a phase bounded by time.
    total: Option<u64>,
    duration: Option<Duration>,
    started: Instant,
    tty: bool,
    counter: Arc<AtomicU64>,
    /// (jobs done, resident bytes) at each tenth of the phase.
    marks: Mutex<Vec<(u64, u64)>>,
}

impl Progress {
    /// A phase of `total` jobs.
    pub fn start(phase: &'static str, total: u64) -> Self {
        Self::new(phase, Some(total), None)
    }

    /// A phase that lasts `duration`.
    pub fn timed(phase: &'static str, duration: Duration) -> Self {
        Self::new(phase, None, Some(duration))
    }

    fn new(phase: &'static str, total: Option<u64>, duration: Option<Duration>) -> Self {
        Progress {
            phase,
            total,
            duration,
            started: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            counter: Arc::default(),
            marks: Mutex::default(),
        }
    }

    /// A counter of this phase's jobs, for [`Progress::follow`] to show.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.counter.clone()
    }

    /// Shows `done` (or this phase's own counter) until dropped: a bar redrawn
    /// in place on a terminal, a line a second otherwise. With `rss`, samples
    /// resident memory at every tenth of the jobs. Never returns.
    pub async fn follow(
        &self,
        done: Option<&AtomicU64>,
        rss: Option<&(dyn Fn() -> Option<u64> + Sync)>,
    ) {
        let done = done.unwrap_or(&self.counter);
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(1)
        };
        let mut next_print = Instant::now() + every;
        let mut next_mark = 1;
        loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let n = done.load(Ordering::Relaxed);
            if let (Some(total), Some(rss)) = (self.total, rss) {
                // The last tenth is the caller's to take, once every job is done.
                while next_mark < RSS_MARKS && n >= total * next_mark / RSS_MARKS {
                    if let Some(bytes) = rss() {
                        self.marks
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((n, bytes));
                    }
                    next_mark += 1;
                }
            }
            if Instant::now() >= next_print {
                self.print(n);
                next_print += every;
            }
        }
    }

    fn print(&self, n: u64) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let fraction = match (self.total, self.duration) {
            (Some(total), _) if total > 0 => n as f64 / total as f64,
            (_, Some(d)) => elapsed / d.as_secs_f64(),
            _ => 0.0,
        }
        .clamp(0.0, 1.0);
        const WIDTH: usize = 30;
        let filled = (fraction * WIDTH as f64).round() as usize;
        let bar: String = "█".repeat(filled) + &"░".repeat(WIDTH - filled);
        let rate = if elapsed > 0.0 {
            n as f64 / elapsed
        } else {
            0.0
        };
        let of = self
            .total
            .map(|t| format!("/{}", thousands(t)))
            .unwrap_or_default();
        let line = format!(
            "{:<7} [{bar}] {:>3.0}% {}{of} jobs  {} jobs/s",
            self.phase,
            fraction * 100.0,
            thousands(n),
            thousands(rate.round() as u64)
        );
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r{line}\x1b[K")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }

    /// Ends the phase's line; returns the memory samples taken.
    pub fn finish(&self) -> Vec<(u64, u64)> {
        if self.tty {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
        std::mem::take(&mut *self.marks.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

pub use grafter_core::group_thousands as thousands;

/// The 1-, 5- and 15-minute load averages, as the kernel reports them.
pub fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Enqueue → start, in ms, of every enqueued job that started.
pub fn latencies(enqueues: &[(JobId, Instant)], starts: &[(JobId, Instant)]) -> Vec<f64> {
    let mut first_start: HashMap<JobId, Instant> = HashMap::with_capacity(starts.len());
    for &(id, at) in starts {
        first_start.entry(id).or_insert(at);
    }
    enqueues
        .iter()
        .filter_map(|(id, at)| {
            first_start
                .get(id)
                .map(|s| s.saturating_duration_since(*at).as_secs_f64() * 1e3)
        })
        .collect()
}

/// Everything a run measured.
pub struct Report {
    pub mode: &'static str,
    pub workload: &'static str,
    pub database: &'static str,
    pub jobs: u64,
    pub jobs_per_s: Option<f64>,
    pub enqueue_per_s: Option<f64>,
    /// p50, p95, p99 in ms, and how many samples.
    latency: Option<([f64; 3], usize)>,
    pub durability: String,
    /// Where the jobs lived.
    pub place: String,
    /// Jobs that did not complete (failed, lost their lease): none are expected.
    pub failures: u64,
    /// (jobs done, resident bytes of the process holding the store).
    pub rss_marks: Vec<(u64, u64)>,
    pub load_before: Option<String>,
    pub load_after: Option<String>,
    notes: Vec<String>,
}

impl Report {
    pub fn new(mode: &'static str, workload: &'static str) -> Self {
        Report {
            mode,
            workload,
            database: "",
            jobs: 0,
            jobs_per_s: None,
            enqueue_per_s: None,
            latency: None,
            durability: String::new(),
            place: String::new(),
            failures: 0,
            rss_marks: Vec::new(),
            load_before: None,
            load_after: None,
            notes: Vec::new(),
        }
    }

    /// A line for the summary.
    pub fn note(&mut self, line: String) {
        self.notes.push(line);
    }

    /// Sets the percentiles from raw samples (nearest rank).
    pub fn set_latencies(&mut self, mut samples: Vec<f64>) {
        if samples.is_empty() {
            return;
        }
        samples.sort_by(f64::total_cmp);
        let at = |p: f64| {
            samples[((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1]
        };
        self.latency = Some(([at(0.50), at(0.95), at(0.99)], samples.len()));
    }

    /// Prints the summary, then the JSON line.
    pub fn print(&self) -> Result<(), Failure> {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        let place = if self.mode == "http" {
            "over loopback HTTP (grafter serve)"
        } else {
            "in process"
        };
        outln!(
            "grafter bench: {} on {}, {place}",
            self.workload,
            self.database
        )?;
        outln!("  database    {}", self.place)?;
        outln!("  durability  {}", self.durability)?;
        outln!(
            "  machine     {cores} cores; load average {} before, {} after",
            self.load_before.as_deref().unwrap_or("?"),
            self.load_after.as_deref().unwrap_or("?")
        )?;
        for note in &self.notes {
            outln!("  {note}")?;
        }
        if let Some(rate) = self.enqueue_per_s {
            outln!("  enqueue     {} jobs/s", thousands(rate.round() as u64))?;
        }
        if let Some(rate) = self.jobs_per_s {
            let what = if self.workload == "latency" {
                "round trips"
            } else {
                "jobs"
            };
            outln!("  throughput  {} {what}/s", thousands(rate.round() as u64))?;
        }
        if let Some(([p50, p95, p99], n)) = self.latency {
            outln!("  latency     enqueue → start p50 {p50:.3} ms, p95 {p95:.3} ms, p99 {p99:.3} ms ({n} samples)")?;
        }
        if !self.rss_marks.is_empty() {
            let marks: Vec<String> = self
                .rss_marks
                .iter()
                .map(|(n, bytes)| format!("{} {:.1}", thousands(*n), *bytes as f64 / 1_048_576.0))
                .collect();
            let whose = if self.mode == "http" {
                "server"
            } else {
                "process"
            };
            outln!(
                "  memory      {whose} RSS in MiB by jobs done: {}",
                marks.join(" | ")
            )?;
        }
        if self.failures > 0 {
            outln!(
                "  WARNING     {} jobs did not complete (failed or lost their lease)",
                self.failures
            )?;
        }
        let round = |v: Option<f64>, places: i32| {
            let scale = 10f64.powi(places);
            v.map(|v| (v * scale).round() / scale)
        };
        let latency = |i: usize| round(self.latency.map(|(l, _)| l[i]), 3);
        /// The machine-readable line, fields in this order.
        #[derive(serde::Serialize)]
        struct Line<'a> {
            mode: &'a str,
            database: &'a str,
            workload: &'a str,
            jobs: u64,
            jobs_per_s: Option<f64>,
            enqueue_per_s: Option<f64>,
            latency_p50_ms: Option<f64>,
            latency_p95_ms: Option<f64>,
            latency_p99_ms: Option<f64>,
            durability: &'a str,
        }
        let line = Line {
            mode: self.mode,
            database: self.database,
            workload: self.workload,
            jobs: self.jobs,
            jobs_per_s: round(self.jobs_per_s, 1),
            enqueue_per_s: round(self.enqueue_per_s, 1),
            latency_p50_ms: latency(0),
            latency_p95_ms: latency(1),
            latency_p99_ms: latency(2),
            durability: &self.durability,
        };
        let line = serde_json::to_string(&line).unwrap_or_default();
        outln!("{line}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut report = Report::new("inprocess", "latency");
        report.set_latencies((1..=100).rev().map(f64::from).collect());
        assert_eq!(report.latency, Some(([50.0, 95.0, 99.0], 100)));
        let mut one = Report::new("inprocess", "latency");
        one.set_latencies(vec![3.0]);
        assert_eq!(one.latency, Some(([3.0, 3.0, 3.0], 1)));
        let mut none = Report::new("inprocess", "latency");
        none.set_latencies(Vec::new());
        assert_eq!(none.latency, None);
    }

    #[test]
    fn latency_runs_from_enqueue_to_first_start() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let enqueues = [(JobId(1), t), (JobId(2), t + ms(1)), (JobId(3), t)];
        // Job 1 started twice (a retry): the first start counts. Job 3 never started.
        let starts = [
            (JobId(2), t + ms(4)),
            (JobId(1), t + ms(2)),
            (JobId(1), t + ms(9)),
        ];
        let rounded: Vec<f64> = latencies(&enqueues, &starts)
            .iter()
            .map(|ms| ms.round())
            .collect();
        assert_eq!(rounded, vec![2.0, 3.0]);
    }
}
