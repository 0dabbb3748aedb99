//! Tests of the metrics: rendering a hand-built status, parsing the kernel's
//! counters, and an HTTP round trip against [`serve`].
use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};

use super::http::{MAX_REQUEST, Route, head_complete, route};
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
        port: 8080,
        ifindex: 0,
        generation: 2,
        canary_weight: 0,
        rollback: RollbackEffect::RestoresPrevious,
        counters: Counters { steered_active: 500, fallback_empty_slot: 3, ..Counters::default() },
        sockets: vec![socket(0, "previous", 100, 3, Some(0), 120), socket(1, "active", 200, 5, Some(2), 380)],
    };
    let api = Group {
        address: "[::1]:9090".to_owned(),
        port: 9090,
        ifindex: 0,
        generation: 1,
        canary_weight: 25,
        rollback: RollbackEffect::EndsCanary,
        counters: Counters { steered_active: 75, steered_canary: 25, migrated: 4, ..Counters::default() },
        sockets: vec![socket(2, "active", 300, 7, None, 75), socket(3, "canary", 400, 8, Some(1), 25)],
    };
    Status {
        schema: 1,
        state_dir: "/sys/fs/bpf/steer".to_owned(),
        abi_version: 1,
        namespaces: vec![Namespace {
            netns: 4_026_532_248,
            max_slots: 8192,
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
fn requests_are_routed_by_method_and_path() {
    assert_eq!(route("GET /metrics HTTP/1.1"), (Route::Metrics, false));
    assert_eq!(route("GET /metrics?name[]=x HTTP/1.0"), (Route::Metrics, false));
    assert_eq!(route("HEAD /healthz HTTP/1.1"), (Route::Health, true));
    assert_eq!(route("POST /metrics HTTP/1.1"), (Route::MethodNotAllowed, false));
    assert_eq!(route("GET /nope HTTP/1.1"), (Route::NotFound, false));
    assert_eq!(route("GET /metrics"), (Route::BadRequest, false));
    assert_eq!(route("GET /metrics SPDY/3"), (Route::BadRequest, false));
    assert!(head_complete(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert!(head_complete(b"GET / HTTP/1.1\n\n"));
    assert!(!head_complete(b"GET / HTTP/1.1\r\nHost: x\r\n"));
}

/// Sends `request` and reads the whole response (the server closes after it).
async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
    exchange(addr, format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes()).await
}

#[tokio::test]
async fn http_round_trip() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state_dir = PathBuf::from("/nonexistent/steer-metrics-test");
    let stats = Arc::new(DaemonStats::new());
    stats.record_promotion("127.0.0.1:8080");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state_dir, Arc::clone(&stats), async {
        let _ = stopped.await;
    }));

    // Before the event loop's first beat: not healthy yet.
    let (status, _, body) = get(addr, "/healthz").await;
    assert_eq!((status, body.as_str()), (503, "starting: the event loop has not run yet\n"));
    stats.beat();
    let (status, head, body) = get(addr, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert!(head.contains("Connection: close"), "{head}");

    let (status, head, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(head.contains("Content-Type: application/openmetrics-text; version=1.0.0"), "{head}");
    assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
    assert!(body.contains("steer_daemon_uptime_seconds"), "{body}");
    assert!(body.contains(r#"steer_promotions_total{group="127.0.0.1:8080"} 1"#), "{body}");
    assert!(body.contains("steer_groups 0"), "{body}");

    let (status, _, _) = get(addr, "/nope").await;
    assert_eq!(status, 404);
    let (status, head, _) = exchange(addr, b"DELETE /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, 405);
    assert!(head.contains("Allow: GET, HEAD"), "{head}");
    let (status, head, body) = exchange(addr, b"HEAD /healthz HTTP/1.1\r\n\r\n").await;
    assert_eq!((status, body.as_str()), (200, ""));
    assert!(head.contains("Content-Length: 3"), "{head}");
    let (status, _, _) = exchange(addr, b"garbage\r\n\r\n").await;
    assert_eq!(status, 400);
    // Exactly the limit and no end of head yet: the server reads it all, so its
    // close is a clean FIN and the 431 arrives.
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
    huge.resize(MAX_REQUEST, b'a');
    let (status, _, _) = exchange(addr, &huge).await;
    assert_eq!(status, 431);

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "the listener is closed after shutdown");
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
