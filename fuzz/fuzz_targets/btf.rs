//! `/sys/kernel/btf/vmlinux`: `Btf::parse`, then the field look-ups the daemon's
//! raw tracepoints make, and those of the seed blobs' types.
#![no_main]

use libfuzzer_sys::fuzz_target;
use steer::btf::Btf;

/// (struct, field path, expected size): daemon/tracepoint.rs's and the seeds'.
const LOOKUPS: &[(&str, &str, u32)] = &[
    ("sock", "__sk_common.skc_num", 2),
    ("sock", "__sk_common.skc_family", 2),
    ("sock", "sk_protocol", 2),
    ("task_struct", "pid", 4),
    ("sock_common", "skc_num", 2),
    ("sock", "sk_bits", 2),
    ("holder", "field", 4),
    ("sock", "", 2),
    ("sock", "__sk_common..skc_num", 2),
];

fuzz_target!(|data: &[u8]| {
    let Ok(btf) = Btf::parse(data) else { return };
    for &(strukt, path, size) in LOOKUPS {
        if let Ok(field) = btf.field(strukt, path, size) {
            assert_eq!(field.size, size);
        }
    }
});
