//! The appliance runtime on the host: embassy-net stacks joined in memory
//! with embassy-net-driver-channel (no TAP device, no privileges). Four client
//! stacks with their own addresses, the appliance running the guard, and a
//! backend stack whose server answers every byte XOR 0xA5 (so both
//! directions are checked byte for byte), all driven on one thread by a
//! std executor with embassy-time's std driver.
//!
//! Waits are bounded (a test fails instead of hanging), and no assertion
//! depends on how fast anything ran.

mod common;

use std::time::Duration as StdDuration;

use common::*;
use embassy_futures::join::join_array;
use embassy_time::{Duration, Timer};
use mtguard_core::mtproto::{Invalid, Secret, SecretSet};
use mtguard_core::{BlockCause, Event, Policy, RejectReason, UnblockCause};
use mtguard_embassy::{End, GuardEvent};

#[test]
fn forwarded_bytes_are_identical_both_ways() {
    run::<4>(Policy::default(), SecretSet::new(), async |env| {
        // Three clients at once, each with 20 KB: more than any buffer on
        // the way, so the relay has to loop and apply back-pressure.
        let sent: Vec<Vec<u8>> = (0..3).map(|c| payload(20_000, c as u8)).collect();
        let mut conns = Vec::new();
        for c in 0..3 {
            conns.push(connect(env.clients[c]).await.expect("admitted"));
        }
        let exchanges = conns.iter_mut().zip(&sent).map(|(s, data)| async move {
            write_all(s, data).await.expect("written");
            let answer = read_exact(s, data.len()).await;
            // Half-close: the guard must pass the FIN on and the backend's
            // close back.
            s.close();
            let rest = read_to_end(s).await.expect("closed, not reset");
            (answer, rest)
        });
        let results = join_array::<_, 3>(
            exchanges
                .collect::<Vec<_>>()
                .try_into()
                .unwrap_or_else(|_| unreachable!()),
        )
        .await;
        for (c, (answer, rest)) in results.iter().enumerate() {
            assert_eq!(*answer, xor(&sent[c]), "client {c}: bytes back");
            assert!(rest.is_empty(), "client {c}: nothing after the answer");
        }
        for c in 0..3 {
            let (end, up, down) = expect_closed(env, c).await;
            assert_eq!(end, End::Done);
            assert_eq!((up, down), (20_000, 20_000), "client {c}: counted bytes");
        }
        let mut seen: Vec<Vec<u8>> = env.backend.borrow().connections.clone();
        seen.sort();
        let mut want = sent.clone();
        want.sort();
        assert_eq!(seen, want, "the backend received exactly what was sent");
        assert_eq!(env.guard.with_engine(|e, _| e.active_connections()), 0);
    });
}

#[test]
fn per_client_limit_then_block_then_expiry() {
    run::<4>(small_policy(), SecretSet::new(), async |env| {
        // Client 0 holds its two allowed connections.
        let mut held = Vec::new();
        for k in 0..2u8 {
            let mut s = connect(env.clients[0]).await.expect("admitted");
            write_all(&mut s, &[k]).await.unwrap();
            assert_eq!(read_exact(&mut s, 1).await, [k ^ 0xA5]);
            held.push(s);
        }
        // The third is accepted by TCP, then reset by the guard.
        let mut third = connect(env.clients[0]).await.expect("tcp accept");
        assert_eq!(
            expect_refused(env, 0).await,
            RejectReason::TooManyConnections
        );
        assert!(read_to_end(&mut third).await.is_err(), "refusal is a reset");

        // Another address is not affected.
        let mut other = connect(env.clients[1]).await.expect("admitted");
        write_all(&mut other, b"hi").await.unwrap();
        assert_eq!(read_exact(&mut other, 2).await, xor(b"hi"));

        // The second refusal within the window blocks client 0.
        let _fourth = connect(env.clients[0]).await.expect("tcp accept");
        assert_eq!(
            expect_refused(env, 0).await,
            RejectReason::TooManyConnections
        );
        let (cause, until) = expect_event(env, |e| match e {
            GuardEvent::Engine(Event::Blocked { cause, until, .. }) => Some((*cause, *until)),
            _ => None,
        })
        .await;
        assert_eq!(cause, BlockCause::Violations);
        assert!(until.is_some(), "an automatic block ends");
        assert!(env
            .guard
            .with_engine(|e, _| e.is_blocked(client_ip(0).into())));

        // Even with its connections closed, a blocked client is refused.
        for mut s in held.drain(..) {
            s.close();
            assert!(read_to_end(&mut s).await.is_ok());
        }
        let _ = connect(env.clients[0]).await;
        assert_eq!(expect_refused(env, 0).await, RejectReason::Blocked);

        // The guard's deadline loop ends the block (handle_timeout), with no
        // connection to trigger it.
        let cause = expect_event(env, |e| match e {
            GuardEvent::Engine(Event::Unblocked { cause, .. }) => Some(*cause),
            _ => None,
        })
        .await;
        assert_eq!(cause, UnblockCause::Expired);
        let mut back = connect(env.clients[0]).await.expect("admitted again");
        write_all(&mut back, b"again").await.unwrap();
        assert_eq!(read_exact(&mut back, 5).await, xor(b"again"));
    });
}

#[test]
fn handshakes_are_inspected_probes_reset_and_scanners_blocked() {
    let mut secrets = SecretSet::new();
    secrets
        .push(Secret::parse("0123456789abcdef0123456789abcdef").unwrap())
        .unwrap();
    run::<4>(small_policy(), secrets, async |env| {
        // A real client's header, then its traffic, reaches the backend
        // unchanged; the header arrives in two pieces to exercise NeedMore.
        let header = telethon("classic-abridged");
        let mut good = connect(env.clients[0]).await.expect("admitted");
        write_all(&mut good, &header[..30]).await.unwrap();
        Timer::after(Duration::from_millis(20)).await;
        write_all(&mut good, &header[30..]).await.unwrap();
        assert_eq!(read_exact(&mut good, 64).await, xor(&header));
        write_all(&mut good, b"after the header").await.unwrap();
        assert_eq!(read_exact(&mut good, 16).await, xor(b"after the header"));

        // Random bytes (a scanner): reset, the backend never sees them.
        let mut probe = connect(env.clients[3]).await.expect("tcp accept");
        write_all(&mut probe, &payload(64, 1)).await.unwrap();
        assert!(read_to_end(&mut probe).await.is_err(), "a probe is reset");
        let (end, up, _) = expect_closed(env, 3).await;
        assert_eq!(end, End::Probe(Invalid::BadSecretOrTag));
        assert_eq!(up, 0);

        // A header with an impossible DC, made for this secret.
        let mut probe = connect(env.clients[1]).await.expect("tcp accept");
        write_all(&mut probe, &telethon("dc-zero")).await.unwrap();
        assert!(read_to_end(&mut probe).await.is_err(), "a probe is reset");
        let (end, _, _) = expect_closed(env, 1).await;
        assert_eq!(
            end,
            End::Probe(Invalid::BadDc),
            "{:?}",
            env.pending.borrow()
        );

        // A second failure (an HTTP scanner) within the window: blocked.
        let mut http = connect(env.clients[1]).await.expect("tcp accept");
        write_all(&mut http, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(read_to_end(&mut http).await.is_err());
        let (end, _, _) = expect_closed(env, 1).await;
        assert_eq!(end, End::Probe(Invalid::OtherProtocol));
        let cause = expect_event(env, |e| match e {
            GuardEvent::Engine(Event::Blocked { cause, .. }) => Some(*cause),
            _ => None,
        })
        .await;
        assert_eq!(cause, BlockCause::Scanner);
        let _ = connect(env.clients[1]).await;
        assert_eq!(expect_refused(env, 1).await, RejectReason::Blocked);

        // The recorded header played again from another address: a replay.
        let mut replay = connect(env.clients[2]).await.expect("tcp accept");
        write_all(&mut replay, &header).await.unwrap();
        assert!(read_to_end(&mut replay).await.is_err());
        let (end, _, _) = expect_closed(env, 2).await;
        assert_eq!(end, End::Probe(Invalid::Replay));
        expect_event(env, |e| {
            matches!(e, GuardEvent::Engine(Event::ReplayDetected { .. })).then_some(())
        })
        .await;

        // Only the real client ever reached the backend.
        let log = env.backend.borrow().connections.clone();
        assert_eq!(log.len(), 1);
        let mut want = header.clone();
        want.extend_from_slice(b"after the header");
        assert_eq!(log[0], want);
        good.close();
        assert!(read_to_end(&mut good).await.is_ok());
    });
}

#[test]
fn a_silent_client_is_timed_out_by_the_engine() {
    let mut policy = small_policy();
    policy.handshake_timeout = Some(StdDuration::from_secs(1));
    run::<4>(policy, SecretSet::new(), async |env| {
        let mut silent = connect(env.clients[3]).await.expect("admitted");
        expect_event(env, |e| {
            matches!(e, GuardEvent::Engine(Event::HandshakeTimeout { .. })).then_some(())
        })
        .await;
        let (end, _, _) = expect_closed(env, 3).await;
        assert_eq!(end, End::HandshakeTimeout);
        assert!(
            read_to_end(&mut silent).await.is_err(),
            "timed out is reset"
        );
        assert!(env.backend.borrow().connections.is_empty());
    });
}

#[test]
fn full_slots_refuse_cleanly_and_recover() {
    run::<2>(Policy::default(), SecretSet::new(), async |env| {
        let mut held = Vec::new();
        for c in 0..2 {
            let mut s = connect(env.clients[c]).await.expect("admitted");
            write_all(&mut s, b"x").await.unwrap();
            assert_eq!(read_exact(&mut s, 1).await, xor(b"x"));
            held.push(s);
        }
        let admitted = env.guard.with_engine(|e, _| e.stats().accepted);
        // No slot listens: the stack itself answers with a reset, and the
        // engine never hears of the attempt.
        for _ in 0..3 {
            assert!(connect(env.clients[2]).await.is_err(), "refused at SYN");
        }
        assert_eq!(env.guard.with_engine(|e, _| e.stats().accepted), admitted);

        // One slot frees up: the next client is served in full.
        let mut first = held.remove(0);
        first.close();
        assert!(read_to_end(&mut first).await.is_ok());
        expect_closed(env, 0).await;
        // The slot listens again once its old socket has lingered.
        let mut late = None;
        for _ in 0..200 {
            match connect(env.clients[2]).await {
                Ok(s) => {
                    late = Some(s);
                    break;
                }
                Err(_) => Timer::after(Duration::from_millis(50)).await,
            }
        }
        let mut late = late.expect("a freed slot serves again");
        let data = payload(5_000, 9);
        write_all(&mut late, &data).await.unwrap();
        assert_eq!(read_exact(&mut late, data.len()).await, xor(&data));
        late.close();
        assert!(read_to_end(&mut late).await.is_ok());
    });
}

#[test]
fn ipv6_clients_are_accounted_per_64() {
    run::<4>(small_policy(), SecretSet::new(), async |env| {
        // Clients 0 and 1 have different IPv6 addresses in one /64: for the
        // engine they are one client, with a limit of two connections.
        let mut held = Vec::new();
        for c in [0, 1] {
            let mut s = connect_to(env.clients[c], APPLIANCE6.into())
                .await
                .expect("admitted");
            write_all(&mut s, b"6").await.unwrap();
            assert_eq!(read_exact(&mut s, 1).await, xor(b"6"));
            held.push(s);
        }
        let third_ip = std::net::IpAddr::V6(client_ip6(2));
        let mut third = connect_to(env.clients[2], APPLIANCE6.into())
            .await
            .expect("tcp accept");
        let reason = expect_event(env, |e| match e {
            GuardEvent::Refused { client, reason } if *client == third_ip => Some(*reason),
            _ => None,
        })
        .await;
        assert_eq!(reason, RejectReason::TooManyConnections);
        assert!(read_to_end(&mut third).await.is_err());

        // Over IPv4 the same host is a client of its own.
        let mut v4 = connect(env.clients[2]).await.expect("admitted");
        write_all(&mut v4, b"4").await.unwrap();
        assert_eq!(read_exact(&mut v4, 1).await, xor(b"4"));
        assert_eq!(env.guard.with_engine(|e, _| e.tracked_clients()), 2);
    });
}

#[test]
fn unusable_settings_are_refused_at_construction() {
    use mtguard_core::mtproto::replay::Entry;
    use mtguard_core::Seed;
    use mtguard_embassy::{Config, Guard, NewError};
    let seed = Seed {
        hash_key: [1; 16],
        jitter: 2,
    };
    let config = Config {
        port: 443,
        backend: embassy_net::IpEndpoint::new(BACKEND.into(), 443),
        connect_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        window: mtguard_core::mtproto::TimeWindow::default(),
        clock_max_age: Duration::from_secs(3600),
    };
    let build = |config: Config, policy: Policy, replay: &mut [Entry]| {
        Guard::<Small, 2>::new(
            Small::tables(),
            policy,
            seed,
            SecretSet::new(),
            replay,
            config,
        )
        .err()
    };
    let mut replay = [Entry::EMPTY; 4];
    assert_eq!(build(config, Policy::default(), &mut replay), None);
    let port0 = Config { port: 0, ..config };
    assert_eq!(
        build(port0, Policy::default(), &mut replay),
        Some(NewError::Port)
    );
    assert_eq!(
        build(config, Policy::default(), &mut []),
        Some(NewError::ReplayCache)
    );
    let bad = Policy {
        max_connections_per_client: 0,
        ..Policy::default()
    };
    assert_eq!(build(config, bad, &mut replay), Some(NewError::Engine));
}
