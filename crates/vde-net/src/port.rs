//! Port identities, counters and link faults.

use std::fmt;
use std::time::Duration;

/// A switch port number (1-based, like vde_switch's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortId(pub u32);

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Per-port traffic counters, as seen from the switch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames received from the port's client.
    pub rx_frames: u64,
    /// Bytes received from the port's client.
    pub rx_bytes: u64,
    /// Frames sent to the port's client.
    pub tx_frames: u64,
    /// Bytes sent to the port's client.
    pub tx_bytes: u64,
    /// Frames dropped on their way in or out of this port (link down, loss, partition,
    /// runt frame, full client queue, full delay queue).
    pub drops: u64,
    /// Frames to this port that a delay fault would have held back but the delay queue
    /// was full (`SwitchOptions::max_delayed_bytes`); also counted in `drops`.
    pub delay_drops: u64,
}

/// Faults applied to a port, or to the whole switch (= the VLAN).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkFaults {
    /// Whether the link passes frames at all.
    pub up: bool,
    /// Percentage of frames dropped at random (0-100).
    pub loss_percent: f64,
    /// Fixed delay added to every frame.
    pub delay: Duration,
    /// Extra random delay, uniform in `0..=jitter`.
    pub jitter: Duration,
}

impl Default for LinkFaults {
    fn default() -> Self {
        LinkFaults {
            up: true,
            loss_percent: 0.0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
        }
    }
}

impl LinkFaults {
    /// Whether these faults change nothing.
    pub fn is_clean(&self) -> bool {
        *self == LinkFaults::default()
    }
}

/// What the switch knows about one port.
#[derive(Debug, Clone, PartialEq)]
pub struct PortInfo {
    /// The port number.
    pub id: PortId,
    /// The client's description (QEMU and vde_plug send one).
    pub description: String,
    /// Traffic counters.
    pub counters: Counters,
    /// Faults set on this port.
    pub faults: LinkFaults,
    /// MAC addresses learned on this port.
    pub macs: Vec<[u8; 6]>,
}
