//! The REUSEPORT_SOCKARRAY with 8-byte values, driven with raw `bpf(2)` calls:
//! aya's typed wrapper only knows 4-byte values and cannot look a slot up.
//! With 8-byte values an insert takes the fd as a u64 and a lookup returns the
//! socket's cookie (kernel/bpf/reuseport_array.c).
use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
/// Insert only into an empty slot.
pub const BPF_NOEXIST: u64 = 1;

#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// A borrowed handle on the pinned sockarray.
#[derive(Clone, Copy)]
pub struct SockArray<'a> {
    fd: BorrowedFd<'a>,
}

impl<'a> SockArray<'a> {
    #[must_use]
    pub fn new(fd: BorrowedFd<'a>) -> Self {
        Self { fd }
    }

    fn call(&self, cmd: libc::c_long, key: u32, value: Option<&mut u64>, flags: u64) -> io::Result<()> {
        let mut attr = ElemAttr {
            map_fd: u32::try_from(self.fd.as_raw_fd())
                .map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?,
            key: std::ptr::from_ref(&key) as u64,
            value: value.map_or(0, |v| std::ptr::from_mut(v) as u64),
            flags,
            ..ElemAttr::default()
        };
        // SAFETY: attr is a valid, fully initialised bpf_attr prefix for these
        // commands, and the pointers it carries outlive the call.
        let ret = unsafe {
            libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(&mut attr), size_of::<ElemAttr>())
        };
        if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Puts `socket` into `slot`. `flags` is `BPF_ANY` (0) or [`BPF_NOEXIST`].
    pub fn insert(&self, slot: u32, socket: impl AsFd, flags: u64) -> io::Result<()> {
        let mut fd = u64::try_from(socket.as_fd().as_raw_fd())
            .map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        self.call(BPF_MAP_UPDATE_ELEM, slot, Some(&mut fd), flags)
    }

    /// The cookie of the socket in `slot`, or `None` when the slot is empty
    /// (never filled, cleared, or its socket closed).
    pub fn cookie(&self, slot: u32) -> io::Result<Option<u64>> {
        let mut cookie = 0_u64;
        match self.call(BPF_MAP_LOOKUP_ELEM, slot, Some(&mut cookie), 0) {
            Ok(()) => Ok(Some(cookie)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Empties `slot`; an already empty slot is fine.
    pub fn clear(&self, slot: u32) -> io::Result<()> {
        match self.call(BPF_MAP_DELETE_ELEM, slot, None, 0) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
            _ => Ok(()),
        }
    }
}
