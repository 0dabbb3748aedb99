//! Unit tests of `kernels/initramfs.rs`.
use super::{Cpio, EXEC};

#[test]
fn newc_entries_are_padded_to_four_bytes() {
    let mut cpio = Cpio::default();
    cpio.file("init", EXEC, b"#!/bin/sh\n");
    let out = cpio.finish();
    assert!(out.starts_with(b"070701"));
    // Header 110 bytes + "init\0" = 115, padded to 116; data 10, padded to 12.
    assert_eq!(&out[110..115], b"init\0");
    assert_eq!(&out[116..126], b"#!/bin/sh\n");
    assert_eq!(&out[128..134], b"070701");
    assert_eq!(out.len() % 4, 0);
    assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
}
