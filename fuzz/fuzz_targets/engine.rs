//! The engine driven by arbitrary sequences of connects, handshakes,
//! authentications,
//! closes, blocks, unblocks and time jumps, against the reference model of
//! `core/tests/model.rs` (the same file, included): under capacity every
//! verdict and count agrees; at capacity every eviction is one the policy
//! allows. After every step `run` also checks what holds at any capacity:
//! no more clients than the table, no more connections than the global
//! limit, every client blocked in the model is refused by the engine, and
//! no block outlives its end (the model expires it at exactly its end).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mtguard_core::storage::Inline;
use mtguard_core::{HandshakeOutcome, Instant, SecurityManager, Seed};

#[path = "../../core/tests/common/model.rs"]
mod model;
use model::{run, Op, CLIENTS};

#[derive(Arbitrary, Debug)]
enum FuzzOp {
    Connect(u8),
    Handshake(u8, u8),
    /// A connection proves a secret (pending → authenticated).
    Authenticate(u8),
    Close(u8),
    Block(u8, Option<u32>),
    Unblock(u8),
    Advance(u32),
    /// Lands exactly on, or one millisecond before, the engine's next
    /// deadline: where an off-by-one in expiry would show.
    ToDeadline(bool),
}

#[derive(Arbitrary, Debug)]
struct Input {
    knobs: (u8, u8, u8, u8, u8, bool, bool, u8, Option<u16>),
    /// The authenticated cap and the share of failures that marks a shared
    /// address.
    sharing: (u8, u8),
    tight: bool,
    ops: Vec<FuzzOp>,
}

const SEED: Seed = Seed {
    hash_key: [9; 16],
    jitter: 1,
};

fuzz_target!(|input: Input| {
    let (max_conn, max_new, viol, scan, slow, blocking, replay, global, hs) = input.knobs;
    let p = model::sharing(model::policy(
        1 + u16::from(max_conn % 4),
        1 + u16::from(max_new % 6),
        1 + viol % 4,
        1 + scan % 4,
        1 + slow % 4,
        blocking,
        replay,
        2 + u32::from(global % 12),
        hs.map(|h| 1_000 + u64::from(h) % 20_000),
    ), 1 + u16::from(input.sharing.0 % 4), 1 + input.sharing.1 % 100);
    let ops: Vec<Op> = input
        .ops
        .iter()
        .take(400)
        .map(|op| match *op {
            FuzzOp::Connect(k) => Op::Connect(usize::from(k) % CLIENTS),
            FuzzOp::Handshake(n, o) => Op::Handshake(
                usize::from(n),
                match o % 3 {
                    0 => HandshakeOutcome::Valid,
                    1 => HandshakeOutcome::Invalid,
                    _ => HandshakeOutcome::Replay,
                },
            ),
            FuzzOp::Authenticate(n) => Op::Authenticate(usize::from(n)),
            FuzzOp::Close(n) => Op::Close(usize::from(n)),
            FuzzOp::Block(k, d) => Op::Block(
                usize::from(k) % CLIENTS,
                d.map(|d| 1 + u64::from(d) % 400_000),
            ),
            FuzzOp::Unblock(k) => Op::Unblock(usize::from(k) % CLIENTS),
            FuzzOp::Advance(d) => Op::Advance(u64::from(d) % 2_000_000),
            FuzzOp::ToDeadline(exact) => Op::ToDeadline(exact),
        })
        .collect();
    if input.tight {
        type Tight = Inline<3, 128, 4>;
        let g = SecurityManager::<Tight>::new(Tight::tables(), p, SEED, Instant::ZERO).unwrap();
        run(g, p, 3, ops);
    } else {
        type Roomy = Inline<64, 128, 4>;
        let g = SecurityManager::<Roomy>::new(Roomy::tables(), p, SEED, Instant::ZERO).unwrap();
        run(g, p, 64, ops);
    }
});
