//! Unit tests of `nginx.rs`.
use std::path::Path;

use super::render_config;

#[test]
fn config_listens_with_reuseport_and_names_the_worker() {
    let cfg = render_config(Path::new("/tmp/n"), 8080, 4);
    assert!(cfg.contains("\nworker_processes 4;\n"), "{cfg}");
    assert!(cfg.contains("\npid /tmp/n/nginx.pid;\n"), "{cfg}");
    assert!(cfg.contains("error_log /tmp/n/error.log"), "{cfg}");
    assert!(cfg.contains("listen 127.0.0.1:8080 reuseport;"), "{cfg}");
    assert!(cfg.contains(r#"return 200 "gen=$pid pid=$pid\n";"#), "{cfg}");
    assert!(cfg.contains("daemon on;"));
}

#[test]
fn braces_balance() {
    let cfg = render_config(Path::new("/d"), 1, 1);
    assert_eq!(cfg.matches('{').count(), cfg.matches('}').count(), "{cfg}");
}
