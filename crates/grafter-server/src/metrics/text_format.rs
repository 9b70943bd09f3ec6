//! The Prometheus text format (0.0.4), for scrapers and tools that ask for
//! `text/plain` rather than OpenMetrics (`promtool check metrics` reads only
//! this). prometheus-client writes OpenMetrics; the two differ only in that
//! a counter's `# HELP`/`# TYPE` lines name it with its `_total` suffix and
//! that there are no `# UNIT` and `# EOF` lines.

/// `openmetrics` rewritten in the Prometheus text format.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let described = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| Some((prefix, line.strip_prefix(prefix)?)));
        match described {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                text.push_str(&format!("{prefix}{name}{suffix} {tail}"));
            }
            None => text.push_str(line),
        }
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_described_by_their_sample_names_and_openmetrics_lines_go() {
        let openmetrics = "# HELP grafter_jobs_enqueued Jobs created.\n\
             # TYPE grafter_jobs_enqueued counter\n\
             grafter_jobs_enqueued_total{queue=\"a b\"} 1\n\
             # HELP grafter_wait_seconds Waits.\n\
             # TYPE grafter_wait_seconds histogram\n\
             # UNIT grafter_wait_seconds seconds\n\
             grafter_wait_seconds_count 2\n\
             # EOF\n";
        assert_eq!(
            prometheus_text(openmetrics),
            "# HELP grafter_jobs_enqueued_total Jobs created.\n\
             # TYPE grafter_jobs_enqueued_total counter\n\
             grafter_jobs_enqueued_total{queue=\"a b\"} 1\n\
             # HELP grafter_wait_seconds Waits.\n\
             # TYPE grafter_wait_seconds histogram\n\
             grafter_wait_seconds_count 2\n"
        );
    }
}
