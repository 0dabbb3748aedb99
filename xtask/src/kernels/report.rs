//! From the suite's `STEER-RESULT key=value` lines to the table kernel × capability.
//! Values that are JSON are `steer check --json`, `steer status --json`, steer-load's
//! report and the daemon's first log line.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

use super::vm::{Accel, Run};

/// The sentence steer refuses with on a kernel before 5.14 contains this.
const TOO_OLD: &str = "older than 5.14";

/// One column of the table: a kernel, or the host.
#[derive(Debug)]
pub struct Column {
    pub label: String,
    /// The Debian package it came from.
    pub package: Option<String>,
    pub results: BTreeMap<String, String>,
    pub elapsed: Duration,
    pub accel: Option<Accel>,
    /// Why the suite did not complete, if it did not.
    pub failure: Option<String>,
}

impl Column {
    pub fn from_run(label: &str, package: Option<String>, run: Run) -> Column {
        Column {
            label: label.to_owned(),
            package,
            results: parse(&run.results),
            elapsed: run.elapsed,
            accel: run.accel,
            failure: run.failure,
        }
    }

    pub fn failed(label: &str, why: String, elapsed: Duration) -> Column {
        Column {
            label: label.to_owned(),
            package: None,
            results: BTreeMap::new(),
            elapsed,
            accel: None,
            failure: Some(why),
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.results.get(key).map(String::as_str)
    }

    fn json(&self, key: &str) -> Value {
        self.get(key).and_then(|v| serde_json::from_str(v).ok()).unwrap_or(Value::Null)
    }
}

/// `STEER-RESULT key=value` lines; the last value of a key wins.
pub fn parse(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.trim_end().strip_prefix("STEER-RESULT "))
        .filter_map(|rest| rest.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// How a column's results show one capability.
type Cell = fn(&Column) -> String;

/// The capabilities, what is expected of each, and how a column's results show it.
const ROWS: [(&str, &str, Cell); 6] = [
    ("`steer check`, and the mode it names", "✓", check),
    (
        "promote + steering (100 connections after each promote, by the generation that answered)",
        "✓",
        steering,
    ),
    (
        "queue migration on close (16 connections queued on the active generation, then promote and close)",
        "5.14+",
        migration,
    ),
    (
        "`steer reload` in select-only mode (`--no-migrate`), 5 reloads under load (4 clients)",
        "✓ 0 failed, 0 migrated",
        reload_select_only,
    ),
    ("the daemon's event source", "✓", event_source),
    ("10 handovers under load (4 clients), failed", "0", handovers),
];

/// The table in Markdown, and a line per column on where it ran.
pub fn render(columns: &[Column]) -> String {
    let mut out = String::from("| capability | expected |");
    let mut rule = String::from("|---|---|");
    for c in columns {
        let _ = write!(out, " {} |", c.label);
        rule.push_str("---|");
    }
    out.push('\n');
    out.push_str(&rule);
    out.push('\n');
    for (name, expected, cell) in ROWS {
        let _ = write!(out, "| {name} | {expected} |");
        for c in columns {
            let text = if c.results.is_empty() { "–".to_owned() } else { cell(c) };
            let _ = write!(out, " {} |", text.replace('|', "/"));
        }
        out.push('\n');
    }
    out.push('\n');
    for c in columns {
        let release = c.get("kernel").unwrap_or("?");
        let how =
            c.accel.map_or_else(|| "in a network namespace".to_owned(), |a| format!("under {}", a.name()));
        let from = c.package.as_deref().map(|p| format!(", {p}")).unwrap_or_default();
        let _ = write!(out, "- {}: `{release}`{from}; {:.0} s {how}", c.label, c.elapsed.as_secs_f64());
        if let Some(why) = &c.failure {
            let _ = write!(out, "; **incomplete: {why}**");
        }
        out.push('\n');
    }
    out
}

fn check(c: &Column) -> String {
    let Some(items) = c.json("check").as_array().cloned() else {
        return "✗ no report".to_owned();
    };
    let failed: Vec<&Value> = items.iter().filter(|i| i["ok"] != Value::Bool(true)).collect();
    let mode = items
        .iter()
        .find(|i| i["name"] == "mode")
        .and_then(|i| i["detail"].as_str())
        .and_then(|d| d.split(':').next())
        .map(|m| format!("; mode {m}"))
        .unwrap_or_default();
    match failed.as_slice() {
        [] => format!("✓ {} of {} ok{mode}", items.len(), items.len()),
        [only]
            if only["name"] == "kernel" && only["detail"].as_str().is_some_and(|d| d.contains(TOO_OLD)) =>
        {
            format!("✓ says the kernel is {TOO_OLD}; {} others ok", items.len() - 1)
        }
        _ => {
            let names: Vec<&str> = failed.iter().filter_map(|i| i["name"].as_str()).collect();
            format!("✗ {} failed", names.join(", "))
        }
    }
}

fn steering(c: &Column) -> String {
    let answered = |key: &str, generation: &str| {
        let report = c.json(key);
        (report["by_generation"][generation].as_u64().unwrap_or(0), report["requests"].as_u64().unwrap_or(0))
    };
    let ((a, na), (b, nb)) = (answered("steer_a", "a"), answered("steer_b", "b"));
    if c.get("promote_a_rc") == Some("0") && c.get("promote_b_rc") == Some("0") {
        let mark = if a == na && b == nb && na > 0 { "✓" } else { "✗" };
        return format!("{mark} {a}/{na} to a, then {b}/{nb} to b{}", select_only(&c.json("status_queued")));
    }
    format!("✗ {}; the kernel's spread: {a}/{na} to a, {b}/{nb} to b", refusal(c, "promote_a"))
}

fn migration(c: &Column) -> String {
    let report = c.json("migrate");
    let (ok, requests) = (report["ok"].as_u64().unwrap_or(0), report["requests"].as_u64().unwrap_or(0));
    let migrated = migrated(&c.json("status_migrated")).saturating_sub(migrated(&c.json("status_queued")));
    let lost = failed(&report);
    if c.get("promote_back_rc") != Some("0") {
        return format!("✗ {ok}/{requests} answered, {lost} reset (no steering: promote refused)");
    }
    let mark = if ok == requests && requests > 0 && migrated > 0 { "✓" } else { "✗" };
    let mode = select_only(&c.json("status_migrated"));
    if mode.is_empty() {
        format!("{mark} {ok}/{requests} answered, {migrated} migrated")
    } else {
        format!("{mark} {ok}/{requests} answered, {lost} reset, {migrated} migrated{mode}: no migration")
    }
}

/// `steer reload` in select-only mode: how many reloads succeeded, what the load
/// lost, and the program's counters (steered, migrated) with the mode.
fn reload_select_only(c: &Column) -> String {
    let Some(done) = c.get("reloads_ok") else {
        return match c.get("select_promote_rc") {
            Some(rc) if rc != "0" => format!(
                "✗ promote --no-migrate failed: {}",
                c.get("select_promote_stderr").unwrap_or_default().chars().take(160).collect::<String>()
            ),
            _ => "–".to_owned(),
        };
    };
    let report = c.json("reloads");
    let (requests, lost) = (report["requests"].as_u64().unwrap_or(0), failed(&report));
    let status = c.json("status_reloads");
    let counter = |name: &str| -> u64 {
        let namespaces = status["namespaces"].as_array().map(Vec::as_slice).unwrap_or_default();
        namespaces
            .iter()
            .flat_map(|ns| ns["groups"].as_array().map(Vec::as_slice).unwrap_or_default())
            .map(|g| g["counters"][name].as_u64().unwrap_or(0))
            .sum()
    };
    let (steered, migrated) =
        (counter("steered_active"), counter("migrated") + counter("migrated_by_kernel"));
    let mode = select_only(&status);
    let total = c.get("reloads_total").unwrap_or("?");
    let all = done == total && c.get("reloads_drained") == Some(total);
    let mark =
        if all && lost == 0 && migrated == 0 && steered > 0 && !mode.is_empty() { "✓" } else { "✗" };
    format!(
        "{mark} {done}/{total} reloads ({} drained), {lost} of {} failed, {migrated} migrated, {} steered{mode}",
        c.get("reloads_drained").unwrap_or("?"),
        thousands(requests),
        thousands(steered)
    )
}

/// " (select-only)" when the first instance of a `steer status --json` document steers in
/// that mode, else "".
fn select_only(status: &Value) -> &'static str {
    if status["namespaces"][0]["mode"] == "select-only" { " (select-only)" } else { "" }
}

fn event_source(c: &Column) -> String {
    let line = c.get("daemon_first_line").unwrap_or_default();
    if let Ok(log) = serde_json::from_str::<Value>(line) {
        return match log["fields"]["source"].as_str() {
            Some(source) => format!("✓ {source}"),
            None => format!("✗ first line: {}", log["fields"]["message"]),
        };
    }
    // The daemon refused: what `steer check` says it would pick.
    let checked = c.json("check");
    let would = checked
        .as_array()
        .and_then(|items| items.iter().find(|i| i["name"] == "event source"))
        .and_then(|i| i["detail"].as_str())
        .and_then(|d| d.split_whitespace().next())
        .unwrap_or("nothing");
    let refused =
        if line.contains(TOO_OLD) { format!("refused ({TOO_OLD})") } else { format!("failed: {line}") };
    format!("✗ daemon {refused}; `check` says {would}")
}

fn handovers(c: &Column) -> String {
    let report = c.json("handovers");
    let requests = report["requests"].as_u64().unwrap_or(0);
    let lost = failed(&report);
    let late = match (
        c.get("handovers_done_ms").and_then(|v| v.parse::<f64>().ok()),
        report["elapsed_secs"].as_f64(),
    ) {
        (Some(done), Some(load)) if done / 1e3 > load => " (the last handovers came after the load ended)",
        _ => "",
    };
    if c.get("handover_promotes_failed") != Some("0") {
        return format!(
            "✗ {lost} of {} failed, without steering (promote refused){late}",
            thousands(requests)
        );
    }
    let moved = migrated(&c.json("status_end")).saturating_sub(migrated(&c.json("status_migrated")));
    let mark = if lost == 0 && requests > 0 { "✓" } else { "✗" };
    let mode = select_only(&c.json("status_end"));
    format!("{mark} {lost} of {}, {moved} migrated{mode}{late}", thousands(requests))
}

/// Why promote failed, and whether it said so in the one sentence expected.
fn refusal(c: &Column, key: &str) -> String {
    let text = c.get(&format!("{key}_stderr")).unwrap_or_default();
    let lines = c.get(&format!("{key}_stderr_lines")).unwrap_or("?");
    if lines == "1" && text.contains(TOO_OLD) {
        format!("refused in one sentence: “{TOO_OLD}”")
    } else {
        let short: String = text.chars().take(160).collect();
        format!("refused in {lines} lines, not the one sentence: {short}")
    }
}

/// Failed requests of a steer-load report, every class.
fn failed(report: &Value) -> u64 {
    ["connect_errors", "resets", "timeouts", "short_replies", "bad_replies", "other_errors"]
        .iter()
        .map(|k| report[k].as_u64().unwrap_or(0))
        .sum()
}

/// The `migrated` counters of every group of a `steer status --json` document.
fn migrated(status: &Value) -> u64 {
    let namespaces = status["namespaces"].as_array().map(Vec::as_slice).unwrap_or_default();
    namespaces
        .iter()
        .flat_map(|ns| ns["groups"].as_array().map(Vec::as_slice).unwrap_or_default())
        .map(|g| g["counters"]["migrated"].as_u64().unwrap_or(0))
        .sum()
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
