//! A NETLINK_SOCK_DIAG reply datagram: `steer::sockdiag::parse_dump` (listeners)
//! and `parse_handshake` (one `inet_diag_msg` of a SYN_RECV dump).
#![no_main]

use libfuzzer_sys::fuzz_target;
use steer::sockdiag;

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    let _ = sockdiag::parse_dump(data, &mut out);
    // Every listener comes from a message of at least 16 + 72 bytes.
    assert!(out.len() <= data.len() / 88);
    let _ = sockdiag::parse_handshake(data);
    // The body of the first message, as the handshake dump hands it over.
    if let Some(body) = data.get(16..) {
        let _ = sockdiag::parse_handshake(body);
    }
});
