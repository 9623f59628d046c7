//! The configuration file: defaults, the shipped example, overrides over the
//! level presets, and errors that name the file, the line and the key.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mtguard::config::{parse_duration, Config, ConfigError, LimitsConfig, ProxyProtocol};
use mtguard_core::cidr::Cidr;
use mtguard_core::{Level, Policy};

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime-std/dist/mtguard.example.toml")
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "mtguard.toml")
}

fn parse_err(text: &str) -> ConfigError {
    let err = parse(text).expect_err(text);
    assert!(!err.to_string().contains('\n'), "one line: {err}");
    err
}

fn policy(text: &str) -> Policy {
    parse(text).unwrap().effective_policy(None).unwrap()
}

fn preset(n: u8) -> Policy {
    Policy::for_level(Level::from_number(n).unwrap())
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn cidr(s: &str) -> Cidr {
    Cidr::parse(s).unwrap()
}

/// The example with every `# key = value` line uncommented: each documented
/// default, written out.
fn example_uncommented() -> String {
    let text = fs::read_to_string(example_path()).unwrap();
    text.lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if is_setting(rest) => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `key = value`, with a bare lowercase key.
fn is_setting(line: &str) -> bool {
    line.split_once(" = ").is_some_and(|(key, _)| {
        !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    })
}

#[test]
fn embedded_default_has_the_documented_values() {
    let c = Config::embedded_default();
    assert_eq!(c.level, 1);
    assert_eq!(c.server.listen, [addr("127.0.0.1:4443")]);
    assert_eq!(c.server.backend, "127.0.0.1:8443");
    assert_eq!(c.server.proxy_protocol, ProxyProtocol::None);
    assert_eq!(c.server.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.server.idle_timeout, Duration::from_secs(600));
    assert_eq!(c.admin.listen, Some(addr("127.0.0.1:9900")));
    assert_eq!(c.admin.token_file, None);
    assert!(
        c.state.dir.ends_with("mtguard") || c.state.dir == Path::new("mtguard-state"),
        "{:?}",
        c.state.dir
    );
    assert_eq!(c.limits, LimitsConfig::default());
    assert!(c.lists.allow.is_empty() && c.lists.deny.is_empty());
    assert!(c.lists.allow_files.is_empty() && c.lists.deny_files.is_empty());
    assert_eq!(c.effective_policy(None).unwrap(), preset(1));
    assert_eq!(
        mtguard::server::bootstrap::load_lists(&c).unwrap(),
        Default::default()
    );
    // An empty file is the embedded default.
    let empty = parse("").unwrap();
    assert_eq!(empty.server, c.server);
    assert_eq!(empty.admin, c.admin);
    assert_eq!(empty.state, c.state);
    assert_eq!(empty.effective_policy(None).unwrap(), preset(1));
}

#[test]
fn state_dir_is_per_user() {
    let dir = mtguard::config::default_state_dir();
    if let Some(data) = dirs_like_data_dir() {
        assert_eq!(dir, data.join("mtguard"));
    }
}

/// `$XDG_DATA_HOME` or `$HOME/.local/share`, as on Linux.
fn dirs_like_data_dir() -> Option<PathBuf> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    match std::env::var_os("XDG_DATA_HOME") {
        Some(d) if Path::new(&d).is_absolute() => Some(PathBuf::from(d)),
        _ => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")),
    }
}

#[test]
fn shipped_example_parses_to_the_embedded_default() {
    let default = Config::embedded_default();
    let example = mtguard::server::bootstrap::load_config(&example_path()).unwrap();
    assert_eq!(example.level, default.level);
    assert_eq!(example.server, default.server);
    assert_eq!(example.limits, default.limits);
    assert_eq!(example.lists, default.lists);
    assert_eq!(example.admin, default.admin);
    assert_eq!(
        example.effective_policy(None).unwrap(),
        default.effective_policy(None).unwrap()
    );
}

#[test]
fn every_default_written_in_the_example_is_true() {
    let text = example_uncommented();
    let written = Config::parse(&text, "example").unwrap();
    let default = Config::embedded_default();
    assert_eq!(written.level, default.level);
    assert_eq!(written.server, default.server);
    assert_eq!(written.admin, default.admin);
    assert_eq!(written.lists, default.lists);
    let policy = written.effective_policy(None).unwrap();
    assert_eq!(policy, default.effective_policy(None).unwrap());
    // Every [limits] key is in the example: each is now set by the file.
    let described = written.describe(&policy);
    // ([refusal]'s level-dependent keys are left to their presets.)
    let limits = described.split("  [limits]\n").nth(1).unwrap();
    assert!(!limits.contains("preset"), "{described}");
    for key in [
        "max_connections_per_ip",
        "handshake_timeout",
        "attack_enter_per_second",
    ] {
        let row = described.lines().find(|l| l.trim_start().starts_with(key));
        // The source is the file and line of the key.
        let row = row.unwrap();
        assert!(
            row.split_whitespace()
                .last()
                .unwrap()
                .starts_with("example:"),
            "{described}"
        );
    }
    // So a --level changes only the level the policy reports.
    let at_3 = written.effective_policy(Some(3)).unwrap();
    assert_eq!(
        at_3,
        Policy {
            level: Level::Maximum,
            ..policy
        }
    );
}

#[test]
fn the_example_documents_every_levels_preset_truly() {
    // Each key's comment ends with "(level 0 / 1 / 2 / 3)" values; setting a
    // level's documented value at that level must change nothing.
    let text = fs::read_to_string(example_path()).unwrap();
    let limits = text
        .split("\n[limits]\n")
        .nth(1)
        .unwrap()
        .split("\n[lists]\n")
        .next()
        .unwrap();
    let mut comment = String::new();
    let mut checked = 0;
    for line in limits.lines() {
        let Some(rest) = line.strip_prefix("# ") else {
            comment.clear();
            continue;
        };
        if !is_setting(rest) {
            comment.push_str(rest);
            comment.push(' ');
            continue;
        }
        let (key, default) = rest.split_once(" = ").unwrap();
        let open = comment
            .rfind('(')
            .unwrap_or_else(|| panic!("{key}: no presets"));
        let close = open + comment[open..].find(')').unwrap();
        let values: Vec<&str> = comment[open + 1..close].split(" / ").collect();
        assert_eq!(values.len(), 4, "{key}: {comment}");
        assert_eq!(
            values[1],
            default.trim_matches('"'),
            "{key}: level 1 is the default"
        );
        for (n, value) in values.iter().enumerate() {
            let value = if default.starts_with('"') {
                format!("{value:?}")
            } else {
                value.to_string()
            };
            let toml = format!("level = {n}\n[limits]\n{key} = {value}\n");
            assert_eq!(policy(&toml), preset(n as u8), "{toml}");
        }
        comment.clear();
        checked += 1;
    }
    assert_eq!(checked, 26);
}

#[test]
fn overrides_apply_one_by_one_over_the_preset() {
    let base = preset(1);
    let cases: Vec<(&str, Policy)> = vec![
        (
            "max_connections_per_ip = 7",
            Policy {
                max_connections_per_client: 7,
                ..base
            },
        ),
        (
            "max_authenticated_per_ip = 2000",
            Policy {
                max_authenticated_per_client: 2_000,
                ..base
            },
        ),
        (
            "shared_failure_percent = 80",
            Policy {
                shared_failure_percent: 80,
                ..base
            },
        ),
        (
            "rate_window = \"30s\"",
            Policy {
                rate_window: Duration::from_secs(30),
                ..base
            },
        ),
        (
            "max_new_connections_per_window = 9",
            Policy {
                max_new_connections_per_window: 9,
                ..base
            },
        ),
        (
            "block_duration = \"500ms\"",
            Policy {
                block_duration: Duration::from_millis(500),
                ..base
            },
        ),
        (
            "max_block_duration = \"2d\"",
            Policy {
                max_block_duration: Duration::from_secs(172_800),
                ..base
            },
        ),
        (
            "ip_blocking = false",
            Policy {
                ip_blocking: false,
                ..base
            },
        ),
        (
            "block_after_violations = 3",
            Policy {
                block_after_violations: 3,
                ..base
            },
        ),
        (
            "ipv6_prefix = 56",
            Policy {
                ipv6_prefix: 56,
                ..base
            },
        ),
        (
            "global_max_connections = 1234",
            Policy {
                global_max_connections: 1234,
                ..base
            },
        ),
        (
            "global_max_new_per_second = 4321",
            Policy {
                global_max_new_per_second: 4321,
                ..base
            },
        ),
        (
            "attack_enter_per_second = 0",
            Policy {
                attack_enter_per_second: None,
                ..base
            },
        ),
        (
            "max_connections_per_network = 300",
            Policy {
                max_connections_per_network: 300,
                ..base
            },
        ),
        (
            "max_new_connections_per_network = 900",
            Policy {
                max_new_connections_per_network: 900,
                ..base
            },
        ),
        (
            "network_prefix_v4 = 20",
            Policy {
                network_prefix_v4: 20,
                ..base
            },
        ),
        (
            "network_prefix_v6 = 40",
            Policy {
                network_prefix_v6: 40,
                ..base
            },
        ),
        (
            "attack_enter_per_second = 3000",
            Policy {
                attack_enter_per_second: Some(3000),
                ..base
            },
        ),
        (
            "attack_exit_per_second = 10",
            Policy {
                attack_exit_per_second: 10,
                ..base
            },
        ),
        (
            "attack_cooldown = \"2m\"",
            Policy {
                attack_cooldown: Duration::from_secs(120),
                ..base
            },
        ),
        (
            "attack_limit_percent = 80",
            Policy {
                attack_limit_percent: 80,
                ..base
            },
        ),
        (
            "scanner_failures = 2",
            Policy {
                scanner_failures: 2,
                ..base
            },
        ),
        (
            "slowloris_timeouts = 4",
            Policy {
                slowloris_timeouts: 4,
                ..base
            },
        ),
        (
            "handshake_timeout = \"3s\"",
            Policy {
                handshake_timeout: Some(Duration::from_secs(3)),
                ..base
            },
        ),
        (
            "handshake_timeout = \"off\"",
            Policy {
                handshake_timeout: None,
                ..base
            },
        ),
        (
            "block_on_replay = true",
            Policy {
                block_on_replay: true,
                ..base
            },
        ),
        (
            "offence_memory = \"1h\"",
            Policy {
                offence_memory: Duration::from_secs(3600),
                ..base
            },
        ),
        (
            "block_jitter_permille = 0",
            Policy {
                block_jitter_permille: 0,
                ..base
            },
        ),
    ];
    for (line, want) in cases {
        let text = format!("[limits]\n{line}\n");
        let config = parse(&text).unwrap();
        let got = config.effective_policy(None).unwrap();
        assert_eq!(got, want, "{line}");
        assert_ne!(got, base, "{line} must change something");
        // check-config says where each value came from.
        let key = line.split(' ').next().unwrap();
        let described = config.describe(&got);
        let rows: Vec<&str> = described
            .lines()
            .skip_while(|l| l.trim() != "[limits]")
            .skip(1)
            .collect();
        assert_eq!(rows.len(), 26, "{described}");
        for row in rows {
            let from_file = row.trim_start().starts_with(&format!("{key} "));
            let origin = if from_file {
                "mtguard.toml:2"
            } else {
                "level 1 preset"
            };
            assert!(row.ends_with(origin), "{line}: {row}");
        }
    }
    // Several together, over another level.
    let p = policy("level = 2\n[limits]\nmax_connections_per_ip = 7\nip_blocking = false\n");
    assert_eq!(
        p,
        Policy {
            max_connections_per_client: 7,
            ip_blocking: false,
            ..preset(2)
        }
    );
}

#[test]
fn command_line_level_beats_the_file() {
    let config = parse("level = 3\n[limits]\nmax_connections_per_ip = 7\n").unwrap();
    assert_eq!(config.level, 3);
    let from_file = config.effective_policy(None).unwrap();
    assert_eq!(
        from_file,
        Policy {
            max_connections_per_client: 7,
            ..preset(3)
        }
    );
    // The override replaces the preset; the file's [limits] still apply.
    let overridden = config.effective_policy(Some(0)).unwrap();
    assert_eq!(
        overridden,
        Policy {
            max_connections_per_client: 7,
            ..preset(0)
        }
    );
    let described = config.describe(&overridden);
    assert!(described.contains("level: 0 (minimal), from the command line (the file says 3)"));
    assert!(described.contains("level 0 preset"));

    let err = config.effective_policy(Some(4)).unwrap_err();
    assert_eq!(err.key(), Some("--level"));
    assert_eq!(
        err.to_string(),
        "command line: --level: must be 0, 1, 2 or 3 (got 4)"
    );
}

#[test]
fn server_admin_state_keys() {
    let config = parse(
        r#"
[server]
listen = ["0.0.0.0:443", "[::]:443"]
backend = "mtg.internal:3128"
proxy_protocol = "v2"
connect_timeout = "1500ms"
idle_timeout = "1h"
[admin]
listen = "off"
token_file = "/etc/mtguard/token"
[state]
dir = "/var/lib/mtguard"
"#,
    )
    .unwrap();
    assert_eq!(
        config.server.listen,
        [addr("0.0.0.0:443"), addr("[::]:443")]
    );
    assert_eq!(config.server.backend, "mtg.internal:3128");
    assert_eq!(config.server.proxy_protocol, ProxyProtocol::V2);
    assert_eq!(config.server.connect_timeout, Duration::from_millis(1500));
    assert_eq!(config.server.idle_timeout, Duration::from_secs(3600));
    assert_eq!(config.admin.listen, None);
    assert_eq!(
        config.admin.token_file.as_deref(),
        Some(Path::new("/etc/mtguard/token"))
    );
    assert_eq!(config.state.dir, Path::new("/var/lib/mtguard"));
    // A non-loopback admin address is the operator's choice.
    let open = parse("[admin]\nlisten = \"0.0.0.0:9900\"").unwrap();
    assert_eq!(open.admin.listen, Some(addr("0.0.0.0:9900")));

    for (text, key) in [
        ("[server]\nlisten = []", "[server] listen"),
        ("[server]\nlisten = [\"1.2.3.4\"]", "[server] listen[0]"),
        ("[server]\nbackend = \"127.0.0.1\"", "[server] backend"),
        ("[server]\nbackend = \"::1:80\"", "[server] backend"),
        ("[server]\nbackend = \"host:0\"", "[server] backend"),
        (
            "[server]\nproxy_protocol = \"v3\"",
            "[server] proxy_protocol",
        ),
        (
            "[server]\nconnect_timeout = \"0s\"",
            "[server] connect_timeout",
        ),
        ("[admin]\nlisten = \"localhost\"", "[admin] listen"),
        ("[state]\ndir = \"\"", "[state] dir"),
    ] {
        let err = parse_err(text);
        assert_eq!((err.line(), err.key()), (Some(2), Some(key)), "{err}");
    }
}

#[test]
fn a_mistyped_key_is_named_with_its_line_and_the_valid_keys() {
    let err =
        parse_err("level = 1\n\n[limits]\nrate_window = \"60s\"\nmax_conections_per_ip = 5\n");
    assert_eq!(err.line(), Some(5));
    let text = err.to_string();
    assert!(
        text.starts_with("mtguard.toml:5: [limits]: unknown key `max_conections_per_ip`"),
        "{text}"
    );
    assert!(
        text.contains("`max_connections_per_ip`"),
        "lists the valid keys: {text}"
    );
    assert!(text.contains("`attack_limit_percent`"), "{text}");

    // Also in the other tables, and as a dotted key.
    for (text, line) in [
        ("[server]\nlistn = []", 2),
        ("[admin]\ntoken = \"x\"", 2),
        ("\n\nlimits.rate_windo = \"1s\"", 3),
        ("[lists]\nallow_file = []", 2),
    ] {
        let err = parse_err(text);
        assert_eq!(err.line(), Some(line), "{err}");
        assert!(err.message().starts_with("unknown key"), "{err}");
    }
}

#[test]
fn an_unknown_table_is_an_error() {
    let err = parse_err("level = 1\n[foo]\nbar = 1\n");
    assert_eq!(err.line(), Some(2));
    assert!(err.to_string().contains("unknown table `foo`"), "{err}");
    assert!(err.to_string().contains("`limits`"), "{err}");
}

#[test]
fn a_bad_duration_names_the_key_and_line() {
    let mut text = "\n".repeat(10);
    text.push_str("[limits]\nrate_window = \"5x\"\n");
    let err = parse_err(&text);
    assert_eq!(
        err.to_string(),
        r#"mtguard.toml:12: [limits] rate_window: invalid duration "5x": expected a number followed by ms, s, m, h or d"#
    );
    assert_eq!(err.file(), "mtguard.toml");
    let err = parse_err("[limits]\nblock_duration = 300");
    assert_eq!(
        (err.line(), err.key()),
        (Some(2), Some("[limits] block_duration"))
    );
    assert!(err.message().contains("\"60s\""), "shows the form: {err}");
    let err = parse_err("[server]\n\nidle_timeout = \"10\"");
    assert_eq!(
        (err.line(), err.key()),
        (Some(3), Some("[server] idle_timeout"))
    );
}

#[test]
fn wrong_types_and_ranges_name_the_line() {
    let err = parse_err("# comment\nlevel = \"high\"\n");
    assert_eq!((err.line(), err.key()), (Some(2), Some("level")));
    assert!(err.message().contains("expected an integer"), "{err}");

    let err = parse_err("level = 4");
    assert_eq!((err.line(), err.key()), (Some(1), Some("level")));
    assert_eq!(err.message(), "must be 0, 1, 2 or 3 (got 4)");
    assert!(parse("level = -1").is_err());

    for (text, key) in [
        ("[limits]\nip_blocking = \"yes\"", "[limits] ip_blocking"),
        (
            "[limits]\nblock_after_violations = 256",
            "[limits] block_after_violations",
        ),
        (
            "[limits]\nmax_connections_per_ip = -1",
            "[limits] max_connections_per_ip",
        ),
        (
            "[limits]\nglobal_max_connections = 5000000000",
            "[limits] global_max_connections",
        ),
        ("[server]\nlisten = \"0.0.0.0:443\"", "[server] listen"),
    ] {
        let err = parse_err(text);
        assert_eq!((err.line(), err.key()), (Some(2), Some(key)), "{err}");
    }
    let err = parse_err("server = 5");
    assert_eq!(err.key(), Some("server"));

    // Syntax errors name the line.
    let err = parse_err("level = 1\n[limits\n");
    assert_eq!(err.line(), Some(2), "{err}");
    let err = parse_err("level = 1\nlevel = 2\n");
    assert_eq!(err.line(), Some(2), "{err}");
    assert!(err.message().contains("duplicate key `level`"), "{err}");
}

#[test]
fn policy_validation_names_the_config_key() {
    // max_block_duration (level 1 preset: 1d) below block_duration (file).
    let config = parse("[limits]\n\nblock_duration = \"2d\"\n").unwrap();
    let err = config.effective_policy(None).unwrap_err();
    assert_eq!(err.key(), Some("[limits] max_block_duration"));
    assert_eq!(err.line(), Some(3), "points at the key the file set");
    assert!(
        err.message()
            .contains("block_duration is 2d, set on line 3"),
        "{err}"
    );
    assert!(
        err.message()
            .contains("max_block_duration is 1d, from the level 1 preset"),
        "{err}"
    );

    let err = parse("[limits]\nmax_connections_per_ip = 0\n")
        .unwrap()
        .effective_policy(None)
        .unwrap_err();
    assert_eq!(err.key(), Some("[limits] max_connections_per_ip"));
    assert_eq!(err.line(), Some(2));
    assert!(
        !err.to_string().contains("client"),
        "config names only: {err}"
    );

    for (text, key) in [
        (
            "attack_exit_per_second = 5000",
            "[limits] attack_exit_per_second",
        ),
        ("ipv6_prefix = 129", "[limits] ipv6_prefix"),
        ("attack_limit_percent = 0", "[limits] attack_limit_percent"),
        (
            "block_jitter_permille = 1001",
            "[limits] block_jitter_permille",
        ),
        ("rate_window = \"2d\"", "[limits] rate_window"),
    ] {
        let config = parse(&format!("[limits]\n{text}\n")).unwrap();
        let err = config.effective_policy(None).unwrap_err();
        assert_eq!((err.line(), err.key()), (Some(2), Some(key)), "{err}");
    }
    // The exit threshold is free when under-attack mode is off.
    policy("[limits]\nattack_enter_per_second = 0\nattack_exit_per_second = 5000\n");
}

#[test]
fn inline_cidrs_and_a_bad_entry_named_by_index() {
    let config =
        parse("[lists]\nallow = [\"10.0.0.0/8\", \"2001:db8::1\"]\ndeny = [\"192.0.2.77/24\"]\n")
            .unwrap();
    assert_eq!(
        config.lists.allow,
        [cidr("10.0.0.0/8"), cidr("2001:db8::1/128")]
    );
    assert_eq!(config.lists.deny, [cidr("192.0.2.0/24")]);

    let err = parse_err("[lists]\ndeny = [\n  \"192.0.2.0/24\",\n  \"10.0.0.0/33\",\n]\n");
    assert_eq!(err.key(), Some("[lists] deny[1]"));
    assert_eq!(err.line(), Some(4));
    assert!(err.message().contains("\"10.0.0.0/33\""), "{err}");
    let err = parse_err("[lists]\nallow = [\"bogus\"]");
    assert_eq!(err.key(), Some("[lists] allow[0]"));
}

#[test]
fn netset_files_with_comments_relative_to_the_config() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("lists")).unwrap();
    fs::write(
        dir.path().join("lists/deny.netset"),
        "# FireHOL level1\n#\n\n198.51.100.0/24\n203.0.113.7 # one host\n   \n2001:db8::/32\r\n192.0.2.0/24\n",
    )
    .unwrap();
    fs::write(dir.path().join("allow.txt"), "10.0.0.0/8\n").unwrap();
    let path = dir.path().join("mtguard.toml");
    fs::write(
        &path,
        "[lists]\ndeny = [\"192.0.2.0/24\"]\ndeny_files = [\"lists/deny.netset\"]\nallow_files = [\"allow.txt\"]\n",
    )
    .unwrap();
    let config = mtguard::server::bootstrap::load_config(&path).unwrap();
    assert_eq!(
        config.lists.deny_files,
        [dir.path().join("lists/deny.netset")]
    );
    let lists = mtguard::server::bootstrap::load_lists(&config).unwrap();
    assert_eq!(lists.allow, [cidr("10.0.0.0/8")]);
    let mut deny = vec![
        cidr("198.51.100.0/24"),
        cidr("203.0.113.7"),
        cidr("2001:db8::/32"),
        cidr("192.0.2.0/24"),
    ];
    deny.sort();
    assert_eq!(
        lists.deny, deny,
        "merged with the inline entry, no duplicates"
    );

    // A bad line names the list file and its line.
    fs::write(
        dir.path().join("lists/deny.netset"),
        "# header\n198.51.100.0/24\n\n1.2.3.999 # typo\n",
    )
    .unwrap();
    let err = mtguard::server::bootstrap::load_lists(&config).unwrap_err();
    assert!(err.file().ends_with("deny.netset"), "{err}");
    assert_eq!(err.line(), Some(4));
    assert!(err.message().contains("\"1.2.3.999\""), "{err}");
    assert!(err.to_string().contains("deny.netset:4: "), "{err}");

    // A missing list file names the config key and its line.
    fs::remove_file(dir.path().join("allow.txt")).unwrap();
    let err = mtguard::server::bootstrap::load_lists(&config).unwrap_err();
    assert_eq!(err.key(), Some("[lists] allow_files[0]"));
    assert_eq!(err.line(), Some(4));
    assert_eq!(err.file(), path.display().to_string());
}

#[test]
fn relative_paths_are_resolved_against_the_config_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mtguard.toml");
    fs::write(
        &path,
        "[admin]\ntoken_file = \"token\"\n[state]\ndir = \"state\"\n",
    )
    .unwrap();
    let config = mtguard::server::bootstrap::load_config(&path).unwrap();
    assert_eq!(config.admin.token_file, Some(dir.path().join("token")));
    assert_eq!(config.state.dir, dir.path().join("state"));

    let missing = dir.path().join("nope.toml");
    let err = mtguard::server::bootstrap::load_config(&missing).unwrap_err();
    assert_eq!(err.file(), missing.display().to_string());
    assert!(
        err.message().starts_with("cannot read the config file"),
        "{err}"
    );
}

#[test]
fn durations() {
    for (s, d) in [
        ("500ms", Duration::from_millis(500)),
        ("60s", Duration::from_secs(60)),
        ("5m", Duration::from_secs(300)),
        ("2h", Duration::from_secs(7200)),
        ("1d", Duration::from_secs(86_400)),
        ("0s", Duration::ZERO),
    ] {
        assert_eq!(parse_duration(s), Ok(d), "{s}");
    }
    for s in [
        "5",
        "-1s",
        "1y",
        "",
        "99999999999999999999d",
        "213503982335d",
        "1.5s",
        " 5s",
        "5 s",
        "s",
        "+5s",
        "5S",
        "1h30m",
    ] {
        let err = parse_duration(s).expect_err(s);
        assert!(err.contains(&format!("{s:?}")), "{err}");
    }
    assert!(parse_duration("-1s").unwrap_err().contains("negative"));
    assert!(parse_duration("99999999999999999999d")
        .unwrap_err()
        .contains("too large"));
}

/// The key names CrowdSec's bouncers use carry over: `api_url`, `api_key`
/// and `update_frequency` mean `lapi_url`, the bouncer key and
/// `poll_interval`; one setting under two names is an error naming the
/// line and the second name.
#[test]
fn crowdsec_accepts_the_key_names_of_crowdsecs_own_bouncers() {
    let ours = parse(
        "[crowdsec]\nlapi_url = \"http://127.0.0.1:8080\"\n\
         api_key_file = \"/etc/mtguard/crowdsec.key\"\npoll_interval = \"30s\"\n",
    )
    .unwrap();
    let theirs = parse(
        "[crowdsec]\napi_url = \"http://127.0.0.1:8080/\"\n\
         api_key = \"  0123456789abcdefKEY \"\nupdate_frequency = \"30s\"\n",
    )
    .unwrap();
    let (ours, theirs) = (ours.crowdsec.unwrap(), theirs.crowdsec.unwrap());
    assert_eq!(theirs.lapi_url, ours.lapi_url);
    assert_eq!(theirs.poll_interval, ours.poll_interval);
    assert_eq!(theirs.poll_interval, std::time::Duration::from_secs(30));
    assert_eq!(theirs.api_key_file, None);
    let key = theirs.api_key.as_ref().unwrap();
    assert_eq!(key.0, "0123456789abcdefKEY");
    // A printed config does not show the key.
    assert!(!format!("{theirs:?}").contains("0123456789abcdefKEY"));
    // The inline key alone is enough to make a bouncer.
    assert!(parse("[crowdsec]\nlapi_url = \"http://127.0.0.1:8080/\"\napi_key = \"k\"\n").is_ok());

    // check-config shows the value under mtguard's name, from its line.
    let config = parse(
        "[crowdsec]\napi_url = \"http://127.0.0.1:8080/\"\n\
         api_key = \"k\"\nupdate_frequency = \"30s\"\n",
    )
    .unwrap();
    let described = config.describe(&config.effective_policy(None).unwrap());
    let row = |name: &str| {
        described
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in:\n{described}"))
            .to_owned()
    };
    assert!(
        row("lapi_url").contains("mtguard.toml:2"),
        "{}",
        row("lapi_url")
    );
    assert!(
        row("poll_interval").contains("mtguard.toml:4"),
        "{}",
        row("poll_interval")
    );
    assert!(row("api_key").contains("not shown"), "{}", row("api_key"));
    assert!(!described.contains("\"k\""), "{described}");

    for (text, line, key) in [
        (
            "[crowdsec]\nlapi_url = \"http://a:1/\"\napi_url = \"http://a:1/\"\napi_key = \"k\"\n",
            3,
            "[crowdsec] api_url",
        ),
        (
            "[crowdsec]\nlapi_url = \"http://a:1/\"\napi_key_file = \"f\"\napi_key = \"k\"\n",
            4,
            "[crowdsec] api_key",
        ),
        (
            "[crowdsec]\nlapi_url = \"http://a:1/\"\napi_key = \"k\"\n\
             poll_interval = \"5s\"\nupdate_frequency = \"5s\"\n",
            5,
            "[crowdsec] update_frequency",
        ),
        (
            "[crowdsec]\nlapi_url = \"http://a:1/\"\napi_key = \"two words\"\n",
            3,
            "[crowdsec] api_key",
        ),
        (
            "[crowdsec]\napi_url = \"ftp://a:1/\"\napi_key = \"k\"\n",
            2,
            "[crowdsec] api_url",
        ),
        (
            "[crowdsec]\nlapi_url = \"http://a:1/\"\napi_key = \"k\"\nupdate_frequency = \"0s\"\n",
            4,
            "[crowdsec] update_frequency",
        ),
    ] {
        let e = parse_err(text);
        assert_eq!(e.line(), Some(line), "{text}: {e}");
        assert_eq!(e.key(), Some(key), "{text}: {e}");
        assert!(e.to_string().contains("mtguard.toml:"), "{e}");
    }
}

/// Found by the `config` fuzz target: serde quotes an unknown value, and a
/// TOML string may hold a newline, so the error printed two lines, the
/// second one chosen by whoever wrote the file. A quoted key may hold one
/// too.
#[test]
fn an_error_quoting_a_newline_from_the_file_is_still_one_line() {
    let error = parse_err("[mtproto]\non_probe = \"mask\\nFORGED: config accepted\"\n");
    let shown = error.to_string();
    assert_eq!(error.line(), Some(2), "{shown}");
    assert!(!shown.contains('\n'), "{shown:?}");
    assert!(shown.contains(r"mask\nFORGED"), "{shown}");
    assert!(
        shown.starts_with("mtguard.toml:2: [mtproto] on_probe: "),
        "{shown}"
    );

    let error = parse_err("[limits]\n\"a\\nb\\u0007\" = 1\n");
    let shown = error.to_string();
    assert!(
        !shown.contains('\n') && !shown.contains('\u{7}'),
        "{shown:?}"
    );
    assert!(shown.contains(r"a\nb\u{7}"), "{shown}");
}
