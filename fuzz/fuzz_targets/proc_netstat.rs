//! `/proc/net/netstat`: `steer::metrics::migrate_req_counters`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use steer::metrics::migrate_req_counters;

fuzz_target!(|data: &[u8]| {
    let _ = migrate_req_counters(&String::from_utf8_lossy(data));
});
