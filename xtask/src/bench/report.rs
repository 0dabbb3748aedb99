//! The bench's outputs: `bench.json` (every number, with the machine it ran on),
//! `bench.md` (the summary tables, and any Markdown of a section's own), the same summary
//! on stdout, and the list of problems that fail the run.

use std::{fmt::Write as _, time::Duration};

use serde_json::{Map, Value, json};

use super::{Done, Row};
use crate::util::{self, cmd};

/// Version of the `bench.json` layout; bumped when a field changes meaning.
const SCHEMA: u64 = 1;

/// Prints every section as a table: its setup line, then metric, value, target, verdict.
pub fn print(done: &[Done]) {
    let rows = || done.iter().filter_map(|d| d.outcome.as_ref().ok()).flat_map(|f| &f.rows);
    let metric = rows().map(|r| r.metric.len()).chain([6]).max().unwrap_or(0);
    let value = rows().map(|r| r.value.len()).chain([5]).max().unwrap_or(0);
    let target = rows().filter_map(|r| r.target.as_ref()).map(|t| t.text.len()).chain([6]).max().unwrap_or(0);
    for (index, d) in done.iter().enumerate() {
        if index > 0 {
            println!();
        }
        println!("{} ({:.1} s)", d.section.title, d.wall.as_secs_f64());
        let findings = match &d.outcome {
            Ok(findings) => findings,
            Err(err) => {
                println!("  could not run: {err:#}");
                continue;
            }
        };
        println!("  {}", findings.setup);
        println!("  {:metric$}  {:>value$}  {:target$}  met", "metric", "value", "target");
        for row in &findings.rows {
            let (text, met) = target_cells(row);
            println!("  {:metric$}  {:>value$}  {text:target$}  {met}", row.metric, row.value);
        }
        if let Some(markdown) = &findings.markdown {
            println!();
            for line in markdown.lines() {
                println!("  {line}");
            }
        }
        for failure in &findings.failures {
            println!("  FAILED: {failure}");
        }
    }
}

/// `bench.md`: a heading with the machine, then one table per section.
pub fn markdown(done: &[Done], quick: bool, wall: Duration, env: &Value) -> String {
    let mut md = format!(
        "# steer bench ({})\n\nLinux {}, {} CPUs, commit {}; `cargo xtask bench{}` took {:.1} s \
         (setup and build included). Targets are reported, not enforced.\n",
        mode(quick),
        env["kernel"].as_str().unwrap_or("?"),
        env["cpus"],
        env["commit"].as_str().unwrap_or("?"),
        if quick { " --quick" } else { "" },
        wall.as_secs_f64()
    );
    for d in done {
        let _ = write!(md, "\n## {}\n\n", d.section.title);
        let findings = match &d.outcome {
            Ok(findings) => findings,
            Err(err) => {
                let _ = writeln!(md, "Could not run: {err:#}");
                continue;
            }
        };
        let _ = write!(md, "{}. Section wall time {:.1} s.\n\n", findings.setup, d.wall.as_secs_f64());
        md.push_str("| metric | value | target | met |\n|---|--:|---|---|\n");
        for row in &findings.rows {
            let (text, met) = target_cells(row);
            let _ = writeln!(md, "| {} | {} | {text} | {met} |", row.metric, row.value);
        }
        if let Some(markdown) = &findings.markdown {
            let _ = write!(md, "\n{markdown}");
        }
        for failure in &findings.failures {
            let _ = write!(md, "\n**Failed:** {failure}\n");
        }
    }
    md
}

/// `bench.json`: the machine, the mode, and per section its rows and every number.
pub fn json(done: &[Done], quick: bool, wall: Duration, env: &Value) -> Value {
    let mut sections = Map::new();
    for d in done {
        let mut section = json!({
            "title": d.section.title,
            "wall_secs": d.wall.as_secs_f64(),
            "ok": d.outcome.as_ref().is_ok_and(|f| f.failures.is_empty()),
        });
        match &d.outcome {
            Ok(findings) => {
                section["setup"] = findings.setup.clone().into();
                section["rows"] = findings.rows.iter().map(row_json).collect();
                section["failures"] = findings.failures.clone().into();
                section["results"] = Value::Object(findings.data.clone());
            }
            Err(err) => section["error"] = format!("{err:#}").into(),
        }
        sections.insert(d.section.key.to_owned(), section);
    }
    json!({
        "schema": SCHEMA,
        "mode": mode(quick),
        "environment": env,
        "wall_secs": wall.as_secs_f64(),
        "sections": sections,
    })
}

/// Why the run fails: sections that could not run, and hard checks that failed.
pub fn problems(done: &[Done]) -> Vec<String> {
    let mut problems = Vec::new();
    for d in done {
        match &d.outcome {
            Ok(findings) => {
                problems.extend(findings.failures.iter().map(|f| format!("{}: {f}", d.section.key)));
            }
            Err(err) => problems.push(format!("{} could not run: {err:#}", d.section.key)),
        }
    }
    problems
}

fn mode(quick: bool) -> &'static str {
    if quick { "quick" } else { "full" }
}

/// The target text and the verdict: `yes`, `NO`, `n/a` (not judged), or blank (no target).
fn target_cells(row: &Row) -> (&str, &'static str) {
    match &row.target {
        None => ("", ""),
        Some(target) => (&target.text, target.met.map_or("n/a", |met| if met { "yes" } else { "NO" })),
    }
}

fn row_json(row: &Row) -> Value {
    json!({
        "metric": row.metric,
        "value": row.value,
        "target": row.target.as_ref().map(|t| &t.text),
        "met": row.target.as_ref().and_then(|t| t.met),
    })
}

/// What the figures depend on: kernel, CPUs, the commit measured, and when.
pub fn environment() -> Value {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|k| k.trim().to_owned()).ok();
    let cpus = std::thread::available_parallelism().map(usize::from).ok();
    let mut git = cmd("git");
    git.current_dir(util::workspace_root()).args(["rev-parse", "--short", "HEAD"]);
    let commit = util::probe(&mut git).map(|c| c.trim().to_owned());
    let mut status = cmd("git");
    status.current_dir(util::workspace_root()).args(["status", "--porcelain"]);
    let dirty = util::probe(&mut status).map(|s| !s.trim().is_empty());
    let unix_time =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|t| t.as_secs()).ok();
    json!({ "kernel": kernel, "cpus": cpus, "commit": commit, "dirty": dirty, "unix_time": unix_time })
}
