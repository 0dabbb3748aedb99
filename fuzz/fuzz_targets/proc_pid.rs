//! What steer reads of a process in `/proc/PID`: a `stat` line
//! (`steer::proc::stat_field`), an `fd/N` link (`parse_socket_link`), the
//! `CapEff:` line of `status`, and the kernel release (`preflight`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use steer::{preflight, proc};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for n in 0..=64 {
        // Fields 1 and 2 (pid, comm) are never read as numbers.
        assert!(proc::stat_field(&text, n).is_none() || n >= 3);
    }
    if let Some(inode) = proc::parse_socket_link(&text) {
        assert!(text.starts_with("socket:[") && text.ends_with(']'), "{inode}");
    }
    let _ = preflight::parse_cap_eff(&text);
    let _ = preflight::parse_release(&text);
});
