//! The connections the metrics endpoint serves at once, and which one makes
//! room for a new one: the oldest stalled on its request head.
use std::{
    collections::VecDeque,
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    task::{AbortHandle, JoinError, JoinSet},
};
use tracing::debug;

/// How long a new connection at the cap waits for an older one to show itself
/// stalled (or to end) before it is refused.
const ROOM_WAIT: Duration = Duration::from_millis(60);

/// Accepted, not yet found waiting for more of its head.
const NEW: u8 = 0;
/// It read all its client sent, and its request head is not complete.
const STALLED: u8 = 1;
/// Its request head arrived; it is being answered.
const REQUESTED: u8 = 2;

/// How far a connection has got, shared by its socket, its service and [`Slots`],
/// and since when it has been stalled (milliseconds since [`epoch`]).
#[derive(Clone, Default)]
pub(super) struct Phase(Arc<AtomicU8>, Arc<AtomicU64>);

/// A connection counts as stalled once it has waited this long for more of its
/// head: a scraper's first read may come a moment before its request does.
const STALLED_FOR: Duration = Duration::from_millis(10);

/// Milliseconds since the first call (a monotonic clock for [`Phase`]).
fn epoch_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    u64::try_from(EPOCH.get_or_init(std::time::Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Phase {
    /// The request head arrived.
    pub fn requested(&self) {
        self.0.store(REQUESTED, Ordering::Relaxed);
    }

    pub fn is_requested(&self) -> bool {
        self.0.load(Ordering::Relaxed) == REQUESTED
    }

    fn is_stalled(&self) -> bool {
        self.0.load(Ordering::Relaxed) == STALLED
            && epoch_ms().saturating_sub(self.1.load(Ordering::Relaxed))
                >= u64::try_from(STALLED_FOR.as_millis()).unwrap_or(0)
    }
}

/// A connection being served: how far it has got, and how to close it.
struct Slot {
    phase: Phase,
    handle: AbortHandle,
}

/// The connections being served, oldest first, at most `cap`.
pub(super) struct Slots {
    tasks: JoinSet<()>,
    slots: VecDeque<Slot>,
    cap: usize,
}

impl Slots {
    pub fn new(cap: usize) -> Self {
        Self { tasks: JoinSet::new(), slots: VecDeque::new(), cap }
    }

    /// Whether a new connection can be served: below the cap, or once the
    /// oldest stalled connection is closed. Connections just accepted have not
    /// had a turn to read their heads yet, so when none is stalled they get one
    /// turn first.
    pub async fn make_room(&mut self) -> bool {
        self.slots.retain(|s| !s.handle.is_finished());
        if self.slots.len() < self.cap {
            return true;
        }
        let stalled = |slots: &VecDeque<Slot>| slots.iter().position(|s| s.phase.is_stalled());
        // Connections just accepted become stalled on their first read; on a busy
        // runtime that read may wait for a few turns. Give them up to
        // ROOM_WAIT before the new connection is refused, so that a burst of
        // silent connections cannot crowd out a scraper that comes right after.
        let mut oldest = stalled(&self.slots);
        let waited = std::time::Instant::now();
        while oldest.is_none() && waited.elapsed() < ROOM_WAIT {
            tokio::task::yield_now().await;
            if stalled(&self.slots).is_none() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            self.slots.retain(|s| !s.handle.is_finished());
            if self.slots.len() < self.cap {
                return true;
            }
            oldest = stalled(&self.slots);
        }
        let Some(slot) = oldest.and_then(|i| self.slots.remove(i)) else { return false };
        debug!("closing the oldest stalled metrics connection to make room");
        slot.handle.abort();
        true
    }

    /// Serves `stream` with `serve` in a task of its own.
    pub fn spawn<F>(&mut self, stream: TcpStream, serve: impl FnOnce(Watched) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let phase = Phase::default();
        let handle = self.tasks.spawn(serve(Watched { stream, phase: phase.clone() }));
        self.slots.push_back(Slot { phase, handle });
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The next connection task to end; an aborted one made room for another.
    pub async fn join_next(&mut self) -> Option<Result<(), JoinError>> {
        self.tasks.join_next().await
    }

    /// Waits up to `grace` for the connections to end, then closes the rest.
    pub async fn close(mut self, grace: Duration) {
        let drained = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drained).await.is_err() {
            debug!(left = self.tasks.len(), "metrics connections still open at shutdown; closing them");
        }
        self.tasks.shutdown().await;
    }
}

/// A connection's socket that marks the connection stalled when a read finds
/// nothing more to read before its request head has arrived.
pub(super) struct Watched {
    stream: TcpStream,
    phase: Phase,
}

impl Watched {
    pub fn phase(&self) -> Phase {
        self.phase.clone()
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.stream).poll_read(cx, buf);
        // The first time only: a client that trickles its head stays stalled
        // from its first wait, so it cannot keep itself young.
        if poll.is_pending() && self.phase.0.load(Ordering::Relaxed) == NEW {
            self.phase.1.store(epoch_ms(), Ordering::Relaxed);
            self.phase.0.store(STALLED, Ordering::Relaxed);
        }
        poll
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
