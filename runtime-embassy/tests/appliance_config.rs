//! `mtguard appliance-config`: the block it writes is the server config's
//! policy, secrets and window, read back by the firmware's decoder; what
//! the appliance cannot do is refused by name, and a failed run leaves the
//! previous block in place.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use mtguard::appliance::{build, run, ApplianceConfigArgs};
use mtguard_config_block::{ApplianceConfig, Network};

fn args(dir: &Path, toml: Option<&str>) -> ApplianceConfigArgs {
    let config = toml.map(|t| {
        let p = dir.join("mtguard.toml");
        std::fs::write(&p, t).unwrap();
        p
    });
    ApplianceConfigArgs {
        out: dir.join("block.bin"),
        config,
        level: None,
        address: Some("192.168.1.20/24".into()),
        dhcp: false,
        gateway: Some(Ipv4Addr::new(192, 168, 1, 1)),
        backend: None,
        port: None,
        secrets: Vec::new(),
        ntp: Some("192.168.1.1".into()),
        mac: Some("02:00:6d:74:67:01".into()),
    }
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mtg-apcfg-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const FILE: &str = r#"
level = 2
[server]
listen = ["0.0.0.0:4443"]
backend = "192.168.1.21:443"
idle_timeout = "90s"
[limits]
max_connections_per_ip = 7
[mtproto]
secrets = ["dd0123456789abcdef0123456789abcdef"]
time_skew = "10m"
"#;

#[test]
fn the_block_carries_what_the_server_would_enforce() {
    let dir = tempdir("carries");
    let a = args(&dir, Some(FILE));
    run(a).unwrap();
    let block = std::fs::read(dir.join("block.bin")).unwrap();
    let c = ApplianceConfig::decode(&block).unwrap();
    let server = mtguard::server::bootstrap::load_config(&dir.join("mtguard.toml")).unwrap();
    assert_eq!(c.policy, server.effective_policy(None).unwrap());
    assert_eq!(c.policy.max_connections_per_client, 7);
    assert_eq!(c.secrets.as_slice(), &server.mtproto.secrets[..]);
    assert_eq!(c.window, server.mtproto.window());
    assert_eq!(c.window.behind_secs, 600);
    assert_eq!(c.listen_port, 4443);
    assert_eq!(
        c.backend,
        SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 21), 443)
    );
    assert_eq!(c.idle_timeout.as_secs(), 90);
    assert_eq!(
        c.ntp,
        Some(SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 1), 123))
    );
    assert_eq!(c.mac, [0x02, 0, 0x6d, 0x74, 0x67, 0x01]);
    assert_eq!(
        c.network,
        Network::Static {
            address: Ipv4Addr::new(192, 168, 1, 20),
            prefix: 24,
            gateway: Some(Ipv4Addr::new(192, 168, 1, 1)),
        }
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_command_line_overrides_the_file() {
    let dir = tempdir("overrides");
    let mut a = args(&dir, Some(FILE));
    a.level = Some(0);
    a.port = Some(443);
    a.backend = Some(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 9), 8443));
    a.secrets = vec!["0123456789abcdef0123456789abcdef".into()];
    a.address = None;
    a.gateway = None;
    a.dhcp = true;
    a.mac = None;
    let c = build(&a).unwrap();
    assert_eq!(c.policy.level.number(), 0);
    // [limits] still applies over the overridden level's preset.
    assert_eq!(c.policy.max_connections_per_client, 7);
    assert_eq!(c.listen_port, 443);
    assert_eq!(c.backend.port(), 8443);
    assert_eq!(c.secrets.as_slice().len(), 1);
    assert_eq!(c.network, Network::Dhcp);
    // A random MAC, locally administered and unicast.
    assert_eq!(c.mac[0], 0x02);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn what_the_appliance_cannot_do_is_refused_by_name() {
    let dir = tempdir("refused");
    let cases = [
        ("backend = \"proxy.example:443\"", "IPv4 address"),
        ("proxy_protocol = \"v2\"", "proxy_protocol"),
    ];
    for (line, want) in cases {
        let toml = FILE.replace("idle_timeout = \"90s\"", line);
        let toml = if line.starts_with("backend") {
            toml.replace("backend = \"192.168.1.21:443\"\n", "")
        } else {
            toml
        };
        let e = build(&args(&dir, Some(&toml))).unwrap_err().to_string();
        assert!(e.contains(want), "{line}: {e}");
    }
    let toml = format!("{FILE}[lists]\ndeny = [\"192.0.2.7\"]\n");
    let e = build(&args(&dir, Some(&toml))).unwrap_err().to_string();
    assert!(e.contains("[lists]"), "{e}");
    let mut a = args(&dir, None);
    let e = build(&a).unwrap_err().to_string();
    assert!(e.contains("--backend"), "{e}");
    a.backend = Some(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 9), 8443));
    a.address = Some("192.168.1.20".into());
    assert!(build(&a).unwrap_err().to_string().contains("prefix"));
    a.address = Some("192.168.1.20/24".into());
    a.mac = Some("01:00:00:00:00:01".into());
    let mut block = vec![0u8; 4096];
    // A multicast MAC parses but is refused when encoding, naming the field.
    let e = build(&a)
        .unwrap()
        .encode(&mut block)
        .unwrap_err()
        .to_string();
    assert!(e.contains("mac"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failed_run_leaves_the_previous_block() {
    let dir = tempdir("atomic");
    run(args(&dir, Some(FILE))).unwrap();
    let before = std::fs::read(dir.join("block.bin")).unwrap();
    let mut a = args(&dir, Some(FILE));
    a.mac = Some("01:00:00:00:00:01".into());
    assert!(run(a).is_err());
    assert_eq!(std::fs::read(dir.join("block.bin")).unwrap(), before);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
