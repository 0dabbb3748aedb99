//! Unit tests of `unbound.rs`.
use std::path::Path;

use super::{UnboundConfig, parse_answered};

#[test]
fn the_config_keeps_everything_local_and_names_its_generation() {
    let text = UnboundConfig::new("g7", 5353, Path::new("/tmp/x")).render();
    for needle in [
        "port: 5353",
        "so-reuseport: yes",
        "do-daemonize: no",
        "chroot: \"\"",
        "username: \"\"",
        "local-zone: \"steer.test.\" static",
        "local-data: 'gen.steer.test. 0 IN TXT \"g7\"'",
        "local-zone: \".\" refuse",
        "logfile: \"/tmp/x/unbound-g7.log\"",
        "control-enable: no",
    ] {
        assert!(text.contains(needle), "{needle:?} not in\n{text}");
    }
    assert!(!text.contains("forward-zone"), "{text}");
}

#[test]
fn answered_sums_every_thread_of_the_exit_statistics() {
    let log = "\
[1796069679] unbound[21267:0] info: service stopped (unbound 1.17.1).
[1796069679] unbound[21267:0] info: server stats for thread 0: 2000 queries, 2000 answers from cache, 0 recursions, 0 prefetch, 0 rejected by ip ratelimiting
[1796069679] unbound[21267:0] info: server stats for thread 0: requestlist max 0 avg 0 exceeded 0 jostled 0
[1796069679] unbound[21267:1] info: server stats for thread 1: 35 queries, 35 answers from cache, 0 recursions, 0 prefetch, 0 rejected by ip ratelimiting
";
    assert_eq!(parse_answered(log), Some(2035));
    assert_eq!(parse_answered("[1] unbound[1:0] info: start of service (unbound 1.17.1).\n"), None);
}
