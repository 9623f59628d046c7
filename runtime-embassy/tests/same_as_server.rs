//! The appliance decides as the server runtime does: one script of client
//! behaviour is played against the appliance over its in-memory network and
//! against the server runtime's `Guard` (runtime-std's engine driver) with
//! the same policy, and the two must refuse, admit and block alike.

mod common;
mod script;

use common::*;
use mtguard_core::RejectReason;
use mtguard_embassy::{End, GuardEvent};
use script::*;

#[test]
fn the_appliance_decides_as_the_server_runtime() {
    let want = on_server(small_policy(), client_ip);
    // The script does what it is meant to: limits, both kinds of block.
    assert_eq!(want[2], Seen::Refused(RejectReason::TooManyConnections));
    assert_eq!(want[7], Seen::Refused(RejectReason::Blocked));
    assert_eq!(want[9], Seen::Refused(RejectReason::Blocked));

    run::<8>(small_policy(), secrets(), async |env| {
        // Distinct recorded Telethon headers: one may not be used twice
        // (that would be a replay).
        let headers = [
            "classic-abridged",
            "classic-intermediate",
            "classic-padded",
            "dd-padded",
            "dd-padded-media",
        ]
        .map(telethon);
        let mut used = 0;
        let mut held = Vec::new();
        let mut seen = Vec::new();
        for step in SCRIPT {
            let outcome = match step {
                Step::Hold(c) => {
                    let mut s = connect(env.clients[c]).await.expect("tcp accept");
                    let header = &headers[used];
                    write_all(&mut s, header).await.unwrap();
                    let refused = read_to_end_or_reply(&mut s, header.len()).await;
                    if refused {
                        Seen::Refused(expect_refused(env, c).await)
                    } else {
                        used += 1;
                        held.push(s);
                        Seen::Admitted
                    }
                }
                Step::Probe(c) => {
                    let mut s = connect(env.clients[c]).await.expect("tcp accept");
                    let _ = write_all(&mut s, &payload(64, 7)).await;
                    assert!(read_to_end(&mut s).await.is_err(), "a probe is reset");
                    let ip = client_ip(c);
                    expect_event(env, |e| match e {
                        GuardEvent::Refused { client, reason } if *client == ip => {
                            Some(Seen::Refused(*reason))
                        }
                        GuardEvent::Closed {
                            client,
                            end: End::Probe(_),
                            ..
                        } if *client == ip => Some(Seen::ProbeClosed),
                        _ => None,
                    })
                    .await
                }
                Step::Release => {
                    for mut s in held.drain(..) {
                        s.close();
                        assert!(read_to_end(&mut s).await.is_ok());
                    }
                    // The guard has reported every close to its engine.
                    for _ in 0..200 {
                        if env.guard.with_engine(|e, _| e.active_connections()) == 0 {
                            break;
                        }
                        embassy_time::Timer::after_millis(20).await;
                    }
                    assert_eq!(env.guard.with_engine(|e, _| e.active_connections()), 0);
                    Seen::Released
                }
            };
            seen.push(outcome);
        }
        assert_eq!(seen, want);
    });
}

/// `true` if the guard reset the connection at once (refused), `false` if
/// the backend's answer to the `n` bytes came back (admitted).
async fn read_to_end_or_reply(s: &mut embassy_net::tcp::TcpSocket<'_>, n: usize) -> bool {
    let mut got = 0;
    let mut buf = [0u8; 256];
    loop {
        match embassy_time::with_timeout(PATIENCE, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(k)) => {
                got += k;
                if got >= n {
                    return false;
                }
            }
            Err(_) => panic!("neither answered nor reset"),
        }
    }
}
