//! The test vectors' line format (`core/tests/vectors/*.txt`), read by the
//! handshake benchmarks of the core and of the server's token path.

/// (listener secret, now, bytes) of the named vector.
pub(crate) fn vector(file: &str, name: &str) -> (String, u64, Vec<u8>) {
    let line = file
        .lines()
        .find(|l| l.split(' ').next() == Some(name))
        .expect("vector");
    let f: Vec<&str> = line.split(' ').collect();
    let now = if f.len() == 5 {
        f[2].parse().unwrap()
    } else {
        0
    };
    let hex = f[f.len() - 1];
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    (f[1].to_string(), now, bytes)
}
