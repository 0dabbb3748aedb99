//! Unit tests of `daemon/limits.rs`.
use super::*;

#[test]
fn each_cap_refuses_past_its_limit_and_not_before() {
    let limits = Limits { instances: 2, groups_per_process: 3, generations_per_process: 4 };
    let ok = Facts { has_instance: false, instances: 1, groups: None, generations: 0 };
    for (facts, expected) in [
        (ok, None),
        // The namespace has state already: no new instance, whatever the count.
        (Facts { has_instance: true, instances: 9, ..ok }, None),
        (Facts { instances: 2, ..ok }, Some(Cap::Instances)),
        (Facts { groups: Some(3), ..ok }, None),
        (Facts { groups: Some(4), ..ok }, Some(Cap::Groups)),
        (Facts { generations: 3, ..ok }, None),
        (Facts { generations: 4, ..ok }, Some(Cap::Generations)),
        // The first cap that fails is named.
        (Facts { instances: 5, groups: Some(9), generations: 9, ..ok }, Some(Cap::Instances)),
    ] {
        let got = check(&limits, &facts);
        assert_eq!(got.as_ref().err().map(|(cap, _)| *cap), expected, "{facts:?}");
        if let Err((cap, why)) = got {
            let flag = match cap {
                Cap::Instances => "--max-instances",
                Cap::Groups => "--max-groups-per-process",
                Cap::Generations => "--max-generations-per-process",
            };
            assert!(why.contains(flag), "{why}");
        }
    }
}

/// A steerer that promotes whatever it is asked, changing something each time.
#[derive(Default)]
struct Always {
    calls: u32,
}

impl Steerer for Always {
    fn promote(&mut self, pid: u32, _scope: &[u16]) -> Result<Vec<Change>, StepError> {
        self.calls += 1;
        Ok(vec![Change {
            group: "127.0.0.1:80".into(),
            pid,
            sockets: 1,
            first_slot: 0,
            outcome: crate::policy::Outcome::Promoted,
            changed: true,
            generation: u64::from(self.calls),
            previous_pids: Vec::new(),
        }])
    }

    fn canary(&mut self, pid: u32, scope: &[u16], _weight: u32) -> Result<Vec<Change>, StepError> {
        self.promote(pid, scope)
    }

    fn complete(&mut self, pid: u32, scope: &[u16]) -> Result<Completion, StepError> {
        Ok(Completion { changes: self.promote(pid, scope)?, left: Vec::new() })
    }

    fn reattach(&mut self, _pid: u32, _scope: &[u16]) -> Result<Vec<String>, StepError> {
        Ok(Vec::new())
    }
}

#[test]
fn a_process_past_its_generations_is_refused_once_logged_once_counted() {
    let stats = Arc::new(DaemonStats::new());
    let limits = Limits { generations_per_process: 2, ..Limits::default() };
    // No state directory here: no instance, none counted.
    let dir = PathBuf::from("/nonexistent/steer-limits-test");
    let mut limited = Limited::new(Always::default(), dir, limits, Arc::clone(&stats));
    let me = std::process::id();
    assert!(limited.promote(me, &[]).is_ok());
    assert!(limited.promote(me, &[]).is_ok());
    for _ in 0..3 {
        let err = limited.promote(me, &[]).unwrap_err();
        assert!(matches!(err, StepError::Refused(_)), "{err}");
        assert!(!err.retryable());
    }
    assert_eq!(limited.inner.calls, 2, "a refused promote never reaches the steerer");
    assert_eq!(stats.refusals().get("generations"), Some(&1), "counted once per process");
    // Re-attaching creates nothing, and is never capped.
    assert!(limited.reattach(me, &[]).is_ok());
}

#[test]
fn the_window_forgets_old_generations_and_a_reused_pid_starts_afresh() {
    let stats = Arc::new(DaemonStats::new());
    let limits = Limits { generations_per_process: 1, ..Limits::default() };
    let mut limited = Limited::new(Always::default(), PathBuf::new(), limits, stats);
    let t = Instant::now();
    assert_eq!(limited.generations(7, 100, t), 0);
    limited.history.get_mut(&7).unwrap().1.push_back(t);
    assert_eq!(limited.generations(7, 100, t + WINDOW / 2), 1);
    assert_eq!(limited.generations(7, 100, t + WINDOW), 0, "past the window");
    limited.history.get_mut(&7).unwrap().1.push_back(t + WINDOW);
    assert_eq!(limited.generations(7, 200, t + WINDOW), 0, "another process with the same pid");
}
