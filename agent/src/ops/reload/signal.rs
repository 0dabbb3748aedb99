//! The signal `steer reload` sends the old generation: parsed from a name or
//! number, sent through a pidfd.
use std::os::fd::{AsRawFd as _, OwnedFd};

/// A signal, by number, with the name it is reported under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal {
    pub number: i32,
    pub name: &'static str,
}

pub(super) const SIGNALS: [(&str, i32); 15] = [
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("TERM", libc::SIGTERM),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("WINCH", libc::SIGWINCH),
    ("ALRM", libc::SIGALRM),
    ("PWR", libc::SIGPWR),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
];

impl Signal {
    pub const TERM: Signal = Signal { number: libc::SIGTERM, name: "SIGTERM" };
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl std::str::FromStr for Signal {
    type Err = String;

    /// `TERM`, `SIGTERM`, `sigterm`, `15`; numbers up to `SIGRTMAX` (64).
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(number) = s.parse::<i32>() {
            if let Some((name, _)) = SIGNALS.iter().find(|(_, n)| *n == number) {
                let name = SIGNAL_NAMES.iter().find(|full| &full[3..] == *name).copied().unwrap_or("SIG?");
                return Ok(Signal { number, name });
            }
            return if (1..=64).contains(&number) {
                Ok(Signal { number, name: "signal" })
            } else {
                Err(format!("{number} is not a signal number (1 to 64)"))
            };
        }
        let upper = s.to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        SIGNALS
            .iter()
            .position(|(name, _)| *name == bare)
            .map(|i| Signal { number: SIGNALS[i].1, name: SIGNAL_NAMES[i] })
            .ok_or_else(|| format!("{s:?} is not a signal name or number (e.g. TERM, SIGUSR1, QUIT, 15)"))
    }
}

/// `SIGNALS`' names with the `SIG` prefix, in the same order.
pub(super) const SIGNAL_NAMES: [&str; 15] = [
    "SIGHUP", "SIGINT", "SIGQUIT", "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGTERM", "SIGCONT", "SIGSTOP",
    "SIGTSTP", "SIGWINCH", "SIGALRM", "SIGPWR", "SIGTTIN", "SIGTTOU",
];

/// `pidfd_send_signal(2)`.
pub fn send_signal(pidfd: &OwnedFd, signal: Signal) -> std::io::Result<()> {
    // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal.number,
            std::ptr::null::<u8>(),
            0,
        )
    };
    if ret < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}
