//! The start-script contract of NixOS's test driver: how a driver names a
//! `run-<name>-vm` script, and the QEMU options and environment it runs the
//! script with. vmrig's driver and this crate's [`harness`](crate::harness)
//! both build the command here, so they cannot drift apart.
//!
//! The script is run in the machine's state directory with the environment
//! `TMPDIR=<state>`, `SHARED_DIR=<shared>`, `USE_TMPDIR=1`,
//! `NIX_EFI_VARS=<state>/<name>-efi-vars.fd` and `QEMU_VDE_SOCKET_<n>` per
//! VLAN (vmrig also gives `QEMU_VHOST_USER_SOCKET_<n>` to a script that names
//! it: [`crate::script`]), in its own process group, and gets these options
//! appended:
//!
//! ```text
//! -qmp unix:<state>/qmp,server=on,wait=off -monitor unix:<state>/monitor
//! -chardev socket,id=shell,path=<state>/shell
//! -device virtio-serial -device virtconsole,chardev=shell -device virtio-rng-pci
//! -serial stdio [-no-reboot unless allow_reboot] [-nographic without a display]
//! [-device vmgenid when snapshots are on] [-incoming defer when restoring one]
//! ```
//!
//! The rest of the script's environment (`QEMU_OPTS`, `QEMU_KERNEL_PARAMS`,
//! `QEMU_NET_OPTS`, `NIX_DISK_IMAGE`, ...) is the caller's and passes through
//! unchanged; the scripts this crate writes honour it ([`crate::script`]).
//!
//! ```
//! use std::path::Path;
//! use vmrig_guest::contract::StartContract;
//!
//! let mut run = StartContract::new("server", "/run/vm-state-server", "/run/shared-xchg");
//! run.vde_sockets.push((1, "/run/vde1.ctl".into()));
//! run.graphics = false;
//! let cmd = run.command(Path::new("/nix/store/x/bin/run-server-vm"));
//! let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
//! assert_eq!(args[..2], ["-qmp", "unix:/run/vm-state-server/qmp,server=on,wait=off"]);
//! assert_eq!(args.last().unwrap(), "-nographic");
//! ```

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

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

/// Whether QEMU can open a window here (`DISPLAY` or `WAYLAND_DISPLAY` set):
/// NixOS passes `-nographic` otherwise.
pub fn has_display() -> bool {
    std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some()
}

/// How one machine's start script is run: everything the driver adds to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartContract {
    /// The machine's name (for `NIX_EFI_VARS`).
    pub name: String,
    /// The private state directory: working directory, `TMPDIR`, sockets.
    pub state_dir: PathBuf,
    /// `SHARED_DIR`, which the guest mounts at `/tmp/shared`.
    pub shared_dir: PathBuf,
    /// `QEMU_VDE_SOCKET_<n>`: VLAN number and switch directory.
    pub vde_sockets: Vec<(u8, PathBuf)>,
    /// `QEMU_VHOST_USER_SOCKET_<n>`: VLAN number and the socket of this
    /// machine's vhost-user port on that VLAN's switch (vmrig's own
    /// variable, for start scripts of `net = "vhost-user"` nodes).
    pub vhost_user_sockets: Vec<(u8, PathBuf)>,
    /// Leave out `-no-reboot` (NixOS's `start(allow_reboot=True)`).
    pub allow_reboot: bool,
    /// Leave out `-nographic`; [`StartContract::new`] sets it from [`has_display`].
    pub graphics: bool,
    /// Add `-device vmgenid`: a machine that may be snapshotted gets a new
    /// generation id in each restored copy, which reseeds the guest's RNG.
    pub vmgenid: bool,
    /// Add `-incoming defer`: QEMU waits for a migration stream (a snapshot
    /// restore) given later through QMP's `migrate-incoming`.
    pub incoming: bool,
    /// Guest RAM in a file (`memory-backend-file`), for snapshots that keep
    /// RAM apart from the migration stream.
    pub ram: Option<RamFile>,
}

/// The id of the memory backend [`StartContract::ram`] adds.
pub const RAM_ID: &str = "vmrig-ram";

/// Guest RAM as a file: `-object memory-backend-file` and
/// `-machine memory-backend`, sized as the script's `-m`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamFile {
    /// The guest's memory in MiB (must be the script's `-m`).
    pub mib: u64,
    /// A file to map, or a directory where QEMU makes (and unlinks) one.
    pub path: PathBuf,
    /// `share=on`: the guest writes into the file (a machine to be saved);
    /// `share=off`: a private copy-on-write mapping (a restored machine: the
    /// file never changes and copies of one snapshot share its pages).
    pub shared: bool,
}

impl RamFile {
    /// The `-object` value, path last (see [`StartContract::without_run_paths`]).
    fn object(&self) -> OsString {
        let share = if self.shared { "on" } else { "off" };
        with_path(
            &format!(
                "memory-backend-file,id={RAM_ID},size={}M,share={share},mem-path=",
                self.mib
            ),
            &self.path,
            "",
        )
    }
}

impl StartContract {
    /// The contract for machine `name` with its state and shared directories;
    /// no VLANs, `-no-reboot`, graphics when this host has a display.
    pub fn new(
        name: impl Into<String>,
        state_dir: impl Into<PathBuf>,
        shared_dir: impl Into<PathBuf>,
    ) -> StartContract {
        StartContract {
            name: name.into(),
            state_dir: state_dir.into(),
            shared_dir: shared_dir.into(),
            vde_sockets: Vec::new(),
            vhost_user_sockets: Vec::new(),
            allow_reboot: false,
            graphics: has_display(),
            vmgenid: false,
            incoming: false,
            ram: None,
        }
    }

    /// `<state>/qmp`: QEMU listens, the driver connects.
    pub fn qmp_socket(&self) -> PathBuf {
        self.state_dir.join("qmp")
    }

    /// `<state>/monitor`: the driver listens, QEMU connects (HMP).
    pub fn monitor_socket(&self) -> PathBuf {
        self.state_dir.join("monitor")
    }

    /// `<state>/shell`: the driver listens, QEMU connects the backdoor's
    /// virtconsole to it.
    pub fn shell_socket(&self) -> PathBuf {
        self.state_dir.join("shell")
    }

    /// The QEMU options appended to the script's command line, in order.
    pub fn qemu_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "-qmp".into(),
            with_path("unix:", &self.qmp_socket(), ",server=on,wait=off"),
            "-monitor".into(),
            with_path("unix:", &self.monitor_socket(), ""),
            "-chardev".into(),
            with_path("socket,id=shell,path=", &self.shell_socket(), ""),
        ];
        args.extend(
            [
                "-device",
                "virtio-serial",
                "-device",
                "virtconsole,chardev=shell",
                "-device",
                "virtio-rng-pci",
                "-serial",
                "stdio",
            ]
            .map(OsString::from),
        );
        if !self.allow_reboot {
            args.push("-no-reboot".into());
        }
        if !self.graphics {
            args.push("-nographic".into());
        }
        if let Some(ram) = &self.ram {
            args.extend([
                "-object".into(),
                ram.object(),
                "-machine".into(),
                format!("memory-backend={RAM_ID}").into(),
            ]);
        }
        if self.vmgenid {
            args.extend(["-device", "vmgenid"].map(OsString::from));
        }
        if self.incoming {
            args.extend(["-incoming", "defer"].map(OsString::from));
        }
        args
    }

    /// The variables added to the script's environment.
    pub fn env(&self) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = vec![
            ("TMPDIR".into(), self.state_dir.clone().into()),
            ("SHARED_DIR".into(), self.shared_dir.clone().into()),
            ("USE_TMPDIR".into(), "1".into()),
            (
                "NIX_EFI_VARS".into(),
                self.state_dir
                    .join(format!("{}-efi-vars.fd", self.name))
                    .into(),
            ),
        ];
        for (vlan, sock) in &self.vde_sockets {
            env.push((
                format!("QEMU_VDE_SOCKET_{vlan}").into(),
                sock.clone().into(),
            ));
        }
        for (vlan, sock) in &self.vhost_user_sockets {
            env.push((
                format!("QEMU_VHOST_USER_SOCKET_{vlan}").into(),
                sock.clone().into(),
            ));
        }
        env
    }

    /// `arg` with this run's own paths (state and shared directories, VLAN
    /// sockets) replaced by placeholders: what stays is the same in every run
    /// of the same machine, so a snapshot's key and check can compare it.
    /// The RAM file's path and sharing differ between the saved machine and
    /// its restored copies: they become `@RAM@`.
    pub fn without_run_paths(&self, arg: &str) -> String {
        let ram_prefix = format!("memory-backend-file,id={RAM_ID},");
        if let Some(rest) = arg.strip_prefix(&ram_prefix) {
            let size = rest
                .split(',')
                .find(|p| p.starts_with("size="))
                .unwrap_or("");
            return format!("{ram_prefix}{size},@RAM@");
        }
        let mut paths: Vec<(String, String)> = vec![
            (
                self.state_dir.to_string_lossy().into_owned(),
                "@STATE@".to_owned(),
            ),
            (
                self.shared_dir.to_string_lossy().into_owned(),
                "@SHARED@".to_owned(),
            ),
        ];
        for (vlan, sock) in &self.vde_sockets {
            paths.push((sock.to_string_lossy().into_owned(), format!("@VDE{vlan}@")));
        }
        for (vlan, sock) in &self.vhost_user_sockets {
            paths.push((
                sock.to_string_lossy().into_owned(),
                format!("@VHOST{vlan}@"),
            ));
        }
        // Longest first: one path may be a prefix of another.
        paths.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let mut out = arg.to_owned();
        for (path, placeholder) in paths.iter().filter(|(p, _)| !p.is_empty()) {
            out = out.replace(path.as_str(), placeholder);
        }
        out
    }

    /// `script` with the options and environment of the contract, run in the
    /// state directory, leading its own process group (so that
    /// [`crate::process::kill_group`] reaches QEMU behind any wrapper).
    /// Standard I/O is the caller's to set.
    pub fn command(&self, script: &Path) -> std::process::Command {
        let mut cmd = std::process::Command::new(script);
        cmd.args(self.qemu_args())
            .envs(self.env())
            .current_dir(&self.state_dir)
            .process_group(0);
        cmd
    }
}

/// `prefix` + `path` + `suffix`, keeping non-UTF-8 paths intact.
fn with_path(prefix: &str, path: &Path, suffix: &str) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(path);
    s.push(suffix);
    s
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

    fn contract() -> StartContract {
        let mut c = StartContract::new("server", "/s/vm-state-server", "/s/shared-xchg");
        c.graphics = false;
        c
    }

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter()
            .map(|a| a.into_string().expect("UTF-8"))
            .collect()
    }

    #[test]
    fn appends_the_nixos_options_in_order() {
        assert_eq!(
            strings(contract().qemu_args()).join(" "),
            "-qmp unix:/s/vm-state-server/qmp,server=on,wait=off \
             -monitor unix:/s/vm-state-server/monitor \
             -chardev socket,id=shell,path=/s/vm-state-server/shell \
             -device virtio-serial -device virtconsole,chardev=shell \
             -device virtio-rng-pci -serial stdio -no-reboot -nographic"
        );
    }

    #[test]
    fn reboot_and_display_drop_their_flags() {
        let mut c = contract();
        c.allow_reboot = true;
        c.graphics = true;
        let args = strings(c.qemu_args());
        assert_eq!(args.last().map(String::as_str), Some("stdio"));
        assert!(!args.iter().any(|a| a == "-no-reboot" || a == "-nographic"));
    }

    #[test]
    fn snapshot_flags_come_last() {
        let mut c = contract();
        c.vmgenid = true;
        c.incoming = true;
        let args = strings(c.qemu_args());
        assert_eq!(
            args[args.len() - 4..],
            ["-device", "vmgenid", "-incoming", "defer"]
        );
    }

    #[test]
    fn run_paths_become_placeholders() {
        let mut c = StartContract::new("a", "/r/vm-state-a", "/r/vm-state-a-shared");
        c.vde_sockets = vec![(1, "/r/vde1.ctl".into())];
        c.vhost_user_sockets = vec![(2, "/r/vhost2-a.sock".into())];
        assert_eq!(
            c.without_run_paths("x=/r/vm-state-a-shared,y=/r/vm-state-a/qmp,z=/r/vde1.ctl"),
            "x=@SHARED@,y=@STATE@/qmp,z=@VDE1@"
        );
        assert_eq!(
            c.without_run_paths("socket,id=vhost2,path=/r/vhost2-a.sock"),
            "socket,id=vhost2,path=@VHOST2@"
        );
        assert_eq!(c.without_run_paths("-m"), "-m");
    }

    #[test]
    fn the_ram_file_is_one_placeholder_whatever_its_sharing() {
        let mut c = contract();
        let mut placeholders = Vec::new();
        for (path, shared) in [("/dev/shm", true), ("/cache/snap/mem", false)] {
            c.ram = Some(RamFile {
                mib: 512,
                path: path.into(),
                shared,
            });
            let args = strings(c.qemu_args());
            let i = args.iter().position(|a| a == "-object").unwrap();
            assert_eq!(args[i + 2..i + 4], ["-machine", "memory-backend=vmrig-ram"]);
            assert!(args[i + 1].ends_with(&format!("mem-path={path}")));
            placeholders.push(c.without_run_paths(&args[i + 1]));
        }
        assert_eq!(
            placeholders[0],
            "memory-backend-file,id=vmrig-ram,size=512M,@RAM@"
        );
        assert_eq!(placeholders[0], placeholders[1]);
    }

    #[test]
    fn sets_the_nixos_environment() {
        let mut c = contract();
        c.vde_sockets = vec![(1, "/s/vde1.ctl".into()), (2, "/s/vde2.ctl".into())];
        c.vhost_user_sockets = vec![(2, "/s/vhost2-server.sock".into())];
        let env: Vec<(String, String)> = c
            .env()
            .into_iter()
            .map(|(k, v)| (k.into_string().unwrap(), v.into_string().unwrap()))
            .collect();
        let want = [
            ("TMPDIR", "/s/vm-state-server"),
            ("SHARED_DIR", "/s/shared-xchg"),
            ("USE_TMPDIR", "1"),
            ("NIX_EFI_VARS", "/s/vm-state-server/server-efi-vars.fd"),
            ("QEMU_VDE_SOCKET_1", "/s/vde1.ctl"),
            ("QEMU_VDE_SOCKET_2", "/s/vde2.ctl"),
            ("QEMU_VHOST_USER_SOCKET_2", "/s/vhost2-server.sock"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert_eq!(env, want);
    }

    #[test]
    fn the_command_runs_in_the_state_dir_with_both() {
        let c = contract();
        let cmd = c.command(Path::new("/x/bin/run-server-vm"));
        assert_eq!(cmd.get_program(), "/x/bin/run-server-vm");
        assert_eq!(cmd.get_current_dir(), Some(Path::new("/s/vm-state-server")));
        assert_eq!(cmd.get_args().count(), c.qemu_args().len());
        let env: Vec<_> = cmd.get_envs().collect();
        assert!(env.contains(&("USE_TMPDIR".as_ref(), Some("1".as_ref()))));
        // QEMU_OPTS and the like are not the driver's: they pass through.
        assert!(!env.iter().any(|(k, _)| *k == "QEMU_OPTS"));
    }

    #[test]
    fn non_utf8_paths_are_kept() {
        use std::os::unix::ffi::OsStrExt;
        let dir = std::ffi::OsStr::from_bytes(b"/s/\xff");
        let c = StartContract::new("m", dir, "/s/x");
        let qmp = &c.qemu_args()[1];
        assert_eq!(qmp.as_bytes(), b"unix:/s/\xff/qmp,server=on,wait=off");
    }
}
