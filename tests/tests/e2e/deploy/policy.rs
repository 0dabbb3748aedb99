//! Pod Security: the steer DaemonSet departs from the "baseline" profile only
//! where docs/kubernetes.md says, and is never privileged; it keeps every
//! hardening the issue asks for; the examples depart only where they say.
//!
//! [`baseline_departures`] follows the baseline controls of the Pod Security
//! Standards (kubernetes.io/docs/concepts/security/pod-security-standards/,
//! as enforced by k8s.io/pod-security-admission's `policy/check_*.go`).
use serde_json::Value;

use super::{object, rendered, require_tools, workspace_root};

/// Where the steer DaemonSet departs from "baseline", and must. The same list,
/// with the reasons, is the table between the `baseline-departures` markers
/// in docs/kubernetes.md; the capabilities are set in deploy/kubernetes/daemonset.yaml.
const DOCUMENTED_DEPARTURES: &[&str] = &[
    "hostPID",
    "hostPath /sys/fs/bpf",
    "capability BPF",
    "capability NET_ADMIN",
    "capability SYS_PTRACE",
    "capability PERFMON",
    "capability DAC_READ_SEARCH",
    "capability SYS_NICE",
];

/// Capabilities that "baseline" lets a container add.
const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Sysctls that "baseline" allows (the "safe" set, as of Kubernetes 1.32).
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

const SELINUX_TYPES: &[&str] =
    &["", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"];

fn strs(v: &Value) -> impl Iterator<Item = &str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str)
}

fn containers(spec: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .into_iter()
        .flat_map(|k| spec[k].as_array().into_iter().flatten())
}

/// Every setting of a pod template (`metadata` and `spec`) that the "baseline"
/// profile forbids, one short name each (sorted, deduplicated).
fn baseline_departures(template: &Value) -> Vec<String> {
    let spec = &template["spec"];
    let mut out: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
        .into_iter()
        .filter(|k| spec[*k] == true)
        .map(str::to_owned)
        .collect();
    for volume in spec["volumes"].as_array().into_iter().flatten() {
        if let Some(path) = volume["hostPath"]["path"].as_str() {
            out.push(format!("hostPath {path}"));
        }
    }
    for sysctl in spec["securityContext"]["sysctls"].as_array().into_iter().flatten() {
        let name = sysctl["name"].as_str().unwrap_or_default();
        if !SAFE_SYSCTLS.contains(&name) {
            out.push(format!("sysctl {name}"));
        }
    }
    for (key, value) in template["metadata"]["annotations"].as_object().into_iter().flatten() {
        let value = value.as_str().unwrap_or_default();
        if key.starts_with("container.apparmor.security.beta.kubernetes.io/")
            && value != "runtime/default"
            && !value.starts_with("localhost/")
        {
            out.push(format!("appArmor {value}"));
        }
    }
    let pod_sc = &spec["securityContext"];
    let contexts = std::iter::once(pod_sc).chain(containers(spec).map(|c| &c["securityContext"]));
    for sc in contexts {
        security_context_departures(sc, &mut out);
    }
    for c in containers(spec) {
        let sc = &c["securityContext"];
        if sc["privileged"] == true {
            out.push("privileged".to_owned());
        }
        for cap in strs(&sc["capabilities"]["add"]).filter(|c| !BASELINE_CAPABILITIES.contains(c)) {
            out.push(format!("capability {cap}"));
        }
        if sc["procMount"].as_str().is_some_and(|m| m != "Default") {
            out.push(format!("procMount {}", sc["procMount"]));
        }
        for port in c["ports"].as_array().into_iter().flatten() {
            if port["hostPort"].as_u64().is_some_and(|p| p != 0) {
                out.push(format!("hostPort {}", port["hostPort"]));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The checks a pod-level and a container-level security context share.
fn security_context_departures(sc: &Value, out: &mut Vec<String>) {
    if sc["windowsOptions"]["hostProcess"] == true {
        out.push("hostProcess".to_owned());
    }
    if sc["seccompProfile"]["type"] == "Unconfined" {
        out.push("seccomp Unconfined".to_owned());
    }
    if sc["appArmorProfile"]["type"] == "Unconfined" {
        out.push("appArmor Unconfined".to_owned());
    }
    let selinux = &sc["seLinuxOptions"];
    if !SELINUX_TYPES.contains(&selinux["type"].as_str().unwrap_or_default()) {
        out.push(format!("seLinux type {}", selinux["type"]));
    }
    for field in ["user", "role"] {
        if selinux[field].as_str().is_some_and(|v| !v.is_empty()) {
            out.push(format!("seLinux {field}"));
        }
    }
}

fn sorted(list: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| (*s).to_owned()).collect();
    v.sort();
    v
}

#[test]
fn the_agent_departs_from_baseline_only_where_documented() {
    if !require_tools("the_agent_departs_from_baseline_only_where_documented") {
        return;
    }
    let docs = rendered("");
    let template = &object(&docs, "DaemonSet", "steer")["spec"]["template"];
    let departures = baseline_departures(template);
    assert!(!departures.iter().any(|d| d == "privileged"), "the agent must never be privileged");
    assert_eq!(
        departures,
        sorted(DOCUMENTED_DEPARTURES),
        "the DaemonSet's departures from Pod Security baseline (left) differ from the documented \
         list (right): change both, and docs/kubernetes.md"
    );
}

#[test]
fn the_docs_list_the_same_departures() {
    let path = workspace_root().join("docs/kubernetes.md");
    let text = std::fs::read_to_string(&path).expect("read docs/kubernetes.md");
    let table = text
        .split_once("<!-- baseline-departures -->")
        .and_then(|(_, rest)| rest.split_once("<!-- /baseline-departures -->"))
        .map(|(table, _)| table)
        .expect("docs/kubernetes.md marks its departures table with <!-- baseline-departures -->");
    let mut listed: Vec<String> = table
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(name, _)| name.to_owned())
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        sorted(DOCUMENTED_DEPARTURES),
        "docs/kubernetes.md (left) and the test's list (right)"
    );
}

/// The hardening that departs from nothing but must not get lost.
#[test]
fn the_agent_keeps_every_other_restriction() {
    if !require_tools("the_agent_keeps_every_other_restriction") {
        return;
    }
    let docs = rendered("");
    let ds = object(&docs, "DaemonSet", "steer");
    let spec = &ds["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(spec["containers"].as_array().map(Vec::len), Some(1), "one container");
    assert_ne!(spec["hostNetwork"], true, "the agent needs no host network");
    assert_eq!(strs(&sc["capabilities"]["drop"]).collect::<Vec<_>>(), ["ALL"]);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    let seccomp = [&spec["securityContext"]["seccompProfile"]["type"], &sc["seccompProfile"]["type"]];
    assert!(seccomp.iter().any(|t| **t == "RuntimeDefault"), "seccomp RuntimeDefault");
    // The API server refuses allowPrivilegeEscalation: false beside SYS_ADMIN.
    let sys_admin = strs(&sc["capabilities"]["add"]).any(|c| c == "SYS_ADMIN" || c == "CAP_SYS_ADMIN");
    if sys_admin {
        assert_ne!(sc["allowPrivilegeEscalation"], false, "not allowed with SYS_ADMIN");
    } else {
        assert_eq!(sc["allowPrivilegeEscalation"], false);
    }
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    assert!(spec["tolerations"].as_array().is_some_and(|t| !t.is_empty()), "tolerations");

    // bpffs from the host, and nothing else of the host's filesystem.
    let volumes = spec["volumes"].as_array().expect("volumes");
    assert_eq!(volumes.len(), 1, "one volume: {volumes:?}");
    assert_eq!(volumes[0]["hostPath"]["path"], "/sys/fs/bpf");
    let mount = &c["volumeMounts"][0];
    assert_eq!(mount["mountPath"], "/sys/fs/bpf");
    assert_eq!(mount["mountPropagation"], "HostToContainer", "Bidirectional needs privileged");

    // Probes on /healthz through the named metrics port, which --metrics serves.
    let port =
        c["ports"].as_array().and_then(|p| p.iter().find(|p| p["name"] == "metrics")).expect("metrics port");
    let args: Vec<&str> = strs(&c["args"]).collect();
    let metrics = args.iter().position(|a| *a == "--metrics").map(|i| args[i + 1]).expect("--metrics ADDR");
    assert!(metrics.ends_with(&format!(":{}", port["containerPort"])), "--metrics {metrics} vs {port}");
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["path"], "/healthz", "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    for kind in ["requests", "limits"] {
        assert!(c["resources"][kind]["memory"].is_string(), "resources.{kind}.memory");
    }

    // Its namespace admits it, and says why.
    let namespace = ds["metadata"]["namespace"].as_str().expect("namespace");
    let ns = object(&docs, "Namespace", namespace);
    assert_eq!(ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged");
    let sa = object(&docs, "ServiceAccount", spec["serviceAccountName"].as_str().expect("service account"));
    assert_eq!(sa["automountServiceAccountToken"], false);
}

#[test]
fn the_examples_depart_only_where_they_say() {
    if !require_tools("the_examples_depart_only_where_they_say") {
        return;
    }
    // Host network: one SO_REUSEPORT group spans the old and the surge pod.
    let docs = rendered("examples/haproxy-host-network");
    let ds = object(&docs, "DaemonSet", "haproxy");
    let template = &ds["spec"]["template"];
    assert_eq!(baseline_departures(template), ["hostNetwork"]);
    let rolling = &ds["spec"]["updateStrategy"]["rollingUpdate"];
    assert_eq!((&rolling["maxSurge"], &rolling["maxUnavailable"]), (&Value::from(1), &Value::from(0)));
    for c in containers(&template["spec"]) {
        // With hostNetwork, every containerPort defaults to a hostPort, which
        // keeps the surge pod off the node.
        assert!(c["ports"].is_null(), "container {} declares ports", c["name"]);
    }
    assert!(template["spec"]["securityContext"]["runAsUser"].is_u64(), "a fixed uid for every revision");
    let namespace = ds["metadata"]["namespace"].as_str().expect("namespace");
    let ns = object(&docs, "Namespace", namespace);
    assert_eq!(ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged");

    // Pod network: nothing beyond baseline; its namespace enforces restricted.
    let docs = rendered("examples/haproxy-pod-network");
    let deploy = object(&docs, "Deployment", "haproxy");
    assert_eq!(baseline_departures(&deploy["spec"]["template"]), Vec::<String>::new());
    let namespace = deploy["metadata"]["namespace"].as_str().expect("namespace");
    let ns = object(&docs, "Namespace", namespace);
    assert_eq!(ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted");
}

#[test]
fn the_baseline_check_sees_what_it_must() {
    let template = serde_json::json!({
        "metadata": {"annotations": {"container.apparmor.security.beta.kubernetes.io/c": "unconfined"}},
        "spec": {
            "hostNetwork": true,
            "hostIPC": false,
            "securityContext": {"sysctls": [{"name": "net.core.somaxconn", "value": "1"},
                                            {"name": "net.ipv4.tcp_syncookies", "value": "1"}]},
            "volumes": [{"name": "h", "hostPath": {"path": "/"}}, {"name": "e", "emptyDir": {}}],
            "containers": [{
                "name": "c",
                "ports": [{"containerPort": 80, "hostPort": 80}, {"containerPort": 81}],
                "securityContext": {
                    "privileged": true,
                    "capabilities": {"add": ["CHOWN", "SYS_ADMIN"]},
                    "seccompProfile": {"type": "Unconfined"},
                    "seLinuxOptions": {"type": "spc_t"},
                    "procMount": "Unmasked"
                }
            }]
        }
    });
    let expected = [
        "appArmor unconfined",
        "capability SYS_ADMIN",
        "hostNetwork",
        "hostPath /",
        "hostPort 80",
        "privileged",
        "procMount \"Unmasked\"",
        "seLinux type \"spc_t\"",
        "seccomp Unconfined",
        "sysctl net.core.somaxconn",
    ];
    assert_eq!(baseline_departures(&template), sorted(&expected));
}
