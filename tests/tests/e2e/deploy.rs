//! The Kubernetes manifests in `deploy/kubernetes/`: every kustomization renders
//! with `kubectl kustomize`, and every manifest, rendered or as written,
//! validates offline against the Kubernetes schemas in strict mode
//! (`kubernetes-validate`, from PyPI, installed by `cargo xtask setup`). The
//! DaemonSet's flags are ones `steer` accepts. [`policy`] holds the Pod Security
//! checks.
//!
//! These need no privileges, only the tools: `kubectl`, `kubernetes-validate`,
//! and `python3` with PyYAML (which `kubernetes-validate` depends on) to read
//! the rendered YAML as JSON. Without them a test prints `skipping <test>:
//! <reason>`; with `CI=true` it fails instead.
mod policy;

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::Value;

use crate::common::steer_bin;

/// Where the manifests live, relative to the workspace root.
const MANIFESTS: &str = "deploy/kubernetes";

/// The oldest Kubernetes release the manifests are validated against: a
/// DaemonSet's `maxSurge` is GA from 1.25 on.
const OLDEST_KUBERNETES: (u32, u32) = (1, 25);

/// Kinds that `kubernetes-validate` has no schema for (custom resources); each
/// is checked by a test of its own instead.
const WITHOUT_SCHEMA: &[&str] = &["PodMonitor"];

/// Converts a YAML stream to a JSON array of its non-empty documents.
const YAML_TO_JSON: &str =
    "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)";

pub fn workspace_root() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).canonicalize().expect("workspace root")
}

/// True when the tools run here. Otherwise prints `skipping <test>: <reason>` and
/// returns false, or panics when `CI` is `true` or `1` (CI promises the tools).
pub fn require_tools(test: &str) -> bool {
    let probes: [(&str, &[&str], &str); 3] = [
        ("kubectl", &["version", "--client"], "kubectl is not installed"),
        (
            "kubernetes-validate",
            &["--version"],
            "kubernetes-validate is not installed (pip install kubernetes-validate, or cargo xtask setup)",
        ),
        ("python3", &["-c", "import yaml"], "python3 with PyYAML is not installed"),
    ];
    let missing = probes.iter().find(|(program, args, _)| {
        !Command::new(program)
            .args(*args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    let Some((_, _, reason)) = missing else { return true };
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!ci, "CI=true promises the Kubernetes manifest tests can run, but: {reason}");
    eprintln!("skipping {test}: {reason}");
    false
}

/// Runs `cmd` with `input` on stdin; panics with its stderr unless it exits 0.
fn run(cmd: &mut Command, input: Option<&str>) -> String {
    let mut child = cmd
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
    if let Some(input) = input {
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Directories under `deploy/kubernetes` (itself included) holding a
/// `kustomization.yaml`, and every other `.yaml` file there.
fn manifest_tree() -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (mut kustomizations, mut files) = (Vec::new(), Vec::new());
    let mut dirs = vec![workspace_root().join(MANIFESTS)];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.file_name().is_some_and(|n| n == "kustomization.yaml") {
                kustomizations.push(dir.clone());
            } else if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    kustomizations.sort();
    files.sort();
    (kustomizations, files)
}

/// `kubectl kustomize DIR` (DIR relative to the workspace root).
pub fn render(dir: &Path) -> String {
    run(Command::new("kubectl").arg("kustomize").arg(workspace_root().join(dir)), None)
}

/// The documents of a YAML stream, as JSON values.
pub fn documents(yaml: &str) -> Vec<Value> {
    let json = run(Command::new("python3").args(["-c", YAML_TO_JSON]), Some(yaml));
    serde_json::from_str(&json).expect("python's JSON parses")
}

/// The rendered kustomization in `dir` (relative to `deploy/kubernetes`), parsed.
pub fn rendered(dir: &str) -> Vec<Value> {
    documents(&render(&Path::new(MANIFESTS).join(dir)))
}

/// The one object of `kind` named `name` among `docs`.
pub fn object<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let mut found = docs.iter().filter(|d| d["kind"] == kind && d["metadata"]["name"] == name);
    let first = found.next().unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"));
    assert!(found.next().is_none(), "more than one {kind} {name}");
    first
}

/// The Kubernetes releases that `kubernetes-validate` has schemas for, from
/// [`OLDEST_KUBERNETES`] on, as `1.N`.
fn schema_versions() -> Vec<String> {
    let script = "import kubernetes_validate.utils as u; print('\\n'.join(u.all_versions()))";
    let mut versions: Vec<(u32, u32)> = run(Command::new("python3").args(["-c", script]), None)
        .lines()
        .filter_map(|v| {
            let mut parts = v.trim().split('.').map(str::parse::<u32>);
            Some((parts.next()?.ok()?, parts.next()?.ok()?))
        })
        .filter(|v| *v >= OLDEST_KUBERNETES)
        .collect();
    versions.sort_unstable();
    versions.dedup();
    assert!(!versions.is_empty(), "kubernetes-validate has no schema from {OLDEST_KUBERNETES:?} on");
    versions.into_iter().map(|(major, minor)| format!("{major}.{minor}")).collect()
}

/// `kubernetes-validate --strict` of `files` against every schema version.
/// Fails on any error, and on a missing schema for a kind not in [`WITHOUT_SCHEMA`].
fn validate_strict(files: &[PathBuf]) {
    let versions = schema_versions();
    let mut cmd = Command::new("kubernetes-validate");
    cmd.arg("--strict");
    for v in &versions {
        cmd.args(["-k", v]);
    }
    cmd.args(files);
    let out = cmd.output().expect("run kubernetes-validate");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let passed = text.lines().filter(|l| l.starts_with("INFO") && l.contains(" passed ")).count();
    eprintln!("kubernetes-validate --strict, Kubernetes {}: {passed} passed", versions.join(", "));
    assert!(out.status.success(), "kubernetes-validate failed ({}):\n{text}", out.status);
    for line in text.lines().filter(|l| !l.starts_with("INFO")) {
        let expected = line.starts_with("WARN")
            && WITHOUT_SCHEMA.iter().any(|k| line.contains(&format!("schema for kind {k} ")));
        assert!(expected, "kubernetes-validate: {line}\n{text}");
    }
    for file in files {
        let name = file.display().to_string();
        let no_schema_only = std::fs::read_to_string(file)
            .is_ok_and(|t| WITHOUT_SCHEMA.iter().any(|k| t.contains(&format!("kind: {k}"))));
        assert!(
            no_schema_only || text.lines().any(|l| l.starts_with(&format!("INFO {name} passed"))),
            "nothing in {name} was validated:\n{text}"
        );
    }
}

#[test]
fn every_kustomization_renders_and_validates_in_strict_mode() {
    if !require_tools("every_kustomization_renders_and_validates_in_strict_mode") {
        return;
    }
    let (kustomizations, _) = manifest_tree();
    let root = workspace_root().join(MANIFESTS);
    assert!(kustomizations.contains(&root), "no kustomization.yaml in {MANIFESTS}");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("deploy-rendered");
    std::fs::create_dir_all(&out).expect("create the output directory");
    let mut files = Vec::new();
    for dir in &kustomizations {
        let rel = dir.strip_prefix(&root).expect("under deploy/kubernetes");
        let name = format!("{}.yaml", rel.display().to_string().replace('/', "_"));
        let file = out.join(if name == ".yaml" { "kustomization.yaml".to_owned() } else { name });
        std::fs::write(&file, render(dir)).expect("write the rendered manifests");
        files.push(file);
    }
    eprintln!("rendered {} kustomizations", files.len());
    validate_strict(&files);
}

#[test]
fn every_manifest_file_validates_in_strict_mode() {
    if !require_tools("every_manifest_file_validates_in_strict_mode") {
        return;
    }
    let (_, files) = manifest_tree();
    assert!(files.len() >= 4, "too few manifests found: {files:?}");
    validate_strict(&files);
}

#[test]
fn the_pod_monitor_scrapes_the_agents_metrics_port() {
    if !require_tools("the_pod_monitor_scrapes_the_agents_metrics_port") {
        return;
    }
    let agent = rendered("");
    let ds = object(&agent, "DaemonSet", "steer");
    let monitoring = rendered("monitoring");
    let pm = object(&monitoring, "PodMonitor", "steer");
    assert_eq!(pm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(pm["metadata"]["namespace"], ds["metadata"]["namespace"], "same namespace as the agent");
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    let selector = pm["spec"]["selector"]["matchLabels"].as_object().expect("matchLabels");
    for (key, value) in selector {
        assert_eq!(&labels[key], value, "the PodMonitor selects the agent's pods by {key}");
    }
    let endpoint = &pm["spec"]["podMetricsEndpoints"][0];
    let ports = &ds["spec"]["template"]["spec"]["containers"][0]["ports"];
    assert!(
        ports.as_array().expect("ports").iter().any(|p| p["name"] == endpoint["port"]),
        "the PodMonitor's port {} is a named port of the agent: {ports}",
        endpoint["port"]
    );
    assert_eq!(endpoint["path"], "/metrics");
}

/// The `--flags` of `args` that `help` (a `--help` text) does not list.
fn unknown_flags<'a>(args: &[&'a str], help: &str) -> Vec<&'a str> {
    args.iter()
        .copied()
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split('=').next().unwrap_or(a))
        .filter(|flag| !help.lines().any(|l| l.trim_start().split([' ', ',']).any(|w| w == *flag)))
        .collect()
}

#[test]
fn the_daemonset_passes_only_flags_that_steer_accepts() {
    if !require_tools("the_daemonset_passes_only_flags_that_steer_accepts") {
        return;
    }
    let docs = rendered("");
    let container = &object(&docs, "DaemonSet", "steer")["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> =
        container["args"].as_array().expect("args").iter().map(|a| a.as_str().expect("string arg")).collect();
    let at = args.iter().position(|a| *a == "daemon").expect("the agent runs `steer daemon`");
    let help = |sub: &[&str]| run(Command::new(steer_bin()).args(sub).arg("--help"), None);
    let (global, daemon) = (help(&[]), help(&["daemon"]));
    assert_eq!(unknown_flags(&args[..at], &global), Vec::<&str>::new(), "flags before `daemon`");
    assert_eq!(unknown_flags(&args[at + 1..], &daemon), Vec::<&str>::new(), "`steer daemon` flags");
}
