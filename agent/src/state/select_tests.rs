//! Unit tests of `select.rs`: pin names and which mode a request accepts.
use steer_abi::GroupKey;

use super::*;

#[test]
fn each_group_gets_its_own_pin_name_without_dots() {
    let a =
        GroupKey { family: 2, protocol: 6, port: 8080, addr: [0x0100_007f, 0, 0, 0], ..GroupKey::default() };
    let b = GroupKey { port: 8081, ..a };
    let c = GroupKey { ifindex: 3, ..a };
    let v6 = GroupKey { family: 10, addr: [0, 0, 0, 0x0100_0000], ..a };
    let names: Vec<String> = [a, b, c, v6].iter().map(|k| pin_name(1023, k)).collect();
    assert_eq!(names[0], "prog-group-1023-2-6-1f90-0-0100007f000000000000000000000000");
    for (i, n) in names.iter().enumerate() {
        assert!(!n.contains('.') && n.len() < 255, "{n}");
        assert!(n.starts_with(pins::GROUP_PROGRAM_PREFIX));
        assert!(names.iter().skip(i + 1).all(|m| m != n), "{names:?}");
    }
}

#[test]
fn only_an_insistent_request_meets_a_migrating_instance() {
    let select = Wanted { mode: Mode::SelectOnly, reason: "--no-migrate".to_owned() };
    let any = Wanted { mode: Mode::SelectOrMigrate, reason: String::new() };
    assert!(select.accepts(Mode::SelectOnly));
    assert!(!select.accepts(Mode::SelectOrMigrate));
    // A later command without --no-migrate keeps the stored mode.
    assert!(any.accepts(Mode::SelectOnly));
    assert!(any.accepts(Mode::SelectOrMigrate));
    assert!(Wanted::new(true).mode == Mode::SelectOnly);
    assert_eq!(Mode::SelectOnly.to_string(), "select-only");
    assert_eq!(Mode::SelectOrMigrate.to_string(), "select+migrate");
}

#[test]
fn the_mode_is_read_from_the_program_pins() {
    let dir = std::env::temp_dir().join(format!("steer-mode-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    assert_eq!(mode_of(&dir), None);
    std::fs::write(dir.join(pins::SELECT_PROGRAM), b"").unwrap();
    let key = GroupKey { port: 80, ..GroupKey::default() };
    std::fs::write(dir.join(pin_name(7, &key)), b"").unwrap();
    assert_eq!(mode_of(&dir), Some(Mode::SelectOnly));
    assert_eq!(group_programs(&dir).len(), 1, "the marker is no group's program");
    assert_eq!(pinned_index(&dir, &key), Some(7));
    assert_eq!(pinned_index(&dir, &GroupKey { port: 81, ..key }), None);
    assert_eq!(pinned_indexes(&dir), vec![7]);
    std::fs::write(dir.join(pins::PROGRAM), b"").unwrap();
    assert_eq!(mode_of(&dir), Some(Mode::SelectOrMigrate));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_jiffy_and_hz_follow_from_the_coarse_clocks_resolution() {
    for (res, hz) in [(4_000_000, 250), (1_000_000, 1000), (3_333_333, 300), (10_000_000, 100)] {
        let (jiffy_ns, initial) = jiffy_clock_of(res);
        assert_eq!(jiffy_ns, res);
        assert_eq!(initial, (1_u64 << 32) - 300 * hz, "HZ {hz}");
    }
}

/// The program's clock agrees with CLOCK_MONOTONIC to within a tick:
/// `/proc/timer_list` prints `jiffies` and the kernel's own `now` side by
/// side (root only; skipped, with the reason, where it cannot be read).
#[test]
fn jiffies_give_the_monotonic_clock_to_within_a_tick() {
    let Ok(text) = std::fs::read_to_string("/proc/timer_list") else {
        eprintln!("skipping: /proc/timer_list is not readable here");
        return;
    };
    let field = |prefix: &str| -> u64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix)?.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in /proc/timer_list"))
    };
    let (now, jiffies) = (field("now at "), field("jiffies: "));
    let (jiffy_ns, initial) = jiffy_clock();
    let from_jiffies = steer_abi::flows::now_ns(jiffies, initial, jiffy_ns);
    let tick = 1_u64 << steer_abi::flows::TICK_SHIFT;
    assert!(now.abs_diff(from_jiffies) < tick, "now {now} ns, from jiffies {from_jiffies} ns");
}
