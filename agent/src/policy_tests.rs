//! Unit tests of the steering policy.
use super::*;

const A: SlotRange = SlotRange { first: 0, count: 1 };
const B: SlotRange = SlotRange { first: 1, count: 2 };
const C: SlotRange = SlotRange { first: 3, count: 1 };

fn active(r: SlotRange) -> GroupConfig {
    GroupConfig { generation: 1, active: r, ..GroupConfig::default() }
}

#[test]
fn first_promote_makes_the_generation_active() {
    let (cfg, out) = promote(None, A, 100, false).unwrap();
    assert_eq!(out, Outcome::Promoted);
    assert_eq!(cfg.active, A);
    assert!(cfg.previous.is_none());
    assert_eq!(cfg.generation, 1);
}

#[test]
fn promote_keeps_the_old_generation_for_rollback() {
    let (cfg, out) = promote(Some(&active(A)), B, 100, false).unwrap();
    assert_eq!(out, Outcome::Promoted);
    assert_eq!((cfg.active, cfg.previous, cfg.generation), (B, A, 2));
}

#[test]
fn promoting_the_active_generation_is_a_no_op() {
    let cur = active(A);
    let (cfg, out) = promote(Some(&cur), A, 100, false).unwrap();
    assert_eq!(out, Outcome::AlreadyActive);
    assert_eq!(cfg, cur);
}

#[test]
fn promoting_the_previous_generation_swaps_them() {
    let (cfg, _) = promote(Some(&active(A)), B, 100, false).unwrap();
    let (cfg, out) = promote(Some(&cfg), A, 100, false).unwrap();
    assert_eq!(out, Outcome::Promoted);
    assert_eq!((cfg.active, cfg.previous), (A, B));
}

#[test]
fn canary_takes_a_share_and_full_promote_ends_it() {
    let (cfg, out) = promote(Some(&active(A)), B, 10, false).unwrap();
    assert_eq!(out, Outcome::Canary { weight: 10 });
    assert_eq!((cfg.active, cfg.canary, cfg.canary_weight), (A, B, 10));
    let (again, out) = promote(Some(&cfg), B, 10, false).unwrap();
    assert_eq!(out, Outcome::AlreadyCanary { weight: 10 });
    assert_eq!(out.to_string(), "already canary at 10%");
    assert!(!out.changed() && Outcome::Promoted.changed());
    assert_eq!(again, cfg);
    let (cfg, out) = promote(Some(&cfg), B, 100, false).unwrap();
    assert_eq!(out, Outcome::Promoted);
    assert_eq!((cfg.active, cfg.previous, cfg.canary, cfg.canary_weight), (B, A, SlotRange::NONE, 0));
}

#[test]
fn canary_needs_an_active_generation_other_than_itself() {
    assert_eq!(promote(None, A, 50, false).unwrap_err(), PolicyError::NoActiveForCanary);
    assert_eq!(promote(Some(&active(A)), A, 50, false).unwrap_err(), PolicyError::CanaryIsActive);
}

#[test]
fn promoting_the_active_generation_while_a_canary_runs_ends_the_canary() {
    let (cfg, _) = promote(Some(&active(A)), B, 10, false).unwrap();
    let (cfg, out) = promote(Some(&cfg), A, 100, false).unwrap();
    assert_eq!(out, Outcome::Promoted);
    assert_eq!((cfg.active, cfg.canary), (A, SlotRange::NONE));
}

#[test]
fn rollback_swaps_active_and_previous() {
    let (cfg, _) = promote(Some(&active(A)), B, 100, false).unwrap();
    let (back, effect) = rollback(&cfg, true).unwrap();
    assert_eq!(effect, RollbackEffect::RestoresPrevious);
    assert_eq!((back.active, back.previous, back.generation), (A, B, cfg.generation + 1));
    assert_eq!(rollback(&active(A), true).unwrap_err(), PolicyError::NoPrevious);
    assert_eq!(rollback(&cfg, false).unwrap_err(), PolicyError::PreviousGone);
}

/// Z, then A, then B at 25 %: rollback ends B's canary and leaves A active
/// with Z as its rollback target, whether Z still listens or not.
#[test]
fn rollback_during_a_canary_ends_it_and_keeps_the_active_generation() {
    let (cfg, _) = promote(Some(&active(C)), A, 100, false).unwrap();
    let (cfg, _) = promote(Some(&cfg), B, 25, false).unwrap();
    assert_eq!((cfg.active, cfg.previous, cfg.canary, cfg.canary_weight), (A, C, B, 25));
    for previous_live in [true, false] {
        let (back, effect) = rollback(&cfg, previous_live).unwrap();
        assert_eq!(effect, RollbackEffect::EndsCanary);
        assert_eq!(
            back,
            GroupConfig {
                generation: cfg.generation + 1,
                active: A,
                previous: C,
                flags: steer_abi::FLAG_OPERATOR,
                ..GroupConfig::default()
            }
        );
        // A second rollback is then an ordinary one, back to Z.
        let (again, effect) = rollback(&back, true).unwrap();
        assert_eq!((effect, again.active, again.previous), (RollbackEffect::RestoresPrevious, C, A));
    }
}

/// A then B at 25 %, no generation before A: rollback still ends the canary,
/// and only a second one is refused.
#[test]
fn rollback_during_a_canary_without_a_previous_generation_ends_it() {
    let (cfg, _) = promote(Some(&active(A)), B, 25, false).unwrap();
    let (back, effect) = rollback(&cfg, false).unwrap();
    assert_eq!(effect, RollbackEffect::EndsCanary);
    let expected = GroupConfig {
        generation: cfg.generation + 1,
        active: A,
        flags: steer_abi::FLAG_OPERATOR,
        ..GroupConfig::default()
    };
    assert_eq!(back, expected);
    assert_eq!(rollback(&back, false).unwrap_err(), PolicyError::NoPrevious);
}

#[test]
fn rollback_effect_by_state() {
    let canary = GroupConfig { canary: B, canary_weight: 25, ..active(A) };
    let with_previous = GroupConfig { previous: C, ..active(A) };
    let table = [
        (canary, false, RollbackEffect::EndsCanary),
        (GroupConfig { previous: C, ..canary }, true, RollbackEffect::EndsCanary),
        (active(A), true, RollbackEffect::RefusedNoPrevious),
        (with_previous, false, RollbackEffect::RefusedPreviousGone),
        (with_previous, true, RollbackEffect::RestoresPrevious),
    ];
    for (config, previous_live, effect) in table {
        assert_eq!(rollback_effect(&config, previous_live), effect, "{config:?} live={previous_live}");
        match effect {
            RollbackEffect::RefusedNoPrevious | RollbackEffect::RefusedPreviousGone => {
                assert!(rollback(&config, previous_live).is_err());
            }
            _ => assert_eq!(rollback(&config, previous_live).unwrap().1, effect),
        }
    }
    let sentences = [
        RollbackEffect::EndsCanary,
        RollbackEffect::RestoresPrevious,
        RollbackEffect::RefusedNoPrevious,
        RollbackEffect::RefusedPreviousGone,
    ]
    .map(RollbackEffect::describe);
    assert!(sentences.iter().all(|s| !s.is_empty() && !s.contains('\n')), "{sentences:?}");
}

fn metas(cookies: &[u64]) -> Slots {
    (0_u32..)
        .zip(cookies)
        .filter(|(_, c)| **c != 0)
        .map(|(s, c)| (s, SlotMeta { cookie: *c, ..SlotMeta::default() }))
        .collect()
}

#[test]
fn allocation_is_first_fit_and_contiguous() {
    let m = metas(&[7, 0, 8, 0, 0, 0]);
    assert_eq!(allocate(&m, 6, 1).unwrap(), SlotRange { first: 1, count: 1 });
    assert_eq!(allocate(&m, 6, 2).unwrap(), SlotRange { first: 3, count: 2 });
    assert_eq!(allocate(&m, 6, 3).unwrap(), SlotRange { first: 3, count: 3 });
    assert_eq!(allocate(&m, 6, 4).unwrap_err(), PolicyError::SockarrayFull { needed: 4, free: 4 });
    assert_eq!(allocate(&Slots::new(), 2, 2).unwrap(), SlotRange { first: 0, count: 2 });
    assert_eq!(
        allocate(&metas(&[1, 2]), 2, 1).unwrap_err(),
        PolicyError::SockarrayFull { needed: 1, free: 0 }
    );
    assert_eq!(allocate(&metas(&[1, 0, 2]), 8192, 2).unwrap(), SlotRange { first: 3, count: 2 });
}

#[test]
fn existing_ranges_are_found_by_cookie() {
    let m = metas(&[10, 20, 21, 30]);
    let cfg = GroupConfig { active: B, previous: A, canary: C, ..GroupConfig::default() };
    assert_eq!(find_range(&cfg, &m, &[21, 20]), Some(B));
    assert_eq!(find_range(&cfg, &m, &[10]), Some(A));
    assert_eq!(find_range(&cfg, &m, &[99]), None);
}

#[test]
fn a_generation_that_kept_part_of_a_range_is_found_inside_it() {
    // nginx 4 -> 2 workers: the new generation holds the first two of four sockets.
    let m = metas(&[10, 20, 21, 22, 23]);
    let wide = SlotRange { first: 1, count: 4 };
    let cfg = GroupConfig { active: wide, previous: A, ..GroupConfig::default() };
    assert_eq!(find_range(&cfg, &m, &[21, 20]), Some(SlotRange { first: 1, count: 2 }));
    assert_eq!(find_range(&cfg, &m, &[22]), Some(SlotRange { first: 3, count: 1 }));
    assert_eq!(find_range(&cfg, &m, &[22, 23, 21]), Some(SlotRange { first: 2, count: 3 }));
    // The exact range wins over a window, and a window must hold only these sockets.
    assert_eq!(find_range(&cfg, &m, &[10]), Some(A));
    assert_eq!(find_range(&cfg, &m, &[20, 22]), None, "not consecutive");
    assert_eq!(find_range(&cfg, &m, &[20, 99]), None, "one is new");
    assert_eq!(find_range(&cfg, &m, &[]), None);
}

#[test]
fn a_new_generation_in_reused_slots_is_promoted_not_already_active() {
    // The old generation exited, its slot was reclaimed and refilled.
    let (cfg, out) = promote(Some(&active(A)), A, 100, true).unwrap();
    assert_eq!(out, Outcome::Promoted);
    assert_eq!((cfg.active, cfg.generation), (A, 2));
    assert!(cfg.previous.is_none(), "the exited generation is no rollback target");
}

#[test]
fn the_interim_configuration_points_at_the_sockets_already_in_place() {
    let range = SlotRange { first: 4, count: 3 };
    let part = SlotRange { first: 5, count: 2 };
    let active = GroupConfig { generation: 7, active: range, previous: A, ..GroupConfig::default() };
    assert_eq!(interim(&active, range, 1), GroupConfig { active: part, ..active });
    let canary =
        GroupConfig { generation: 8, active: A, canary: range, canary_weight: 10, ..GroupConfig::default() };
    assert_eq!(interim(&canary, range, 1), GroupConfig { canary: part, ..canary });
}

#[test]
fn a_generation_grows_when_every_active_socket_is_among_the_new_ones() {
    let meta = |cookie| SlotMeta { cookie, ..SlotMeta::default() };
    let metas: Slots = [(0, meta(10)), (1, meta(11)), (3, meta(30))].into();
    let two = SlotRange { first: 0, count: 2 };
    assert!(grows(two, &metas, &[10, 11, 12]));
    assert!(grows(SlotRange { first: 0, count: 1 }, &metas, &[10, 12]));
    assert!(!grows(two, &metas, &[10, 12]), "a socket of the active generation is not in the new set");
    assert!(!grows(SlotRange { first: 2, count: 1 }, &metas, &[10]), "an empty slot");
    assert!(!grows(SlotRange::NONE, &metas, &[10]), "no active generation");
}

#[test]
fn the_operators_commands_mark_the_configuration_and_the_daemon_yields_to_the_generations_it_names() {
    use steer_abi::FLAG_OPERATOR;
    let cfg = GroupConfig { generation: 1, active: A, previous: B, ..GroupConfig::default() };
    let (rolled, _) = rollback(&cfg, true).unwrap();
    assert_eq!(rolled.flags & FLAG_OPERATOR, FLAG_OPERATOR, "rollback marks it");
    let canary = GroupConfig { canary: C, canary_weight: 10, ..cfg };
    let (ended, _) = rollback(&canary, true).unwrap();
    assert_eq!(ended.flags & FLAG_OPERATOR, FLAG_OPERATOR, "ending a canary marks it");
    assert!(operator_holds(&rolled, true, false), "the daemon yields for a named generation");
    assert!(!operator_holds(&rolled, false, false), "not for one the configuration does not name");
    assert!(!operator_holds(&rolled, true, true), "the operator is never held back");
    assert!(!operator_holds(&cfg, true, false), "nothing to yield to");
    assert_eq!(flags_after_promote(&cfg, true), FLAG_OPERATOR);
    assert_eq!(flags_after_promote(&rolled, false), 0, "the daemon's promote of a new generation clears it");
}
