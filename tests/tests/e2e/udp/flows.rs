//! Flows of the UDP test server across a handover. Without steer, a new socket in the
//! group rehashes flows the old generation was serving (the baseline). With steer, a
//! long-lived exchange from one source port stays with the generation that started it
//! while new flows go to the promoted one, the old socket's close hands its flows to the
//! active generation, and `--udp-flows off` sends every datagram to the active one.
use std::net::SocketAddr;
use std::time::Duration;

use steer_harness::udp::Flow;
use steer_harness::udp_server::{UdpServer, UdpServerArgs};

use super::{counter, groups_on, names, udp_group};
use crate::common::World;

const PORT: u16 = 5300;
/// Flows started per check, each from its own source port.
const FLOWS: usize = 32;
/// One datagram of the exchange every this often.
const EVERY: Duration = Duration::from_millis(5);

fn target() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], PORT))
}

fn server(w: &World, generation: &str) -> UdpServer {
    UdpServer::spawn(&w.ns, &UdpServerArgs::new(generation, target())).expect("spawn UDP server")
}

fn open(w: &World, n: usize) -> Vec<Flow> {
    (0..n).map(|_| Flow::open(&w.ns, target()).expect("open a flow")).collect()
}

/// The generation each flow's next datagram reaches (`-` for no answer).
fn ask_all(flows: &mut [Flow]) -> Vec<String> {
    flows.iter_mut().map(|f| f.ask().expect("ask").unwrap_or_else(|| "-".to_owned())).collect()
}

fn count(answers: &[String], generation: &str) -> usize {
    answers.iter().filter(|a| *a == generation).count()
}

#[test]
fn without_steer_a_new_generation_takes_over_flows_the_old_one_was_serving() {
    let Some(w) = World::new("hudpbase") else { return };
    let _g1 = server(&w, "g1");
    let mut flows = open(&w, FLOWS);
    assert_eq!(count(&ask_all(&mut flows), "g1"), FLOWS, "one generation serves every flow");
    let _g2 = server(&w, "g2");
    let after = ask_all(&mut flows);
    let moved = count(&after, "g2");
    eprintln!("baseline: {moved} of {FLOWS} flows of g1 moved to g2 when g2 bound the port (no steer)");
    assert_eq!(moved + count(&after, "g1"), FLOWS, "every datagram answered: {after:?}");
    // The kernel picks by a hash of the 4-tuple modulo the group's size: with two
    // sockets, about half the flows change generation mid-exchange.
    assert!(moved > 0, "the kernel rehashed no flow: {after:?}");
}

#[test]
fn with_steer_a_long_lived_exchange_stays_with_the_generation_that_started_it() {
    let Some(w) = World::new("hudpaff") else { return };
    let mut g1 = server(&w, "g1");
    w.steer_ok(&["promote", &g1.pid().to_string()]);
    assert_eq!(udp_group(&w, PORT)[names::PROTOCOL], names::UDP);
    let exchange = Flow::open(&w.ns, target()).expect("open the exchange").exchange(EVERY);
    std::thread::sleep(Duration::from_millis(200));

    let g2 = server(&w, "g2");
    w.steer_ok(&["promote", &g2.pid().to_string()]);
    let mut fresh = open(&w, FLOWS);
    let fresh_answers = ask_all(&mut fresh);
    std::thread::sleep(Duration::from_millis(300));
    let (mut flow, answers) = exchange.stop().expect("the exchange ran");
    let kept = counter(&w, PORT, names::FLOW_KEPT_PREVIOUS);
    eprintln!(
        "exchange from port {}: {} datagrams, {} answered by g1; new flows: {} of {FLOWS} to g2; \
         flow_kept_previous {kept}, steered_active {}, flow_table_full {}",
        flow.source_port().unwrap_or(0),
        answers.len(),
        answers.iter().filter(|a| a.as_deref() == Some("g1")).count(),
        count(&fresh_answers, "g2"),
        counter(&w, PORT, names::STEERED_ACTIVE),
        counter(&w, PORT, names::FLOW_TABLE_FULL),
    );
    assert!(answers.len() > 50, "the exchange ran across the handover: {}", answers.len());
    assert!(answers.iter().all(|a| a.as_deref() == Some("g1")), "every datagram to g1: {answers:?}");
    assert_eq!(count(&fresh_answers, "g2"), FLOWS, "new flows go to the promoted g2: {fresh_answers:?}");
    assert!(kept > 0, "the flow table kept the exchange on the previous generation");
    assert!(counter(&w, PORT, names::STEERED_ACTIVE) >= FLOWS as u64);

    // The old socket closes: its flows go to the active generation.
    let to_active = counter(&w, PORT, names::FLOW_TO_ACTIVE);
    g1.close().expect("close g1's socket");
    let after: Vec<Option<String>> = (0..20).map(|_| flow.ask().expect("ask")).collect();
    assert!(after.iter().all(|a| a.as_deref() == Some("g2")), "the exchange moved to g2: {after:?}");
    eprintln!("after g1 closed: flow_to_active {to_active} -> {}", counter(&w, PORT, names::FLOW_TO_ACTIVE));
}

#[test]
fn with_steer_flows_off_sends_every_datagram_to_the_active_generation() {
    let Some(w) = World::new("hudpoff") else { return };
    let g1 = server(&w, "g1");
    w.steer_ok(&["promote", &g1.pid().to_string()]);
    let mut flows = open(&w, FLOWS);
    assert_eq!(count(&ask_all(&mut flows), "g1"), FLOWS);
    let exchange = Flow::open(&w.ns, target()).expect("open the exchange").exchange(EVERY);
    std::thread::sleep(Duration::from_millis(200));

    let g2 = server(&w, "g2");
    let mut promote = vec!["promote".to_owned(), g2.pid().to_string()];
    promote.extend(names::FLOWS_OFF.map(str::to_owned));
    w.steer_ok(&promote.iter().map(String::as_str).collect::<Vec<_>>());
    let after = ask_all(&mut flows);
    std::thread::sleep(Duration::from_millis(300));
    let (_, answers) = exchange.stop().expect("the exchange ran");
    eprintln!(
        "--udp-flows off: {} of {FLOWS} earlier flows to g2 after the promote; exchange {:?} ... {:?}",
        count(&after, "g2"),
        answers.first(),
        answers.last()
    );
    assert_eq!(count(&after, "g2"), FLOWS, "flows g1 was serving go to g2: {after:?}");
    // The exchange switches once, at the promote, and never goes back.
    let first_g2 = answers.iter().position(|a| a.as_deref() == Some("g2")).expect("the exchange reached g2");
    assert!(answers[..first_g2].iter().all(|a| a.as_deref() == Some("g1")), "{answers:?}");
    assert!(answers[first_g2..].iter().all(|a| a.as_deref() == Some("g2")), "{answers:?}");
    assert_eq!(counter(&w, PORT, names::FLOW_KEPT_PREVIOUS), 0, "no flow kept in stateless mode");
    assert!(counter(&w, PORT, names::STEERED_ACTIVE) >= 2 * FLOWS as u64);
}

#[test]
fn with_steer_status_shows_a_udp_group_whose_counters_grow_with_every_datagram() {
    let Some(w) = World::new("hudpstat") else { return };
    let g1 = server(&w, "g1");
    w.steer_ok(&["promote", &g1.pid().to_string()]);
    let group = udp_group(&w, PORT);
    assert_eq!(group[names::PROTOCOL], names::UDP, "{group:#}");
    let pids: Vec<u64> =
        group["sockets"].as_array().into_iter().flatten().filter_map(|s| s["pid"].as_u64()).collect();
    assert_eq!(pids, vec![u64::from(g1.pid())], "{group:#}");
    let before = counter(&w, PORT, names::STEERED_ACTIVE);
    let mut flows = open(&w, FLOWS);
    for _ in 0..5 {
        assert_eq!(count(&ask_all(&mut flows), "g1"), FLOWS);
    }
    let after = counter(&w, PORT, names::STEERED_ACTIVE);
    eprintln!("steered_active {before} -> {after} over {} datagrams", 5 * FLOWS);
    assert!(after - before >= 5 * FLOWS as u64, "the program steered every datagram: {before} -> {after}");

    // Detached, the kernel's own selection serves the group and steer shows no UDP group.
    w.steer_ok(&["detach", "--port", &PORT.to_string()]);
    assert_eq!(count(&ask_all(&mut flows), "g1"), FLOWS);
    let left = groups_on(&w, PORT);
    assert!(left.is_empty(), "detach removed the UDP group: {left:#?}");
}

/// A flood of new source ports (more than the flow table's 65,536 buckets) neither
/// grows steer's state nor cuts an exchange already in progress: a new flow whose
/// bucket holds a live one is steered but not remembered (`flow_table_full`).
#[test]
fn with_steer_a_flood_of_source_ports_keeps_the_table_bounded_and_the_exchange_on_its_generation() {
    let Some(w) = World::new("hudpflood") else { return };
    let g1 = server(&w, "g1");
    w.steer_ok(&["promote", &g1.pid().to_string()]);
    let exchange = Flow::open(&w.ns, target()).expect("open the exchange").exchange(EVERY);
    std::thread::sleep(Duration::from_millis(100));
    let g2 = server(&w, "g2");
    w.steer_ok(&["promote", &g2.pid().to_string()]);

    // 80,000 datagrams, each from a fresh source port (bind, send, close): under the
    // default 30 s timeout every one stays a live flow for the rest of the test.
    const FLOOD: usize = 80_000;
    let flooded =
        w.ns.spawn_in(move || {
            let mut sent = 0;
            for _ in 0..FLOOD {
                let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
                if s.send_to(b"flood", target()).is_ok() {
                    sent += 1;
                }
            }
            Ok(sent)
        })
        .join()
        .expect("the flood thread")
        .expect("the flood ran");
    std::thread::sleep(Duration::from_millis(200));
    let (_, answers) = exchange.stop().expect("the exchange ran");
    let full = counter(&w, PORT, names::FLOW_TABLE_FULL);
    eprintln!(
        "flood: {flooded} new source ports; flow_table_full {full}; exchange: {} datagrams, {} to g1",
        answers.len(),
        answers.iter().filter(|a| a.as_deref() == Some("g1")).count()
    );
    assert!(flooded > 60_000, "the flood ran: {flooded}");
    assert!(full > 0, "new flows beyond the table's buckets were counted, not stored: {full}");
    assert!(answers.len() > 20, "the exchange ran through the flood: {}", answers.len());
    assert!(answers.iter().all(|a| a.as_deref() == Some("g1")), "the flood cut the exchange: {answers:?}");
    drop(g2);
}

/// The daemon promotes each new UDP generation by itself: the kernel reports no UDP
/// bind, so its poller finds it (`trigger` poll) beside the tracepoints, within a
/// quarter of a second; old flows stay with their generation, new ones go to it.
#[test]
fn with_steer_the_daemon_promotes_a_new_udp_generation_found_by_its_poller() {
    let Some(w) = World::new("hudpdaemon") else { return };
    let g1 = server(&w, "g1");
    let d = crate::common::Daemon::spawn(&w, &["--port", "5300"]);
    let first = d.promoted_pid(g1.pid());
    assert!(first.contains("5300/udp"), "the UDP group was adopted: {first}");
    let mut old = open(&w, FLOWS);
    assert_eq!(count(&ask_all(&mut old), "g1"), FLOWS);
    let g2 = server(&w, "g2");
    let line = d.promoted_pid(g2.pid());
    assert!(line.contains("\"trigger\":\"poll\"") && line.contains("5300/udp"), "{line}");
    let latency: u64 = line
        .split("\"latency_us\":")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .expect("latency_us in the promotion line");
    assert!(latency < 1_000_000, "found within the poll interval, not later: {line}");
    let mut fresh = open(&w, FLOWS);
    assert_eq!(count(&ask_all(&mut fresh), "g2"), FLOWS, "new flows go to g2");
    assert_eq!(count(&ask_all(&mut old), "g1"), FLOWS, "old flows stay with g1 while it lives");
    drop((d, g1, g2));
}

/// The flow table's clock runs at the real rate (the program reads it from
/// `jiffies`): with `--udp-flow-timeout 1s` (one 1.07 s tick), a flow kept on
/// the previous generation stays there while it is busy, and goes to the
/// active one after 3.5 s idle (more than one tick later).
#[test]
fn with_steer_an_idle_flow_goes_to_the_active_generation_after_its_timeout() {
    let Some(w) = World::new("hudpidle") else { return };
    let g1 = server(&w, "g1");
    w.steer_ok(&["promote", &g1.pid().to_string(), "--udp-flow-timeout", "1s"]);
    let mut flows = open(&w, FLOWS);
    assert_eq!(count(&ask_all(&mut flows), "g1"), FLOWS);
    let g2 = server(&w, "g2");
    w.steer_ok(&["promote", &g2.pid().to_string(), "--udp-flow-timeout", "1s"]);
    // Busy for 2 s, a datagram every 100 ms: kept on g1 throughout.
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(100));
        let busy = ask_all(&mut flows);
        assert_eq!(count(&busy, "g1"), FLOWS, "kept while busy: {busy:?}");
    }
    std::thread::sleep(Duration::from_millis(3500));
    let idle = ask_all(&mut flows);
    assert_eq!(count(&idle, "g2"), FLOWS, "idle past the timeout, each flow is new: {idle:?}");
    drop((g1, g2));
}
