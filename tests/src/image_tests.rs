//! Unit tests of `image.rs`.
use std::path::PathBuf;

use super::{has_interpreter, parse_ldd};

#[test]
fn ldd_output_gives_every_absolute_path() {
    let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f33)\n\
                \t/lib64/ld-linux-x86-64.so.2 (0x00007f34)\n\
                \tlibgone.so => not found\n";
    let paths = parse_ldd(text);
    let expected: Vec<PathBuf> = ["/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"]
        .iter()
        .map(PathBuf::from)
        .collect();
    assert_eq!(paths, expected);
}

#[test]
fn elf_interpreter_is_found_in_the_program_headers() {
    // The running test binary is dynamically linked (cargo's default for gnu targets).
    let me = std::fs::read(std::env::current_exe().expect("current exe")).expect("read self");
    assert_eq!(has_interpreter(&me), Some(true));
    assert_eq!(has_interpreter(b"#!/bin/sh\n"), None);
    // A minimal ELF64 header with no program headers.
    let mut header = vec![0u8; 64];
    header[..6].copy_from_slice(b"\x7fELF\x02\x01");
    assert_eq!(has_interpreter(&header), Some(false));
}
