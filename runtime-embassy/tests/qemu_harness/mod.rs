//! Boots the mps2-an500 image in QEMU on a tap device inside a network
//! namespace of its own, with a backend and an SNTP server in that
//! namespace, and reads the image's UART log. See qemu.rs.
//!
//! Needs root (network namespaces, tap devices) and `qemu-system-arm`
//! (`./test.sh` installs it). Everything started here is stopped on every
//! path: [`Appliance`]'s drop kills QEMU and deletes the namespace, also
//! when a test panics.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

/// The namespace's side of the tap: backend and SNTP server.
pub const HOST: Ipv4Addr = Ipv4Addr::new(10, 19, 0, 1);
/// The appliance.
pub const APPLIANCE: Ipv4Addr = Ipv4Addr::new(10, 19, 0, 2);
pub const PORT: u16 = 443;
pub const BACKEND_PORT: u16 = 8443;
pub const NTP_PORT: u16 = 12300;
/// Client addresses 10.19.0.100 and up, all on the tap: as many as the
/// image's ARP cache holds (see [`announce`]).
pub const CLIENTS: u8 = 64;
/// The longest any single wait may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub fn client(i: u8) -> Ipv4Addr {
    assert!(i < CLIENTS);
    Ipv4Addr::new(10, 19, 0, 100 + i)
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The image, built once per test binary (its own workspace and lock).
pub fn image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("firmware-mps2");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        run(Command::new("nice")
            .args(["-n", "15"])
            .arg(&cargo)
            .args(["build", "--release", "--locked", "--quiet"])
            .current_dir(&dir));
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.join("target"));
        let elf = target.join("thumbv7em-none-eabihf/release/mtguard-firmware-mps2");
        assert!(elf.exists(), "{} not built", elf.display());
        elf
    })
}

/// A network namespace holding `tap0` with the host and client addresses;
/// deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn create(test: &str) -> NetNs {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "mtgq-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            &test[..test.len().min(12)]
        );
        // A namespace of that name left by a killed run of this pid.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = NetNs { name };
        let mut batch = String::from(
            "link set lo up\ntuntap add dev tap0 mode tap\nlink set tap0 up\naddr add 10.19.0.1/24 dev tap0\n",
        );
        for i in 0..CLIENTS {
            batch.push_str(&format!("addr add {}/24 dev tap0\n", client(i)));
        }
        let mut child = Command::new("ip")
            .args(["-n", &ns.name, "-batch", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("ip -batch");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(batch.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "namespace setup failed");
        ns
    }

    /// Moves the calling thread into the namespace: its sockets (and those
    /// of threads it starts) live there.
    pub fn enter(&self) {
        let f = std::fs::File::open(format!("/run/netns/{}", self.name)).expect("netns file");
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a valid namespace fd changes only this thread's
        // network namespace; no memory is involved.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// The UART log, line by line, as QEMU prints it.
#[derive(Default)]
pub struct Log {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

impl Log {
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

/// A booted appliance. Drop order: QEMU first, then the namespace.
pub struct Appliance {
    qemu: Child,
    pub log: Arc<Log>,
    /// When QEMU was started.
    pub started: Instant,
    /// Log lines already matched by [`Appliance::expect`].
    cursor: usize,
    /// The block file QEMU loaded, removed on drop.
    block_file: Option<PathBuf>,
    pub ns: NetNs,
}

impl Appliance {
    /// Boots the image with `block` loaded at the config address (none:
    /// no loader at all), and moves the calling thread into its namespace.
    pub fn boot(test: &str, block: Option<&[u8]>) -> Appliance {
        let elf = image();
        Appliance::boot_in(NetNs::create(test), block, elf)
    }

    /// [`Appliance::boot`] in a namespace made (and perhaps populated)
    /// beforehand.
    pub fn boot_in(ns: NetNs, block: Option<&[u8]>, elf: &Path) -> Appliance {
        ns.enter();
        let mut cmd = Command::new("nice");
        cmd.args([
            "-n",
            "15",
            "ip",
            "netns",
            "exec",
            &ns.name,
            "qemu-system-arm",
        ])
        .args(["-M", "mps2-an500", "-display", "none", "-monitor", "none"])
        .args(["-serial", "stdio", "-kernel"])
        .arg(elf)
        .args([
            "-nic",
            "tap,ifname=tap0,script=no,downscript=no,model=lan9118",
        ]);
        let block_file = block.map(|block| {
            let path = std::env::temp_dir().join(format!("{}.block", ns.name));
            std::fs::write(&path, block).unwrap();
            cmd.arg("-device")
                .arg(format!("loader,file={},addr=0x3ff000", path.display()));
            path
        });
        let started = Instant::now();
        let mut qemu = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-system-arm (apt-get install qemu-system-arm)");
        let log = Arc::new(Log::default());
        let out = qemu.stdout.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                sink.lines.lock().unwrap().push(line);
                sink.grew.notify_all();
            }
        });
        Appliance {
            qemu,
            log,
            started,
            cursor: 0,
            block_file,
            ns,
        }
    }

    /// Waits for the first line after the last one matched that contains
    /// `needle`; returns it.
    pub fn expect(&mut self, needle: &str) -> String {
        self.expect_any(&[needle])
    }

    /// Waits for the first line after the last one matched that contains
    /// any of `needles`; returns it.
    pub fn expect_any(&mut self, needles: &[&str]) -> String {
        let deadline = Instant::now() + PATIENCE;
        let mut lines = self.log.lines.lock().unwrap();
        loop {
            let found = lines[self.cursor..]
                .iter()
                .position(|l| needles.iter().any(|n| l.contains(n)));
            if let Some(i) = found {
                self.cursor += i + 1;
                return lines[self.cursor - 1].clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no log line with {needles:?} within {PATIENCE:?}"
            );
            lines = self.log.grew.wait_timeout(lines, left).unwrap().0;
        }
    }

    /// Whether any line so far (matched or not) contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.log.lines().iter().any(|l| l.contains(needle))
    }

    /// Boots and waits until the guard listens; the boot time, from QEMU's
    /// start to that line.
    pub fn boot_serving(test: &str, block: &[u8]) -> (Appliance, Duration) {
        let mut a = Appliance::boot(test, Some(block));
        a.expect("guard: listening");
        let t = a.started.elapsed();
        announce(APPLIANCE);
        (a, t)
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        if let Some(f) = &self.block_file {
            let _ = std::fs::remove_file(f);
        }
        if std::thread::panicking() {
            eprintln!("--- appliance log ---");
            for l in self.log.lines() {
                eprintln!("{l}");
            }
        }
    }
}

/// A connection from client address `from` to the appliance.
pub fn connect(from: Ipv4Addr) -> std::io::Result<TcpStream> {
    connect_to(from, SocketAddrV4::new(APPLIANCE, PORT))
}

pub fn connect_to(from: Ipv4Addr, to: SocketAddrV4) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.bind(&SocketAddr::from((from, 0)).into())?;
    s.connect_timeout(&SocketAddr::from(to).into(), Duration::from_secs(5))?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(PATIENCE))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Reads until the peer closes: `Ok(bytes)` on a FIN, `Err` on a reset.
pub fn read_to_end(s: &mut TcpStream) -> Result<Vec<u8>, std::io::ErrorKind> {
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => Ok(out),
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut =>
        {
            panic!("peer neither closed nor reset within {PATIENCE:?}")
        }
        Err(e) => Err(e.kind()),
    }
}

pub fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    s.read_exact(&mut out)
        .unwrap_or_else(|e| panic!("reading {n} bytes: {e}"));
    out
}

pub fn xor(data: &[u8]) -> Vec<u8> {
    data.iter().map(|b| b ^ 0xA5).collect()
}

/// The proxy behind the appliance, in the namespace: answers each byte
/// XOR 0xA5 and records what each connection sent.
pub struct Backend {
    pub connections: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Backend {
    /// Starts listening; call on a thread inside the namespace.
    pub fn start() -> Backend {
        let listener = TcpListener::bind((HOST, BACKEND_PORT)).expect("backend bind");
        let connections = Arc::new(Mutex::new(Vec::new()));
        let log = connections.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let index = {
                    let mut l = log.lock().unwrap();
                    l.push(Vec::new());
                    l.len() - 1
                };
                let log = log.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 16384];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                log.lock().unwrap()[index].extend_from_slice(&buf[..n]);
                                if s.write_all(&xor(&buf[..n])).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = s.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Backend { connections }
    }

    pub fn count(&self) -> usize {
        self.connections.lock().unwrap().len()
    }

    pub fn received(&self) -> Vec<Vec<u8>> {
        self.connections.lock().unwrap().clone()
    }
}

/// An SNTP server in the namespace that answers only once enabled, with
/// the host's clock.
pub struct Sntp {
    pub enabled: Arc<AtomicBool>,
    pub answered: Arc<AtomicUsize>,
}

impl Sntp {
    pub fn start() -> Sntp {
        let socket = UdpSocket::bind((HOST, NTP_PORT)).expect("sntp bind");
        let enabled = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let (on, count) = (enabled.clone(), answered.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, peer)) = socket.recv_from(&mut buf) {
                if n < 48 || !on.load(Ordering::SeqCst) {
                    continue;
                }
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap();
                let secs = (now.as_secs() + 2_208_988_800) as u32;
                let frac = ((u64::from(now.subsec_nanos()) << 32) / 1_000_000_000) as u32;
                let mut reply = [0u8; 48];
                reply[0] = 4 << 3 | 4; // version 4, server
                reply[1] = 1; // stratum 1
                reply[24..32].copy_from_slice(&buf[40..48]);
                for at in [16, 32, 40] {
                    reply[at..at + 4].copy_from_slice(&secs.to_be_bytes());
                    reply[at + 4..at + 8].copy_from_slice(&frac.to_be_bytes());
                }
                let _ = socket.send_to(&reply, peer);
                count.fetch_add(1, Ordering::SeqCst);
            }
        });
        Sntp { enabled, answered }
    }
}

/// Writes a block with `mtguard appliance-config`'s own code: the server
/// config text `toml` (level, [limits], [mtproto]) and the appliance's
/// address, backend and NTP server in the namespace.
pub fn block(toml: &str, secrets: &[&str], ntp: bool) -> Vec<u8> {
    block_with(toml, secrets, ntp, false)
}

/// [`block`], with the address from DHCP if `dhcp`.
pub fn block_with(toml: &str, secrets: &[&str], ntp: bool, dhcp: bool) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!(
        "mtgq-block-{}-{}",
        std::process::id(),
        BLOCKS.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("mtguard.toml");
    std::fs::write(&config, toml).unwrap();
    let out = dir.join("block.bin");
    mtguard::appliance::run(mtguard::appliance::ApplianceConfigArgs {
        out: out.clone(),
        config: Some(config),
        level: None,
        address: (!dhcp).then(|| format!("{APPLIANCE}/24")),
        dhcp,
        gateway: None,
        backend: Some(SocketAddrV4::new(HOST, BACKEND_PORT)),
        port: Some(PORT),
        secrets: secrets.iter().map(|s| s.to_string()).collect(),
        ntp: ntp.then(|| format!("{HOST}:{NTP_PORT}")),
        mac: None,
    })
    .expect("appliance-config");
    let block = std::fs::read(&out).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    block
}

static BLOCKS: AtomicUsize = AtomicUsize::new(0);

/// A fresh obfuscated2 header for the 16-byte `key` (classic or `dd`
/// secret), padded intermediate, DC 2, as a client makes one: random
/// bytes whose encrypted tail carries the tag. `seed` makes it
/// reproducible and distinct.
pub fn obfs2_header(key: &[u8; 16], seed: u64) -> [u8; 64] {
    use aes::cipher::{KeyIvInit, StreamCipher};
    use sha2::{Digest, Sha256};
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut h = [0u8; 64];
    loop {
        for b in h.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        // The starts clients avoid (other protocols, fake-TLS).
        let bad = h[0] == 0xef
            || [b"HEAD", b"POST", b"GET ", b"OPTI", b"PVrG"]
                .iter()
                .any(|p| h[..4] == **p)
            || h[..4] == [0xee; 4]
            || h[..4] == [0xdd; 4]
            || h[..4] == [0x16, 0x03, 0x01, 0x02]
            || h[4..8] == [0; 4];
        if !bad {
            break;
        }
    }
    h[56..60].copy_from_slice(&[0xdd; 4]);
    h[60..62].copy_from_slice(&2i16.to_le_bytes());
    let mut hash = Sha256::new();
    hash.update(&h[8..40]);
    hash.update(key);
    let k: [u8; 32] = hash.finalize().into();
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&h[40..56]);
    let mut enc = h;
    ctr::Ctr128BE::<aes::Aes256>::new(&k.into(), &iv.into()).apply_keystream(&mut enc);
    h[56..64].copy_from_slice(&enc[56..64]);
    h
}

/// A DHCPv4 server (dnsmasq) on the namespace's tap, leasing one address;
/// killed on drop.
pub struct Dhcp {
    child: Child,
    leases: PathBuf,
}

impl Dhcp {
    pub fn start(ns: &NetNs, address: Ipv4Addr) -> Dhcp {
        let leases = std::env::temp_dir().join(format!("{}.leases", ns.name));
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "dnsmasq", "--keep-in-foreground"])
            .args([
                "--port=0",
                "--interface=tap0",
                "--bind-interfaces",
                "--no-resolv",
            ])
            .args(["--no-hosts", "--log-dhcp", "--pid-file="])
            .arg(format!("--dhcp-range={address},{address},255.255.255.0,1h"))
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (apt-get install dnsmasq-base)");
        Dhcp { child, leases }
    }
}

impl Drop for Dhcp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.leases);
    }
}

/// Tells the appliance at `target` every client's MAC address with one ARP
/// request from each client address, as a host on a busy LAN would have
/// by the time it connects.
///
/// Without it each client's first SYN-ACK waits on neighbour discovery:
/// smoltcp drops the segment, sends an ARP request and stays silent
/// towards that address for a second, while Linux retransmits the SYN
/// after a second too; under load the two cross and the client's connect
/// now and then ends in a reset (seen as ECONNRESET from connect). That is
/// the first contact of an on-link client with the stack, not the guard;
/// the tests here are about the guard.
pub fn announce(target: Ipv4Addr) {
    // SAFETY (whole block): plain socket calls on a descriptor this
    // function owns and closes; every buffer passed is a local that lives
    // across the call, with its true length.
    unsafe {
        let proto = (libc::ETH_P_ARP as u16).to_be();
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(b"tap0\0") {
            *d = *s as libc::c_char;
        }
        assert_eq!(
            libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req),
            0,
            "SIOCGIFHWADDR"
        );
        let mac: [u8; 6] = std::array::from_fn(|i| req.ifr_ifru.ifru_hwaddr.sa_data[i] as u8);
        assert_eq!(
            libc::ioctl(fd, libc::SIOCGIFINDEX, &mut req),
            0,
            "SIOCGIFINDEX"
        );
        let mut to: libc::sockaddr_ll = std::mem::zeroed();
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = proto;
        to.sll_ifindex = req.ifr_ifru.ifru_ifindex;
        to.sll_halen = 6;
        to.sll_addr[..6].fill(0xff);
        for i in 0..CLIENTS {
            let mut frame = Vec::with_capacity(42);
            frame.extend_from_slice(&[0xff; 6]);
            frame.extend_from_slice(&mac);
            frame.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
            frame.extend_from_slice(&mac);
            frame.extend_from_slice(&client(i).octets());
            frame.extend_from_slice(&[0; 6]);
            frame.extend_from_slice(&target.octets());
            let n = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::addr_of!(to).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(
                n,
                frame.len() as isize,
                "ARP send: {}",
                std::io::Error::last_os_error()
            );
        }
        libc::close(fd);
    }
    // Let the emulated appliance take them in before the first connect.
    std::thread::sleep(Duration::from_millis(200));
}
