//! Unit tests of the table: result lines of a kernel that refused, of one before 5.14 in
//! select-only mode, of a supported one, and of a run that did not complete.
use std::time::Duration;

use super::{Column, parse, render, thousands};
use crate::kernels::vm::{Accel, Run};

const REFUSED: &str = "steer: kernel 5.10.0-32-cloud-amd64 is older than 5.14: steering needs ctx->sk and listener migration for reuseport programs (Linux 5.14+); upgrade the kernel";

fn column(lines: &str) -> Column {
    let run = Run {
        results: lines.to_owned(),
        elapsed: Duration::from_secs(44),
        accel: Some(Accel::Tcg),
        failure: None,
    };
    Column::from_run("5.10", Some("linux-image-5.10.0-32-cloud-amd64 5.10.223-1 (bullseye)".to_owned()), run)
}

fn load(ok: &str, resets: u64) -> String {
    format!(
        r#"{{"requests": 100, "ok": {}, "resets": {resets}, "by_generation": {{{ok}}}, "elapsed_secs": 30.0}}"#,
        100 - resets
    )
}

#[test]
fn result_lines_parse_with_json_values() {
    let map = parse("noise\nSTEER-RESULT a=1\r\nSTEER-RESULT j={\"x\": \"=\"}\nSTEER-RESULT a=2\n");
    assert_eq!(map["a"], "2");
    assert_eq!(map["j"], "{\"x\": \"=\"}");
}

#[test]
fn a_kernel_before_5_14_shows_the_refusal_and_the_real_figures() {
    let text = format!(
        "STEER-RESULT kernel=5.10.0-32-cloud-amd64\n\
         STEER-RESULT check=[{{\"name\": \"kernel\", \"ok\": false, \"detail\": \"kernel 5.10 is older than 5.14: ...\"}}, \
           {{\"name\": \"event source\", \"ok\": true, \"detail\": \"raw_tracepoint for the daemon: ...\"}}]\n\
         STEER-RESULT promote_a_rc=1\nSTEER-RESULT promote_a_stderr_lines=1\nSTEER-RESULT promote_a_stderr={REFUSED}\n\
         STEER-RESULT steer_a={}\nSTEER-RESULT steer_b={}\n\
         STEER-RESULT promote_back_rc=1\n\
         STEER-RESULT migrate={{\"requests\": 16, \"ok\": 7, \"resets\": 9}}\n\
         STEER-RESULT handover_promotes_failed=10\nSTEER-RESULT handovers_done_ms=17000\n\
         STEER-RESULT handovers={}\n\
         STEER-RESULT daemon_first_line={REFUSED}\nSTEER-RESULT select_promote_rc=1\n\
         STEER-RESULT select_promote_stderr={REFUSED}\nSTEER-RESULT done=1\n",
        load("\"a\": 47, \"b\": 53", 0),
        load("\"a\": 54, \"b\": 46", 0),
        load("\"a\": 99", 1),
    );
    let table = render(&[column(&text)]);
    assert!(table.contains("| ✓ says the kernel is older than 5.14; 1 others ok |"), "{table}");
    assert!(
        table.contains(
            "✗ refused in one sentence: “older than 5.14”; the kernel's spread: 47/100 to a, 46/100 to b"
        ),
        "{table}"
    );
    assert!(table.contains("✗ 7/16 answered, 9 reset (no steering: promote refused)"), "{table}");
    assert!(table.contains("| ✗ promote --no-migrate failed: steer: kernel 5.10"), "{table}");
    assert!(table.contains("✗ daemon refused (older than 5.14); `check` says raw_tracepoint"), "{table}");
    assert!(table.contains("✗ 1 of 100 failed, without steering (promote refused)"), "{table}");
    assert!(table.contains("- 5.10: `5.10.0-32-cloud-amd64`, linux-image-5.10.0-32-cloud-amd64 5.10.223-1 (bullseye); 44 s under TCG"), "{table}");
}

#[test]
fn a_kernel_before_5_14_steers_in_select_only_mode_and_reloads() {
    let status = |active: u64, migrated: u64| {
        format!(
            r#"{{"namespaces": [{{"mode": "select-only", "groups": [{{"port": 8080, "counters": {{"steered_active": {active}, "migrated": {migrated}}}}}]}}]}}"#
        )
    };
    let text = format!(
        "STEER-RESULT check=[{{\"name\": \"kernel\", \"ok\": true}}, \
           {{\"name\": \"mode\", \"ok\": true, \"detail\": \"select-only: kernel 5.10 is older than 5.14\"}}]\n\
         STEER-RESULT promote_a_rc=0\nSTEER-RESULT promote_b_rc=0\nSTEER-RESULT promote_back_rc=0\n\
         STEER-RESULT steer_a={}\nSTEER-RESULT steer_b={}\n\
         STEER-RESULT status_queued={}\nSTEER-RESULT status_migrated={}\n\
         STEER-RESULT migrate={{\"requests\": 16, \"ok\": 0, \"resets\": 16}}\n\
         STEER-RESULT select_promote_rc=0\nSTEER-RESULT reloads_total=5\nSTEER-RESULT reloads_ok=5\n\
         STEER-RESULT reloads_drained=5\nSTEER-RESULT status_reloads={}\n\
         STEER-RESULT reloads={{\"requests\": 4321, \"ok\": 4321, \"elapsed_secs\": 15.0}}\n",
        load("\"a\": 100", 0),
        load("\"b\": 100", 0),
        status(200, 0),
        status(216, 0),
        status(4321, 0),
    );
    let table = render(&[column(&text)]);
    assert!(table.contains("| ✓ 2 of 2 ok; mode select-only |"), "{table}");
    assert!(table.contains("| ✓ 100/100 to a, then 100/100 to b (select-only) |"), "{table}");
    assert!(
        table.contains("| ✗ 0/16 answered, 16 reset, 0 migrated (select-only): no migration |"),
        "{table}"
    );
    assert!(
        table.contains(
            "| ✓ 5/5 reloads (5 drained), 0 of 4,321 failed, 0 migrated, 4,321 steered (select-only) |"
        ),
        "{table}"
    );
}

#[test]
fn a_refusal_in_more_than_one_sentence_is_called_out() {
    let text = "STEER-RESULT promote_a_rc=1\nSTEER-RESULT promote_a_stderr_lines=2\nSTEER-RESULT promote_a_stderr=Error: x  caused by: y\n";
    assert!(render(&[column(text)]).contains("refused in 2 lines, not the one sentence: Error: x"));
}

#[test]
fn a_supported_kernel_shows_steering_migration_and_handovers() {
    let status = |m: u64| {
        format!(r#"{{"namespaces": [{{"groups": [{{"port": 8080, "counters": {{"migrated": {m}}}}}]}}]}}"#)
    };
    let text = format!(
        "STEER-RESULT check=[{{\"name\": \"kernel\", \"ok\": true}}, {{\"name\": \"bpffs\", \"ok\": true}}]\n\
         STEER-RESULT promote_a_rc=0\nSTEER-RESULT promote_b_rc=0\nSTEER-RESULT promote_back_rc=0\n\
         STEER-RESULT steer_a={}\nSTEER-RESULT steer_b={}\n\
         STEER-RESULT status_queued={}\nSTEER-RESULT status_migrated={}\n\
         STEER-RESULT migrate={{\"requests\": 16, \"ok\": 16}}\n\
         STEER-RESULT handover_promotes_failed=0\nSTEER-RESULT handovers_done_ms=31000\n\
         STEER-RESULT handovers={{\"requests\": 15393, \"ok\": 15393, \"elapsed_secs\": 30.0}}\n\
         STEER-RESULT status_end={}\n\
         STEER-RESULT daemon_first_line={{\"fields\": {{\"message\": \"event source\", \"source\": \"raw_tracepoint\"}}}}\n",
        load("\"a\": 100", 0),
        load("\"b\": 100", 0),
        status(0),
        status(16),
        status(19),
    );
    let table = render(&[column(&text)]);
    assert!(table.contains("| ✓ 2 of 2 ok |"), "{table}");
    assert!(table.contains("| ✓ 100/100 to a, then 100/100 to b |"), "{table}");
    assert!(table.contains("| ✓ 16/16 answered, 16 migrated |"), "{table}");
    assert!(table.contains("| ✓ raw_tracepoint |"), "{table}");
    assert!(
        table.contains("| ✓ 0 of 15,393, 3 migrated (the last handovers came after the load ended) |"),
        "{table}"
    );
}

#[test]
fn a_column_without_results_shows_dashes_and_why() {
    let c = Column::failed("6.12", "timed out after 240s".to_owned(), Duration::from_secs(240));
    let table = render(&[c]);
    assert!(table.contains("| `steer check`, and the mode it names | ✓ | – |"), "{table}");
    assert!(table.contains("**incomplete: timed out after 240s**"), "{table}");
}

#[test]
fn thousands_are_separated() {
    assert_eq!(thousands(0), "0");
    assert_eq!(thousands(999), "999");
    assert_eq!(thousands(15_393), "15,393");
    assert_eq!(thousands(1_234_567), "1,234,567");
}
