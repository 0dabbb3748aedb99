//! Unit tests of `upgrade.rs`: the pins of ABI 2 it must find and leave.
use steer_abi::GroupKey;

use super::*;

/// ABI 2 named a group's select-only program `prog-select-<group>` (as
/// `steer` 5de4f24 did, `state::select::pin_name`): an upgrade that fails
/// gives the group back exactly that program.
#[test]
fn abi2_select_pins_are_named_as_abi2_named_them() {
    let key =
        GroupKey { family: 2, protocol: 6, port: 8080, addr: [0x0100_007f, 0, 0, 0], ..GroupKey::default() };
    assert_eq!(abi2_select_pin_name(&key), "prog-select-2-6-1f90-0-0100007f000000000000000000000000");
}

/// What an upgrade adds is what a failed one removes, and nothing of ABI 2.
#[test]
fn removing_the_new_pins_leaves_every_abi2_pin() {
    let dir = std::env::temp_dir().join(format!("steer-upgrade-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = GroupKey { port: 80, ..GroupKey::default() };
    let abi2 = [pins::PROGRAM, pins::SOCKETS, pins::GROUPS, pins::INFO, pins::FLOWS];
    let old_select = abi2_select_pin_name(&key);
    for name in abi2.iter().copied().chain([old_select.as_str()]) {
        std::fs::write(dir.join(name), b"").unwrap();
    }
    for name in [pins::CONFIGS, pins::CURRENT, NEW_MARKER, &select::pin_name(3, &key)] {
        std::fs::write(dir.join(name), b"").unwrap();
    }
    remove_new_pins(&dir);
    let mut left: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    left.sort();
    let mut want: Vec<String> = abi2.iter().map(|s| (*s).to_owned()).chain([old_select.clone()]).collect();
    want.sort();
    assert_eq!(left, want);
    assert_eq!(old_group_programs(&dir).len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}
