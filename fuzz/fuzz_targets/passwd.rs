//! `/etc/passwd`, for `--user NAME`: `steer::daemon::resolve_user`, with the
//! input's first line as the name and the rest as the file, and with fixed names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use steer::daemon::resolve_user;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (name, file) = text.split_once('\n').unwrap_or((&text, ""));
    let _ = resolve_user(name, file);
    for name in ["root", "haproxy", "nobody", ""] {
        let _ = resolve_user(name, &text);
    }
});
