//! Unit tests of `ops/reload`.
use std::process::Command;

use super::{
    signal::{SIGNAL_NAMES, SIGNALS},
    *,
};

#[test]
fn signals_parse_by_name_and_number() {
    for (text, number, name) in [
        ("TERM", libc::SIGTERM, "SIGTERM"),
        ("SIGTERM", libc::SIGTERM, "SIGTERM"),
        ("sigusr1", libc::SIGUSR1, "SIGUSR1"),
        ("QUIT", libc::SIGQUIT, "SIGQUIT"),
        ("15", libc::SIGTERM, "SIGTERM"),
        ("10", libc::SIGUSR1, "SIGUSR1"),
        ("34", 34, "signal"),
    ] {
        assert_eq!(text.parse::<Signal>(), Ok(Signal { number, name }), "{text}");
    }
    for bad in ["", "TERMINATE", "0", "65", "-1", "SIG"] {
        assert!(bad.parse::<Signal>().is_err(), "{bad}");
    }
    assert_eq!(Signal::TERM.to_string(), "SIGTERM");
    assert_eq!(SIGNALS.len(), SIGNAL_NAMES.len());
    for ((short, _), full) in SIGNALS.iter().zip(SIGNAL_NAMES) {
        assert_eq!(&full[3..], *short);
    }
}

#[test]
fn our_own_children_are_descendants() {
    let mut child = Command::new("sleep").arg("5").spawn().unwrap();
    assert!(descendants().contains(&child.id()));
    let _ = child.kill();
    let _ = child.wait();
    assert!(!descendants().contains(&child.id()));
}

#[test]
fn a_report_says_what_happened() {
    let drain = Drain {
        elapsed: Duration::from_millis(3),
        drained: true,
        queued: 0,
        handshakes: Some(0),
        old_exited: false,
    };
    let report = Report {
        new_pid: 20,
        new_comm: "srv".into(),
        changes: vec![],
        old_pid: 10,
        drain,
        signal: Signal::TERM,
    };
    assert_eq!(
        report.to_string(),
        "new generation: pid 20 (srv)\npid 10 drained in 3 ms (accept queue 0, pending handshakes 0)\nsent SIGTERM to pid 10\n"
    );
    let timed_out =
        Report { drain: Drain { drained: false, queued: 4, handshakes: None, ..drain }, ..report };
    assert!(
        timed_out
            .to_string()
            .contains("did not drain within 3 ms: 4 queued, pending handshakes not measured")
    );
}
