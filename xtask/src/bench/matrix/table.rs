//! The reload matrix as Markdown: one row per mode, columns padded so that the table also
//! reads as plain text, and the legend of the modes.

use std::fmt::Write as _;

use super::{Mode, mode::Outcome};
use crate::util::ms;

/// The columns; all but the first are numbers, right-aligned.
const HEADER: [&str; 13] = [
    "mode",
    "reloads",
    "requests",
    "failed",
    "connect err",
    "resets",
    "timeouts",
    "short",
    "rps",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "max ms",
];

/// The table, with a note under it for modes with bad replies or other errors (counted in
/// `failed` but in no column of their own).
pub fn markdown(outcomes: &[Outcome]) -> String {
    let cells: Vec<[String; 13]> = outcomes.iter().map(row).collect();
    let mut widths = HEADER.map(str::len);
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (cell, w))| if i == 0 { format!("{cell:w$}") } else { format!("{cell:>w$}") })
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut md = line(&HEADER.map(str::to_owned));
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(i, &w)| if i == 0 { "-".repeat(w) } else { format!("{}:", "-".repeat(w - 1)) })
        .collect();
    md += &line(&rule);
    for row in &cells {
        md += &line(row);
    }
    for outcome in outcomes.iter().filter(|o| o.load.bad_replies + o.load.other_errors > 0) {
        let _ = write!(
            md,
            "\n{}: {} bad replies and {} other errors are counted in `failed`.\n",
            outcome.mode.key, outcome.load.bad_replies, outcome.load.other_errors
        );
    }
    md
}

/// What each mode does, as a Markdown list.
pub fn legend(modes: &[Mode]) -> String {
    let mut md = String::from(
        "\n`reloads`: done / tried (every mode is scheduled the same number at the same times; a \
         reload is late when the one before it still ran at its time). `failed`: connect errors, resets, timeouts, short replies, bad \
         replies and other errors. `rps`: successful requests per second. Latency of successful \
         requests, from connect to the whole reply.\n\n",
    );
    for mode in modes {
        let _ = writeln!(md, "- `{}`: {}", mode.key, mode.what);
    }
    md
}

fn row(outcome: &Outcome) -> [String; 13] {
    let (load, r) = (&outcome.load, &outcome.reloads);
    let l = &load.latency_us;
    let reloads = if outcome.mode.reload.is_some() && r.late > 0 {
        format!("{}/{} ({} late)", r.performed, r.attempted, r.late)
    } else if outcome.mode.reload.is_some() {
        format!("{}/{}", r.performed, r.attempted)
    } else {
        "-".to_owned()
    };
    [
        outcome.mode.key.to_owned(),
        reloads,
        load.requests.to_string(),
        load.failed().to_string(),
        load.connect_errors.to_string(),
        load.resets.to_string(),
        load.timeouts.to_string(),
        load.short_replies.to_string(),
        format!("{:.0}", load.rps),
        format!("{:.2}", ms(l.p50)),
        format!("{:.2}", ms(l.p99)),
        format!("{:.2}", ms(l.p999)),
        format!("{:.2}", ms(l.max)),
    ]
}
