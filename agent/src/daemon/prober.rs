//! The readiness gate's adapter: it runs each check the core asks for
//! ([`crate::ops::ready::Gate`], the code `steer reload` uses) on a thread of
//! its own, and hands the answers back to the event loop, which never waits
//! for one: a slow `--ready-cmd` holds up nothing but its own generation.
use std::{
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::{
    ops::ready::{Gate, Target},
    proc::Process,
    sockets,
};

/// A check's answer: ready, or why not.
pub type Answer = Result<(), String>;

/// Runs readiness checks away from the event loop.
pub trait Prober {
    /// Starts a check of `pid`'s generation on `scope` (empty: all its ports),
    /// bounded by `deadline`.
    fn start(&mut self, pid: u32, scope: &[u16], deadline: Instant);
    /// The answers that came in since the last call.
    fn answers(&mut self) -> Vec<(u32, Answer)>;
    /// Whether a check is running (the loop then wakes soon to take its answer).
    fn busy(&self) -> bool;
}

/// How long one check may run at most, whatever the deadline: a command that
/// hangs is killed and asked again.
const CHECK_MAX: Duration = Duration::from_secs(10);

/// The gate's checks, each on a short-lived thread.
#[derive(Debug)]
pub struct Threads {
    gate: Gate,
    tx: mpsc::Sender<(u32, Answer)>,
    rx: mpsc::Receiver<(u32, Answer)>,
    running: usize,
}

impl Threads {
    #[must_use]
    pub fn new(gate: Gate) -> Self {
        let (tx, rx) = mpsc::channel();
        Self { gate, tx, rx, running: 0 }
    }
}

impl Prober for Threads {
    fn start(&mut self, pid: u32, scope: &[u16], deadline: Instant) {
        let (gate, tx, scope) = (self.gate.clone(), self.tx.clone(), scope.to_vec());
        let deadline = deadline.min(Instant::now() + CHECK_MAX);
        let spawned = std::thread::Builder::new().name("steer-ready".into()).spawn(move || {
            let _ = tx.send((pid, check(&gate, pid, &scope, deadline)));
        });
        match spawned {
            Ok(_) => self.running += 1,
            Err(e) => {
                let _ = self.tx.send((pid, Err(format!("cannot start a thread for the check: {e}"))));
                self.running += 1;
            }
        }
    }

    fn answers(&mut self) -> Vec<(u32, Answer)> {
        let answers: Vec<_> = self.rx.try_iter().collect();
        self.running = self.running.saturating_sub(answers.len());
        answers
    }

    fn busy(&self) -> bool {
        self.running > 0
    }
}

/// One check: the gate, with `STEER_PORT` and `STEER_ADDR` for each address
/// the generation listens on in `scope`.
fn check(gate: &Gate, pid: u32, scope: &[u16], deadline: Instant) -> Answer {
    let process = Process::open(pid).map_err(|e| format!("{e:#}"))?;
    let listening = sockets::listening_sockets(&process, scope).map_err(|e| format!("{e:#}"))?;
    let mut groups: Vec<_> = listening.iter().map(|(_, l)| l.addr).collect();
    groups.sort();
    groups.dedup();
    gate.check(Target { process: &process, groups: &groups }, deadline).map_err(|e| e.to_string())
}

/// No gate: nothing is ever checked.
#[derive(Debug, Default)]
pub struct Open;

impl Prober for Open {
    fn start(&mut self, _pid: u32, _scope: &[u16], _deadline: Instant) {}
    fn answers(&mut self) -> Vec<(u32, Answer)> {
        Vec::new()
    }
    fn busy(&self) -> bool {
        false
    }
}
