//! Which processes the daemon may act on: `--comm`, `--port`, `--netns`, and
//! the rules that verify a process against what the operator named: `--user`,
//! `--exe`, `--cgroup` and the user namespace. The checks run cheapest first
//! (the name, the network namespace, the uids), and the costly ones only when
//! their flag is given.
use std::{fs, os::unix::fs::MetadataExt as _, path::PathBuf};

/// A listener matches when every list that is given matches.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub comms: Vec<String>,
    pub ports: Vec<u16>,
    /// Inodes of the network namespaces to watch (empty: all, `--netns all`).
    pub netns: Vec<u64>,
    /// Cgroup patterns (empty: any); see [`cgroup_matches`].
    pub cgroups: Vec<String>,
    /// `--user`: every uid of the process (real, effective, saved, filesystem)
    /// must be one of these (empty: any).
    pub users: Vec<u32>,
    /// `--exe`: the executables a process may run (empty: any).
    pub exes: Vec<Exe>,
    /// Inode of the only user namespace whose processes are steered; `None`
    /// with `--user-namespaces` (any).
    pub user_namespace: Option<u64>,
}

/// An executable named with `--exe`, identified by device and inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exe {
    pub path: PathBuf,
    /// (device, inode) of `path` when the daemon started.
    pub id: (u64, u64),
}

impl Exe {
    /// Stats `path` (following symlinks).
    ///
    /// # Errors
    /// When `path` cannot be read.
    pub fn open(path: PathBuf) -> std::io::Result<Self> {
        let m = fs::metadata(&path)?;
        Ok(Self { id: (m.dev(), m.ino()), path })
    }

    /// Whether a process whose `/proc/PID/exe` is the file `id` runs this
    /// executable: the file as it was when the daemon started, or as it is
    /// now (a package upgrade replaces it with a new inode; both generations
    /// of the server match until the daemon restarts).
    fn matches(&self, id: (u64, u64)) -> bool {
        id == self.id || fs::metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == id)
    }
}

/// Why a process that passed `--comm` and `--netns` is not steered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// A uid not named by `--user` (the effective uid, or none: unreadable).
    User(Option<u32>),
    /// In a user namespace other than the initial one, without `--user-namespaces`.
    UserNamespace,
    /// Runs no executable named by `--exe`.
    Exe,
    /// In no cgroup named by `--cgroup`.
    Cgroup,
}

impl Mismatch {
    /// The label of the rule, for logs.
    #[must_use]
    pub fn rule(self) -> &'static str {
        match self {
            Self::User(_) => "user",
            Self::UserNamespace => "user_namespace",
            Self::Exe => "exe",
            Self::Cgroup => "cgroup",
        }
    }
}

/// The (real, effective, saved, filesystem) uids from the text of a
/// `/proc/PID/status`, as seen from the reader's user namespace.
#[must_use]
pub fn status_uids(status: &str) -> Option<[u32; 4]> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut ids = line.split_whitespace().map(str::parse::<u32>);
    let mut out = [0; 4];
    for slot in &mut out {
        *slot = ids.next()?.ok()?;
    }
    Some(out)
}

/// The uid of user `name` in the text of an `/etc/passwd`
/// (`name:password:uid:gid:gecos:home:shell`). Read by hand, not with
/// getpwnam(3): a static binary has no NSS.
#[must_use]
pub fn passwd_uid(passwd: &str, name: &str) -> Option<u32> {
    passwd.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.trim().parse().ok()
    })
}

/// A `--user`: a uid, or a name looked up in the text of `/etc/passwd`.
///
/// # Errors
/// A sentence for the operator when the name is not there.
pub fn resolve_user(user: &str, passwd: &str) -> Result<u32, String> {
    if let Ok(uid) = user.parse::<u32>() {
        return Ok(uid);
    }
    passwd_uid(passwd, user).ok_or_else(|| {
        format!("--user {user}: no such user in /etc/passwd; pass the numeric uid (`id -u {user}` where the user exists)")
    })
}

/// Whether `pattern` selects a process whose `/proc/PID/cgroup` reads `text`.
/// Every hierarchy counts (the cgroup v2 line `0::PATH` and each v1 line), so a
/// container runtime's path is found under either. A pattern that starts with
/// `/` names a cgroup and everything below it (`/kubepods.slice`), and never
/// matches a path that is relative to another cgroup namespace (it shows `/..`);
/// any other pattern must appear in the path (`docker-<id>`, a pod's UID).
#[must_use]
pub fn cgroup_matches(pattern: &str, text: &str) -> bool {
    text.lines().filter_map(|line| line.splitn(3, ':').nth(2)).any(|path| {
        if pattern.starts_with('/') {
            let base = pattern.trim_end_matches('/');
            !path.contains("/..")
                && (base.is_empty() || path == base || path.starts_with(&format!("{base}/")))
        } else {
            path.contains(pattern)
        }
    })
}

impl Filter {
    #[must_use]
    pub fn netns_matches(&self, netns: u64) -> bool {
        self.netns.is_empty() || self.netns.contains(&netns)
    }

    #[must_use]
    pub fn comm_matches(&self, comm: &str) -> bool {
        self.comms.is_empty() || self.comms.iter().any(|c| c == comm)
    }

    /// Checks `pid` against what the operator named, cheapest first: its uids
    /// (`/proc/PID/status`), its user namespace, then only when given, its
    /// executable and its cgroups. Anything unreadable (the process left, or
    /// steer may not look) fails the rule.
    ///
    /// # Errors
    /// The first rule that fails.
    pub fn verify(&self, pid: u32) -> Result<(), Mismatch> {
        if !self.users.is_empty() {
            let uids = fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|s| status_uids(&s));
            if !uids.is_some_and(|ids| self.uids_match(ids)) {
                return Err(Mismatch::User(uids.map(|ids| ids[1])));
            }
        }
        if let Some(initial) = self.user_namespace
            && ns_inode(pid, "user") != Some(initial)
        {
            return Err(Mismatch::UserNamespace);
        }
        if !self.exes.is_empty() {
            let id = fs::metadata(format!("/proc/{pid}/exe")).ok().map(|m| (m.dev(), m.ino()));
            if !id.is_some_and(|id| self.exes.iter().any(|e| e.matches(id))) {
                return Err(Mismatch::Exe);
            }
        }
        if !self.cgroup_matches(pid) {
            return Err(Mismatch::Cgroup);
        }
        Ok(())
    }

    /// Whether every one of a process's uids is named by `--user`: a process
    /// that can switch to another uid (a saved uid of root) is as good as it.
    #[must_use]
    pub fn uids_match(&self, uids: [u32; 4]) -> bool {
        self.users.is_empty() || uids.iter().all(|u| self.users.contains(u))
    }

    #[must_use]
    pub fn cgroup_matches(&self, pid: u32) -> bool {
        if self.cgroups.is_empty() {
            return true;
        }
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else { return false };
        self.cgroups.iter().any(|pattern| cgroup_matches(pattern, &text))
    }

    #[must_use]
    pub fn port_matches(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.contains(&port)
    }
}

/// The selectors as the operator gave them, before they are resolved into a
/// [`Filter`] when the daemon starts.
#[derive(Debug, Clone, Default)]
pub struct Named {
    pub comms: Vec<String>,
    pub ports: Vec<u16>,
    /// `--netns`: paths, or `all`; none: the daemon's own.
    pub netns: Vec<PathBuf>,
    pub cgroups: Vec<String>,
    /// `--user`: names or uids.
    pub users: Vec<String>,
    pub exes: Vec<PathBuf>,
    pub any_process: bool,
    pub user_namespaces: bool,
}

/// Why the selectors cannot be resolved.
#[derive(Debug, thiserror::Error)]
pub enum NamedError {
    #[error(
        "the daemon would act on every process that passes --comm and --port, and a process sets its own name, so --comm proves nothing; name who may be steered with --user, --exe or --cgroup, or pass --any-process if you mean it"
    )]
    NothingVerified,
    #[error("{0}")]
    User(String),
    #[error("cannot read /etc/passwd to look up --user {user}; pass the numeric uid")]
    Passwd {
        user: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read --exe {}; pass the path of the server's executable", path.display())]
    Exe {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read network namespace {}; pass /proc/PID/ns/net, /run/netns/NAME or all", path.display())]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} is not a network namespace; pass /proc/PID/ns/net, /run/netns/NAME or all",
        path.display()
    )]
    NotNetns { path: PathBuf },
    #[error("--netns all watches every network namespace; give it alone, without paths")]
    NetnsAllWithPaths,
    #[error("cannot read the daemon's own network namespace (/proc/self/ns/net)")]
    OwnNetns,
    #[error(
        "cannot read /proc/1/ns/user nor /proc/self/ns/user to tell the initial user namespace; pass --user-namespaces to act on processes in any"
    )]
    UserNamespace,
}

/// `NSFS_MAGIC` from include/uapi/linux/magic.h: namespace files.
const NSFS_MAGIC: i64 = 0x6e73_6673;

impl Named {
    /// Resolves names into what the checks compare: uids (from
    /// `/etc/passwd`), executables' device and inode, namespaces' inodes, and
    /// the initial user namespace unless `--user-namespaces`.
    ///
    /// # Errors
    /// Nothing verifies a process (no `--user`, `--exe`, `--cgroup`, and no
    /// `--any-process`), or a name cannot be resolved.
    pub fn resolve(self) -> Result<Filter, NamedError> {
        if self.users.is_empty() && self.exes.is_empty() && self.cgroups.is_empty() && !self.any_process {
            return Err(NamedError::NothingVerified);
        }
        let mut passwd = None;
        let mut users = Vec::new();
        for user in &self.users {
            let uid = match user.parse::<u32>() {
                Ok(uid) => uid,
                Err(_) => {
                    if passwd.is_none() {
                        let text = fs::read_to_string("/etc/passwd")
                            .map_err(|source| NamedError::Passwd { user: user.clone(), source })?;
                        passwd = Some(text);
                    }
                    resolve_user(user, passwd.as_deref().unwrap_or_default()).map_err(NamedError::User)?
                }
            };
            users.push(uid);
        }
        let exes = self
            .exes
            .into_iter()
            .map(|path| Exe::open(path.clone()).map_err(|source| NamedError::Exe { path, source }))
            .collect::<Result<Vec<_>, _>>()?;
        let all = self.netns.iter().any(|p| p.as_os_str() == "all");
        let netns = if all {
            if self.netns.len() > 1 {
                return Err(NamedError::NetnsAllWithPaths);
            }
            Vec::new()
        } else if self.netns.is_empty() {
            vec![ns_inode("self", "net").ok_or(NamedError::OwnNetns)?]
        } else {
            self.netns
                .iter()
                .map(|path| {
                    let inode = fs::metadata(path)
                        .map(|m| m.ino())
                        .map_err(|source| NamedError::Netns { path: path.clone(), source })?;
                    // nsfs (NSFS_MAGIC, include/uapi/linux/magic.h); a namespace file
                    // bind-mounted under /run/netns is nsfs too.
                    let nsfs = rustix::fs::statfs(path).is_ok_and(|s| s.f_type == NSFS_MAGIC);
                    if nsfs { Ok(inode) } else { Err(NamedError::NotNetns { path: path.clone() }) }
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        let user_namespace = if self.user_namespaces {
            None
        } else {
            let (inode, path) = initial_user_namespace().ok_or(NamedError::UserNamespace)?;
            tracing::debug!(inode, path, "trusted user namespace");
            Some(inode)
        };
        Ok(Filter {
            comms: self.comms,
            ports: self.ports,
            netns,
            cgroups: self.cgroups,
            users,
            exes,
            user_namespace,
        })
    }
}

/// Inode of `/proc/PID/ns/KIND` (`net`, `user`), if it can be read.
#[must_use]
pub fn ns_inode(pid: impl std::fmt::Display, kind: &str) -> Option<u64> {
    fs::metadata(format!("/proc/{pid}/ns/{kind}")).ok().map(|m| m.ino())
}

/// The user namespace the daemon trusts without `--user-namespaces`: the
/// initial one, read from `/proc/1/ns/user`. Where that cannot be read (pid 1
/// belongs to a parent namespace or sandbox that steer may not ptrace), the
/// daemon's own, `/proc/self/ns/user`: a process in a user namespace of its
/// own (`unshare -r`) differs from both, and that is the case the rule exists
/// for. The second value says which was taken.
#[must_use]
pub fn initial_user_namespace() -> Option<(u64, &'static str)> {
    ns_inode(1, "user")
        .map(|i| (i, "/proc/1/ns/user"))
        .or_else(|| ns_inode("self", "user").map(|i| (i, "/proc/self/ns/user")))
}

#[cfg(test)]
#[path = "filter_tests.rs"]
mod tests;
