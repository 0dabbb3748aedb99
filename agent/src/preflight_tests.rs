//! Unit tests of `preflight.rs`.
use super::*;

#[test]
fn releases_parse() {
    assert_eq!(parse_release("6.18.44-fc-v445"), Some((6, 18)));
    assert_eq!(parse_release("5.4.0-150-generic"), Some((5, 4)));
    assert_eq!(parse_release("5.14"), Some((5, 14)));
    assert_eq!(parse_release("garbage"), None);
    assert!(parse_release("5.5.0").unwrap() < MIN_KERNEL);
    assert!(parse_release("5.10.0-32-cloud-amd64").unwrap() >= MIN_KERNEL);
}

#[test]
fn migration_needs_5_14() {
    assert!(!migrate_supported("5.10.0-32-cloud-amd64"));
    assert!(!migrate_supported("5.13.19"));
    assert!(migrate_supported("5.14.0"));
    assert!(migrate_supported("6.18.44-fc-v657"));
    assert!(!migrate_supported("garbage"));
}

#[test]
fn capabilities_parse_and_name_what_is_missing() {
    let root = "Name:\tx\nCapEff:\t000001ffffffffff\n";
    assert_eq!(missing_caps(parse_cap_eff(root).unwrap()), Vec::<&str>::new());
    let nobody = "CapEff:\t0000000000000000\n";
    assert_eq!(
        missing_caps(parse_cap_eff(nobody).unwrap()),
        vec!["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_PTRACE"]
    );
    let no_perfmon = 1_u64 << CAP_BPF | 1 << CAP_NET_ADMIN | 1 << CAP_SYS_PTRACE;
    assert_eq!(missing_caps(no_perfmon), vec!["CAP_PERFMON"]);
    let only_admin = 1_u64 << CAP_SYS_ADMIN | 1 << CAP_NET_ADMIN;
    assert_eq!(missing_caps(only_admin), vec!["CAP_SYS_PTRACE"]);
}
