//! The handshake inspector against vectors from independent implementations
//! (tests/vectors/generate.py: Telethon's MTProxy client for obfuscated2,
//! ClientHellos checked by mtprotoproxy for fake-TLS), split every way.

use mtguard_core::mtproto::replay::Entry;
use mtguard_core::mtproto::{
    Handshake, Inspector, Invalid, KeyOps, KeyUnavailable, ReplayCache, Secret, SecretSet,
    TimeWindow, Transport, Verdict,
};
use mtguard_core::HandshakeOutcome;

const OBFS2: &str = include_str!("vectors/obfuscated2.txt");
const FAKE_TLS: &str = include_str!("vectors/fake_tls.txt");
const TLS_PREFIX: &str = include_str!("vectors/tls_prefix.txt");
const NOW: u64 = 1_800_000_000;
const CLASSIC: &str = "0123456789abcdef0123456789abcdef";

struct Vector {
    name: String,
    secret: String,
    now: u64,
    expected: String,
    bytes: Vec<u8>,
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn vectors(file: &str, with_time: bool) -> Vec<Vector> {
    file.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let (now, rest) = if with_time {
                (f[2].parse().unwrap(), &f[3..])
            } else {
                (NOW, &f[2..])
            };
            Vector {
                name: f[0].into(),
                secret: f[1].into(),
                now,
                expected: rest[0].into(),
                bytes: hex(rest[1]),
            }
        })
        .collect()
}

/// The vector files' notation for a verdict.
fn show(v: Verdict) -> String {
    match v {
        Verdict::NeedMore => "NeedMore".into(),
        Verdict::Valid(a) => match a.handshake {
            Handshake::FakeTls => "valid".into(),
            Handshake::Obfuscated2 { transport, dc } => {
                let t = match transport {
                    Transport::Abridged => "abridged",
                    Transport::Intermediate => "intermediate",
                    Transport::PaddedIntermediate => "padded",
                };
                format!("{t}/{dc}")
            }
        },
        Verdict::Invalid(reason) => format!("{reason:?}"),
    }
}

fn set(secrets: &[&str]) -> SecretSet {
    let mut set = SecretSet::new();
    for s in secrets {
        set.push(Secret::parse(s).unwrap()).unwrap();
    }
    set
}

fn cache() -> ReplayCache<Vec<Entry>> {
    ReplayCache::new(vec![Entry::EMPTY; 64], [9; 16], TimeWindow::default()).unwrap()
}

/// Feeds `bytes` in the pieces `cuts` delimits, with a fresh replay cache;
/// checks that only the last piece decides.
fn judge_split(secrets: &SecretSet, bytes: &[u8], now: u64, cuts: &[usize]) -> Verdict {
    let mut replay = cache();
    let mut inspector: Box<Inspector> = Box::default();
    let mut start = 0;
    let mut verdict = Verdict::NeedMore;
    for &end in cuts.iter().chain([bytes.len()].iter()) {
        if start < bytes.len() {
            assert_eq!(verdict, Verdict::NeedMore, "decided before the last byte");
        }
        verdict = inspector.feed(&bytes[start..end], now, secrets, secrets, &mut replay);
        start = end;
    }
    verdict
}

fn judge(secrets: &SecretSet, bytes: &[u8], now: u64) -> Verdict {
    judge_split(secrets, bytes, now, &[])
}

/// xorshift64*: reproducible cut points without a dependency.
fn random_cuts(len: usize, seed: &mut u64) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut at = 0;
    loop {
        *seed ^= *seed >> 12;
        *seed ^= *seed << 25;
        *seed ^= *seed >> 27;
        let r = seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
        at += 1 + (r % 97) as usize;
        if at >= len {
            return cuts;
        }
        cuts.push(at);
    }
}

fn check_all_splits(v: &Vector) {
    // A listener of one secret, or several, comma-separated.
    let secrets = set(&v.secret.split(',').collect::<Vec<_>>());
    let whole = judge(&secrets, &v.bytes, v.now);
    assert_eq!(show(whole), v.expected, "{}", v.name);
    for cut in 0..=v.bytes.len() {
        let split = judge_split(&secrets, &v.bytes, v.now, &[cut]);
        assert_eq!(split, whole, "{} split at {cut}", v.name);
    }
    let mut seed = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..50 {
        let cuts = random_cuts(v.bytes.len(), &mut seed);
        assert_eq!(
            judge_split(&secrets, &v.bytes, v.now, &cuts),
            whole,
            "{} cut at {cuts:?}",
            v.name
        );
    }
}

#[test]
fn obfuscated2_vectors_from_telethon() {
    let vs = vectors(OBFS2, false);
    assert!(vs.len() >= 11);
    vs.iter().for_each(check_all_splits);
}

#[test]
fn fake_tls_vectors() {
    let vs = vectors(FAKE_TLS, true);
    assert!(vs
        .iter()
        .any(|v| v.bytes.len() > 767 && v.expected == "valid"));
    vs.iter().for_each(check_all_splits);
}

#[test]
fn obfuscated2_headers_that_start_like_tls_are_judged_as_obfuscated2() {
    // Telethon's headers whose random part starts 16 03 01 xx, on listeners
    // with an ee secret beside the obfuscated2 one: accepted as soon as
    // their 64 bytes are in, at every split; 16 03 01 02 stays TLS.
    let vs = vectors(TLS_PREFIX, false);
    for prefix in ["16030100", "1603013f", "160301ff"] {
        assert!(
            vs.iter().any(|v| v.bytes.starts_with(&hex(prefix))
                && v.expected.contains('/')
                && v.secret.contains(',')),
            "a valid {prefix} vector on a listener with both kinds"
        );
    }
    vs.iter().for_each(check_all_splits);
}

#[test]
fn a_listener_with_both_kinds_still_judges_every_hello_the_same() {
    // The obfuscated2 secret beside the ee one changes nothing for a
    // ClientHello, whichever length its record header claims.
    for mut v in vectors(FAKE_TLS, true) {
        for secrets in [
            format!("{},{}", v.secret, CLASSIC),
            format!("{},{}", CLASSIC, v.secret),
        ] {
            v.secret = secrets;
            check_all_splits(&v);
        }
    }
}

fn vector(file: &str, with_time: bool, name: &str) -> Vector {
    vectors(file, with_time)
        .into_iter()
        .find(|v| v.name == name)
        .unwrap()
}

#[test]
fn replays_are_refused_inside_the_window() {
    for v in [
        vector(OBFS2, false, "dd-padded"),
        vector(FAKE_TLS, true, "valid-mlkem"),
    ] {
        let secrets = set(&[&v.secret]);
        let mut replay = cache();
        let mut first: Inspector = Inspector::new();
        let ok = first.feed(&v.bytes, v.now, &secrets, &secrets, &mut replay);
        assert_eq!(ok.outcome(), Some(HandshakeOutcome::Valid), "{}", v.name);

        let mut again: Inspector = Inspector::new();
        let replayed = again.feed(&v.bytes, v.now + 60, &secrets, &secrets, &mut replay);
        assert_eq!(replayed, Verdict::Invalid(Invalid::Replay), "{}", v.name);
        assert_eq!(replayed.outcome(), Some(HandshakeOutcome::Replay));
        assert_eq!(replay.replays(), 1);
    }
}

#[test]
fn an_obfuscated2_header_replayed_ten_minutes_later_is_refused() {
    // It carries no timestamp, so time alone never makes its replay safe.
    let v = vector(OBFS2, false, "classic-padded");
    let secrets = set(&[&v.secret]);
    let mut replay = cache();
    let mut first: Inspector = Inspector::new();
    let ok = first.feed(&v.bytes, NOW, &secrets, &secrets, &mut replay);
    assert!(matches!(ok, Verdict::Valid(_)), "{ok:?}");
    for later in [600, 86_400, 365 * 86_400] {
        let mut again: Inspector = Inspector::new();
        assert_eq!(
            again.feed(&v.bytes, NOW + later, &secrets, &secrets, &mut replay),
            Verdict::Invalid(Invalid::Replay),
            "{later} s later"
        );
    }
}

#[test]
fn obfuscated2_handshakes_make_room_by_forgetting_the_oldest() {
    let a = vector(OBFS2, false, "classic-abridged");
    let b = vector(OBFS2, false, "classic-intermediate");
    let c = vector(OBFS2, false, "classic-padded");
    let secrets = set(&[&a.secret]);
    let mut replay = ReplayCache::new([Entry::EMPTY; 2], [1; 16], TimeWindow::default()).unwrap();
    let mut feed = |v: &Vector, now| {
        let mut i: Inspector = Inspector::new();
        i.feed(&v.bytes, now, &secrets, &secrets, &mut replay)
    };
    assert!(matches!(feed(&a, NOW), Verdict::Valid(_)));
    assert!(matches!(feed(&b, NOW), Verdict::Valid(_)));
    // The ring is full of entries no clock ends: the oldest makes room.
    assert!(matches!(feed(&c, NOW + 1), Verdict::Valid(_)));
    assert_eq!(feed(&b, NOW + 2), Verdict::Invalid(Invalid::Replay));
    assert_eq!(feed(&c, NOW + 2), Verdict::Invalid(Invalid::Replay));
    // `a` was the one forgotten: a replay of it passes, and is remembered
    // again in place of `b`.
    assert!(matches!(feed(&a, NOW + 3), Verdict::Valid(_)));
    assert_eq!(replay.refused_full(), 0);
}

#[test]
fn a_full_cache_of_live_handshakes_refuses_new_ones() {
    let a = vector(FAKE_TLS, true, "valid-517");
    let b = vector(FAKE_TLS, true, "valid-1800");
    let secrets = set(&[&a.secret]);
    let mut replay = ReplayCache::new([Entry::EMPTY; 1], [1; 16], TimeWindow::default()).unwrap();
    let mut i: Box<Inspector> = Box::default();
    assert!(matches!(
        i.feed(&a.bytes, NOW, &secrets, &secrets, &mut replay),
        Verdict::Valid(_)
    ));
    let mut i: Box<Inspector> = Box::default();
    assert_eq!(
        i.feed(&b.bytes, NOW, &secrets, &secrets, &mut replay),
        Verdict::Invalid(Invalid::ReplayCacheFull)
    );
    assert_eq!(replay.refused_full(), 1);
}

#[test]
fn the_matching_secret_can_be_the_sixteenth() {
    let others: Vec<String> = (1..16u8).map(|i| format!("{:02x}", i).repeat(16)).collect();

    let v = vector(OBFS2, false, "dd-padded");
    let mut all: Vec<&str> = others.iter().map(String::as_str).collect();
    all.push(&v.secret);
    let secrets = set(&all);
    match judge(&secrets, &v.bytes, NOW) {
        Verdict::Valid(a) => assert_eq!(a.secret, 15),
        other => panic!("{other:?}"),
    }

    let v = vector(FAKE_TLS, true, "valid-517");
    let ee: Vec<String> = others
        .iter()
        .map(|k| format!("ee{k}{}", &v.secret[34..]))
        .collect();
    let mut all: Vec<&str> = ee.iter().map(String::as_str).collect();
    all.push(&v.secret);
    let secrets = set(&all);
    match judge(&secrets, &v.bytes, v.now) {
        Verdict::Valid(a) => {
            assert_eq!((a.secret, a.len), (15, v.bytes.len()));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn oversized_and_malformed_records_are_refused_early() {
    let v = vector(FAKE_TLS, true, "valid-mlkem");
    let secrets = set(&[&v.secret]);
    let mut replay = cache();

    // Longer than TLS allows: refused from the 5-byte header alone.
    let mut i: Inspector = Inspector::new();
    let huge = [0x16, 0x03, 0x01, 0x40, 0x01];
    assert_eq!(
        i.feed(&huge, NOW, &secrets, &secrets, &mut replay),
        Verdict::Invalid(Invalid::OversizedHello)
    );
    // Longer than a small inspector's buffer.
    let mut small: Inspector<1024> = Inspector::new();
    assert_eq!(
        small.feed(&v.bytes[..5], NOW, &secrets, &secrets, &mut replay),
        Verdict::Invalid(Invalid::OversizedHello)
    );
    // Too short to hold a hello.
    let mut i: Inspector = Inspector::new();
    assert_eq!(
        i.feed(
            &[0x16, 0x03, 0x01, 0x00, 0x10],
            NOW,
            &secrets,
            &secrets,
            &mut replay
        ),
        Verdict::Invalid(Invalid::MalformedHello)
    );
    // Every truncation of the hello inside a record that claims the length
    // it now has: malformed, never a panic or a pass.
    for len in 75..v.bytes.len() - 5 {
        let mut record = v.bytes[..5 + len].to_vec();
        record[3..5].copy_from_slice(&(len as u16).to_be_bytes());
        assert_eq!(
            judge(&secrets, &record, NOW),
            Verdict::Invalid(Invalid::MalformedHello),
            "truncated to {len}"
        );
    }
    // Not a ClientHello (handshake type 2).
    let mut record = v.bytes.clone();
    record[5] = 2;
    assert_eq!(
        judge(&secrets, &record, NOW),
        Verdict::Invalid(Invalid::MalformedHello)
    );
}

#[test]
fn a_fake_tls_only_listener_refuses_anything_else_at_once() {
    let v = vector(FAKE_TLS, true, "valid-517");
    let secrets = set(&[&v.secret]);
    let mut replay = cache();
    let mut i: Inspector = Inspector::new();
    assert_eq!(
        i.feed(&[0x16, 0x03], NOW, &secrets, &secrets, &mut replay),
        Verdict::NeedMore
    );
    assert_eq!(
        i.feed(&[0x03], NOW, &secrets, &secrets, &mut replay),
        Verdict::Invalid(Invalid::BadSecretOrTag)
    );
    // The verdict sticks.
    assert_eq!(
        i.feed(&v.bytes, NOW, &secrets, &secrets, &mut replay),
        Verdict::Invalid(Invalid::BadSecretOrTag)
    );
}

#[test]
fn a_listener_with_both_kinds_tells_them_apart() {
    let tls = vector(FAKE_TLS, true, "valid-517");
    let obfs = vector(OBFS2, false, "classic-intermediate");
    let secrets = set(&[&obfs.secret, &tls.secret]);
    assert!(matches!(judge(&secrets, &tls.bytes, NOW), Verdict::Valid(a) if a.secret == 1));
    assert!(matches!(judge(&secrets, &obfs.bytes, NOW), Verdict::Valid(a) if a.secret == 0));
}

struct NoKeys;

impl KeyOps for NoKeys {
    fn obfs2_key(&self, _: usize, _: &[u8; 32]) -> Result<[u8; 32], KeyUnavailable> {
        Err(KeyUnavailable)
    }
    fn fake_tls_hmac(&self, _: usize, _: &[&[u8]]) -> Result<[u8; 32], KeyUnavailable> {
        Err(KeyUnavailable)
    }
}

#[test]
fn unavailable_keys_fail_closed() {
    for v in [
        vector(OBFS2, false, "classic-abridged"),
        vector(FAKE_TLS, true, "valid-517"),
    ] {
        let secrets = set(&[&v.secret]);
        let mut replay = cache();
        let mut i: Box<Inspector> = Box::default();
        assert_eq!(
            i.feed(&v.bytes, v.now, &secrets, &NoKeys, &mut replay),
            Verdict::Invalid(Invalid::KeyUnavailable),
            "{}",
            v.name
        );
    }
}

#[test]
fn the_window_is_configurable() {
    // ahead-4s is refused by the default window, accepted by a wider one.
    let v = vector(FAKE_TLS, true, "ahead-4s");
    let secrets = set(&[&v.secret]);
    let window = TimeWindow {
        ahead_secs: 4,
        behind_secs: 0,
    };
    let mut replay = ReplayCache::new(vec![Entry::EMPTY; 4], [0; 16], window).unwrap();
    let mut i: Box<Inspector> = Box::default();
    assert!(matches!(
        i.feed(&v.bytes, v.now, &secrets, &secrets, &mut replay),
        Verdict::Valid(_)
    ));
}

#[test]
fn other_protocols_are_refused_as_soon_as_they_show() {
    let v = vector(OBFS2, false, "classic-abridged");
    let secrets = set(&[&v.secret]);
    let mut header = [0x42u8; 8];
    header[4..].copy_from_slice(&[0; 4]);
    for (probe, decided_after) in [
        (&b"HEAD / HTTP/1.0\r\n\r\n"[..], 4),
        (&b"GET / HTTP/1.1\r\n"[..], 4),
        (&[0xef, 0x01][..], 1),
        (&[0xee, 0xee, 0xee, 0xee, 0x10][..], 4),
        (&header[..], 8),
    ] {
        for cut in 0..=probe.len() {
            let verdict = judge(&secrets, &probe[..cut], NOW);
            let expected = if cut < decided_after {
                Verdict::NeedMore
            } else {
                Verdict::Invalid(Invalid::OtherProtocol)
            };
            assert_eq!(verdict, expected, "{probe:?} cut at {cut}");
        }
    }
}

/// The listener's key operations, counting the fake-TLS HMACs asked for.
struct Counting<'a> {
    keys: &'a SecretSet,
    hmacs: std::cell::Cell<usize>,
}

impl KeyOps for Counting<'_> {
    fn obfs2_key(&self, secret: usize, part: &[u8; 32]) -> Result<[u8; 32], KeyUnavailable> {
        self.keys.obfs2_key(secret, part)
    }
    fn fake_tls_hmac(&self, secret: usize, parts: &[&[u8]]) -> Result<[u8; 32], KeyUnavailable> {
        self.hmacs.set(self.hmacs.get() + 1);
        self.keys.fake_tls_hmac(secret, parts)
    }
}

/// The verdict on `bytes` and how many HMACs it took.
fn judge_counting(secrets: &SecretSet, bytes: &[u8], now: u64) -> (Verdict, usize) {
    let keys = Counting {
        keys: secrets,
        hmacs: Default::default(),
    };
    let mut inspector: Box<Inspector> = Box::default();
    let verdict = inspector.feed(bytes, now, secrets, &keys, &mut cache());
    (verdict, keys.hmacs.get())
}

/// `ee` + key + hex of `domain`.
fn ee(key: &str, domain: &str) -> String {
    let hex: String = domain.bytes().map(|b| format!("{b:02x}")).collect();
    format!("ee{key}{hex}")
}

/// 15 secrets of other keys and domains, and `matching` at `at`.
fn distinct_domains(matching: &str, at: usize) -> Vec<String> {
    let mut all: Vec<String> = (1..16u8)
        .map(|i| ee(&format!("{i:02x}").repeat(16), &format!("d{i}.example.net")))
        .collect();
    all.insert(at, matching.into());
    all
}

#[test]
fn only_secrets_of_the_sni_domain_are_tried() {
    let v = vector(FAKE_TLS, true, "valid-mlkem");
    for at in [0, 7, 15] {
        let all = distinct_domains(&v.secret, at);
        let secrets = set(&all.iter().map(String::as_str).collect::<Vec<_>>());
        match judge_counting(&secrets, &v.bytes, v.now) {
            (Verdict::Valid(a), 1) => assert_eq!(a.secret, at),
            other => panic!("matching secret at {at}: {other:?}"),
        }
    }
    // An SNI naming none of the 16 domains costs no HMAC at all; nor does
    // a hello without SNI.
    let mut all = distinct_domains(&v.secret, 0);
    all.remove(0);
    let secrets = set(&all.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        judge_counting(&secrets, &v.bytes, v.now),
        (Verdict::Invalid(Invalid::WrongSni), 0)
    );
    let no_sni = vector(FAKE_TLS, true, "no-sni");
    let secrets = set(&[&no_sni.secret]);
    assert_eq!(
        judge_counting(&secrets, &no_sni.bytes, no_sni.now),
        (Verdict::Invalid(Invalid::WrongSni), 0)
    );
}

#[test]
fn secrets_of_one_domain_are_all_tried_whichever_matches() {
    // The same work whether the match is first, in between or last, and
    // when nothing matches: the time does not tell which secret it was.
    let v = vector(FAKE_TLS, true, "valid-517");
    let domain = &v.secret[34..];
    let others: Vec<String> = (1..16u8)
        .map(|i| format!("ee{}{domain}", format!("{i:02x}").repeat(16)))
        .collect();
    for at in [0, 9, 15] {
        let mut all = others.clone();
        all.insert(at, v.secret.clone());
        let secrets = set(&all.iter().map(String::as_str).collect::<Vec<_>>());
        match judge_counting(&secrets, &v.bytes, v.now) {
            (Verdict::Valid(a), 16) => assert_eq!(a.secret, at),
            other => panic!("matching secret at {at}: {other:?}"),
        }
    }
    let secrets = set(&others.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        judge_counting(&secrets, &v.bytes, v.now),
        (Verdict::Invalid(Invalid::HmacMismatch), 15)
    );
    // The same secret twice: the first of them is the one reported, as when
    // secrets were tried in order and the first match returned.
    let secrets = set(&[&others[0], &v.secret, &v.secret]);
    match judge_counting(&secrets, &v.bytes, v.now) {
        (Verdict::Valid(a), 3) => assert_eq!(a.secret, 1),
        other => panic!("{other:?}"),
    }
    // A timestamp out of window under the matching secret still says so,
    // after every candidate was tried.
    let late = vector(FAKE_TLS, true, "behind-121s");
    let mut all = others.clone();
    all.insert(3, late.secret.clone());
    let secrets = set(&all.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        judge_counting(&secrets, &late.bytes, late.now),
        (Verdict::Invalid(Invalid::Timestamp), 16)
    );
}

#[test]
fn a_valid_hmac_under_a_secret_of_another_domain_is_a_mismatch() {
    // wrong-sni: the HMAC is the listener secret's, the SNI is
    // www.example.org where the secret's domain is www.example.com. Alone it
    // is refused for its SNI without an HMAC; beside a secret of the SNI's
    // domain (another key) it is that secret's HMAC that is checked, and
    // fails: the secret of the other domain is never tried.
    let v = vector(FAKE_TLS, true, "wrong-sni");
    let secrets = set(&[&v.secret]);
    assert_eq!(
        judge_counting(&secrets, &v.bytes, v.now),
        (Verdict::Invalid(Invalid::WrongSni), 0)
    );
    let other_key_of_sni_domain = ee("fedcba9876543210fedcba9876543210", "www.example.org");
    let secrets = set(&[&v.secret, &other_key_of_sni_domain]);
    assert_eq!(
        judge_counting(&secrets, &v.bytes, v.now),
        (Verdict::Invalid(Invalid::HmacMismatch), 1)
    );
    // The same key under the SNI's domain accepts it (the HMAC does not
    // cover the secret's domain), in any case of the domain.
    for domain in ["www.example.org", "WWW.Example.ORG"] {
        let same_key = ee(&v.secret[2..34], domain);
        let secrets = set(&[&v.secret, &same_key]);
        match judge_counting(&secrets, &v.bytes, v.now) {
            (Verdict::Valid(a), 1) => assert_eq!(a.secret, 1),
            other => panic!("{domain}: {other:?}"),
        }
    }
}

#[test]
fn an_unavailable_key_of_the_sni_domain_fails_closed() {
    // Other domains' keys are not asked for, so they cannot fail a hello.
    let v = vector(FAKE_TLS, true, "valid-517");
    let all = distinct_domains(&v.secret, 4);
    let secrets = set(&all.iter().map(String::as_str).collect::<Vec<_>>());
    let mut i: Box<Inspector> = Box::default();
    assert_eq!(
        i.feed(&v.bytes, v.now, &secrets, &NoKeys, &mut cache()),
        Verdict::Invalid(Invalid::KeyUnavailable)
    );
}
