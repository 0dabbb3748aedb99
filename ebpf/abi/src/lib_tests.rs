//! Unit tests of `lib.rs`.
use super::*;

#[test]
fn slot_range_contains() {
    let r = SlotRange { first: 10, count: 3 };
    assert!(!r.contains(9));
    assert!(r.contains(10));
    assert!(r.contains(12));
    assert!(!r.contains(13));
    assert!(!SlotRange::NONE.contains(0));
    assert!(SlotRange::NONE.is_none());
}

#[test]
fn counter_names_cover_every_index() {
    assert_eq!(counter::NAMES.len(), counter::COUNT);
    assert_eq!(counter::NAMES[counter::MIGRATED], "migrated");
}

/// Over every high half and 16 low halves, a 10 % canary takes its share and
/// its connections spread exactly evenly over its 4 sockets. (With the same
/// bits, `hash % 100 < 10` then `hash % 4`, this grid gives them unevenly.)
#[test]
fn share_and_socket_come_from_independent_bits() {
    let (weight, count) = (10, 4);
    let mut per_socket = [0_u64; 4];
    let mut canary = 0_u64;
    let mut all = 0_u64;
    for high in 0..=0xffff_u32 {
        for low in 0..16 {
            let hash = high << 16 | low;
            all += 1;
            if pick::share_bucket(hash) < weight {
                canary += 1;
                per_socket[pick::socket_index(hash, count) as usize] += 1;
            }
        }
    }
    let share = canary as f64 / all as f64;
    assert!((share - 0.10).abs() < 0.001, "canary share {share}");
    assert!(per_socket.iter().all(|n| *n == canary / 4), "{per_socket:?} of {canary}");
    assert_eq!(pick::share_bucket(u32::MAX), WEIGHT_SCALE - 1);
    assert_eq!(pick::share_bucket(0xffff), 0);
    assert_eq!(pick::socket_index(7, 0), 0);
    assert_eq!(pick::socket_index(0x0005_0006, 4), 2);
}

#[test]
fn map_names_fit_the_kernel_limit() {
    for name in [
        map_names::SOCKETS,
        map_names::GROUPS,
        map_names::SLOTS,
        map_names::GROUP_STATS,
        map_names::SLOT_STATS,
        map_names::GLOBAL_STATS,
        map_names::INFO,
        map_names::FLOWS,
    ] {
        assert!(name.len() <= 15, "{name} is longer than BPF_OBJ_NAME_LEN - 1");
    }
}

#[test]
fn a_flow_entry_holds_its_tag_slot_and_tick() {
    let e = flows::entry(0xdead_beef, 8191, 0x1_2345);
    assert_eq!(flows::tag(e), 0xdead_beef);
    assert_eq!(flows::slot(e), 8191);
    assert!(!flows::idle(e, 0x2345, 0));
    assert!(!flows::idle(e, 0x2345 + 28, 28));
    assert!(flows::idle(e, 0x2345 + 29, 28));
    // The clock wraps at 2^16 ticks: age is taken modulo it.
    let late = flows::entry(1, 3, 0xfffe);
    assert!(!flows::idle(late, 0x0001, 28));
    assert!(flows::idle(0, 0, flows::MAX_TIMEOUT_TICKS));
    assert!(flows::bucket(u32::MAX, u16::MAX) < flows::ENTRIES);
    assert_ne!(flows::bucket(7, 53), flows::bucket(7, 54));
}

#[test]
fn the_flow_timeout_lives_in_the_high_bits_of_the_flags() {
    let mut c = GroupConfig { flags: FLAG_OPERATOR, ..GroupConfig::default() };
    assert_eq!(c.flow_timeout(), flows::DEFAULT_TIMEOUT_TICKS);
    c.flags |= 5 << FLOW_TIMEOUT_SHIFT;
    assert_eq!(c.flow_timeout(), 5);
    assert_eq!(c.flags & FLAG_OPERATOR, FLAG_OPERATOR);
}

/// Each group index owns two entries, the switch alternates between them, and
/// 0 (or anything else) names none.
#[test]
fn published_entries_alternate_within_the_group() {
    assert_eq!(published::entry(0, 0), None);
    assert_eq!(published::entry(5, 1), Some(10));
    assert_eq!(published::entry(5, 2), Some(11));
    assert_eq!(published::entry(5, 3), None);
    assert_eq!(published::entry(MAX_GROUPS - 1, 2), Some(published::CONFIGS - 1));
    assert_eq!(published::next(0), 1);
    assert_eq!(published::next(1), 2);
    assert_eq!(published::next(2), 1);
}
