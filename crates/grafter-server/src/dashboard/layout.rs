//! The page shell and small pieces every page uses. maud escapes every
//! interpolated value, so job data (args, errors, kinds, tags) always shows as
//! text, never as markup.

use chrono::{DateTime, Utc};
use grafter_core::JobState;
use maud::{html, Markup, DOCTYPE};

use super::{Ctx, Flash};

/// Which tab is highlighted.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Overview,
    Jobs,
    Queues,
    Schedules,
    Batches,
    Workers,
}

/// A full page: navigation, the last action's message, then `body`.
pub fn page(title: &str, tab: Tab, ctx: &Ctx, body: Markup) -> Markup {
    let link = |t: Tab, href: &str, label: &str| {
        html! { a href=(href) class=[(t == tab).then_some("current")] { (label) } }
    };
    shell(
        title,
        html! {
            header {
                nav {
                    a.brand href="/" { "Grafter" }
                    (link(Tab::Overview, "/", "Overview"))
                    (link(Tab::Jobs, "/jobs", "Jobs"))
                    (link(Tab::Queues, "/queues", "Queues"))
                    (link(Tab::Schedules, "/schedules", "Schedules"))
                    (link(Tab::Batches, "/batches", "Batches"))
                    (link(Tab::Workers, "/workers", "Workers"))
                    @if ctx.logged_in {
                        form.logout method="post" action="/logout" {
                            (csrf_field(ctx))
                            button.link type="submit" { "Log out" }
                        }
                    }
                }
            }
            main {
                @if let Some(f) = &ctx.flash { (flash(f)) }
                (body)
            }
        },
    )
}

/// A page without navigation (errors, login).
pub fn bare(title: &str, body: Markup) -> Markup {
    shell(title, html! { main.bare { (body) } })
}

fn shell(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Grafter" }
                link rel="stylesheet" href="/assets/app.css";
                script src="/assets/app.js" defer {}
            }
            body { (body) }
        }
    }
}

/// The last action's message.
pub fn flash(flash: &Flash) -> Markup {
    html! {
        @if flash.ok {
            p.flash.ok role="status" { (flash.text) }
        } @else {
            p.flash.error role="alert" { (flash.text) }
        }
    }
}

/// A time: UTC in the markup, shown in the browser's zone with a relative hint
/// ("3 min ago") by the script.
pub fn time(t: DateTime<Utc>) -> Markup {
    html! { time datetime=(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)) { (t.format("%Y-%m-%d %H:%M:%S UTC")) } }
}

/// An optional time, or a dash.
pub fn time_or_dash(t: Option<DateTime<Utc>>) -> Markup {
    match t {
        Some(t) => time(t),
        None => html! { span.muted { "—" } },
    }
}

/// A job state as a coloured label.
pub fn state_badge(state: JobState) -> Markup {
    html! { span class={ "badge state-" (state.as_str()) } { (state.as_str()) } }
}

/// A number with thousands separators.
pub use grafter_core::group_thousands as count;

/// A duration for people: "45 s", "12 min", "3 h 5 min", "2 d 4 h".
pub fn age(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..60 => format!("{s} s"),
        60..3_600 => format!("{} min", s / 60),
        3_600..86_400 => format!("{} h {} min", s / 3_600, s % 3_600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3_600),
    }
}

/// At most `n` characters, with an ellipsis when cut.
pub fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(n).collect();
        out.push('…');
        out
    }
}

/// Percent-encodes one path segment (a queue name in a URL path).
pub fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The hidden CSRF field every state-changing form carries.
pub fn csrf_field(ctx: &Ctx) -> Markup {
    html! { input type="hidden" name="csrf" value=(ctx.csrf); }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_ages_read_well() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(age(chrono::Duration::seconds(42)), "42 s");
        assert_eq!(age(chrono::Duration::seconds(125)), "2 min");
        assert_eq!(age(chrono::Duration::seconds(3_700)), "1 h 1 min");
        assert_eq!(age(chrono::Duration::seconds(200_000)), "2 d 7 h");
        assert_eq!(clip("abcdef", 3), "abc…");
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(path_segment("mail q/1"), "mail%20q%2F1");
    }

    #[test]
    fn job_data_is_escaped() {
        let flash = Flash {
            ok: false,
            text: "<script>alert(1)</script>".into(),
        };
        let out = super::flash(&flash).into_string();
        assert!(
            out.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{out}"
        );
        assert!(!out.contains("<script>"));
    }
}
