//! The metrics endpoint's `Accept` header: `steer::metrics::negotiate` (hyper
//! parses the rest of the request).
#![no_main]

use libfuzzer_sys::fuzz_target;
use steer::metrics::{Format, negotiate};

fuzz_target!(|data: &[u8]| {
    let accept = String::from_utf8_lossy(data);
    let format = negotiate(Some(&accept));
    // Prometheus text unless OpenMetrics is named.
    if !accept.to_ascii_lowercase().contains("application/openmetrics-text") {
        assert_eq!(format, Format::Prometheus);
    }
});
