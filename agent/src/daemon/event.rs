//! What the daemon's sources report, and what led to a promotion.

/// A listener event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A socket started listening on `port` in process `pid` (which may already
    /// have exited: daemonising servers listen, then fork).
    Listen { pid: u32, port: u16, ktime_ns: u64 },
    /// A listening socket closed (slot upkeep runs soon).
    Closed,
    /// A watched process (one that holds a promoted generation, or its
    /// same-named parent) forked `child`.
    Forked { parent: u32, child: u32, ktime_ns: u64 },
    /// The polling source found a listener it had not seen, held by `pid`.
    Polled { pid: u32, port: u16, ktime_ns: u64 },
    /// The source lost `count` events (its ring buffer was full): every
    /// matching group is looked at again, as at start.
    Lost { count: u64 },
}

/// What led to a promotion; the `trigger` field of the `promoted` log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The daemon started and took over what it found.
    Adopt,
    /// A socket started listening.
    Listen,
    /// A watched process forked a child that holds exactly its parent's
    /// listeners (a generation that opened none).
    Fork,
    /// The active generation lost sockets; its newest holder is promoted again.
    Close,
    /// The polling source found a new listener.
    Poll,
}

impl Trigger {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Adopt => "adopt",
            Self::Listen => "listen",
            Self::Fork => "fork",
            Self::Close => "close",
            Self::Poll => "poll",
        }
    }
}
