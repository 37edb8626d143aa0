//! The forwarding core: learning, flooding, hub mode, faults, counters (sans-IO).
//!
//! [`SwitchCore::forward`] decides, for one frame from one port, which ports get it and
//! after what delay. It does no I/O and reads no clock: the caller passes the time and
//! the random source, which makes it deterministic under test.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::error::{Error, Result};
use crate::mac_table::{is_group, Mac, MacTable};
use crate::port::{Counters, LinkFaults, PortId, PortInfo};

/// Switch settings fixed at creation.
#[derive(Debug, Clone)]
pub struct SwitchConfig {
    /// Maximum number of ports (vde_switch's default is 32).
    pub max_ports: u32,
    /// Hub mode: every frame goes to every other port, nothing is learned.
    pub hub: bool,
    /// How long a learned MAC address is kept without traffic from it.
    pub mac_ageing: Duration,
    /// Maximum number of learned MAC addresses.
    pub mac_capacity: usize,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            max_ports: 64,
            hub: false,
            mac_ageing: Duration::from_secs(300),
            mac_capacity: 4096,
        }
    }
}

/// One copy of a frame to deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Destination port.
    pub port: PortId,
    /// How long to hold the frame before sending it (zero: now).
    pub delay: Duration,
}

#[derive(Debug, Clone)]
struct Port {
    description: String,
    counters: Counters,
    faults: LinkFaults,
}

/// The switch's state: ports, MAC table, faults and partition.
#[derive(Debug, Clone)]
pub struct SwitchCore {
    config: SwitchConfig,
    ports: Vec<Option<Port>>,
    macs: MacTable,
    vlan: LinkFaults,
    partition: Option<HashMap<PortId, usize>>,
    any_faults: bool,
}

/// Ethernet header: destination, source, type.
const ETH_HEADER: usize = 14;

impl SwitchCore {
    /// An empty switch.
    pub fn new(config: SwitchConfig) -> Self {
        SwitchCore {
            ports: vec![None; config.max_ports as usize + 1],
            macs: MacTable::new(config.mac_capacity, config.mac_ageing),
            config,
            vlan: LinkFaults::default(),
            partition: None,
            any_faults: false,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SwitchConfig {
        &self.config
    }

    /// Allocates a port: `wish` a given number, or the lowest free one.
    pub fn add_port(&mut self, wish: Option<u32>, description: &str) -> Result<PortId> {
        let n = match wish {
            Some(n) => {
                if n == 0 || n > self.config.max_ports || self.ports[n as usize].is_some() {
                    return Err(Error::PortUnavailable(n));
                }
                n
            }
            None => (1..=self.config.max_ports)
                .find(|&n| self.ports[n as usize].is_none())
                .ok_or(Error::PortsExhausted(self.config.max_ports as usize))?,
        };
        self.ports[n as usize] = Some(Port {
            description: description.to_owned(),
            counters: Counters::default(),
            faults: LinkFaults::default(),
        });
        self.recompute_faults();
        Ok(PortId(n))
    }

    /// Removes a port and forgets its addresses.
    pub fn remove_port(&mut self, port: PortId) {
        if let Some(slot) = self.ports.get_mut(port.0 as usize) {
            *slot = None;
        }
        self.macs.forget_port(port);
    }

    /// Forgets the addresses learned on a port whose guest went away (a vhost-user
    /// port outlives its QEMU): frames for them flood again until relearned.
    pub fn forget_macs(&mut self, port: PortId) {
        self.macs.forget_port(port);
    }

    /// Counts `n` frames received on `port` that were dropped before forwarding because
    /// they were malformed (a guest's bad descriptor chains).
    pub fn note_bad_ingress(&mut self, port: PortId, n: u64) {
        if let Ok(p) = self.port_mut(port) {
            p.counters.rx_frames += n;
            p.counters.drops += n;
        }
    }

    fn port_mut(&mut self, port: PortId) -> Result<&mut Port> {
        self.ports
            .get_mut(port.0 as usize)
            .and_then(Option::as_mut)
            .ok_or(Error::NoSuchPort(port.0))
    }

    /// The ports in use, in order.
    pub fn ports(&self) -> Vec<PortInfo> {
        self.ports
            .iter()
            .enumerate()
            .filter_map(|(n, p)| {
                let p = p.as_ref()?;
                let id = PortId(n as u32);
                Some(PortInfo {
                    id,
                    description: p.description.clone(),
                    counters: p.counters,
                    faults: p.faults,
                    macs: self.macs.macs_on(id),
                })
            })
            .collect()
    }

    /// The port a MAC address was learned on.
    pub fn port_of(&self, mac: &Mac, now: Instant) -> Option<PortId> {
        self.macs.lookup(mac, now)
    }

    /// Sets the faults of one port.
    pub fn set_port_faults(&mut self, port: PortId, faults: LinkFaults) -> Result<()> {
        check_loss(faults.loss_percent)?;
        self.port_mut(port)?.faults = faults;
        self.recompute_faults();
        Ok(())
    }

    /// The faults of one port.
    pub fn port_faults(&self, port: PortId) -> Result<LinkFaults> {
        self.ports
            .get(port.0 as usize)
            .and_then(Option::as_ref)
            .map(|p| p.faults)
            .ok_or(Error::NoSuchPort(port.0))
    }

    /// Sets the faults of the whole switch (one switch is one VLAN).
    pub fn set_vlan_faults(&mut self, faults: LinkFaults) -> Result<()> {
        check_loss(faults.loss_percent)?;
        self.vlan = faults;
        self.recompute_faults();
        Ok(())
    }

    /// The faults of the whole switch.
    pub fn vlan_faults(&self) -> LinkFaults {
        self.vlan
    }

    /// Splits the ports into groups that cannot reach each other. Ports in no group
    /// form one more group together. An empty list heals the partition.
    pub fn set_partition(&mut self, groups: &[Vec<PortId>]) {
        if groups.is_empty() {
            self.partition = None;
        } else {
            let mut map = HashMap::new();
            for (i, group) in groups.iter().enumerate() {
                for &p in group {
                    map.insert(p, i + 1);
                }
            }
            self.partition = Some(map);
        }
        self.recompute_faults();
    }

    fn recompute_faults(&mut self) {
        self.any_faults = self.partition.is_some()
            || !self.vlan.is_clean()
            || self.ports.iter().flatten().any(|p| !p.faults.is_clean());
    }

    fn group_of(&self, port: PortId) -> usize {
        self.partition
            .as_ref()
            .and_then(|m| m.get(&port).copied())
            .unwrap_or(0)
    }

    /// Drops expired MAC table entries.
    pub fn expire(&mut self, now: Instant) {
        self.macs.expire(now);
    }

    /// Records that a delivery decided by [`forward`](Self::forward) could not be made
    /// (the client's queue was full): moves it from the sent to the dropped count.
    pub fn note_send_failed(&mut self, port: PortId, len: usize) {
        if let Ok(p) = self.port_mut(port) {
            p.counters.tx_frames = p.counters.tx_frames.saturating_sub(1);
            p.counters.tx_bytes = p.counters.tx_bytes.saturating_sub(len as u64);
            p.counters.drops += 1;
        }
    }

    /// Records that a delayed delivery decided by [`forward`](Self::forward) was refused
    /// by the full delay queue: moves it from the sent to the dropped count.
    pub fn note_delay_overflow(&mut self, port: PortId, len: usize) {
        self.note_send_failed(port, len);
        if let Ok(p) = self.port_mut(port) {
            p.counters.delay_drops += 1;
        }
    }

    /// Decides where a frame received on `ingress` goes. Deliveries are appended to
    /// `out` (cleared first). Never delivers to `ingress` itself.
    pub fn forward<R: Rng + ?Sized>(
        &mut self,
        ingress: PortId,
        frame: &[u8],
        now: Instant,
        rng: &mut R,
        out: &mut Vec<Delivery>,
    ) {
        out.clear();
        let len = frame.len() as u64;
        let any_faults = self.any_faults;
        let hub = self.config.hub;
        let Some(Some(port)) = self.ports.get_mut(ingress.0 as usize) else {
            return;
        };
        port.counters.rx_frames += 1;
        port.counters.rx_bytes += len;
        if frame.len() < ETH_HEADER {
            port.counters.drops += 1;
            return;
        }
        let in_faults = port.faults;
        if any_faults && !(in_faults.up && self.vlan.up) {
            port.counters.drops += 1;
            return;
        }
        let mut dst = [0u8; 6];
        dst.copy_from_slice(&frame[0..6]);
        let mut src = [0u8; 6];
        src.copy_from_slice(&frame[6..12]);

        let known = if hub {
            None
        } else {
            self.macs.learn(src, ingress, now);
            if is_group(&dst) {
                None
            } else {
                self.macs.lookup(&dst, now)
            }
        };
        match known {
            Some(target) if target == ingress => {
                // The destination sits behind the sender's own port: filter, never reflect.
            }
            Some(target) => self.deliver(ingress, in_faults, target, len, now, rng, out),
            None => {
                for n in 1..self.ports.len() {
                    let target = PortId(n as u32);
                    if target != ingress && self.ports[n].is_some() {
                        self.deliver(ingress, in_faults, target, len, now, rng, out);
                    }
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn deliver<R: Rng + ?Sized>(
        &mut self,
        ingress: PortId,
        in_faults: LinkFaults,
        target: PortId,
        len: u64,
        _now: Instant,
        rng: &mut R,
        out: &mut Vec<Delivery>,
    ) {
        let any_faults = self.any_faults;
        let vlan = self.vlan;
        let same_side = !any_faults || self.group_of(ingress) == self.group_of(target);
        let Some(Some(port)) = self.ports.get_mut(target.0 as usize) else {
            return;
        };
        let mut delay = Duration::ZERO;
        if any_faults {
            let out_faults = port.faults;
            if !out_faults.up || !same_side {
                port.counters.drops += 1;
                return;
            }
            let pass = (1.0 - in_faults.loss_percent / 100.0)
                * (1.0 - out_faults.loss_percent / 100.0)
                * (1.0 - vlan.loss_percent / 100.0);
            if pass < 1.0 && rng.gen::<f64>() >= pass {
                port.counters.drops += 1;
                return;
            }
            delay = in_faults.delay + out_faults.delay + vlan.delay;
            let jitter = in_faults.jitter + out_faults.jitter + vlan.jitter;
            if !jitter.is_zero() {
                delay += jitter.mul_f64(rng.gen::<f64>());
            }
        }
        port.counters.tx_frames += 1;
        port.counters.tx_bytes += len;
        out.push(Delivery {
            port: target,
            delay,
        });
    }
}

fn check_loss(loss: f64) -> Result<()> {
    if (0.0..=100.0).contains(&loss) {
        Ok(())
    } else {
        Err(Error::BadLoss(loss))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn frame(dst: u8, src: u8) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, dst, 2, 0, 0, 0, 0, src, 0x08, 0x00];
        f.extend_from_slice(&[0u8; 46]);
        f
    }

    const BCAST: u8 = 0xff;

    fn bcast(src: u8) -> Vec<u8> {
        let mut f = frame(0, src);
        f[0..6].fill(0xff);
        f
    }

    fn setup(n: u32, hub: bool) -> (SwitchCore, Vec<PortId>) {
        let mut sw = SwitchCore::new(SwitchConfig {
            max_ports: 8,
            hub,
            ..SwitchConfig::default()
        });
        let ports = (0..n)
            .map(|i| sw.add_port(None, &format!("p{i}")).unwrap())
            .collect();
        (sw, ports)
    }

    fn targets(sw: &mut SwitchCore, from: PortId, f: &[u8]) -> Vec<PortId> {
        let mut out = Vec::new();
        let mut rng = StdRng::seed_from_u64(1);
        sw.forward(from, f, Instant::now(), &mut rng, &mut out);
        out.iter().map(|d| d.port).collect()
    }

    #[test]
    fn floods_then_learns() {
        let (mut sw, p) = setup(3, false);
        assert_eq!(targets(&mut sw, p[0], &frame(2, 1)), vec![p[1], p[2]]);
        assert_eq!(targets(&mut sw, p[1], &frame(1, 2)), vec![p[0]]);
        assert_eq!(targets(&mut sw, p[0], &frame(2, 1)), vec![p[1]]);
        assert_eq!(targets(&mut sw, p[2], &bcast(3)), vec![p[0], p[1]]);
        let _ = BCAST;
    }

    #[test]
    fn never_reflects() {
        let (mut sw, p) = setup(2, false);
        targets(&mut sw, p[0], &frame(9, 1));
        // Destination 1 was learned on p0: a frame from p0 to it goes nowhere.
        assert!(targets(&mut sw, p[0], &frame(1, 1)).is_empty());
        let (mut hub, p) = setup(3, true);
        assert_eq!(targets(&mut hub, p[1], &frame(1, 2)), vec![p[0], p[2]]);
    }

    #[test]
    fn hub_does_not_learn() {
        let (mut sw, p) = setup(3, true);
        targets(&mut sw, p[1], &frame(1, 2));
        assert_eq!(targets(&mut sw, p[0], &frame(2, 1)), vec![p[1], p[2]]);
        assert_eq!(sw.port_of(&[2, 0, 0, 0, 0, 2], Instant::now()), None);
    }

    #[test]
    fn counters_and_runts() {
        let (mut sw, p) = setup(2, false);
        targets(&mut sw, p[0], &frame(2, 1));
        targets(&mut sw, p[0], &[1, 2, 3]);
        let info = sw.ports();
        assert_eq!(info[0].counters.rx_frames, 2);
        assert_eq!(info[0].counters.rx_bytes, 63);
        assert_eq!(info[0].counters.drops, 1);
        assert_eq!(info[1].counters.tx_frames, 1);
        assert_eq!(info[1].counters.tx_bytes, 60);
        sw.note_send_failed(p[1], 60);
        assert_eq!(sw.ports()[1].counters.tx_frames, 0);
        assert_eq!(sw.ports()[1].counters.drops, 1);
    }

    #[test]
    fn link_down_port_and_vlan() {
        let (mut sw, p) = setup(3, false);
        let down = LinkFaults {
            up: false,
            ..LinkFaults::default()
        };
        sw.set_port_faults(p[1], down).unwrap();
        assert_eq!(targets(&mut sw, p[0], &bcast(1)), vec![p[2]]);
        assert!(targets(&mut sw, p[1], &bcast(2)).is_empty());
        sw.set_port_faults(p[1], LinkFaults::default()).unwrap();
        sw.set_vlan_faults(down).unwrap();
        assert!(targets(&mut sw, p[0], &bcast(1)).is_empty());
        sw.set_vlan_faults(LinkFaults::default()).unwrap();
        assert_eq!(targets(&mut sw, p[0], &bcast(1)), vec![p[1], p[2]]);
    }

    #[test]
    fn partition_splits_groups() {
        let (mut sw, p) = setup(4, false);
        sw.set_partition(&[vec![p[0], p[1]], vec![p[2]]]);
        assert_eq!(targets(&mut sw, p[0], &bcast(1)), vec![p[1]]);
        assert!(targets(&mut sw, p[2], &bcast(3)).is_empty());
        // p3 is in no group: alone on its side.
        assert!(targets(&mut sw, p[3], &bcast(4)).is_empty());
        sw.set_partition(&[]);
        assert_eq!(targets(&mut sw, p[2], &bcast(3)).len(), 3);
    }

    #[test]
    fn loss_is_statistical_and_delay_bounded() {
        let (mut sw, p) = setup(2, false);
        sw.set_port_faults(
            p[1],
            LinkFaults {
                loss_percent: 30.0,
                delay: Duration::from_millis(10),
                jitter: Duration::from_millis(5),
                ..LinkFaults::default()
            },
        )
        .unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let mut out = Vec::new();
        let mut passed = 0;
        for _ in 0..10_000 {
            sw.forward(p[0], &bcast(1), Instant::now(), &mut rng, &mut out);
            for d in &out {
                assert!(d.delay >= Duration::from_millis(10));
                assert!(d.delay <= Duration::from_millis(15));
                passed += 1;
            }
        }
        // 7000 expected; a seeded RNG makes this deterministic.
        assert!((6500..7500).contains(&passed), "{passed}");
        assert!(matches!(
            sw.set_port_faults(
                p[0],
                LinkFaults {
                    loss_percent: 101.0,
                    ..LinkFaults::default()
                }
            ),
            Err(Error::BadLoss(_))
        ));
    }

    #[test]
    fn bounded_ports() {
        let mut sw = SwitchCore::new(SwitchConfig {
            max_ports: 2,
            ..SwitchConfig::default()
        });
        sw.add_port(None, "a").unwrap();
        assert!(matches!(
            sw.add_port(Some(1), "b"),
            Err(Error::PortUnavailable(1))
        ));
        sw.add_port(Some(2), "b").unwrap();
        assert!(matches!(
            sw.add_port(None, "c"),
            Err(Error::PortsExhausted(2))
        ));
        sw.remove_port(PortId(1));
        assert_eq!(sw.add_port(None, "d").unwrap(), PortId(1));
    }
}
