//! Unit tests of `paths.rs`.
use super::*;

#[test]
fn instance_names_round_trip() {
    let dir = instance_dir(Path::new("/sys/fs/bpf/steer"), 4_026_531_840);
    assert_eq!(dir, Path::new("/sys/fs/bpf/steer/net-4026531840"));
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    assert_eq!(parse_instance_name(name), Some(4_026_531_840));
    assert_eq!(parse_instance_name("net-x"), None);
    assert_eq!(parse_instance_name(".tmp-12"), None);
}

#[test]
fn flag_beats_default() {
    assert_eq!(state_dir(Some(Path::new("/x"))), Path::new("/x"));
}
