//! `daemon::run` in-process: a scripted event source, a scripted world and a
//! steerer that records what it was asked, so the loop's wiring is tested
//! without privileges and without reading the log.
use std::{
    collections::{BTreeSet, VecDeque},
    sync::{Arc, Mutex},
};

use super::{fake::Fake, *};
use crate::{
    daemon::fake::p,
    ops::{OpError, promote::Change},
    sockets::SocketError,
};

/// Hands out one batch of events per wait (an empty one waits out the
/// timeout, as a quiet source does); sets `stop` when the script ends.
struct Script {
    batches: VecDeque<Vec<Event>>,
    stop: Arc<AtomicBool>,
    watched: Arc<Mutex<Vec<BTreeSet<u32>>>>,
}

impl EventSource for Script {
    fn wait(&mut self, timeout: Duration, out: &mut Vec<Event>) {
        match self.batches.pop_front() {
            Some(batch) if batch.is_empty() => std::thread::sleep(timeout),
            Some(batch) => out.extend(batch),
            None => self.stop.store(true, Ordering::Relaxed),
        }
    }

    fn watch_forks(&mut self, pids: &BTreeSet<u32>) {
        self.watched.lock().unwrap().push(pids.clone());
    }
}

/// Fails the first `fail_first` promotions of each pid as not ready, then succeeds.
#[derive(Default)]
struct Recorder {
    calls: Vec<(u32, Vec<u16>)>,
    fail_first: usize,
    /// Each step's kind, in order: "promote", "canary" or "complete".
    kinds: Vec<&'static str>,
}

impl Steerer for Recorder {
    fn promote(&mut self, pid: u32, scope: &[u16]) -> Result<Vec<Change>, StepError> {
        self.calls.push((pid, scope.to_vec()));
        self.kinds.push("promote");
        if self.calls.iter().filter(|(p, _)| *p == pid).count() <= self.fail_first {
            return Err(OpError::Socket(SocketError::Vanished { pid }).into());
        }
        Ok(vec![crate::daemon::fake::promoted(pid)])
    }

    fn canary(&mut self, pid: u32, scope: &[u16], weight: u32) -> Result<Vec<Change>, StepError> {
        let mut changes = self.promote(pid, scope)?;
        changes[0].outcome = crate::policy::Outcome::Canary { weight };
        self.kinds.pop();
        self.kinds.push("canary");
        Ok(changes)
    }

    fn complete(&mut self, pid: u32, scope: &[u16]) -> Result<steerer::Completion, StepError> {
        let changes = self.promote(pid, scope)?;
        self.kinds.pop();
        self.kinds.push("complete");
        Ok(steerer::Completion { changes, left: Vec::new() })
    }

    fn reattach(&mut self, _pid: u32, _scope: &[u16]) -> Result<Vec<String>, StepError> {
        Ok(Vec::new())
    }
}

fn options(ports: &[u16]) -> Options {
    Options {
        filter: Filter { ports: ports.to_vec(), ..Filter::default() },
        policy: Policy::Newest,
        ready_delay: Duration::ZERO,
        source: Source::Poll,
        poll_interval: Duration::from_millis(100),
        nice: 0,
        rt_priority: 0,
        limits: crate::daemon::Limits::default(),
        canary: None,
        udp: crate::policy::UdpSettings::default(),
        gate: None,
        ready_timeout: Duration::from_secs(30),
        no_migrate: false,
    }
}

fn run_script(
    world: &Fake,
    steerer: &mut Recorder,
    batches: Vec<Vec<Event>>,
) -> (DaemonStats, Vec<BTreeSet<u32>>) {
    run_with(&options(&[80]), world, steerer, batches)
}

fn run_with(
    opts: &Options,
    world: &Fake,
    steerer: &mut Recorder,
    batches: Vec<Vec<Event>>,
) -> (DaemonStats, Vec<BTreeSet<u32>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let watched = Arc::new(Mutex::new(Vec::new()));
    let mut source =
        Script { batches: batches.into(), stop: Arc::clone(&stop), watched: Arc::clone(&watched) };
    let stats = DaemonStats::new();
    run(opts, &mut source, world, steerer, None, &stats, &stop);
    let watched = watched.lock().unwrap().clone();
    (stats, watched)
}

#[test]
fn the_loop_adopts_promotes_each_listen_retries_and_counts() {
    let world = Fake::with([p(1, "srv", 10, 10, &[80]), p(1, "srv", 20, 20, &[80])]);
    let mut steerer = Recorder { fail_first: 1, ..Recorder::default() };
    let listen = Event::Listen { pid: 20, port: 80, ktime_ns: 1 };
    // Adoption (the newest, 20, fails once, is retried), then a listen of 20
    // again and a close; empty batches let the retry come due.
    let batches = vec![vec![], vec![], vec![listen, Event::Closed], vec![]];
    let (stats, watched) = run_script(&world, &mut steerer, batches);
    let promoted: Vec<u32> = steerer.calls.iter().map(|(pid, _)| *pid).collect();
    assert_eq!(promoted[0], 20, "adoption takes the newest: {promoted:?}");
    assert!(promoted.iter().all(|pid| *pid == 20), "{promoted:?}");
    assert!(promoted.len() >= 2, "the failed adoption was tried again: {promoted:?}");
    assert_eq!(steerer.calls[0].1, vec![80]);
    let events = stats.events();
    assert_eq!((events.listen, events.close, events.fork), (1, 1, 0));
    assert!(stats.promotions().values().sum::<u64>() >= 1);
    assert!(
        watched.iter().any(|set| set.contains(&20)),
        "the promoted process's forks are watched: {watched:?}"
    );
    assert!(!matches!(stats.health(std::time::Instant::now()), crate::metrics::Health::Starting));
}

#[test]
fn a_stop_seen_with_a_batch_of_events_acts_on_none_of_them() {
    // Nothing to adopt: the process listens on nothing yet.
    let world = Fake::with([p(1, "srv", 10, 10, &[])]);
    let stop = Arc::new(AtomicBool::new(false));
    /// Delivers a listen event and the stop together.
    struct StopWithEvent(Arc<AtomicBool>);
    impl EventSource for StopWithEvent {
        fn wait(&mut self, _timeout: Duration, out: &mut Vec<Event>) {
            out.push(Event::Listen { pid: 10, port: 80, ktime_ns: 1 });
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let mut steerer = Recorder::default();
    let stats = DaemonStats::new();
    run(&options(&[80]), &mut StopWithEvent(Arc::clone(&stop)), &world, &mut steerer, None, &stats, &stop);
    assert!(steerer.calls.is_empty(), "{:?}", steerer.calls);
}

#[test]
fn lost_events_make_the_loop_look_at_every_group_again() {
    let world = Fake::with([p(1, "srv", 10, 10, &[80])]);
    let mut steerer = Recorder::default();
    let (stats, _) = run_script(&world, &mut steerer, vec![vec![Event::Lost { count: 3 }]]);
    let promoted: Vec<u32> = steerer.calls.iter().map(|(pid, _)| *pid).collect();
    assert_eq!(promoted, vec![10, 10], "adoption, then again after the loss");
    assert_eq!(stats.events().lost, 3);
}

#[test]
fn under_canary_the_loop_canaries_then_completes_when_due_and_counts_one_promotion() {
    let world = Fake::with([p(1, "srv", 10, 10, &[80]), p(1, "srv", 20, 20, &[80])]);
    let mut steerer = Recorder::default();
    let opts = Options {
        canary: Some(super::canary::Plan { weight: 25, duration: Duration::from_millis(30) }),
        ..options(&[80])
    };
    // Adoption makes 20 a canary; a quiet wait lets its completion come due
    // (the loop wakes for it, well before WAKE_EVERY).
    let started = Instant::now();
    let (stats, _) = run_with(&opts, &world, &mut steerer, vec![vec![]]);
    assert!(started.elapsed() < WAKE_EVERY, "woken by the due completion");
    assert_eq!(steerer.kinds, vec!["canary", "complete"], "{:?}", steerer.calls);
    assert!(steerer.calls.iter().all(|(pid, scope)| *pid == 20 && scope == &[80]), "{:?}", steerer.calls);
    assert_eq!(stats.promotions().values().sum::<u64>(), 1, "the completion is the promotion counted");
}

#[test]
fn canary_durations_parse_in_ms_s_and_m_and_nothing_else() {
    for (text, ms) in [("500ms", 500), ("30s", 30_000), ("2m", 120_000), ("1440m", 86_400_000)] {
        assert_eq!(parse_duration(text), Ok(Duration::from_millis(ms)), "{text}");
    }
    for text in ["", "30", "0s", "-1s", "1.5s", "2h", "s", "1441m", "ms30", "30 s"] {
        let err = parse_duration(text).unwrap_err();
        assert!(err.contains("500ms, 30s, 2m"), "{text}: {err}");
    }
}

/// Answers each check from its script at once (`Err` once the script ends).
#[derive(Default)]
struct Answers {
    script: VecDeque<prober::Answer>,
    out: Vec<(u32, prober::Answer)>,
    starts: Vec<u32>,
}

impl Prober for Answers {
    fn start(&mut self, pid: u32, _scope: &[u16], _deadline: Instant) {
        self.starts.push(pid);
        self.out.push((pid, self.script.pop_front().unwrap_or_else(|| Err("503".into()))));
    }
    fn answers(&mut self) -> Vec<(u32, prober::Answer)> {
        std::mem::take(&mut self.out)
    }
    fn busy(&self) -> bool {
        !self.out.is_empty()
    }
}

fn run_gate(timeout: Duration, prober: &mut Answers, steerer: &mut Recorder, quiet: usize) -> DaemonStats {
    let world = Fake::with([p(1, "srv", 10, 10, &[80]), p(1, "srv", 20, 20, &[80])]);
    let opts =
        Options { gate: Some(crate::ops::ready::Gate::default()), ready_timeout: timeout, ..options(&[80]) };
    let stop = Arc::new(AtomicBool::new(false));
    let watched = Arc::new(Mutex::new(Vec::new()));
    let mut source = Script { batches: vec![vec![]; quiet].into(), stop: Arc::clone(&stop), watched };
    let stats = DaemonStats::new();
    run_gated(&opts, &mut source, &world, steerer, prober, None, &stats, &stop);
    stats
}

#[test]
fn with_a_gate_the_loop_promotes_only_after_a_check_said_ready() {
    let mut prober = Answers { script: [Err("503".into()), Ok(())].into(), ..Answers::default() };
    let mut steerer = Recorder::default();
    let stats = run_gate(Duration::from_secs(5), &mut prober, &mut steerer, 4);
    assert_eq!(prober.starts, vec![20, 20], "asked, not ready, asked again");
    assert_eq!(steerer.kinds, vec!["promote"], "{:?}", steerer.calls);
    assert_eq!(stats.not_ready(), 0);
}

#[test]
fn with_a_gate_never_passed_nothing_is_promoted_and_the_timeout_is_counted() {
    let mut prober = Answers::default();
    let mut steerer = Recorder::default();
    let stats = run_gate(Duration::from_millis(250), &mut prober, &mut steerer, 8);
    assert!(steerer.calls.is_empty(), "{:?}", steerer.calls);
    assert!(prober.starts.len() >= 2, "asked again until the timeout: {:?}", prober.starts);
    assert_eq!(stats.not_ready(), 1);
}
