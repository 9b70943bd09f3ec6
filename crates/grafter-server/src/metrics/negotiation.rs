//! Which text format a scrape's `Accept` header asks for, by its q-values
//! (RFC 9110 §12.5.1): OpenMetrics unless the Prometheus text format is
//! preferred, or OpenMetrics is refused (`q=0`) and the text format is not.

/// The formats a scrape may get.
const OPENMETRICS: (&str, &str) = ("application", "openmetrics-text");
const TEXT: (&str, &str) = ("text", "plain");

/// Whether `accept` (the scrape's `Accept` values, joined with commas) asks
/// for the Prometheus text format (0.0.4) over OpenMetrics. Each format gets
/// the q-value of the most specific range that matches it (`type/subtype`,
/// then `type/*`, then `*/*`), 1 by default and 0 if none matches; the text
/// format wins with a higher q-value than OpenMetrics', and when OpenMetrics
/// is refused with `q=0` and the text format is not. Anything else, an
/// `Accept` that names neither (or refuses both) included, gets OpenMetrics.
pub fn wants_prometheus_text(accept: &str) -> bool {
    let openmetrics = quality(accept, OPENMETRICS);
    let text = quality(accept, TEXT);
    let refused = |q: Option<f32>| q == Some(0.0);
    text.unwrap_or(0.0) > openmetrics.unwrap_or(0.0) || (refused(openmetrics) && !refused(text))
}

/// The q-value `accept` gives the media type `(kind, subtype)`: that of the
/// most specific range matching it, `None` when none does.
fn quality(accept: &str, (kind, subtype): (&str, &str)) -> Option<f32> {
    let mut best: Option<(u8, f32)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let Some((range_kind, range_subtype)) = parts.next().and_then(|t| t.trim().split_once('/'))
        else {
            continue;
        };
        let (range_kind, range_subtype) = (range_kind.trim(), range_subtype.trim());
        let specificity = if range_kind.eq_ignore_ascii_case(kind)
            && range_subtype.eq_ignore_ascii_case(subtype)
        {
            2
        } else if range_kind.eq_ignore_ascii_case(kind) && range_subtype == "*" {
            1
        } else if range_kind == "*" && range_subtype == "*" {
            0
        } else {
            continue;
        };
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
            .map_or(Some(1.0), |(_, value)| value.trim().parse::<f32>().ok())
            // A q-value that is not one, or out of range, is read as the
            // bounds allow rather than refusing the scrape.
            .map_or(1.0, |q| if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) });
        if best.is_none_or(|(found, _)| specificity > found) {
            best = Some((specificity, q));
        }
    }
    best.map(|(_, q)| q)
}

#[cfg(test)]
mod tests {
    use super::wants_prometheus_text;

    #[test]
    fn openmetrics_unless_the_text_format_is_preferred_or_openmetrics_refused() {
        for accept in [
            "",
            "*/*",
            "application/json",
            "application/openmetrics-text",
            "text/plain, application/openmetrics-text",
            "application/openmetrics-text;q=0.9, text/plain;q=0.5",
            // Prometheus' own scrape.
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
             version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            "text/plain;q=0",
            "text/plain;q=0, */*",
            "application/openmetrics-text;q=0, text/plain;q=0",
            "text/html",
        ] {
            assert!(!wants_prometheus_text(accept), "{accept:?}");
        }
        for accept in [
            "text/plain",
            "text/plain; version=0.0.4",
            "TEXT/PLAIN",
            "text/*",
            "application/openmetrics-text;q=0, text/plain",
            "application/openmetrics-text ; q=0 , text/plain",
            "application/openmetrics-text;q=0",
            "application/openmetrics-text;q=0.5, text/plain;q=0.9",
            "application/openmetrics-text;q=0.5, */*",
            "*/*;q=0.2, text/plain;q=0.3",
        ] {
            assert!(wants_prometheus_text(accept), "{accept:?}");
        }
    }
}
