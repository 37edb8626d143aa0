//! The first VLAN NIC's link over QMP (NixOS's `block`/`unblock`).

use vmrig_qmp::SetLink;

use super::Machine;
use crate::error::Result;

impl Machine {
    /// Unplugs (false) or plugs (true) the first VLAN NIC (`virtio-net-pci.1`,
    /// after the user-mode NIC), as NixOS's `block`/`unblock` do.
    pub fn set_link(&self, up: bool) -> Result<()> {
        self.forgo_snapshot("a link change");
        self.block(async {
            let running = self.inner.running.lock().await;
            let r = running
                .as_ref()
                .ok_or_else(|| self.machine_error("set_link: the machine is not running"))?;
            r.qmp
                .execute(SetLink {
                    name: "virtio-net-pci.1".into(),
                    up,
                })
                .await
                .map(drop)
                .map_err(|e| self.machine_error(format!("set_link virtio-net-pci.1: {e}")))
        })
    }

    /// NixOS's `block`: the first VLAN NIC's cable out.
    pub fn block_network(&self) -> Result<()> {
        self.set_link(false)
    }

    /// NixOS's `unblock`.
    pub fn unblock_network(&self) -> Result<()> {
        self.set_link(true)
    }
}
