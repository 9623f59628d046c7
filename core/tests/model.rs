//! Model-based test: random sequences of connects, handshakes (failed,
//! replayed, or authenticated against a secret), closes,
//! manual blocks and time jumps run against the engine and against a plain
//! `std` model written only for this test. Under capacity both must agree
//! exactly; at capacity every eviction must follow the documented policy
//! (an idle, unblocked client; clean ones before offenders; the least
//! recently seen of its class). The network tier is drawn off or on with
//! small limits, its table roomy or too small for the four networks.

use mtguard_core::storage::Inline;
use mtguard_core::{HandshakeOutcome, Instant, Policy, SecurityManager, Seed};
use proptest::prelude::*;

#[path = "common/model.rs"]
mod model;
use model::{run, Op, CLIENTS};

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..CLIENTS).prop_map(Op::Connect),
        3 => (0..64usize, prop_oneof![
            Just(HandshakeOutcome::Valid),
            Just(HandshakeOutcome::Invalid),
            Just(HandshakeOutcome::Replay)
        ]).prop_map(|(c, o)| Op::Handshake(c, o)),
        3 => (0..64usize).prop_map(Op::Authenticate),
        3 => (0..64usize).prop_map(Op::Close),
        1 => (0..CLIENTS, proptest::option::of(1u64..400_000)).prop_map(|(c, d)| Op::Block(c, d)),
        1 => (0..CLIENTS).prop_map(Op::Unblock),
        4 => prop_oneof![0u64..50, 0u64..5_000, 0u64..200_000, 0u64..2_000_000].prop_map(Op::Advance),
        2 => any::<bool>().prop_map(Op::ToDeadline),
    ]
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        1u16..4,
        1u16..6,
        1u8..4,
        1u8..4,
        1u8..4,
        any::<bool>(),
        any::<bool>(),
        2u32..12,
        proptest::option::of(1_000u64..20_000),
        (1u16..5, 1u8..=100, 0u32..6, 0u16..8),
    )
        .prop_map(
            |(
                max_conn,
                max_new,
                viol,
                scan,
                slow,
                blocking,
                replay,
                global,
                hs,
                (auth, pct, net_conns, net_new),
            )| {
                model::networks(
                    model::sharing(
                        model::policy(
                            max_conn, max_new, viol, scan, slow, blocking, replay, global, hs,
                        ),
                        auth,
                        pct,
                    ),
                    net_conns,
                    net_new,
                )
            },
        )
}

const SEED: Seed = Seed {
    hash_key: [9; 16],
    jitter: 1,
};

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn engine_agrees_with_the_model_under_capacity(
        p in policy(),
        ops in proptest::collection::vec(op(), 1..300),
    ) {
        type Roomy = Inline<64, 128, 4>;
        let g = SecurityManager::<Roomy>::new(Roomy::tables(), p, SEED, Instant::ZERO).unwrap();
        run(g, p, 64, ops);
    }

    #[test]
    fn evictions_follow_the_policy_at_capacity(
        p in policy(),
        ops in proptest::collection::vec(op(), 1..300),
    ) {
        // Two networks' room for four networks: the network table is full
        // as often as the client table.
        type Tight = Inline<3, 128, 4, 2>;
        let g = SecurityManager::<Tight>::new(Tight::tables(), p, SEED, Instant::ZERO).unwrap();
        run(g, p, 3, ops);
    }
}
