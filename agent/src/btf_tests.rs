//! Unit tests of the BTF field finder: a hand-built blob for every rule, and the
//! running kernel's own BTF where it exists.
use super::*;

/// Builds a little-endian BTF blob from raw type records and a string table.
struct Blob {
    types: Vec<u8>,
    strings: Vec<u8>,
}

impl Blob {
    fn new() -> Self {
        Self { types: Vec::new(), strings: vec![0] }
    }

    fn name(&mut self, s: &str) -> u32 {
        let at = u32::try_from(self.strings.len()).unwrap();
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        at
    }

    fn words(&mut self, words: &[u32]) {
        for w in words {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
    }

    fn info(kind: u32, vlen: u32, kind_flag: bool) -> u32 {
        (u32::from(kind_flag) << 31) | (kind << 24) | vlen
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let type_len = u32::try_from(self.types.len()).unwrap();
        let str_len = u32::try_from(self.strings.len()).unwrap();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [24, 0, type_len, type_len, str_len] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// Types: 1 u16 (int), 2 typedef __u16 -> 1, 3 anonymous struct { __be16 dport; __u16 num; },
/// 4 anonymous union { u32 portpair; struct 3 }, 5 u32, 6 struct sock_common { union 4 @ 96 bits;
/// __u16 family @ 128 }, 7 struct sock { struct sock_common __sk_common; __u16 proto @ 256;
/// bits:4 @ 272 (kind flag) }.
fn sample() -> Vec<u8> {
    let mut b = Blob::new();
    let (u16n, typedef, num, dport, portpair, u32n) = (
        b.name("u16"),
        b.name("__u16"),
        b.name("skc_num"),
        b.name("skc_dport"),
        b.name("skc_portpair"),
        b.name("u32"),
    );
    let (common, family, sock, sk_common, proto, bits) = (
        b.name("sock_common"),
        b.name("skc_family"),
        b.name("sock"),
        b.name("__sk_common"),
        b.name("sk_protocol"),
        b.name("sk_bits"),
    );
    b.words(&[u16n, Blob::info(KIND_INT, 0, false), 2, 16]); // 1
    b.words(&[typedef, Blob::info(KIND_TYPEDEF, 0, false), 1]); // 2
    b.words(&[0, Blob::info(KIND_STRUCT, 2, false), 4, dport, 2, 0, num, 2, 16]); // 3
    b.words(&[0, Blob::info(KIND_UNION, 2, false), 4, portpair, 5, 0, 0, 3, 0]); // 4
    b.words(&[u32n, Blob::info(KIND_INT, 0, false), 4, 32]); // 5
    b.words(&[common, Blob::info(KIND_STRUCT, 2, false), 24, 0, 4, 96, family, 2, 128]); // 6
    // The kind flag: bit-field size in the top 8 bits of the offset word.
    b.words(&[
        sock,
        Blob::info(KIND_STRUCT, 3, true),
        40,
        sk_common,
        6,
        0,
        proto,
        2,
        256,
        bits,
        2,
        (4 << 24) | 272,
    ]); // 7
    b.bytes()
}

#[test]
fn a_field_inside_anonymous_members_is_found_with_its_offset() {
    let btf = Btf::parse(&sample()).unwrap();
    assert_eq!(btf.field("sock", "__sk_common.skc_num", 2).unwrap(), Field { offset: 14, size: 2 });
    assert_eq!(btf.field("sock", "__sk_common.skc_family", 2).unwrap(), Field { offset: 16, size: 2 });
    assert_eq!(btf.field("sock_common", "skc_num", 2).unwrap(), Field { offset: 14, size: 2 });
    assert_eq!(btf.field("sock", "sk_protocol", 2).unwrap(), Field { offset: 32, size: 2 });
}

#[test]
fn a_missing_struct_or_field_a_bit_field_and_a_wrong_size_are_refused() {
    let btf = Btf::parse(&sample()).unwrap();
    assert!(matches!(btf.field("task_struct", "pid", 4), Err(BtfError::NoStruct(_))));
    assert!(matches!(btf.field("sock", "sk_nothing", 2), Err(BtfError::NoField { .. })));
    assert!(matches!(btf.field("sock", "sk_bits", 2), Err(BtfError::BitField { .. })));
    assert!(matches!(btf.field("sock", "sk_protocol", 4), Err(BtfError::Size { found: 2, expected: 4, .. })));
}

#[test]
fn damaged_blobs_are_errors_not_panics() {
    let good = sample();
    assert!(Btf::parse(&[]).is_err());
    assert!(Btf::parse(&good[..good.len() / 2]).is_err());
    let mut bad_magic = good.clone();
    bad_magic[0] = 0;
    assert!(Btf::parse(&bad_magic).is_err());
    // Every truncation and every single-byte change parses or fails cleanly.
    for cut in 0..good.len() {
        let _ = Btf::parse(&good[..cut]);
    }
    for at in 0..good.len() {
        let mut changed = good.clone();
        changed[at] ^= 0xff;
        if let Ok(btf) = Btf::parse(&changed) {
            let _ = btf.field("sock", "__sk_common.skc_num", 2);
        }
    }
}

/// The running kernel: the fields the raw watcher reads are where every kernel
/// since 4.x keeps them (include/net/sock.h, struct sock_common), and the
/// others exist with the sizes the program reads.
#[test]
fn the_running_kernels_btf_has_the_fields_the_watcher_reads() {
    if !Path::new(VMLINUX).exists() {
        eprintln!("skipping the_running_kernels_btf_has_the_fields_the_watcher_reads: no {VMLINUX}");
        return;
    }
    let btf = Btf::from_sys_fs().unwrap();
    assert_eq!(btf.field("sock", "__sk_common.skc_num", 2).unwrap().offset, 14);
    assert_eq!(btf.field("sock", "__sk_common.skc_family", 2).unwrap().offset, 16);
    btf.field("sock", "sk_protocol", 2).unwrap();
    btf.field("task_struct", "pid", 4).unwrap();
}

#[test]
fn a_type_that_contains_itself_is_an_error() {
    let mut b = Blob::new();
    let (arr, s, f) = (b.name("loop"), b.name("holder"), b.name("field"));
    let _ = arr;
    // 1: an array whose element is itself; 2: struct holder { type 1 field; }.
    b.words(&[0, Blob::info(KIND_ARRAY, 0, false), 0, 1, 1, 4]);
    b.words(&[s, Blob::info(KIND_STRUCT, 1, false), 8, f, 1, 0]);
    // 3: a typedef that names itself.
    b.words(&[0, Blob::info(KIND_TYPEDEF, 0, false), 3]);
    let btf = Btf::parse(&b.bytes()).unwrap();
    assert!(matches!(btf.field("holder", "field", 4), Err(BtfError::Malformed(_))));
    assert!(btf.resolve(3).is_err());
}

/// Found by the `btf` fuzz target: an anonymous member's bit offset plus the
/// offset of a field inside it overflowed (a panic with overflow checks, a
/// wrong offset without).
#[test]
fn an_offset_past_u32_is_malformed() {
    let mut b = Blob::new();
    let (u16n, num, sock) = (b.name("u16"), b.name("skc_num"), b.name("sock"));
    b.words(&[u16n, Blob::info(KIND_INT, 0, false), 2, 16]); // 1
    b.words(&[0, Blob::info(KIND_STRUCT, 1, false), 4, num, 1, 16]); // 2: { u16 skc_num @ 16 }
    b.words(&[sock, Blob::info(KIND_STRUCT, 1, false), 8, 0, 2, u32::MAX - 8]); // 3: { struct 2 @ MAX - 8 }
    let btf = Btf::parse(&b.bytes()).unwrap();
    assert!(matches!(btf.field("sock", "skc_num", 2), Err(BtfError::Malformed("offset overflow"))));
}
