//! The capability set, proven on the steer image. Docker 20.10 as Debian packages it
//! cannot grant CAP_BPF or CAP_PERFMON, so the exact set runs under containerd, the
//! runtime a kubelet drives: `ctr run` of the same image with containerd's default
//! seccomp profile (what `RuntimeDefault` means there), a read-only root, the host's
//! pid namespace and network, and bpffs bind-mounted. `steer promote` of an HAProxy
//! container that runs as uid 65534 works with the five capabilities, and fails without
//! any one of them.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use steer_harness::image::{HAPROXY_IMAGE, STEER_IMAGE};

use super::{CAPABILITIES, Lab, docker_capabilities, wait_serving};
use crate::common::free_port;

/// Where containerd listens: its own service, or the one Docker runs.
const CTR_SOCKETS: [&str; 2] = ["/run/containerd/containerd.sock", "/run/docker/containerd/containerd.sock"];
/// The containerd namespace the image is imported into.
const CTR_NAMESPACE: &str = "steer-test";
/// containerd's default capabilities: `ctr run` has no `--cap-drop ALL`, so each is dropped.
const CONTAINERD_DEFAULTS: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// `ctr` talking to a containerd that answers.
struct Ctr {
    socket: &'static str,
}

impl Ctr {
    fn find() -> Result<Ctr, String> {
        for socket in CTR_SOCKETS {
            if std::path::Path::new(socket).exists() {
                let ctr = Ctr { socket };
                let out =
                    ctr.command().arg("version").output().map_err(|e| format!("cannot run ctr: {e}"))?;
                if out.status.success() {
                    return Ok(ctr);
                }
            }
        }
        Err(format!("no containerd answers at {}", CTR_SOCKETS.join(" or ")))
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.args(["60", "ctr", "--address", self.socket, "--namespace", CTR_NAMESPACE]).stdin(Stdio::null());
        cmd
    }

    /// `docker save IMAGE | ctr images import --snapshotter native -`.
    fn import(&self, image: &str) {
        let mut save = Command::new("docker")
            .args(["save", image])
            .stdout(Stdio::piped())
            .spawn()
            .expect("run docker save");
        let out = self
            .command()
            .args(["images", "import", "--snapshotter", "native", "-"])
            .stdin(save.stdout.take().expect("docker save stdout"))
            .output()
            .expect("run ctr images import");
        assert!(save.wait().expect("docker save").success(), "docker save {image} failed");
        assert!(out.status.success(), "ctr images import: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The steer image, run once with `caps` only: `steer ARGS...`.
    fn steer(&self, id: &str, caps: &[&str], args: &[&str]) -> Output {
        let pid_ns = format!("pid:/proc/{}/ns/pid", std::process::id());
        let mut cmd = self.command();
        cmd.args(["run", "--rm", "--snapshotter", "native", "--net-host", "--with-ns", &pid_ns]);
        cmd.args([
            "--read-only",
            "--seccomp",
            "--mount",
            "type=bind,src=/sys/fs/bpf,dst=/sys/fs/bpf,options=rbind:rw",
        ]);
        for cap in CONTAINERD_DEFAULTS {
            cmd.args(["--cap-drop", &format!("CAP_{cap}")]);
        }
        for cap in caps {
            cmd.args(["--cap-add", &format!("CAP_{cap}")]);
        }
        cmd.arg(format!("docker.io/library/{STEER_IMAGE}")).arg(id).arg("/usr/local/bin/steer").args(args);
        cmd.output().expect("run ctr run")
    }
}

/// State directories of the runs, removed on drop.
struct Dirs(Vec<PathBuf>);

impl Drop for Dirs {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
        .trim()
        .to_owned()
}

#[test]
fn the_steer_image_promotes_with_exactly_its_capabilities() {
    let test = "the_steer_image_promotes_with_exactly_its_capabilities";
    let Some(lab) = Lab::new(test, "caps") else { return };
    let mut dirs = Dirs(Vec::new());
    // Docker, with the flags the other container tests use.
    let docker_dir = format!("{}-docker", lab.state_dir());
    dirs.0.push(PathBuf::from(&docker_dir));
    let mut run =
        vec!["run", "--rm", "--pid", "host", "--network", "host", "--read-only", "--cap-drop", "ALL"];
    for cap in docker_capabilities() {
        run.extend(["--cap-add", cap]);
    }
    run.extend(["--volume", "/sys/fs/bpf:/sys/fs/bpf", STEER_IMAGE, "--state-dir", &docker_dir, "check"]);
    let out = Command::new("docker").args(&run).output().expect("docker run steer check");
    eprintln!("{test}: docker, --cap-add {}: steer check:\n{}", docker_capabilities().join(","), text(&out));
    assert!(out.status.success(), "steer check in the docker container failed");

    let ctr = match Ctr::find() {
        Ok(ctr) => ctr,
        Err(reason) => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci || !std::path::Path::new("/usr/bin/ctr").exists(),
                "CI=true and ctr is installed, but {reason}"
            );
            eprintln!("skipping {test} under containerd: {reason}");
            return;
        }
    };
    ctr.import(STEER_IMAGE);
    // A server that runs as another uid from the start, so it stays dumpable and its
    // /proc/PID/fd is that uid's (the case that needs CAP_DAC_READ_SEARCH).
    let port = free_port();
    let name = lab.name("nobody");
    let bind = format!("HAPROXY_BIND=127.0.0.1:{port}");
    let server = steer_harness::docker::Container::run(
        &name,
        &["--network", "host", "--user", "65534:65534", "--cap-drop", "ALL", "--env", &bind, HAPROXY_IMAGE],
    )
    .expect("start haproxy as uid 65534");
    wait_serving(port, None);
    let pid = server.pid().expect("pid").to_string();
    let mut promote = |tag: &str, caps: &[&str]| {
        let dir = format!("{}-{tag}", lab.state_dir());
        dirs.0.push(PathBuf::from(&dir));
        let id = lab.name(tag);
        let out = ctr.steer(&id, caps, &["--state-dir", &dir, "promote", &pid]);
        eprintln!("{test}: containerd, {tag} ({}): steer promote: {}", caps.join(","), text(&out));
        out
    };
    let out = promote("all", &CAPABILITIES);
    assert!(out.status.success(), "steer promote with the five capabilities failed: {}", text(&out));
    for missing in CAPABILITIES {
        let caps: Vec<&str> = CAPABILITIES.iter().copied().filter(|c| *c != missing).collect();
        let out = promote(&format!("no-{missing}"), &caps);
        assert_eq!(
            out.status.code(),
            Some(1),
            "steer promote without CAP_{missing} must fail: {}",
            text(&out)
        );
        // Four are refused by steer's own check of its capabilities (the kernel's refusals
        // are in deploy/README.md); without CAP_DAC_READ_SEARCH the kernel refuses.
        let says = if missing == "DAC_READ_SEARCH" {
            "/fd: permission denied".to_owned()
        } else {
            format!("CAP_{missing}")
        };
        assert!(text(&out).contains(&says), "without CAP_{missing}, steer says why: {}", text(&out));
    }
}
