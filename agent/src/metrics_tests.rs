//! Tests of the metrics: rendering a hand-built status, the two text formats,
//! parsing the kernel's counters and `--metrics`. The HTTP server's tests are in
//! `metrics/http_tests.rs`.
use std::time::{Duration, Instant};

use super::*;
use crate::ops::status::{Group, Namespace, Socket};
use crate::policy::RollbackEffect;

/// `/proc/net/netstat` of a 6.18 kernel, as read on the development machine.
const NETSTAT: &str = "TcpExt: SyncookiesSent SyncookiesRecv SyncookiesFailed EmbryonicRsts PruneCalled RcvPruned OfoPruned OutOfWindowIcmps LockDroppedIcmps ArpFilter TW TWRecycled TWKilled PAWSActive PAWSEstab BeyondWindow TSEcrRejected PAWSOldAck PAWSTimewait DelayedACKs DelayedACKLocked DelayedACKLost ListenOverflows ListenDrops TCPHPHits TCPPureAcks TCPHPAcks TCPRenoRecovery TCPSackRecovery TCPSACKReneging TCPSACKReorder TCPRenoReorder TCPTSReorder TCPFullUndo TCPPartialUndo TCPDSACKUndo TCPLossUndo TCPLostRetransmit TCPRenoFailures TCPSackFailures TCPLossFailures TCPFastRetrans TCPSlowStartRetrans TCPTimeouts TCPLossProbes TCPLossProbeRecovery TCPRenoRecoveryFail TCPSackRecoveryFail TCPRcvCollapsed TCPBacklogCoalesce TCPDSACKOldSent TCPDSACKOfoSent TCPDSACKRecv TCPDSACKOfoRecv TCPAbortOnData TCPAbortOnClose TCPAbortOnMemory TCPAbortOnTimeout TCPAbortOnLinger TCPAbortFailed TCPMemoryPressures TCPMemoryPressuresChrono TCPSACKDiscard TCPDSACKIgnoredOld TCPDSACKIgnoredNoUndo TCPSpuriousRTOs TCPMD5NotFound TCPMD5Unexpected TCPMD5Failure TCPSackShifted TCPSackMerged TCPSackShiftFallback TCPBacklogDrop PFMemallocDrop TCPMinTTLDrop TCPDeferAcceptDrop IPReversePathFilter TCPTimeWaitOverflow TCPReqQFullDoCookies TCPReqQFullDrop TCPRetransFail TCPRcvCoalesce TCPOFOQueue TCPOFODrop TCPOFOMerge TCPChallengeACK TCPSYNChallenge TCPFastOpenActive TCPFastOpenActiveFail TCPFastOpenPassive TCPFastOpenPassiveFail TCPFastOpenListenOverflow TCPFastOpenCookieReqd TCPFastOpenBlackhole TCPSpuriousRtxHostQueues BusyPollRxPackets TCPAutoCorking TCPFromZeroWindowAdv TCPToZeroWindowAdv TCPWantZeroWindowAdv TCPSynRetrans TCPOrigDataSent TCPHystartTrainDetect TCPHystartTrainCwnd TCPHystartDelayDetect TCPHystartDelayCwnd TCPACKSkippedSynRecv TCPACKSkippedPAWS TCPACKSkippedSeq TCPACKSkippedFinWait2 TCPACKSkippedTimeWait TCPACKSkippedChallenge TCPWinProbe TCPKeepAlive TCPMTUPFail TCPMTUPSuccess TCPDelivered TCPDeliveredCE TCPAckCompressed TCPZeroWindowDrop TCPRcvQDrop TCPWqueueTooBig TCPFastOpenPassiveAltKey TcpTimeoutRehash TcpDuplicateDataRehash TCPDSACKRecvSegs TCPDSACKIgnoredDubious TCPMigrateReqSuccess TCPMigrateReqFailure TCPPLBRehash TCPAORequired TCPAOBad TCPAOKeyNotFound TCPAOGood TCPAODroppedIcmps
TcpExt: 0 0 0 0 0 0 0 0 0 0 113 0 0 0 0 0 0 0 0 1 0 1 0 0 118 315 370 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 2 0 0 0 0 0 272 1 0 0 0 1 26 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 6245 1 0 0 0 0 0 0 0 0 0 0 0 2 0 348 354 354 21 0 1526 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1660 0 0 0 0 0 0 2 0 0 0 0 0 0 0 0 0 0 0
IpExt: InNoRoutes InTruncatedPkts InMcastPkts OutMcastPkts InBcastPkts OutBcastPkts InOctets OutOctets InMcastOctets OutMcastOctets InBcastOctets OutBcastOctets InCsumErrors InNoECTPkts InECT1Pkts InECT0Pkts InCEPkts ReasmOverlaps
IpExt: 0 0 0 0 0 0 229068962 446862 0 0 0 0 0 9208 0 0 0 0
MPTcpExt: MPCapableSYNRX MPCapableSYNTX MPCapableSYNACKRX MPCapableACKRX MPCapableFallbackACK MPCapableFallbackSYNACK MPCapableSYNTXDrop MPCapableSYNTXDisabled MPCapableEndpAttempt MPFallbackTokenInit MPTCPRetrans MPJoinNoTokenFound MPJoinSynRx MPJoinSynBackupRx MPJoinSynAckRx MPJoinSynAckBackupRx MPJoinSynAckHMacFailure MPJoinAckRx MPJoinAckHMacFailure MPJoinRejected MPJoinSynTx MPJoinSynTxCreatSkErr MPJoinSynTxBindErr MPJoinSynTxConnectErr DSSNotMatching DSSCorruptionFallback DSSCorruptionReset InfiniteMapTx InfiniteMapRx DSSNoMatchTCP DataCsumErr OFOQueueTail OFOQueue OFOMerge NoDSSInWindow DuplicateData AddAddr AddAddrTx AddAddrTxDrop EchoAdd EchoAddTx EchoAddTxDrop PortAdd AddAddrDrop MPJoinPortSynRx MPJoinPortSynAckRx MPJoinPortAckRx MismatchPortSynRx MismatchPortAckRx RmAddr RmAddrDrop RmAddrTx RmAddrTxDrop RmSubflow MPPrioTx MPPrioRx MPFailTx MPFailRx MPFastcloseTx MPFastcloseRx MPRstTx MPRstRx SubflowStale SubflowRecover SndWndShared RcvWndShared RcvWndConflictUpdate RcvWndConflict MPCurrEstab Blackhole MPCapableDataFallback MD5SigFallback DssFallback SimultConnectFallback FallbackFailed WinProbe
MPTcpExt: 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
";

fn socket(slot: u32, role: &str, pid: u32, fd: u32, accept_queue: Option<u32>, selected: u64) -> Socket {
    Socket {
        slot,
        role: role.parse().expect("a role"),
        pid,
        comm: Some("server".to_owned()),
        fd,
        cookie: 4096 + u64::from(slot),
        live: true,
        accept_queue,
        selected,
    }
}

/// Two groups in one namespace: 8080 with `b` active and `a` previous, 9090
/// with `d` active and `e` a 25 % canary.
fn status() -> Status {
    let web = Group {
        address: "127.0.0.1:8080".to_owned(),
        protocol: "tcp".to_owned(),
        port: 8080,
        ifindex: 0,
        generation: 2,
        canary_weight: 0,
        rollback: RollbackEffect::RestoresPrevious,
        counters: Counters { steered_active: 500, fallback_empty_slot: 3, ..Counters::default() },
        udp: None,
        sockets: vec![socket(0, "previous", 100, 3, Some(0), 120), socket(1, "active", 200, 5, Some(2), 380)],
    };
    let api = Group {
        address: "[::1]:9090".to_owned(),
        protocol: "tcp".to_owned(),
        port: 9090,
        ifindex: 0,
        generation: 1,
        canary_weight: 25,
        rollback: RollbackEffect::EndsCanary,
        counters: Counters { steered_active: 75, steered_canary: 25, migrated: 4, ..Counters::default() },
        udp: None,
        sockets: vec![socket(2, "active", 300, 7, None, 75), socket(3, "canary", 400, 8, Some(1), 25)],
    };
    Status {
        schema: 1,
        state_dir: "/sys/fs/bpf/steer".to_owned(),
        abi_version: 1,
        namespaces: vec![Namespace {
            netns: 4_026_532_248,
            max_slots: 8192,
            mode: "select+migrate".to_owned(),
            program: None,
            counters: Counters::default(),
            groups: vec![web, api],
            error: None,
        }],
    }
}

/// The sample line of `name` whose labels contain every one of `labels`.
fn sample<'a>(text: &'a str, name: &str, labels: &[&str]) -> Option<&'a str> {
    text.lines().find(|l| {
        l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' ']))
            && labels.iter().all(|label| l.contains(label))
    })
}

fn value<'a>(text: &'a str, name: &str, labels: &[&str]) -> &'a str {
    let line = sample(text, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"));
    line.rsplit(' ').next().unwrap_or_default()
}

#[test]
fn render_shows_every_family_with_the_maps_values() {
    let stats = DaemonStats::new();
    stats.record_promotion("127.0.0.1:8080");
    stats.record_promotion("127.0.0.1:8080");
    stats.record_promotion("[::1]:9090");
    stats.record_events(EventCounts { listen: 3, ..EventCounts::default() });
    stats.record_events(EventCounts { listen: 1, close: 2, fork: 5, lost: 7 });
    let text = render(&status(), &stats, NETSTAT).unwrap();
    assert!(text.contains("steer_daemon_events_lost_total 7"), "{text}");

    for family in [
        "# TYPE steer_connections counter",
        "# TYPE steer_promotions counter",
        "# TYPE steer_active_pid gauge",
        "# TYPE steer_socket_accept_queue gauge",
        "# TYPE steer_socket_selected counter",
        "# TYPE steer_kernel_tcp_migrate_req counter",
        "# TYPE steer_daemon_listener_events counter",
        "# TYPE steer_daemon_uptime_seconds gauge",
        "# UNIT steer_daemon_uptime_seconds seconds",
        "# TYPE steer_groups gauge",
    ] {
        assert!(text.contains(family), "missing {family:?} in\n{text}");
    }
    assert!(text.ends_with("# EOF\n"));

    let ns = r#"netns="4026532248""#;
    let web = r#"group="127.0.0.1:8080""#;
    let api = r#"group="[::1]:9090""#;
    let total = "steer_connections_total";
    assert_eq!(value(&text, total, &[ns, web, r#"path="steered_active""#]), "500");
    assert_eq!(value(&text, total, &[ns, web, r#"path="fallback_empty_slot""#]), "3");
    assert_eq!(value(&text, total, &[ns, web, r#"path="helper_error""#]), "0");
    assert_eq!(value(&text, total, &[ns, api, r#"path="steered_canary""#]), "25");
    assert_eq!(value(&text, total, &[ns, api, r#"path="migrated""#]), "4");
    assert_eq!(value(&text, total, &[ns, api, r#"path="canary_to_active""#]), "0");
    assert_eq!(text.lines().filter(|l| l.starts_with("steer_connections_total{")).count(), 16);

    assert_eq!(value(&text, "steer_promotions_total", &[web]), "2");
    assert_eq!(value(&text, "steer_promotions_total", &[api]), "1");
    assert_eq!(value(&text, "steer_active_pid", &[ns, web]), "200");
    assert_eq!(value(&text, "steer_active_pid", &[ns, api]), "300");

    let canary = [ns, api, r#"pid="400""#, r#"fd="8""#, r#"role="canary""#];
    assert_eq!(value(&text, "steer_socket_accept_queue", &canary), "1");
    assert_eq!(value(&text, "steer_socket_selected_total", &canary), "25");
    let previous = [ns, web, r#"pid="100""#, r#"fd="3""#, r#"role="previous""#];
    assert_eq!(value(&text, "steer_socket_accept_queue", &previous), "0");
    assert_eq!(value(&text, "steer_socket_selected_total", &previous), "120");
    // No accept queue known for pid 300: no gauge, but its counter is there.
    assert!(sample(&text, "steer_socket_accept_queue", &[r#"pid="300""#]).is_none());
    assert_eq!(value(&text, "steer_socket_selected_total", &[r#"pid="300""#]), "75");

    assert_eq!(value(&text, "steer_kernel_tcp_migrate_req_total", &[r#"result="success""#]), "0");
    assert_eq!(value(&text, "steer_kernel_tcp_migrate_req_total", &[r#"result="failure""#]), "0");
    assert_eq!(value(&text, "steer_groups", &[]), "2");
    assert_eq!(value(&text, "steer_daemon_listener_events_total", &[r#"kind="listen""#]), "4");
    assert_eq!(value(&text, "steer_daemon_listener_events_total", &[r#"kind="close""#]), "2");
    assert_eq!(value(&text, "steer_daemon_listener_events_total", &[r#"kind="fork""#]), "5");
    let uptime: f64 = value(&text, "steer_daemon_uptime_seconds", &[]).parse().unwrap();
    assert!((0.0..60.0).contains(&uptime), "uptime {uptime}");
}

#[test]
fn render_of_an_empty_status_still_has_the_daemon_figures() {
    let empty = Status { namespaces: Vec::new(), ..status() };
    let text = render(&empty, &DaemonStats::default(), "").unwrap();
    assert_eq!(value(&text, "steer_groups", &[]), "0");
    assert!(sample(&text, "steer_daemon_uptime_seconds", &[]).is_some());
    assert!(sample(&text, "steer_connections_total", &[]).is_none());
    assert_eq!(value(&text, "steer_kernel_tcp_migrate_req_total", &[r#"result="success""#]), "0");
}

#[test]
fn promotions_are_counted_per_group() {
    let stats = DaemonStats::new();
    assert!(stats.promotions().is_empty());
    stats.record_promotion("0.0.0.0:80");
    stats.record_promotion("0.0.0.0:80");
    stats.record_promotion("0.0.0.0:443");
    let expected = [("0.0.0.0:443".to_owned(), 1), ("0.0.0.0:80".to_owned(), 2)];
    assert_eq!(stats.promotions(), BTreeMap::from(expected));
}

#[test]
fn migrate_req_counters_read_the_tcpext_columns() {
    assert_eq!(migrate_req_counters(NETSTAT), (0, 0));

    // The same text with values in the two columns, found by name.
    let mut lines: Vec<String> = NETSTAT.lines().map(str::to_owned).collect();
    let names: Vec<&str> = lines[0].split_whitespace().collect();
    let success = names.iter().position(|n| *n == "TCPMigrateReqSuccess").unwrap();
    let failure = names.iter().position(|n| *n == "TCPMigrateReqFailure").unwrap();
    let mut values: Vec<String> = lines[1].split_whitespace().map(str::to_owned).collect();
    values[success] = "1234".to_owned();
    values[failure] = "5".to_owned();
    lines[1] = values.join(" ");
    assert_eq!(migrate_req_counters(&lines.join("\n")), (1234, 5));
}

#[test]
fn migrate_req_counters_are_zero_without_them() {
    assert_eq!(migrate_req_counters(""), (0, 0));
    assert_eq!(migrate_req_counters("TcpExt: SyncookiesSent\nTcpExt: 7\n"), (0, 0));
    assert_eq!(migrate_req_counters("TcpExt: TCPMigrateReqSuccess TCPMigrateReqFailure\n"), (0, 0));
}

#[test]
fn accept_picks_openmetrics_only_when_asked_for() {
    // Like what Prometheus 3 sends by default (its protocols by falling q), then Prometheus 2.
    let prometheus = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,\
                      application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;\
                      escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
    let older = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
                 text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    for (accept, format) in [
        (None, Format::Prometheus),
        (Some(""), Format::Prometheus),
        (Some("*/*"), Format::Prometheus),
        (Some("text/plain"), Format::Prometheus),
        (Some("application/openmetrics-text"), Format::OpenMetrics),
        (Some("Application/OpenMetrics-Text; version=1.0.0"), Format::OpenMetrics),
        (Some(prometheus), Format::OpenMetrics),
        (Some(older), Format::OpenMetrics),
        (Some("application/openmetrics-text, */*"), Format::OpenMetrics),
        (Some("application/openmetrics-text;q=0"), Format::Prometheus),
        (Some("application/openmetrics-text;q=0.2, text/plain"), Format::Prometheus),
        (Some("application/openmetrics-text;q=nope"), Format::Prometheus),
        (Some("application/json"), Format::Prometheus),
    ] {
        assert_eq!(negotiate(accept), format, "Accept: {accept:?}");
    }
}

#[test]
fn prometheus_text_names_counters_after_their_samples_and_drops_openmetrics_lines() {
    let stats = DaemonStats::new();
    stats.record_promotion("127.0.0.1:8080");
    let openmetrics = render(&status(), &stats, NETSTAT).unwrap();
    let text = prometheus_text(&openmetrics);
    assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
    assert!(text.contains("# TYPE steer_connections_total counter\n"), "{text}");
    assert!(text.contains("# HELP steer_connections_total New connections"), "{text}");
    assert!(text.contains("# TYPE steer_daemon_uptime_seconds gauge\n"), "{text}");
    assert!(text.contains("# TYPE steer_groups gauge\n"), "{text}");
    assert!(text.ends_with('\n'));
    // The samples are the OpenMetrics ones, unchanged.
    let samples = |t: &str| t.lines().filter(|l| !l.starts_with('#')).map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(samples(&text), samples(&openmetrics));
    // Each sample belongs to the family of the `# TYPE` above it, by its very name,
    // after that family's `# HELP`: what the 0.0.4 parser expects.
    let (mut help, mut family) = (String::new(), String::new());
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = rest.split(' ').next().unwrap().to_owned();
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            family = rest.split(' ').next().unwrap().to_owned();
            assert_eq!(help, family, "HELP and TYPE name one family");
        } else {
            let name = line.split(['{', ' ']).next().unwrap();
            assert_eq!(name, family, "{line} is in family {family}");
        }
    }
}

#[test]
fn metrics_addresses_are_ip_and_port_or_a_port_on_loopback() {
    let addr = |s: &str| parse_addr(s).map(|a| a.to_string());
    assert_eq!(addr("9477").as_deref(), Ok("127.0.0.1:9477"));
    assert_eq!(addr("127.0.0.1:9477").as_deref(), Ok("127.0.0.1:9477"));
    assert_eq!(addr("0.0.0.0:9477").as_deref(), Ok("0.0.0.0:9477"));
    assert_eq!(addr("[::1]:9477").as_deref(), Ok("[::1]:9477"));
    assert!(addr("localhost:9477").is_err());
    assert!(addr("70000").is_err());
    assert!(addr("").is_err());
}

#[test]
fn health_follows_the_event_loops_heartbeat() {
    let stats = DaemonStats::new();
    let now = Instant::now();
    assert_eq!(stats.health(now), Health::Starting);
    stats.beat();
    assert!(matches!(stats.health(Instant::now()), Health::Beating(age) if age < HEARTBEAT_STALE));
    let later = Instant::now() + HEARTBEAT_STALE + Duration::from_secs(1);
    assert!(matches!(stats.health(later), Health::Stale(age) if age > HEARTBEAT_STALE));
    let text = render(&status(), &stats, "").unwrap();
    assert!(text.contains("steer_daemon_heartbeat_age_seconds"), "{text}");
}

#[test]
fn lock_waits_are_counted_with_the_seconds_waited() {
    let mut registry = Registry::with_prefix("steer");
    let waits = crate::state::LockWaits { waits: 3, waited: Duration::from_millis(1500), timeouts: 1 };
    lock::register(&mut registry, waits);
    let mut text = String::new();
    text::encode(&mut text, &registry).unwrap();
    assert_eq!(value(&text, "steer_lock_waits_total", &[]), "3");
    assert_eq!(value(&text, "steer_lock_wait_seconds_total", &[]), "1.5");
    assert_eq!(value(&text, "steer_lock_timeouts_total", &[]), "1");
    // Every scrape carries them, zero or not.
    let text = render(&status(), &DaemonStats::default(), "").unwrap();
    assert!(sample(&text, "steer_lock_wait_seconds_total", &[]).is_some(), "{text}");
}
