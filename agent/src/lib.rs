//! steer: zero-loss reloads for SO_REUSEPORT servers.
//!
//! A reuseport eBPF program (crate `steer-ebpf`) sends each new connection of a
//! listening group to the socket this library has promoted, and moves the
//! queued connections of a closing listener there too. This library finds a
//! process's listeners, duplicates them with `pidfd_getfd`, inserts them into
//! the pinned REUSEPORT_SOCKARRAY and sets each group's configuration.
//!
//! Layout:
//! - [`paths`]: state directory, pin names, environment variables.
//! - [`preflight`]: kernel version and capability checks.
//! - [`proc`], [`sockdiag`], [`netns`], [`sockets`]: discovery and duplication.
//! - [`state`]: the pinned program and maps, the lock, atomic creation.
//! - [`policy`]: pure rules for promote, canary, rollback and slot allocation.
//! - [`ops`]: one module per command (check, promote, rollback, status, detach).
//! - [`daemon`]: the sidecar: events → decisions ([`daemon::core`], pure) → effects.
//! - [`metrics`]: the daemon's `/metrics` and `/healthz`.
//! - [`btf`]: field offsets from the kernel's BTF, for the daemon's raw tracepoints.
//! - [`failpoint`]: named places where a test build can kill a write command.
pub mod btf;
pub mod daemon;
pub mod failpoint;
pub mod metrics;
pub mod netns;
pub mod ops;
pub mod paths;
pub mod policy;
pub mod preflight;
pub mod proc;
pub mod program;
pub mod sockdiag;
pub mod sockets;
pub mod state;
