//! Unit tests of `haproxy.rs`.
use std::path::Path;

use super::{generation_name, render_config};

#[test]
fn config_answers_with_the_generation_and_limits_maxconn() {
    let cfg = render_config(Path::new("/tmp/x"), 8080, &generation_name(3), &[]);
    assert!(cfg.contains("\n    maxconn 4000\n"), "{cfg}");
    assert!(cfg.contains("stats socket /tmp/x/admin.sock mode 600 level admin expose-fd listeners"));
    assert!(cfg.contains("\n    bind 127.0.0.1:8080\n"), "{cfg}");
    assert!(cfg.contains(r#"lf-string "gen=g3 pid=%pid\n""#), "{cfg}");
    assert!(!cfg.contains("noreuseport"));
    assert!(!cfg.contains("grace"), "{cfg}");
    let cfg = render_config(Path::new("/tmp/x"), 8080, "g0", &["grace 100ms", "hard-stop-after 10s"]);
    assert!(cfg.contains("\n    grace 100ms\n    hard-stop-after 10s\n"), "{cfg}");
}
