//! Unit tests of `main.rs`.
use super::*;

#[test]
fn cli_parses_the_contract() {
    let cli = Cli::try_parse_from([
        "steer",
        "--state-dir",
        "/x",
        "promote",
        "42",
        "--port",
        "80",
        "--port",
        "443",
        "--weight",
        "10",
    ])
    .unwrap();
    assert_eq!(cli.state_dir.as_deref(), Some(std::path::Path::new("/x")));
    match cli.command {
        Command::Promote { pid, ports, weight, .. } => {
            assert_eq!((pid, ports, weight), (42, vec![80, 443], 10));
        }
        other => panic!("parsed as {other:?}"),
    }
    assert!(matches!(
        Cli::try_parse_from(["steer", "status", "--json"]).unwrap().command,
        Command::Status { json: true }
    ));
    assert!(matches!(
        Cli::try_parse_from(["steer", "-v", "rollback"]).unwrap().command,
        Command::Rollback { .. }
    ));
    let sched = |args: &[&str]| match Cli::try_parse_from(args).unwrap().command {
        Command::Daemon { nice, rt_priority, .. } => (nice, rt_priority),
        other => panic!("parsed as {other:?}"),
    };
    assert_eq!(sched(&["steer", "daemon", "--comm", "haproxy"]), (-10, 1));
    assert_eq!(sched(&["steer", "daemon", "--comm", "haproxy", "--nice", "-5"]), (-5, 1));
    assert_eq!(sched(&["steer", "daemon", "--comm", "haproxy", "--nice", "0", "--rt-priority", "0"]), (0, 0));
    assert_eq!(sched(&["steer", "daemon", "--comm", "haproxy", "--rt-priority", "99"]), (-10, 99));
}

#[test]
fn bad_usage_is_refused() {
    for args in [
        vec!["steer", "promote"],
        vec!["steer", "promote", "abc"],
        vec!["steer", "promote", "1", "--weight", "0"],
        vec!["steer", "promote", "1", "--weight", "101"],
        vec!["steer", "promote", "1", "--port", "70000"],
        vec!["steer", "frobnicate"],
        vec!["steer", "daemon"],
        vec!["steer", "daemon", "--comm", "haproxy", "--policy", "sometimes"],
        vec!["steer", "daemon", "--port", "80", "--metrics", "not-an-address"],
        vec!["steer", "daemon", "--port", "80", "--nice", "-21"],
        vec!["steer", "daemon", "--port", "80", "--nice", "20"],
        vec!["steer", "daemon", "--port", "80", "--rt-priority", "100"],
        vec!["steer", "daemon", "--port", "80", "--rt-priority", "-1"],
        vec!["steer", "daemon", "--port", "0"],
        vec!["steer", "promote", "1", "--port", "0"],
        vec!["steer", "daemon", "--comm", "a-name-of-16-byt"],
        vec!["steer", "daemon", "--comm", ""],
        vec!["steer", "daemon", "--port", "80", "--cgroup", ""],
        vec!["steer", "daemon", "--port", "80", "--user", ""],
        vec!["steer", "daemon", "--port", "80", "--max-instances", "0"],
        vec!["steer", "daemon", "--port", "80", "--max-groups-per-process", "0"],
        vec!["steer", "daemon", "--port", "80", "--max-generations-per-process", "-1"],
    ] {
        let err = Cli::try_parse_from(&args).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{args:?}");
    }
}

#[test]
fn the_daemons_caps_default_to_the_librarys() {
    let limits = |args: &[&str]| match Cli::try_parse_from(args).unwrap().command {
        Command::Daemon { max_instances, max_groups_per_process, max_generations_per_process, .. } => {
            (max_instances, max_groups_per_process, max_generations_per_process)
        }
        other => panic!("parsed as {other:?}"),
    };
    let d = daemon::Limits::default();
    assert_eq!(
        limits(&["steer", "daemon", "--port", "80"]),
        (d.instances, d.groups_per_process, d.generations_per_process)
    );
    assert_eq!((d.instances, d.groups_per_process, d.generations_per_process), (64, 32, 30));
    assert_eq!(limits(&["steer", "daemon", "--port", "80", "--max-instances", "2"]).0, 2);
}

#[test]
fn the_daemons_readiness_gate_parses_and_its_timeout_needs_a_gate() {
    let gate = |args: &[&str]| match Cli::try_parse_from(args).map(|c| c.command) {
        Ok(Command::Daemon { ready_cmd, ready_http, ready_timeout, .. }) => {
            Ok((ready_cmd, ready_http.map(|h| h.to_string()), ready_timeout))
        }
        Ok(other) => panic!("parsed as {other:?}"),
        Err(e) => Err(e.kind()),
    };
    let base = ["steer", "daemon", "--port", "80"];
    let with = |extra: &[&'static str]| [&base[..], extra].concat();
    assert_eq!(gate(&base), Ok((None, None, None)));
    assert_eq!(
        gate(&with(&["--ready-cmd", "true", "--ready-timeout", "2s"])),
        Ok((Some("true".into()), None, Some(std::time::Duration::from_secs(2))))
    );
    assert_eq!(
        gate(&with(&["--ready-http", "http://127.0.0.1:8404/health"])),
        Ok((None, Some("http://127.0.0.1:8404/health".into()), None))
    );
    assert_eq!(gate(&with(&["--ready-timeout", "2s"])), Err(clap::error::ErrorKind::MissingRequiredArgument));
    assert_eq!(gate(&with(&["--ready-http", "/health"])), Err(clap::error::ErrorKind::ValueValidation));
    assert_eq!(gate(&with(&["--ready-cmd", ""])), Err(clap::error::ErrorKind::InvalidValue));
}
