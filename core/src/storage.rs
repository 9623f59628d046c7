//! Where the engine's tables live.
//!
//! The caller provides the memory, as smoltcp's socket set does: an appliance
//! puts the tables in a `static` (inline arrays, capacity fixed by const
//! generics), a server puts them on the heap (boxed slices, because a struct
//! of several megabytes cannot be built on the heap without first passing
//! through the stack in safe Rust), and tests borrow slices. The engine only
//! sees slices, so its code is the same in all three cases and every table's
//! size is a number known before the first packet arrives.

use crate::cidr::CidrEntry;
use crate::table::{ClientSlot, ConnSlot, NetworkSlot};

/// The kinds of memory a [`crate::SecurityManager`] is built from.
pub trait Storage {
    /// Per-client state, one slot per tracked client.
    type Clients: AsRef<[ClientSlot]> + AsMut<[ClientSlot]>;
    /// Hash buckets of the client table (heads of chains, one per slot).
    type Buckets: AsRef<[u32]> + AsMut<[u32]>;
    /// One slot per concurrent connection.
    type Connections: AsRef<[ConnSlot]> + AsMut<[ConnSlot]>;
    /// Prefixes of the allowlist or the denylist.
    type Prefixes: AsRef<[CidrEntry]> + AsMut<[CidrEntry]>;
    /// Per-network state (the network tier), one slot per tracked network.
    type Networks: AsRef<[NetworkSlot]> + AsMut<[NetworkSlot]>;
    /// Hash buckets of the network table (one per network slot).
    type NetworkBuckets: AsRef<[u32]> + AsMut<[u32]>;
}

/// The tables themselves, handed to [`crate::SecurityManager::new`].
pub struct Tables<S: Storage> {
    /// Per-client state; its length is the client capacity.
    pub clients: S::Clients,
    /// Hash buckets; must be as long as `clients`.
    pub buckets: S::Buckets,
    /// Connection slots; its length is the connection capacity.
    pub connections: S::Connections,
    /// Allowlist prefixes.
    pub allow: S::Prefixes,
    /// Denylist prefixes.
    pub deny: S::Prefixes,
    /// Per-network state; its length is the network capacity. As long as
    /// `connections` is enough: each network it holds has a live
    /// connection before it can refuse a new one, so a shorter table would
    /// let that many connections from distinct networks lock out every
    /// other network.
    pub networks: S::Networks,
    /// Hash buckets of the network table; must be as long as `networks`.
    pub network_buckets: S::NetworkBuckets,
}

/// Tables stored inline, with capacities fixed at compile time. Use it in a
/// `static` (appliances) or for small tables in tests. The network table
/// is as long as the connection table unless `NETWORKS` says otherwise.
pub struct Inline<
    const CLIENTS: usize,
    const CONNECTIONS: usize,
    const PREFIXES: usize,
    const NETWORKS: usize = CONNECTIONS,
>;

impl<
        const CLIENTS: usize,
        const CONNECTIONS: usize,
        const PREFIXES: usize,
        const NETWORKS: usize,
    > Storage for Inline<CLIENTS, CONNECTIONS, PREFIXES, NETWORKS>
{
    type Clients = [ClientSlot; CLIENTS];
    type Buckets = [u32; CLIENTS];
    type Connections = [ConnSlot; CONNECTIONS];
    type Prefixes = [CidrEntry; PREFIXES];
    type Networks = [NetworkSlot; NETWORKS];
    type NetworkBuckets = [u32; NETWORKS];
}

impl<
        const CLIENTS: usize,
        const CONNECTIONS: usize,
        const PREFIXES: usize,
        const NETWORKS: usize,
    > Inline<CLIENTS, CONNECTIONS, PREFIXES, NETWORKS>
{
    /// Client capacity.
    pub const CLIENTS: usize = CLIENTS;
    /// Connection capacity.
    pub const CONNECTIONS: usize = CONNECTIONS;
    /// Prefix capacity of each list.
    pub const PREFIXES: usize = PREFIXES;
    /// Network capacity.
    pub const NETWORKS: usize = NETWORKS;

    /// Empty tables. `const` so that an appliance can place them in a
    /// `static` without building them on a small stack first.
    pub const fn tables() -> Tables<Self> {
        Tables {
            clients: [ClientSlot::EMPTY; CLIENTS],
            buckets: [u32::MAX; CLIENTS],
            connections: [ConnSlot::EMPTY; CONNECTIONS],
            allow: [CidrEntry::EMPTY; PREFIXES],
            deny: [CidrEntry::EMPTY; PREFIXES],
            networks: [NetworkSlot::EMPTY; NETWORKS],
            network_buckets: [u32::MAX; NETWORKS],
        }
    }
}

/// The server preset: 65,536 clients, 65,536 concurrent connections, 8,192
/// prefixes per list (FireHOL level1 is about 4,500), 65,536 networks (as
/// many as connections, see [`Tables::networks`]). Too large for a stack:
/// the server runtime allocates the same capacities on the heap.
pub type ServerPreset = Inline<65_536, 65_536, 8_192>;

/// The appliance preset: 1,024 clients, 256 concurrent connections, 256
/// prefixes per list, 256 networks; fits a microcontroller's RAM.
pub type AppliancePreset = Inline<1_024, 256, 256>;

/// Tables borrowed from memory the caller owns for `'a`.
pub struct Borrowed<'a>(core::marker::PhantomData<&'a mut ()>);

impl<'a> Storage for Borrowed<'a> {
    type Clients = &'a mut [ClientSlot];
    type Buckets = &'a mut [u32];
    type Connections = &'a mut [ConnSlot];
    type Prefixes = &'a mut [CidrEntry];
    type Networks = &'a mut [NetworkSlot];
    type NetworkBuckets = &'a mut [u32];
}
