//! The appliance's wall clock: fake-TLS needs it, SNTP sets it, and a
//! clock nobody refreshed stops counting as one. Over the in-memory
//! network of appliance.rs.

mod common;

use std::cell::Cell;

use common::*;
use embassy_futures::select::select;
use embassy_net::udp::{PacketMetadata, UdpSocket};
use embassy_net::IpEndpoint;
use embassy_time::{Duration, Timer};
use mtguard_core::mtproto::{Invalid, Secret, SecretSet};
use mtguard_embassy::sntp::{self, SntpConfig, SntpError};
use mtguard_embassy::End;

const EE: &str = "ee0123456789abcdef0123456789abcdef6578616d706c652e636f6d";
const DOMAIN: &str = "example.com";

fn ee() -> SecretSet {
    let mut set = SecretSet::new();
    set.push(Secret::parse(EE).unwrap()).unwrap();
    set
}

async fn send_hello<const N: usize>(env: &Env<'_, N>, c: usize, stamp: u64, salt: u8) -> End {
    let hello = mtguard_tests::fake_tls_hello(EE, DOMAIN, stamp, [salt, 0, 0, 0]);
    let mut s = connect(env.clients[c]).await.expect("tcp accept");
    write_all(&mut s, &hello).await.unwrap();
    let end = expect_closed(env, c).await.0;
    s.abort();
    end
}

#[test]
fn fake_tls_is_refused_without_a_clock_and_once_it_is_stale() {
    let mut policy = small_policy();
    // Refusals for want of a clock must not make a scanner of a client.
    policy.scanner_failures = 2;
    run_with::<4>(
        policy,
        ee(),
        |c| c.clock_max_age = Duration::from_millis(1500),
        async |env| {
            let now = mtguard_tests::unix_now();
            assert_eq!(env.guard.unix_time(), None);
            for salt in 0..3 {
                assert_eq!(send_hello(env, 0, now, salt).await, End::NoClock);
            }
            env.guard.set_unix_time(now);
            assert!(env.guard.unix_time().is_some_and(|t| t.abs_diff(now) <= 1));
            // The same client, three NoClock refusals later: not blocked.
            let hello = mtguard_tests::fake_tls_hello(EE, DOMAIN, now, [9, 0, 0, 0]);
            let mut s = connect(env.clients[0]).await.expect("tcp accept");
            write_all(&mut s, &hello).await.unwrap();
            assert_eq!(read_exact(&mut s, hello.len()).await, xor(&hello));
            s.close();
            let _ = read_to_end(&mut s).await;
            assert_eq!(expect_closed(env, 0).await.0, End::Done);
            // Out of the window with a good clock: judged, not "no clock".
            assert_eq!(
                send_hello(env, 1, now - 3600, 10).await,
                End::Probe(Invalid::Timestamp)
            );
            Timer::after_millis(1600).await;
            assert_eq!(env.guard.unix_time(), None, "stale after clock_max_age");
            assert_eq!(send_hello(env, 2, now + 1, 11).await, End::NoClock);
            assert_eq!(env.backend.borrow().connections, vec![hello]);
        },
    );
}

#[test]
fn the_sntp_client_sets_the_clock_from_the_reply_to_its_own_request() {
    const SERVER_TIME: u64 = 1_900_000_000;
    run::<2>(small_policy(), ee(), async |env| {
        let server = IpEndpoint::new(BACKEND.into(), 123);
        let config = SntpConfig {
            server,
            timeout: Duration::from_millis(500),
            retry: Duration::from_millis(200),
            refresh: Duration::from_secs(60),
        };
        let requests = Cell::new(0);
        let fake_server = async {
            let mut rm = [PacketMetadata::EMPTY; 4];
            let mut tm = [PacketMetadata::EMPTY; 4];
            let (mut rb, mut tb) = ([0u8; 512], [0u8; 512]);
            let mut sock = UdpSocket::new(env.backend_stack, &mut rm, &mut rb, &mut tm, &mut tb);
            sock.bind(123).unwrap();
            let mut buf = [0u8; 64];
            loop {
                let (n, meta) = sock.recv_from(&mut buf).await.unwrap();
                assert_eq!(n, sntp::PACKET);
                requests.set(requests.get() + 1);
                let mut reply = [0u8; 48];
                reply[0] = 4 << 3 | 4;
                reply[1] = 1;
                reply[40..44]
                    .copy_from_slice(&((SERVER_TIME + 2_208_988_800) as u32).to_be_bytes());
                if requests.get() == 1 {
                    // First a forged reply that does not echo the nonce:
                    // ignored, and the client waits on for its own.
                    reply[24..32].copy_from_slice(&[0xAA; 8]);
                    sock.send_to(&reply, meta.endpoint).await.unwrap();
                }
                reply[24..32].copy_from_slice(&buf[40..48]);
                sock.send_to(&reply, meta.endpoint).await.unwrap();
            }
        };
        let client = sntp::run(env.appliance, config, env.guard, 42, |_| {});
        let check = async {
            for _ in 0..100 {
                if env.guard.unix_time().is_some() {
                    break;
                }
                Timer::after_millis(20).await;
            }
        };
        select(select(fake_server, client), check).await;
        let t = env.guard.unix_time().expect("clock set");
        assert!(t.abs_diff(SERVER_TIME) <= 1, "clock {t}");
        assert_eq!(
            requests.get(),
            1,
            "one request answered, the forged reply ignored"
        );
    });
}

#[test]
fn replies_that_must_not_set_the_clock() {
    let nonce = [1, 2, 3, 4, 5, 6, 7, 8];
    let good = {
        let mut r = [0u8; 48];
        r[0] = 4 << 3 | 4;
        r[1] = 2;
        r[24..32].copy_from_slice(&nonce);
        r[40..44].copy_from_slice(&(1_750_000_000u32.wrapping_add(2_208_988_800)).to_be_bytes());
        r
    };
    assert_eq!(sntp::parse_reply(&good, nonce), Ok(1_750_000_000));
    let with = |f: &dyn Fn(&mut [u8; 48])| {
        let mut r = good;
        f(&mut r);
        sntp::parse_reply(&r, nonce)
    };
    assert_eq!(sntp::parse_reply(&good[..47], nonce), Err(SntpError::Short));
    assert_eq!(with(&|r| r[0] = 4 << 3 | 3), Err(SntpError::NotAReply));
    assert_eq!(with(&|r| r[0] = 2 << 3 | 4), Err(SntpError::NotAReply));
    assert_eq!(with(&|r| r[0] |= 3 << 6), Err(SntpError::Unsynchronised));
    assert_eq!(with(&|r| r[1] = 0), Err(SntpError::Unsynchronised));
    assert_eq!(with(&|r| r[1] = 16), Err(SntpError::Unsynchronised));
    assert_eq!(with(&|r| r[31] ^= 1), Err(SntpError::NotOurs));
    assert_eq!(with(&|r| r[40..48].fill(0)), Err(SntpError::NoTime));
    // 1968-1970 in NTP era 0: before the Unix epoch, not a panic.
    assert_eq!(
        with(&|r| r[40..44].copy_from_slice(&0x8000_0000u32.to_be_bytes())),
        Err(SntpError::NoTime)
    );
    // The top bit clear: era 1, after February 2036.
    assert_eq!(
        with(&|r| r[40..44].copy_from_slice(&1u32.to_be_bytes())),
        Ok((1u64 << 32) + 1 - 2_208_988_800)
    );
    // Half a second or more rounds up.
    assert_eq!(with(&|r| r[44] = 0x80), Ok(1_750_000_001));
}
