//! `/proc/PID/cgroup`: `steer::daemon::cgroup_matches`, with the input's first
//! line as the `--cgroup` pattern and the rest as the file, and with fixed patterns.
#![no_main]

use libfuzzer_sys::fuzz_target;
use steer::daemon::cgroup_matches;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (pattern, file) = text.split_once('\n').unwrap_or((&text, ""));
    let _ = cgroup_matches(pattern, file);
    for pattern in ["/", "/kubepods.slice", "/system.slice/haproxy.service/", "docker-", ""] {
        let _ = cgroup_matches(pattern, &text);
    }
});
