//! `/proc/PID/net/tcp` and `tcp6`: `steer::sockdiag::parse_proc_line` on every
//! line, as `listeners_from_proc` reads them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use steer::sockdiag;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for line in text.lines() {
        if let Some(listener) = sockdiag::parse_proc_line(line) {
            assert!(listener.backlog.is_none() && listener.cookie.is_none());
        }
    }
});
