//! The two text formats `/metrics` speaks, and which one a scraper asked for.
//!
//! `prometheus-client` 0.25 encodes OpenMetrics 1.0 only. The Prometheus text
//! format 0.0.4, the default for clients that do not ask for OpenMetrics, is
//! derived from that text by [`prometheus_text`]: the two differ, for what steer
//! exports, in the `# EOF` and `# UNIT` lines (0.0.4 has neither) and in a
//! counter's family name (`steer_promotions` in OpenMetrics, where the samples
//! are `steer_promotions_total`; 0.0.4 names the family after its samples). The
//! samples, their labels and the escaping of label values are the same in both.
use std::collections::HashSet;

/// A text format of the exposition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0.0, as `prometheus-client` writes it, ending in `# EOF`.
    OpenMetrics,
    /// The Prometheus text format 0.0.4.
    Prometheus,
}

impl Format {
    /// The `Content-Type` of a response in this format.
    #[must_use]
    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// The format an `Accept` header asks for: OpenMetrics when it names
/// `application/openmetrics-text` with a quality no lower than that of the
/// plain text it accepts (`text/plain`, `text/*` or `*/*`), else Prometheus
/// text. Prometheus itself asks for OpenMetrics first; `curl` gets plain text.
#[must_use]
pub fn negotiate(accept: Option<&str>) -> Format {
    let (mut openmetrics, mut text) = (0.0_f32, 0.0_f32);
    for range in accept.unwrap_or_default().split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        let quality = parts
            .filter_map(|p| p.split_once('='))
            .find(|(key, _)| key.trim().eq_ignore_ascii_case("q"))
            .map_or(Some(1.0), |(_, q)| q.trim().parse::<f32>().ok())
            .unwrap_or(0.0)
            .clamp(0.0, 1.0);
        if media.eq_ignore_ascii_case("application/openmetrics-text") {
            openmetrics = openmetrics.max(quality);
        } else if ["text/plain", "text/*", "*/*"].iter().any(|m| media.eq_ignore_ascii_case(m)) {
            text = text.max(quality);
        }
    }
    if openmetrics > 0.0 && openmetrics >= text { Format::OpenMetrics } else { Format::Prometheus }
}

/// The Prometheus text format 0.0.4 of an OpenMetrics text written by
/// `prometheus-client`: without `# EOF` and `# UNIT`, a counter's `# HELP` and
/// `# TYPE` named after its `_total` samples, and `unknown` typed `untyped`.
/// Exemplars and `_created` samples, which steer does not write, are left as
/// they are.
#[must_use]
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "].into_iter().find_map(|tag| {
            let rest = line.strip_prefix(tag)?;
            let name = rest.split_once(' ').map_or(rest, |(name, _)| name);
            let rest = &rest[name.len()..];
            let suffix = if counters.contains(name) { "_total" } else { "" };
            let rest = if tag == "# TYPE " && rest == " unknown" { " untyped" } else { rest };
            Some(format!("{tag}{name}{suffix}{rest}"))
        });
        match descriptor {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}
