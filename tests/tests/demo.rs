//! `mtguard demo`, shortened: the guard keeps legitimate clients served
//! while it refuses and blocks a flood from thousands of addresses.
//!
//! Latency is printed, not asserted: timing is not pass/fail on a shared
//! machine.

use std::time::Duration;

use mtguard::demo::{run_demo, DemoOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flood_is_refused_and_blocked_while_legitimate_clients_are_served() {
    let report = run_demo(DemoOptions {
        duration: Duration::from_secs(6),
        legit_clients: 20,
        flood_addresses: 2_000,
        progress: false,
    })
    .await
    .expect("the demo runs");
    println!("{}", report.render());

    assert!(report.legit_attempts >= 100, "{report:#?}");
    assert!(
        report.success_rate() >= 0.99,
        "legitimate success {:.4} below 99 %\n{}",
        report.success_rate(),
        report.render()
    );
    assert_eq!(report.legit_blocked, 0, "{}", report.render());
    assert!(report.flood_attempts >= 5_000, "{}", report.render());
    assert!(
        report.flood_refused * 10 >= report.flood_attempts * 9,
        "flood refused {:.4} below 90 %\n{}",
        report.flood_refused_rate(),
        report.render()
    );
    assert!(report.attackers_blocked > 0, "{}", report.render());
    assert!(
        report
            .refused_by_reason
            .iter()
            .any(|&(reason, n)| reason == "blocked" && n > 0),
        "{}",
        report.render()
    );
    assert!(report.peak_rss_bytes > 0, "{}", report.render());
}
