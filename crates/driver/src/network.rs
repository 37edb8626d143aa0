//! What NixOS lacks: link faults on a machine's switch ports and on whole
//! VLANs, partitions, and pcap capture into the output directory.

use std::path::PathBuf;
use std::time::Duration;

use vmrig_vde_net::{PortId, Switch};

use crate::driver::VLan;
use crate::error::{Error, Result};
use crate::machine::Machine;

impl Machine {
    fn switch(&self, vlan: u8) -> Result<&Switch> {
        self.config()
            .switches
            .iter()
            .find(|(nr, _)| *nr == vlan)
            .map(|(_, s)| s.as_ref())
            .ok_or_else(|| self.assertion(format!("there is no VLAN {vlan} in this run")))
    }

    /// This machine's port on VLAN `vlan`'s switch: its vhost-user port, or
    /// the VDE port QEMU opened (libvdeplug sends `pid=<pid>` in its
    /// description; start scripts `exec` QEMU), else the port that learned
    /// the NIC's MAC address.
    pub fn vlan_port(&self, vlan: u8) -> Result<PortId> {
        let switch = self.switch(vlan)?;
        if let Some(p) = self
            .config()
            .vhost_user_ports
            .iter()
            .find(|p| p.vlan == vlan)
        {
            return Ok(p.port);
        }
        let pid = self
            .pid()
            .ok_or_else(|| self.assertion("the machine is not running"))?;
        let ports = switch.ports();
        let by_pid = format!("pid={pid}");
        if let Some(p) = ports
            .iter()
            .find(|p| p.description.split_whitespace().any(|w| w == by_pid))
        {
            return Ok(p.id);
        }
        let macs = self.nic_macs()?;
        let mac = macs
            .iter()
            .find(|(netdev, _)| netdev == &format!("vlan{vlan}"))
            .map(|(_, mac)| *mac)
            .ok_or_else(|| {
                self.assertion(format!(
                    "no NIC on VLAN {vlan} (no netdev `vlan{vlan}` in `info network`)"
                ))
            })?;
        ports
            .iter()
            .find(|p| p.macs.contains(&mac))
            .map(|p| p.id)
            .ok_or_else(|| {
                self.assertion(format!(
                    "no port of VLAN {vlan}'s switch belongs to this machine yet"
                ))
            })
    }

    /// NIC MAC addresses by netdev id, from HMP `info network`.
    fn nic_macs(&self) -> Result<Vec<(String, [u8; 6])>> {
        Ok(parse_info_network(
            &self.send_monitor_command("info network")?,
        ))
    }

    /// Plugs (true) or unplugs (false) this machine's port on VLAN `vlan` at the switch.
    pub fn set_vlan_link(&self, vlan: u8, up: bool) -> Result<()> {
        let port = self.vlan_port(vlan)?;
        self.switch(vlan)?
            .set_port_link(port, up)
            .map_err(|e| self.machine_error(e.to_string()))
    }

    /// Drops `percent` of the frames to and from this machine on VLAN `vlan`.
    pub fn set_loss(&self, vlan: u8, percent: f64) -> Result<()> {
        let port = self.vlan_port(vlan)?;
        self.switch(vlan)?
            .set_port_loss(port, percent)
            .map_err(|e| self.assertion(e.to_string()))
    }

    /// Delays frames to and from this machine on VLAN `vlan` by `delay` ± `jitter`.
    pub fn set_delay(&self, vlan: u8, delay: Duration, jitter: Duration) -> Result<()> {
        let port = self.vlan_port(vlan)?;
        self.switch(vlan)?
            .set_port_delay(port, delay, jitter)
            .map_err(|e| self.assertion(e.to_string()))
    }
}

impl VLan {
    /// Splits the VLAN: machines in different groups cannot reach each other;
    /// machines in no group reach nobody.
    pub fn partition(&self, groups: &[Vec<&Machine>]) -> Result<()> {
        let mut ports = Vec::new();
        for group in groups {
            ports.push(
                group
                    .iter()
                    .map(|m| m.vlan_port(self.nr()))
                    .collect::<Result<Vec<_>>>()?,
            );
        }
        self.switch().partition(&ports);
        Ok(())
    }

    /// Ends a partition.
    pub fn heal(&self) {
        self.switch().heal();
    }

    /// Link down/up for the whole VLAN.
    pub fn set_link(&self, up: bool) -> Result<()> {
        self.switch()
            .set_vlan_link(up)
            .map_err(|e| Error::Setup(e.to_string()))
    }

    /// Loss for every frame on the VLAN.
    pub fn set_loss(&self, percent: f64) -> Result<()> {
        self.switch()
            .set_vlan_loss(percent)
            .map_err(|e| Error::Setup(e.to_string()))
    }

    /// Delay for every frame on the VLAN.
    pub fn set_delay(&self, delay: Duration, jitter: Duration) -> Result<()> {
        self.switch()
            .set_vlan_delay(delay, jitter)
            .map_err(|e| Error::Setup(e.to_string()))
    }

    /// Starts writing every frame to `OUT/<name>` (default `vlan<n>.pcap`).
    pub fn start_capture(&self, name: Option<&str>) -> Result<PathBuf> {
        let path = self
            .out_dir()
            .join(name.map_or_else(|| format!("vlan{}.pcap", self.nr()), str::to_owned));
        self.switch().start_capture(&path).map_err(|e| {
            Error::Setup(format!(
                "VLAN {}: cannot capture to {}: {e}",
                self.nr(),
                path.display()
            ))
        })?;
        Ok(path)
    }

    /// Stops the capture; returns the file written.
    pub fn stop_capture(&self) -> Result<Option<PathBuf>> {
        self.switch()
            .stop_capture()
            .map_err(|e| Error::Setup(e.to_string()))
    }
}

/// `(netdev id, MAC)` for each NIC in HMP `info network` output, whose NIC
/// lines (`virtio-net-pci.1: index=0,type=nic,...,macaddr=52:54:...`) are
/// followed by their peer (` \ vlan1: index=0,type=vde,...`).
pub fn parse_info_network(text: &str) -> Vec<(String, [u8; 6])> {
    let mut out = Vec::new();
    let mut mac: Option<[u8; 6]> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("\\ ") {
            if let (Some(m), Some((id, _))) = (mac.take(), rest.split_once(':')) {
                out.push((id.trim().to_owned(), m));
            }
        } else {
            mac = line
                .split(',')
                .find_map(|kv| kv.trim().strip_prefix("macaddr="))
                .and_then(parse_mac);
        }
    }
    out
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_network() {
        let text = "virtio-net-pci.0: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:34:56\r\n \\ user.0: index=0,type=user,net=10.0.2.0,restrict=off\r\nvirtio-net-pci.1: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:01:02\r\n \\ vlan1: index=0,type=vde,sock=/tmp/x/vde1.ctl,fd=12\r\n";
        assert_eq!(
            parse_info_network(text),
            vec![
                ("user.0".to_owned(), [0x52, 0x54, 0, 0x12, 0x34, 0x56]),
                ("vlan1".to_owned(), [0x52, 0x54, 0, 0x12, 1, 2]),
            ]
        );
        assert_eq!(parse_mac("52:54:00:12:01"), None);
    }
}
