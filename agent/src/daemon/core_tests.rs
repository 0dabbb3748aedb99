//! The core's rules, one table or scene each, against a scripted world.
use super::*;
use crate::{
    daemon::fake::{Fake, p},
    ops::OpError,
    sockets::SocketError,
    state::StateError,
};

fn core(policy: Policy, ports: &[u16]) -> Core {
    Core::new(Config {
        policy,
        ready_delay: Duration::ZERO,
        ports: ports.to_vec(),
        me: 4_000_000,
        canary: None,
        ready_timeout: None,
    })
}

fn listen(pid: u32, port: u16, ktime_ns: u64) -> Event {
    Event::Listen { pid, port, ktime_ns }
}

fn not_ready() -> StepError {
    OpError::Socket(SocketError::NoListeners { pid: 10, comm: "srv".into(), ports: String::new() }).into()
}

fn change(pid: u32) -> Done {
    Done::Promoted(vec![crate::daemon::fake::promoted(pid)])
}

fn pids(decisions: &[Decision]) -> Vec<u32> {
    decisions.iter().map(|d| d.pid).collect()
}

#[test]
fn a_listen_event_is_a_promotion_of_that_process_on_that_port() {
    let t = Instant::now();
    let world = Fake::with([p(1, "srv", 10, 10, &[80])]);
    let mut c = core(Policy::Newest, &[80]);
    c.observe(&[listen(10, 80, 5)], t, &world);
    let (d, r) = c.take_due(t, &world);
    assert!(r.is_empty());
    assert_eq!(
        d,
        vec![Decision {
            action: Action::Promote,
            pid: 10,
            scope: vec![80],
            groups: vec![(
                GroupId { netns: 1, port: 80 },
                Pending { due: t, ktime_ns: 5, pid: 10, tries: 0, fallbacks: 0, trigger: Trigger::Listen }
            )],
            trigger: Trigger::Listen,
            ktime_ns: 5,
        }]
    );
    assert!(c.pending().is_empty());
}

#[test]
fn events_the_filter_excludes_queue_nothing() {
    let t = Instant::now();
    let mut stranger = p(1, "other", 10, 20, &[80]);
    stranger.1.matches = false;
    let world = Fake::with([p(1, "srv", 10, 10, &[80]), stranger]);
    for (ports, event) in [
        (vec![80], listen(10, 81, 1)),        // another port
        (vec![80], listen(20, 80, 1)),        // a process the filter excludes
        (vec![], listen(4_000_000, 9477, 1)), // the daemon's own metrics listener
        (vec![80], Event::Closed),
        (vec![80], Event::Polled { pid: 20, port: 80, ktime_ns: 1 }),
    ] {
        let mut c = core(Policy::Newest, &ports);
        c.observe(&[event], t, &world);
        assert!(c.pending().is_empty(), "{event:?} queued {:?}", c.pending());
    }
}

#[test]
fn a_listen_before_the_socket_joins_its_group_is_tried_again_with_backoff_then_given_up() {
    let t = Instant::now();
    let world = Fake::with([p(1, "srv", 10, 10, &[80])]);
    let mut c = core(Policy::Newest, &[80]);
    c.observe(&[listen(10, 80, 1)], t, &world);
    let mut now = t;
    let mut waits = Vec::new();
    for tries in 1..=MAX_TRIES {
        let (mut d, _) = c.take_due(now, &world);
        assert_eq!(pids(&d), vec![10], "try {tries}");
        let reports = c.settle(d.remove(0), Err(not_ready()), now, &world);
        if tries < MAX_TRIES {
            assert!(
                matches!(reports[..], [Report::Retrying { pid: 10, port: 80, tries: n, .. }] if n == tries)
            );
            let due = c.next_due().expect("a retry is pending");
            waits.push(due - now);
            // Not before it is due.
            assert!(c.take_due(due - Duration::from_millis(1), &world).0.is_empty());
            now = due;
        } else {
            assert!(matches!(reports[..], [Report::Failed { pid: 10, tries: MAX_TRIES, .. }]), "{reports:?}");
            assert!(c.pending().is_empty());
        }
    }
    let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
    assert_eq!(ms, vec![10, 20, 40, 80]);
}

#[test]
fn an_error_that_cannot_pass_is_not_tried_again() {
    let t = Instant::now();
    let world = Fake::with([p(1, "srv", 10, 10, &[80])]);
    let mut c = core(Policy::Newest, &[80]);
    c.observe(&[listen(10, 80, 1)], t, &world);
    let (mut d, _) = c.take_due(t, &world);
    let busy: StepError = OpError::State(StateError::SocketBusy { cookie: 7, pid: 10, fd: 3 }).into();
    assert!(!busy.retryable());
    assert!(busy.to_string().contains("steer promote 10 --take-over"), "{busy}");
    let reports = c.settle(d.remove(0), Err(busy), t, &world);
    assert!(matches!(reports[..], [Report::Failed { tries: 1, .. }]), "{reports:?}");
    assert!(c.pending().is_empty());
}

#[test]
fn when_the_listeners_process_has_left_its_newest_holder_is_promoted() {
    // HAProxy -D: pid 10 listens, forks 11 (which inherits the socket), exits.
    let t = Instant::now();
    let mut world = Fake::with([p(1, "haproxy", 10, 10, &[80]), p(1, "haproxy", 5, 3, &[80])]);
    let mut c = core(Policy::Newest, &[80]);
    c.observe(&[listen(10, 80, 1)], t, &world);
    world.procs.remove(&10);
    let (_, mut child) = p(1, "haproxy", 11, 11, &[80]);
    child.listeners = [(80, 8010)].into();
    world.procs.insert(11, child);
    let (d, _) = c.take_due(t, &world);
    assert_eq!(pids(&d), vec![11], "the newest holder, not the older generation 3");
}

#[test]
fn a_live_listener_with_a_same_named_child_holding_its_sockets_promotes_the_child() {
    let t = Instant::now();
    let (_, mut child) = p(1, "haproxy", 11, 11, &[80]);
    child.parent = 10;
    child.listeners = [(80, 8010)].into();
    let (_, mut helper) = p(1, "logger", 12, 12, &[80]);
    helper.parent = 10;
    helper.listeners = [(80, 8010)].into();
    let world = Fake::with([p(1, "haproxy", 10, 10, &[80]), (11, child.clone()), (12, helper)]);
    let mut c = core(Policy::Newest, &[80]);
    c.observe(&[listen(10, 80, 1)], t, &world);
    assert_eq!(pids(&c.take_due(t, &world).0), vec![11]);
    // A child that does not hold every listener of its parent is not the server.
    child.listeners = [(80, 9999)].into();
    let world = Fake::with([p(1, "haproxy", 10, 10, &[80]), (11, child)]);
    c.observe(&[listen(10, 80, 1)], t, &world);
    assert_eq!(pids(&c.take_due(t, &world).0), vec![10]);
}

#[test]
fn a_fork_holding_exactly_its_parents_listeners_is_promoted_and_a_helper_holding_a_subset_is_not() {
    let t = Instant::now();
    let (_, mut master) = p(1, "nginx", 10, 10, &[80, 443]);
    master.listeners = [(80, 1), (443, 2)].into();
    let mut worker = master.clone();
    worker.parent = 10;
    worker.start = 11;
    let mut helper = worker.clone();
    helper.listeners = [(80, 1)].into();
    let world = Fake::with([(10, master), (11, worker), (12, helper)]);
    let mut c = core(Policy::Newest, &[]);
    c.observe(&[Event::Forked { parent: 10, child: 12, ktime_ns: 1 }], t, &world);
    assert!(c.pending().is_empty(), "a helper: {:?}", c.pending());
    c.observe(&[Event::Forked { parent: 10, child: 11, ktime_ns: 2 }], t, &world);
    let (d, _) = c.take_due(t, &world);
    assert_eq!(pids(&d), vec![11]);
    assert_eq!(d[0].trigger, Trigger::Fork);
    assert_eq!(d[0].groups.iter().map(|(g, _)| g.port).collect::<Vec<_>>(), vec![80, 443]);
    assert!(d[0].scope.is_empty(), "no --port: all of the process's ports");
}

#[test]
fn two_namespaces_on_one_port_at_the_same_instant_are_two_promotions() {
    let t = Instant::now();
    let world = Fake::with([p(1, "srv", 10, 10, &[8080]), p(2, "srv", 10, 20, &[8080])]);
    let mut c = core(Policy::Newest, &[8080]);
    c.observe(&[listen(10, 8080, 1), listen(20, 8080, 1)], t, &world);
    assert_eq!(c.pending().len(), 2);
    let (d, _) = c.take_due(t, &world);
    assert_eq!(pids(&d), vec![10, 20]);
}

#[test]
fn events_for_one_group_coalesce_and_the_earliest_names_the_trigger() {
    let t = Instant::now();
    let (_, mut master) = p(1, "srv", 10, 10, &[80]);
    master.listeners = [(80, 1)].into();
    let mut child = master.clone();
    child.parent = 10;
    child.start = 12;
    let world = Fake::with([(10, master), (12, child), p(1, "srv", 11, 11, &[80])]);
    let mut c = core(Policy::Newest, &[80]);
    // A fork at 100, then a listen of another process at 200, in one group.
    c.observe(&[Event::Forked { parent: 10, child: 12, ktime_ns: 100 }], t, &world);
    c.observe(&[listen(11, 80, 200)], t + Duration::from_millis(1), &world);
    let group = c.pending()[&GroupId { netns: 1, port: 80 }];
    assert_eq!((group.pid, group.ktime_ns, group.trigger, group.due), (11, 100, Trigger::Fork, t));
    let (d, _) = c.take_due(t, &world);
    assert_eq!((d[0].pid, d[0].trigger, d[0].ktime_ns), (11, Trigger::Fork, 100));
}

#[test]
fn one_process_in_several_groups_is_one_promotion_named_by_its_earliest_event() {
    let t = Instant::now();
    let world = Fake::with([p(1, "srv", 10, 10, &[80, 443])]);
    let mut c = core(Policy::Newest, &[80, 443]);
    c.observe(&[listen(10, 443, 300), listen(10, 80, 200)], t, &world);
    let (d, _) = c.take_due(t, &world);
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].scope.clone(), d[0].ktime_ns), (vec![80, 443], 200));
}

#[test]
fn a_shrink_found_by_the_upkeep_promotes_the_groups_newest_holder_under_newest_only() {
    let t = Instant::now();
    let world = Fake::with([
        p(1, "nginx", 10, 10, &[80]),
        p(1, "nginx", 12, 12, &[80]),
        p(2, "nginx", 20, 20, &[80]),
    ]);
    let mut c = core(Policy::Newest, &[80]);
    c.shrunk(GroupId { netns: 1, port: 80 }, t, 7);
    let (d, _) = c.take_due(t, &world);
    assert_eq!((pids(&d), d[0].trigger), (vec![12], Trigger::Close), "the newest in that namespace");
    let mut manual = core(Policy::Manual, &[80]);
    manual.shrunk(GroupId { netns: 1, port: 80 }, t, 7);
    assert!(manual.pending().is_empty());
    let mut other_port = core(Policy::Newest, &[443]);
    other_port.shrunk(GroupId { netns: 1, port: 80 }, t, 7);
    assert!(other_port.pending().is_empty());
}

#[test]
fn a_process_that_left_mid_promotion_hands_over_to_the_next_holder_a_few_times_at_most() {
    let t = Instant::now();
    // Holders 10, 9, 8, 7, 6, newest first; each leaves as it is tried.
    let mut world = Fake::with((6..=10).map(|pid| p(1, "srv", u64::from(pid), pid, &[80])));
    let mut c = core(Policy::Newest, &[80]);
    c.observe(&[listen(10, 80, 1)], t, &world);
    let mut tried = Vec::new();
    loop {
        let (mut d, _) = c.take_due(t, &world);
        let Some(decision) = d.pop() else { break };
        tried.push(decision.pid);
        world.procs.remove(&decision.pid);
        let r = c.settle(decision, Err(not_ready()), t, &world);
        if tried.len() <= MAX_FALLBACKS as usize {
            assert!(matches!(r[..], [Report::NextHolder { .. }]), "{r:?}");
        } else {
            assert!(matches!(r[..], [Report::Left { .. }]), "{r:?}");
        }
    }
    assert_eq!(tried, vec![10, 9, 8, 7]);
}

#[test]
fn manual_policy_reattaches_and_adoption_takes_the_newest_per_group() {
    let t = Instant::now();
    let world =
        Fake::with([p(1, "srv", 10, 10, &[80, 443]), p(1, "srv", 5, 5, &[80]), p(2, "srv", 3, 30, &[80])]);
    let c = core(Policy::Newest, &[]);
    let d = c.adopt(&world, t, 1);
    assert_eq!(pids(&d), vec![10, 30]);
    assert_eq!(d[0].scope, vec![80, 443]);
    assert!(d.iter().all(|d| d.trigger == Trigger::Adopt && d.action == Action::Promote));
    let mut m = core(Policy::Manual, &[80]);
    m.observe(&[listen(10, 80, 1)], t, &world);
    let (mut d, _) = m.take_due(t, &world);
    assert_eq!(d[0].action, Action::Reattach);
    let r = m.settle(d.remove(0), Ok(Done::Reattached(vec!["127.0.0.1:80".into()])), t, &world);
    assert!(matches!(&r[..], [Report::Reattached { pid: 10, .. }]));
    assert!(m.watch_changes().is_none(), "re-attaching watches no forks");
}

#[test]
fn the_ready_delay_holds_a_new_generation_back() {
    let t = Instant::now();
    let world = Fake::with([p(1, "srv", 10, 10, &[80])]);
    let mut c = Core::new(Config {
        policy: Policy::Newest,
        ready_delay: Duration::from_millis(50),
        ports: vec![80],
        me: 1,
        canary: None,
        ready_timeout: None,
    });
    c.observe(&[listen(10, 80, 1)], t, &world);
    assert!(c.take_due(t + Duration::from_millis(49), &world).0.is_empty());
    assert_eq!(pids(&c.take_due(t + Duration::from_millis(50), &world).0), vec![10]);
}

#[test]
fn promoted_processes_and_their_same_named_parents_are_watched_until_they_exit() {
    let t = Instant::now();
    let (_, mut worker) = p(1, "nginx", 11, 11, &[80]);
    worker.parent = 10;
    let mut world = Fake::with([p(1, "nginx", 10, 10, &[80]), (11, worker)]);
    let mut c = core(Policy::Newest, &[80]);
    c.observe(&[listen(11, 80, 1)], t, &world);
    let (mut d, _) = c.take_due(t, &world);
    let r = c.settle(d.remove(0), Ok(change(11)), t, &world);
    assert!(matches!(r[..], [Report::Promoted { pid: 11, trigger: Trigger::Listen, .. }]));
    assert_eq!(c.watch_changes(), Some([10, 11].into()));
    assert_eq!(c.watch_changes(), None, "reported once");
    world.procs.remove(&11);
    c.prune_watched(t, &world);
    assert_eq!(c.watch_changes(), Some([10].into()));
    // A reused pid (another start time) is not the watched process.
    world.procs.get_mut(&10).unwrap().start = 99;
    c.prune_watched(t + Duration::from_millis(10), &world);
    assert_eq!(c.watch_changes(), None, "pruned at most every second");
    c.prune_watched(t + PRUNE_EVERY, &world);
    assert_eq!(c.watch_changes(), Some([].into()));
}

#[test]
fn a_child_that_fails_the_filter_is_never_named_in_its_parents_place() {
    // A same-named child holding its parent's sockets, but not one the operator
    // named (another uid, executable or cgroup): the parent is promoted, and
    // once it has left, nobody.
    let t = Instant::now();
    let (_, mut child) = p(1, "haproxy", 11, 11, &[80]);
    child.parent = 10;
    child.listeners = [(80, 8010)].into();
    child.matches = false;
    let mut world = Fake::with([p(1, "haproxy", 10, 10, &[80]), (11, child)]);
    let mut c = core(Policy::Newest, &[80]);
    c.observe(&[listen(10, 80, 1)], t, &world);
    assert_eq!(pids(&c.take_due(t, &world).0), vec![10]);
    world.procs.remove(&10);
    c.observe(&[listen(10, 80, 2)], t, &world);
    let (d, r) = c.take_due(t, &world);
    assert!(d.is_empty(), "{d:?}");
    assert!(matches!(r[..], [Report::Gone { port: 80 }]), "{r:?}");
}

#[test]
fn a_step_a_cap_refused_is_reported_quietly_and_not_tried_again() {
    let t = Instant::now();
    let world = Fake::with([p(1, "srv", 10, 10, &[80, 81])]);
    let mut c = core(Policy::Newest, &[80, 81]);
    c.observe(&[listen(10, 80, 1), listen(10, 81, 1)], t, &world);
    let (mut d, _) = c.take_due(t, &world);
    let refused = StepError::Refused("too many".into());
    assert!(!refused.retryable());
    let reports = c.settle(d.remove(0), Err(refused), t, &world);
    assert!(
        matches!(
            reports[..],
            [Report::Refused { pid: 10, port: 80, .. }, Report::Refused { pid: 10, port: 81, .. }]
        ),
        "{reports:?}"
    );
    assert!(c.pending().is_empty(), "nothing retried");
}
