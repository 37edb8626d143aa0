//! The learning table: which port a MAC address was last seen on (sans-IO).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::port::PortId;

/// An Ethernet MAC address.
pub type Mac = [u8; 6];

/// Returns whether a MAC address is a group (broadcast or multicast) address.
pub fn is_group(mac: &Mac) -> bool {
    mac[0] & 1 == 1
}

/// A bounded MAC learning table with ageing.
///
/// Time is passed in by the caller, so the table is deterministic under test.
#[derive(Debug, Clone)]
pub struct MacTable {
    entries: HashMap<Mac, (PortId, Instant)>,
    capacity: usize,
    max_age: Duration,
}

impl MacTable {
    /// A table holding at most `capacity` addresses, each forgotten `max_age` after it
    /// was last seen.
    pub fn new(capacity: usize, max_age: Duration) -> Self {
        MacTable {
            entries: HashMap::with_capacity(capacity.min(4096)),
            capacity,
            max_age,
        }
    }

    /// Records that `mac` was seen on `port` at `now`. Group addresses are never
    /// learned. When the table is full, stale entries are dropped first; if it is still
    /// full, the address is not learned (frames to it are flooded, as on a real switch).
    pub fn learn(&mut self, mac: Mac, port: PortId, now: Instant) {
        if is_group(&mac) {
            return;
        }
        if let Some(entry) = self.entries.get_mut(&mac) {
            *entry = (port, now);
            return;
        }
        if self.entries.len() >= self.capacity {
            self.expire(now);
            if self.entries.len() >= self.capacity {
                return;
            }
        }
        self.entries.insert(mac, (port, now));
    }

    /// The port `mac` was last seen on, unless that was longer than the ageing time ago.
    pub fn lookup(&self, mac: &Mac, now: Instant) -> Option<PortId> {
        match self.entries.get(mac) {
            Some(&(port, seen)) if now.saturating_duration_since(seen) < self.max_age => Some(port),
            _ => None,
        }
    }

    /// Drops every entry older than the ageing time.
    pub fn expire(&mut self, now: Instant) {
        let max_age = self.max_age;
        self.entries
            .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < max_age);
    }

    /// Forgets every address learned on `port` (the port went away).
    pub fn forget_port(&mut self, port: PortId) {
        self.entries.retain(|_, (p, _)| *p != port);
    }

    /// Addresses currently learned on `port` (stale ones included until expired).
    pub fn macs_on(&self, port: PortId) -> Vec<Mac> {
        let mut v: Vec<Mac> = self
            .entries
            .iter()
            .filter(|(_, (p, _))| *p == port)
            .map(|(m, _)| *m)
            .collect();
        v.sort_unstable();
        v
    }

    /// Number of entries (stale ones included until expired).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap as Model;

    #[derive(Debug, Clone)]
    enum Op {
        Learn(u8, u32),
        Advance(u64),
        Forget(u32),
        Expire,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..12, 1u32..5).prop_map(|(m, p)| Op::Learn(m, p)),
            2 => (0u64..2000).prop_map(Op::Advance),
            1 => (1u32..5).prop_map(Op::Forget),
            1 => Just(Op::Expire),
        ]
    }

    fn mac(i: u8) -> Mac {
        // Odd i gives a group address: those must never be learned.
        [if i % 5 == 4 { 1 } else { 2 }, 0, 0, 0, 0, i]
    }

    proptest! {
        /// The table agrees with a simple model: last port seen within the ageing time,
        /// never a group address, never more than `capacity` entries.
        #[test]
        fn behaves_like_model(ops in proptest::collection::vec(op(), 0..200), cap in 1usize..16) {
            let start = Instant::now();
            let age = Duration::from_millis(1000);
            let mut table = MacTable::new(cap, age);
            let mut model: Model<Mac, (PortId, u64)> = Model::new();
            let mut t = 0u64;
            for op in ops {
                let now = start + Duration::from_millis(t);
                match op {
                    Op::Learn(m, p) => {
                        let m = mac(m);
                        table.learn(m, PortId(p), now);
                        if !is_group(&m) {
                            if model.contains_key(&m) {
                                model.insert(m, (PortId(p), t));
                            } else {
                                if model.len() >= cap {
                                    model.retain(|_, (_, s)| t - *s < 1000);
                                }
                                if model.len() < cap {
                                    model.insert(m, (PortId(p), t));
                                }
                            }
                        }
                    }
                    Op::Advance(d) => t += d,
                    Op::Forget(p) => {
                        table.forget_port(PortId(p));
                        model.retain(|_, (q, _)| *q != PortId(p));
                    }
                    Op::Expire => {
                        table.expire(now);
                        model.retain(|_, (_, s)| t - *s < 1000);
                    }
                }
                let now = start + Duration::from_millis(t);
                prop_assert!(table.len() <= cap);
                for i in 0..12 {
                    let m = mac(i);
                    let want = model.get(&m).filter(|(_, s)| t - *s < 1000).map(|(p, _)| *p);
                    prop_assert_eq!(table.lookup(&m, now), want);
                    if is_group(&m) {
                        prop_assert_eq!(table.lookup(&m, now), None);
                    }
                }
            }
        }
    }

    #[test]
    fn entries_age_out() {
        let t0 = Instant::now();
        let mut table = MacTable::new(8, Duration::from_secs(300));
        table.learn([2, 0, 0, 0, 0, 1], PortId(3), t0);
        assert_eq!(table.lookup(&[2, 0, 0, 0, 0, 1], t0), Some(PortId(3)));
        let later = t0 + Duration::from_secs(301);
        assert_eq!(table.lookup(&[2, 0, 0, 0, 0, 1], later), None);
        table.expire(later);
        assert!(table.is_empty());
    }
}
