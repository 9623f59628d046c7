//! What the engine decided and what the runtime must hear about.

use crate::addr::ClientKey;
use crate::Instant;

/// Identifies one admitted connection. Handed out by
/// [`crate::SecurityManager::handle_connect`]; the generation part makes a
/// stale id (used after its connection closed) harmless instead of closing
/// somebody else's connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ConnectionId(pub(crate) u64);

impl ConnectionId {
    pub(crate) fn new(index: u32, generation: u32) -> Self {
        ConnectionId((u64::from(generation) << 32) | u64::from(index))
    }
    pub(crate) fn index(self) -> u32 {
        self.0 as u32
    }
    pub(crate) fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
    /// The id as an opaque number, for logs and maps in the runtime.
    pub fn to_bits(self) -> u64 {
        self.0
    }
}

/// The engine's answer to a new connection.
///
/// Dropping an `Admit` unseen leaks a connection slot until the engine is
/// told of the close, so the compiler insists it is looked at.
#[must_use = "an Admit holds a connection slot until handle_close is called with its id"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Verdict {
    /// Serve it; report its handshake and its close with this id.
    Admit(ConnectionId),
    /// Close it at once, without reading from it.
    Reject(RejectReason),
}

/// Why a connection was refused. Every reason has its own counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RejectReason {
    /// The address is on the denylist.
    Denylisted = 0,
    /// The client is blocked (automatically or by the operator).
    Blocked = 1,
    /// The client already holds its maximum of concurrent connections.
    TooManyConnections = 2,
    /// The client opened too many connections within the rate window.
    RateLimited = 3,
    /// The global concurrent-connection limit is reached.
    GlobalConnectionLimit = 4,
    /// The global rate of new connections is exceeded (throttling).
    GlobalRateLimit = 5,
    /// The client table is full of clients that cannot be evicted (all have
    /// live connections or active blocks); new clients are refused.
    ClientTableFull = 6,
    /// Every connection slot is in use.
    ConnectionTableFull = 7,
    /// The client holds its cap of authenticated connections
    /// ([`crate::Policy::max_authenticated_per_client`]). Never a violation:
    /// only a client with authenticated connections meets it.
    AuthenticatedLimit = 8,
    /// The client's network (its IPv4 /24 or IPv6 /48 by default) holds its
    /// maximum of connections that are not authenticated
    /// ([`crate::Policy::max_connections_per_network`]). Not a violation
    /// of the client: the network tier refuses, it never blocks.
    NetworkConnections = 9,
    /// The client's network opened too many connections within the rate
    /// window ([`crate::Policy::max_new_connections_per_network`]). Not a
    /// violation either.
    NetworkRate = 10,
    /// The network table is full of networks with live connections; new
    /// networks are refused, known ones are served.
    NetworkTableFull = 11,
}

impl RejectReason {
    /// Every reason, in counter order.
    pub const ALL: [RejectReason; 12] = [
        RejectReason::Denylisted,
        RejectReason::Blocked,
        RejectReason::TooManyConnections,
        RejectReason::RateLimited,
        RejectReason::GlobalConnectionLimit,
        RejectReason::GlobalRateLimit,
        RejectReason::ClientTableFull,
        RejectReason::ConnectionTableFull,
        RejectReason::AuthenticatedLimit,
        RejectReason::NetworkConnections,
        RejectReason::NetworkRate,
        RejectReason::NetworkTableFull,
    ];

    /// A stable snake_case name, used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Denylisted => "denylisted",
            RejectReason::Blocked => "blocked",
            RejectReason::TooManyConnections => "too_many_connections",
            RejectReason::RateLimited => "rate_limited",
            RejectReason::GlobalConnectionLimit => "global_connection_limit",
            RejectReason::GlobalRateLimit => "global_rate_limit",
            RejectReason::ClientTableFull => "client_table_full",
            RejectReason::ConnectionTableFull => "connection_table_full",
            RejectReason::AuthenticatedLimit => "authenticated_limit",
            RejectReason::NetworkConnections => "network_connections",
            RejectReason::NetworkRate => "network_rate",
            RejectReason::NetworkTableFull => "network_table_full",
        }
    }
}

/// What the runtime learnt from a connection's first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum HandshakeOutcome {
    /// A valid client handshake (or, without inspection, the first bytes).
    Valid = 0,
    /// Garbage, a wrong secret, a bad tag: a scanner or a prober.
    Invalid = 1,
    /// A recorded handshake played again.
    Replay = 2,
    /// The handshake did not complete before the deadline (slowloris). The
    /// engine reports these itself through [`Event::HandshakeTimeout`].
    Timeout = 3,
}

impl HandshakeOutcome {
    /// Every outcome, in counter order.
    pub const ALL: [HandshakeOutcome; 4] = [
        HandshakeOutcome::Valid,
        HandshakeOutcome::Invalid,
        HandshakeOutcome::Replay,
        HandshakeOutcome::Timeout,
    ];

    /// A stable snake_case name, used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeOutcome::Valid => "valid",
            HandshakeOutcome::Invalid => "invalid",
            HandshakeOutcome::Replay => "replay",
            HandshakeOutcome::Timeout => "timeout",
        }
    }
}

/// Why a client is blocked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum BlockCause {
    /// Kept exceeding the connection or rate limits.
    Violations = 0,
    /// Repeated failed handshakes: a scanner or an active prober.
    Scanner = 1,
    /// Replayed a recorded handshake.
    Replay = 2,
    /// Kept opening connections that never complete a handshake.
    Slowloris = 3,
    /// Blocked by the operator.
    Manual = 4,
    /// Blocked by a shared decision (for example CrowdSec).
    External = 5,
}

impl BlockCause {
    pub(crate) fn from_bits(b: u8) -> Option<BlockCause> {
        Some(match b {
            0 => BlockCause::Violations,
            1 => BlockCause::Scanner,
            2 => BlockCause::Replay,
            3 => BlockCause::Slowloris,
            4 => BlockCause::Manual,
            5 => BlockCause::External,
            _ => return None,
        })
    }

    /// A stable snake_case name, for logs and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            BlockCause::Violations => "violations",
            BlockCause::Scanner => "scanner",
            BlockCause::Replay => "replay",
            BlockCause::Slowloris => "slowloris",
            BlockCause::Manual => "manual",
            BlockCause::External => "external",
        }
    }

    /// Whether the operator or an outside source (not the engine) set it.
    pub fn is_manual(self) -> bool {
        matches!(self, BlockCause::Manual | BlockCause::External)
    }
}

/// Why a block ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum UnblockCause {
    /// Its time ran out.
    Expired,
    /// The operator lifted it.
    Manual,
}

/// Something worth logging, counting, persisting or acting on. Drained with
/// [`crate::SecurityManager::poll_event`] after every handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Event {
    /// A client was blocked until `until` (`None`: until unblocked).
    Blocked {
        /// The client.
        client: ClientKey,
        /// Why.
        cause: BlockCause,
        /// When the block ends, on the runtime's clock.
        until: Option<Instant>,
        /// How many automatic blocks this client has earned (escalation).
        offences: u8,
    },
    /// A block ended.
    Unblocked {
        /// The client.
        client: ClientKey,
        /// Why.
        cause: UnblockCause,
    },
    /// A client crossed the failed-handshake threshold (scanner or prober).
    ScannerDetected {
        /// The client.
        client: ClientKey,
    },
    /// A client replayed a recorded handshake.
    ReplayDetected {
        /// The client.
        client: ClientKey,
    },
    /// A client crossed the handshake-timeout threshold (slowloris).
    SlowlorisDetected {
        /// The client.
        client: ClientKey,
    },
    /// The connection did not complete its handshake in time: close it.
    HandshakeTimeout {
        /// The connection to close.
        connection: ConnectionId,
    },
    /// The global rate of new connections crossed the attack threshold; the
    /// per-client limits are tightened.
    UnderAttack {
        /// New connections per second when the mode switched on.
        rate_per_second: u32,
    },
    /// The rate stayed below the exit threshold long enough; limits are back.
    AttackOver,
    /// The client table is full of clients that cannot be evicted; new
    /// clients are being refused. Emitted once per episode.
    ClientTableFull,
    /// The network table is full of networks with live connections; new
    /// networks are being refused. Emitted once per episode.
    NetworkTableFull,
    /// A presented certificate chain matched no unexpired pin.
    PinMismatch,
}
