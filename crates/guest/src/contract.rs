//! The start-script contract of NixOS's test driver: how a driver names and
//! runs a `run-<name>-vm` script. Both vmrig's driver and this crate's
//! [`harness`](crate::harness) follow it from here.

use std::path::Path;

/// The machine name NixOS derives from a start script: `run-(.+)-vm$`, else `machine`.
pub fn machine_name(script: &Path) -> String {
    let file = script
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    file.strip_prefix("run-")
        .and_then(|rest| rest.strip_suffix("-vm"))
        .filter(|n| !n.is_empty())
        .unwrap_or("machine")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_like_nixos() {
        assert_eq!(machine_name(Path::new("/x/bin/run-server-vm")), "server");
        assert_eq!(machine_name(Path::new("run-my-node-vm")), "my-node");
        assert_eq!(machine_name(Path::new("/x/start")), "machine");
        assert_eq!(machine_name(Path::new("run--vm")), "machine");
    }
}
