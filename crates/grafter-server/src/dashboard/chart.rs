//! The throughput chart: inline SVG, stacked bars of completed (below) and
//! failed (above) attempts per bucket. Presentation attributes only (no
//! `style`), so the Content-Security-Policy needs no exception.

use chrono::{DateTime, Duration, Utc};
use grafter_store::MinuteThroughput;
use maud::{html, Markup};

use super::layout::count;

/// One bar.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Completed attempts.
    pub completed: u64,
    /// Failed attempts.
    pub failed: u64,
}

/// Sums per-minute rows into `n` buckets of `width` ending at `end` (the last
/// bucket holds `end`'s own, partial, bucket).
pub fn buckets(
    rows: &[MinuteThroughput],
    end: DateTime<Utc>,
    width: Duration,
    n: usize,
) -> Vec<Bucket> {
    let mut out = vec![Bucket::default(); n];
    let w = width.num_seconds().max(1);
    let last = end.timestamp().div_euclid(w);
    for row in rows {
        let back = last - row.minute.timestamp().div_euclid(w);
        if let Ok(back) = usize::try_from(back) {
            if back < n {
                let b = &mut out[n - 1 - back];
                b.completed += row.completed;
                b.failed += row.failed;
            }
        }
    }
    out
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 140.0;
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 20.0;

/// The chart, `unit` naming one bucket ("minute", "hour") and `span` the
/// whole range ("60 min", "24 h") for the axis.
pub fn render(title: &str, buckets: &[Bucket], unit: &str, span: &str) -> Markup {
    let max = buckets
        .iter()
        .map(|b| b.completed + b.failed)
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_w = WIDTH - LEFT;
    let plot_h = HEIGHT - BOTTOM - 8.0;
    let slot = plot_w / buckets.len().max(1) as f64;
    let bar = (slot * 0.8).max(1.0);
    let y = |v: u64| plot_h * v as f64 / max as f64;
    let completed: u64 = buckets.iter().map(|b| b.completed).sum();
    let failed: u64 = buckets.iter().map(|b| b.failed).sum();
    html! {
        figure.chart {
            figcaption {
                strong { (title) }
                " — " span.completed-text { (count(completed)) " completed" }
                ", " span.failed-text { (count(failed)) " failed" }
            }
            svg viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img" aria-label=(format!("{title}: {completed} completed, {failed} failed")) {
                line x1=(LEFT) y1=(8.0 + plot_h) x2=(WIDTH) y2=(8.0 + plot_h) stroke="#999" stroke-width="1" {}
                line x1=(LEFT) y1="8" x2=(LEFT) y2=(8.0 + plot_h) stroke="#999" stroke-width="1" {}
                text x=(LEFT - 6.0) y="14" text-anchor="end" font-size="11" fill="#666" { (count(max)) }
                text x=(LEFT - 6.0) y=(8.0 + plot_h) text-anchor="end" font-size="11" fill="#666" { "0" }
                @for (i, b) in buckets.iter().enumerate() {
                    @let x = LEFT + slot * i as f64 + (slot - bar) / 2.0;
                    @let hc = y(b.completed);
                    @let hf = y(b.failed);
                    @let ago = buckets.len() - 1 - i;
                    g {
                        title { (if ago == 0 { format!("this {unit}") } else { format!("{ago} {unit}{} ago", if ago == 1 { "" } else { "s" }) }) ": " (b.completed) " completed, " (b.failed) " failed" }
                        rect.completed x=(fmt(x)) y=(fmt(8.0 + plot_h - hc)) width=(fmt(bar)) height=(fmt(hc)) fill="#2e7d32" {}
                        rect.failed x=(fmt(x)) y=(fmt(8.0 + plot_h - hc - hf)) width=(fmt(bar)) height=(fmt(hf)) fill="#c62828" {}
                    }
                }
                text x=(LEFT) y=(HEIGHT - 4.0) font-size="11" fill="#666" { "−" (span) }
                text x=(WIDTH) y=(HEIGHT - 4.0) text-anchor="end" font-size="11" fill="#666" { "now" }
            }
        }
    }
}

fn fmt(v: f64) -> String {
    format!("{v:.1}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_fall_into_their_buckets() {
        let end = DateTime::from_timestamp(10 * 3600 + 1_830, 0).unwrap(); // 10:30:30
        let at = |secs: i64, completed, failed| MinuteThroughput {
            minute: DateTime::from_timestamp(secs, 0).unwrap(),
            completed,
            failed,
        };
        let rows = [
            at(10 * 3600 + 1_800, 3, 1),
            at(10 * 3600 + 1_740, 2, 0),
            at(9 * 3600, 5, 5),
            at(0, 9, 9),
        ];
        let minutes = buckets(&rows, end, Duration::minutes(1), 60);
        assert_eq!(
            minutes[59],
            Bucket {
                completed: 3,
                failed: 1
            }
        );
        assert_eq!(
            minutes[58],
            Bucket {
                completed: 2,
                failed: 0
            }
        );
        assert_eq!(
            minutes.iter().map(|b| b.completed).sum::<u64>(),
            5,
            "older minutes fall outside"
        );
        let hours = buckets(&rows, end, Duration::hours(1), 24);
        assert_eq!(
            hours[23],
            Bucket {
                completed: 5,
                failed: 1
            }
        );
        assert_eq!(
            hours[22],
            Bucket {
                completed: 5,
                failed: 5
            }
        );
        let svg = render("Last hour", &minutes, "minute", "60 min").into_string();
        assert_eq!(svg.matches("<rect class=\"completed\"").count(), 60);
        assert!(!svg.contains("style="), "no inline styles under the CSP");
    }
}
