//! The test definition, `vmrig.toml`: a TOML mirror of NixOS's `nodes` set.
//!
//! ```toml
//! net = "vde"           # how VLAN NICs attach: "vde" (default) or "vhost-user"
//!
//! [nodes.server]
//! memory = 512          # MiB
//! vlans = [1]           # default [1], as in NixOS
//! packages = ["curl"]   # host programs copied into the guest
//!
//! [nodes.server.users.alice]
//! uid = 1000
//! groups = ["wheel"]
//! packages = ["jq"]     # on alice's PATH only
//!
//! [nodes.server.services.web]
//! command = "nc -lk -p 8080 -e cat"
//! user = "alice"
//!
//! [nodes.server.files."/etc/motd"]
//! text = "hello\n"
//! ```
//!
//! Parsing checks everything that can be checked without the host: unknown
//! keys, hostnames, user names, uids, VLAN ids and addresses. Host programs are
//! resolved later, by the builder.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Default guest memory in MiB.
pub const DEFAULT_MEMORY: u32 = 512;
/// Default size of the scratch disk (`NIX_DISK_IMAGE`) in MiB, as in NixOS.
pub const DEFAULT_DISK_SIZE: u32 = 1024;

/// A whole `vmrig.toml`, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Definition {
    /// Where the definition was read from (for error messages and relative `source` paths).
    #[serde(skip)]
    pub path: PathBuf,
    /// The nodes by name, in sorted order (the order that gives each node its index).
    pub nodes: BTreeMap<String, Node>,
    /// Whether the test may read the screen (NixOS's `enableOCR`; on unless
    /// `enable_ocr = false`).
    pub enable_ocr: bool,
    /// How the nodes' VLAN NICs attach unless a node says otherwise (`net`).
    pub net: Net,
}

/// How a node's VLAN NICs attach to the VLAN switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Net {
    /// `-netdev vde` on the switch's `QEMU_VDE_SOCKET_<n>`: what NixOS's
    /// start scripts do, so the default.
    #[default]
    Vde,
    /// `-netdev vhost-user` on `QEMU_VHOST_USER_SOCKET_<n>`, a vhost-user port
    /// of the same switch: the switch reads and writes the guest's rings in
    /// its (shared) RAM, no datagram per frame. Such a machine is never
    /// snapshotted.
    VhostUser,
}

/// The display device of a node (QEMU's `-vga`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Vga {
    /// QEMU's default, the Bochs VGA (`bochs-drm` in the guest): a text
    /// console, Xorg and GNOME's mutter drive it. The start script names no
    /// device, as NixOS's do.
    #[default]
    Std,
    /// `-vga virtio`, virtio-gpu with a VGA console (`virtio-gpu` in the
    /// guest): what wlroots compositors (sway, cage) need, since they refuse
    /// a GPU without PRIME buffer import, which Bochs lacks.
    Virtio,
}

impl Net {
    /// The value as written in `vmrig.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Net::Vde => "vde",
            Net::VhostUser => "vhost-user",
        }
    }
}

/// How a node's guest is built.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Flavour {
    /// Initramfs guest: host kernel, busybox, bash; boots in seconds; no systemd.
    #[default]
    Busybox,
    /// A debootstrapped Debian with systemd.
    Debian,
}

/// One node (machine) of the test.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    /// The node's name, also its hostname.
    pub name: String,
    /// 1-based position of the name among all node names in sorted order (NixOS's
    /// convention: last byte of the node's MAC and IP addresses).
    pub index: u8,
    /// Guest flavour.
    pub flavour: Flavour,
    /// Memory in MiB.
    pub memory: u32,
    /// Virtual CPUs.
    pub cores: u32,
    /// Size of the scratch disk in MiB.
    pub disk_size: u32,
    /// The node's VLAN attachments in NIC order.
    pub vlans: Vec<VlanAttachment>,
    /// Host programs available to every user.
    pub packages: Vec<String>,
    /// Normal users by name.
    pub users: BTreeMap<String, User>,
    /// Services started at boot, by name.
    pub services: BTreeMap<String, Service>,
    /// Files placed in the guest, by absolute guest path.
    pub files: BTreeMap<String, File>,
    /// Extra kernel command-line parameters.
    pub kernel_params: Vec<String>,
    /// A text console on the screen (NixOS's `virtualisation.graphics`), for
    /// screenshots, OCR and keyboard input; boots the bzImage, which is slower
    /// under TCG than the PVH boot used otherwise.
    pub graphics: bool,
    /// Whether `vmrig run` may save the node when it is first ready and
    /// restore it in later runs instead of booting (default true; false for
    /// tests of the boot itself).
    pub snapshot: bool,
    /// Keep address-space layout randomization under TCG (default false:
    /// the kernel gets `norandmaps`, so programs and libraries sit at the
    /// same addresses in every process and TCG reuses its translations
    /// across processes: commands run 2-5 times faster, boots a third
    /// faster). Under KVM randomization is always on.
    pub aslr: bool,
    /// How the VLAN NICs attach (the test's `net` unless the node sets its own).
    pub net: Net,
    /// The display device.
    pub vga: Vga,
}

/// A node's NIC on one VLAN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VlanAttachment {
    /// VLAN number (1-255).
    pub id: u8,
    /// The node's address on it (`192.168.<id>.<index>` unless set).
    pub address: Ipv4Addr,
    /// Prefix length of `address`.
    pub prefix: u8,
}

impl VlanAttachment {
    /// The NIC's MAC address, `52:54:00:12:<vlan>:<index>` as NixOS writes it.
    pub fn mac(&self, index: u8) -> String {
        format!("52:54:00:12:{:02x}:{:02x}", self.id, index)
    }
}

/// A normal user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    /// Numeric user id.
    pub uid: u32,
    /// Supplementary groups (created when missing).
    pub groups: Vec<String>,
    /// Host programs on this user's PATH only.
    pub packages: Vec<String>,
    /// Home directory.
    pub home: String,
    /// More names on this user's PATH: name -> program it runs (a name on the
    /// user's PATH or an absolute path), e.g. `firefox = "firefox-esr"`.
    pub aliases: BTreeMap<String, String>,
}

/// A service started at boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Shell command (systemd's `ExecStart`).
    pub command: String,
    /// User to run it as (root when absent).
    #[serde(default)]
    pub user: Option<String>,
    /// Units to start after (debian flavour; ordering of services in busybox).
    #[serde(default)]
    pub after: Vec<String>,
    /// Targets that want it (debian flavour).
    #[serde(default = "default_wanted_by")]
    pub wanted_by: Vec<String>,
}

fn default_wanted_by() -> Vec<String> {
    vec!["multi-user.target".to_owned()]
}

/// A file placed in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct File {
    /// Where the content comes from.
    pub content: FileContent,
    /// Permission bits.
    pub mode: u32,
}

/// The content of a [`File`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum FileContent {
    /// Inline text.
    Text(String),
    /// A host file (relative paths are relative to the definition's directory).
    Source(PathBuf),
}

// ---- raw, as written in TOML ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefinition {
    // None: a driver-only test (as NixOS allows `nodes = { }`).
    #[serde(default)]
    nodes: BTreeMap<String, toml::Value>,
    #[serde(default)]
    enable_ocr: Option<bool>,
    #[serde(default)]
    net: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    #[serde(default)]
    flavour: Flavour,
    #[serde(default)]
    memory: Option<u32>,
    #[serde(default)]
    cores: Option<u32>,
    #[serde(default)]
    disk_size: Option<u32>,
    #[serde(default)]
    vlans: Option<Vec<RawVlan>>,
    #[serde(default)]
    packages: Vec<String>,
    #[serde(default)]
    users: BTreeMap<String, RawUser>,
    #[serde(default)]
    services: BTreeMap<String, Service>,
    #[serde(default)]
    files: BTreeMap<String, RawFile>,
    #[serde(default)]
    kernel_params: Vec<String>,
    #[serde(default)]
    graphics: bool,
    #[serde(default = "yes")]
    snapshot: bool,
    #[serde(default)]
    aslr: bool,
    #[serde(default)]
    net: Option<Net>,
    #[serde(default)]
    vga: Vga,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawVlan {
    Id(i64),
    Full(RawVlanFull),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVlanFull {
    id: i64,
    #[serde(default)]
    address: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    #[serde(default)]
    uid: Option<u32>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    packages: Vec<String>,
    #[serde(default)]
    home: Option<String>,
    #[serde(default)]
    aliases: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawFile {
    Text(String),
    Full(RawFileFull),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFileFull {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    source: Option<PathBuf>,
    #[serde(default)]
    mode: Option<String>,
}

impl Definition {
    /// The nodes that always boot (`snapshot = false`).
    pub fn unsnapshotted(&self) -> Vec<String> {
        self.nodes
            .values()
            .filter(|n| !n.snapshot)
            .map(|n| n.name.clone())
            .collect()
    }

    /// Reads and validates a definition file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates definition text; `path` is used in errors and to
    /// resolve relative `source` files.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let raw: RawDefinition = toml::from_str(text).map_err(|e| Error::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let invalid = |node: Option<&str>, field: &str, message: String| Error::Invalid {
            path: path.to_owned(),
            node: node.map(str::to_owned),
            field: field.to_owned(),
            message,
        };
        if raw.nodes.len() > 254 {
            return Err(invalid(
                None,
                "nodes",
                format!("{} nodes, at most 254 fit in a /24 VLAN", raw.nodes.len()),
            ));
        }
        let net = match raw.net {
            None => Net::default(),
            Some(value) => {
                Net::deserialize(value).map_err(|e| invalid(None, "net", e.message().to_owned()))?
            }
        };
        let mut nodes = BTreeMap::new();
        for (i, (name, value)) in raw.nodes.into_iter().enumerate() {
            let index = u8::try_from(i + 1).expect("at most 254 nodes");
            if let Err(why) = check_hostname(&name) {
                return Err(invalid(Some(&name), "name", why));
            }
            let raw_node: RawNode = serde_path_to_error::deserialize(value).map_err(|e| {
                let field = e.path().to_string();
                let field = if field == "." { String::new() } else { field };
                invalid(Some(&name), &field, e.into_inner().to_string())
            })?;
            let node = Node::from_raw(&name, index, raw_node, net, path)
                .map_err(|(field, message)| invalid(Some(&name), &field, message))?;
            nodes.insert(name, node);
        }
        check_addresses(&nodes)
            .map_err(|(node, field, message)| invalid(Some(&node), &field, message))?;
        Ok(Definition {
            path: path.to_owned(),
            enable_ocr: raw.enable_ocr.unwrap_or(true),
            net,
            nodes,
        })
    }

    /// `/etc/hosts` lines every guest gets: each node's first VLAN address and name.
    pub fn hosts(&self) -> Vec<(Ipv4Addr, String)> {
        self.nodes
            .values()
            .filter_map(|n| n.vlans.first().map(|v| (v.address, n.name.clone())))
            .collect()
    }

    /// All VLAN ids used by any node, sorted.
    pub fn vlans(&self) -> Vec<u8> {
        let set: BTreeSet<u8> = self
            .nodes
            .values()
            .flat_map(|n| n.vlans.iter().map(|v| v.id))
            .collect();
        set.into_iter().collect()
    }
}

type FieldError = (String, String);

impl Node {
    fn from_raw(
        name: &str,
        index: u8,
        raw: RawNode,
        net: Net,
        def_path: &Path,
    ) -> Result<Self, FieldError> {
        let err = |field: &str, msg: String| (field.to_owned(), msg);
        let memory = raw.memory.unwrap_or(DEFAULT_MEMORY);
        if !(64..=1 << 20).contains(&memory) {
            return Err(err(
                "memory",
                format!("{memory} MiB is out of range (64 to 1048576)"),
            ));
        }
        let cores = raw.cores.unwrap_or(1);
        if !(1..=256).contains(&cores) {
            return Err(err("cores", format!("{cores} is out of range (1 to 256)")));
        }
        let disk_size = raw.disk_size.unwrap_or(DEFAULT_DISK_SIZE);
        if disk_size == 0 {
            return Err(err("disk_size", "must be at least 1 MiB".into()));
        }

        let mut vlans = Vec::new();
        for (i, v) in raw
            .vlans
            .unwrap_or_else(|| vec![RawVlan::Id(1)])
            .into_iter()
            .enumerate()
        {
            let field = format!("vlans[{i}]");
            let (id, address) = match v {
                RawVlan::Id(id) => (id, None),
                RawVlan::Full(f) => (f.id, f.address),
            };
            let id = u8::try_from(id)
                .ok()
                .filter(|id| *id >= 1)
                .ok_or_else(|| err(&field, format!("VLAN {id} is out of range (1 to 255)")))?;
            if vlans.iter().any(|a: &VlanAttachment| a.id == id) {
                return Err(err(&field, format!("VLAN {id} is listed twice")));
            }
            let (address, prefix) = match address {
                None => (Ipv4Addr::new(192, 168, id, index), 24),
                Some(text) => {
                    parse_cidr(&text).map_err(|why| err(&format!("{field}.address"), why))?
                }
            };
            vlans.push(VlanAttachment {
                id,
                address,
                prefix,
            });
        }

        let flavour = raw.flavour;
        check_packages(&raw.packages, flavour)
            .map_err(|(i, why)| err(&format!("packages[{i}]"), why))?;

        let mut users = BTreeMap::new();
        let mut next_uid = 1000;
        let mut uids = BTreeSet::new();
        // Explicit uids first, so automatic ones never collide with them.
        for u in raw.users.values() {
            if let Some(uid) = u.uid {
                uids.insert(uid);
            }
        }
        for (uname, u) in raw.users {
            let field = format!("users.{uname}");
            check_user_name(&uname).map_err(|why| err(&field, why))?;
            if uname == "root" {
                return Err(err(
                    &field,
                    "root always exists; list only normal users".into(),
                ));
            }
            let uid = match u.uid {
                Some(0) => return Err(err(&format!("{field}.uid"), "uid 0 is root's".into())),
                Some(uid) => {
                    if users.values().any(|x: &User| x.uid == uid) {
                        return Err(err(
                            &format!("{field}.uid"),
                            format!("uid {uid} is used twice"),
                        ));
                    }
                    uid
                }
                None => {
                    while uids.contains(&next_uid) {
                        next_uid += 1;
                    }
                    uids.insert(next_uid);
                    next_uid
                }
            };
            for (i, g) in u.groups.iter().enumerate() {
                check_user_name(g).map_err(|why| err(&format!("{field}.groups[{i}]"), why))?;
            }
            check_packages(&u.packages, flavour)
                .map_err(|(i, why)| err(&format!("{field}.packages[{i}]"), why))?;
            for (alias, target) in &u.aliases {
                let bad = alias.is_empty()
                    || alias.contains(['/', ' ', '\t', '\n'])
                    || target.is_empty()
                    || target.contains(char::is_whitespace);
                if bad {
                    return Err(err(
                        &format!("{field}.aliases.{alias}"),
                        format!("`{alias} = \"{target}\"` must map a command name to a program name or absolute path"),
                    ));
                }
            }
            let home = u.home.unwrap_or_else(|| format!("/home/{uname}"));
            check_guest_path(&home).map_err(|why| err(&format!("{field}.home"), why))?;
            users.insert(
                uname,
                User {
                    uid,
                    groups: u.groups,
                    packages: u.packages,
                    home,
                    aliases: u.aliases,
                },
            );
        }

        for (sname, s) in &raw.services {
            let field = format!("services.{sname}");
            check_unit_name(sname).map_err(|why| err(&field, why))?;
            if s.command.trim().is_empty() {
                return Err(err(&format!("{field}.command"), "is empty".into()));
            }
            if let Some(user) = &s.user {
                if user != "root" && !users.contains_key(user) {
                    return Err(err(
                        &format!("{field}.user"),
                        format!("user `{user}` is not defined in [nodes.{name}.users]"),
                    ));
                }
            }
        }

        let base = def_path.parent().unwrap_or(Path::new("."));
        let mut files = BTreeMap::new();
        for (fpath, f) in raw.files {
            let field = format!("files.\"{fpath}\"");
            check_guest_path(&fpath).map_err(|why| err(&field, why))?;
            let (content, mode) = match f {
                RawFile::Text(t) => (FileContent::Text(t), None),
                RawFile::Full(full) => {
                    let content = match (full.text, full.source) {
                        (Some(t), None) => FileContent::Text(t),
                        (None, Some(s)) => FileContent::Source(base.join(s)),
                        _ => {
                            return Err(err(
                                &field,
                                "give exactly one of `text` and `source`".into(),
                            ))
                        }
                    };
                    (content, full.mode)
                }
            };
            let mode = match mode {
                None => 0o644,
                Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| {
                        err(
                            &format!("{field}.mode"),
                            format!("`{m}` is not an octal mode like \"0755\""),
                        )
                    })?,
            };
            files.insert(fpath, File { content, mode });
        }

        for (i, p) in raw.kernel_params.iter().enumerate() {
            if p.is_empty()
                || p.chars()
                    .any(|c| c.is_whitespace() || c == '"' || c == '\'')
            {
                return Err(err(
                    &format!("kernel_params[{i}]"),
                    format!("`{p}` must be one word without quotes"),
                ));
            }
        }

        Ok(Node {
            name: name.to_owned(),
            index,
            flavour: raw.flavour,
            memory,
            cores,
            disk_size,
            vlans,
            packages: raw.packages,
            users,
            services: raw.services,
            files,
            kernel_params: raw.kernel_params,
            graphics: raw.graphics,
            snapshot: raw.snapshot,
            aslr: raw.aslr,
            net: raw.net.unwrap_or(net),
            vga: raw.vga,
        })
    }
}

fn check_addresses(nodes: &BTreeMap<String, Node>) -> Result<(), (String, String, String)> {
    let mut seen: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    for node in nodes.values() {
        for (i, v) in node.vlans.iter().enumerate() {
            if let Some(other) = seen.insert(v.address, node.name.clone()) {
                return Err((
                    node.name.clone(),
                    format!("vlans[{i}]"),
                    format!(
                        "address {} on VLAN {} is also node `{other}`'s",
                        v.address, v.id
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u8), String> {
    let (addr, prefix) = text.split_once('/').unwrap_or((text, "24"));
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("`{text}` is not an IPv4 address like \"192.168.1.10/24\""))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| (1..=32).contains(p))
        .ok_or_else(|| format!("`{text}` has a bad prefix length (1 to 32)"))?;
    Ok((addr, prefix))
}

/// RFC 1123 host name label: what `hostname` and `/etc/hosts` accept.
pub fn check_hostname(name: &str) -> Result<(), String> {
    let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if name.is_empty()
        || name.len() > 63
        || !ok_chars
        || name.starts_with('-')
        || name.ends_with('-')
    {
        return Err(format!(
            "`{name}` is not a valid hostname (1-63 letters, digits and '-', not starting or ending with '-')"
        ));
    }
    Ok(())
}

fn check_user_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !first_ok || !rest_ok || name.len() > 32 {
        return Err(format!(
            "`{name}` is not a valid user or group name (lowercase letters, digits, '_' and '-', starting with a letter or '_')"
        ));
    }
    Ok(())
}

fn check_unit_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if !ok {
        return Err(format!(
            "`{name}` is not a valid service name (letters, digits, '-', '_', '.', '@')"
        ));
    }
    Ok(())
}

fn check_guest_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/')
        || path.split('/').any(|c| c == "..")
        || path.contains('\0')
        || path.len() < 2
    {
        return Err(format!(
            "`{path}` must be an absolute guest path without `..`"
        ));
    }
    Ok(())
}

fn check_packages(packages: &[String], flavour: Flavour) -> Result<(), (usize, String)> {
    for (i, p) in packages.iter().enumerate() {
        let bad = match flavour {
            Flavour::Busybox => {
                p.is_empty()
                    || p.contains(char::is_whitespace)
                    || (p.contains('/') && !p.starts_with('/'))
            }
            // Debian package names: lowercase letters, digits, `+-.`, optional `:arch`.
            Flavour::Debian => {
                p.len() < 2
                    || !p.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    || !p
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.:".contains(c))
            }
        };
        if bad {
            return Err((
                i,
                match flavour {
                    Flavour::Busybox => format!("`{p}` must be a program name on the host's PATH (like \"curl\") or an absolute path"),
                    Flavour::Debian => format!("`{p}` is not a Debian package name (like \"postgresql\" or \"firefox-esr\")"),
                },
            ));
        }
        if packages[..i].contains(p) {
            return Err((i, format!("`{p}` is listed twice")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Definition> {
        Definition::parse(text, Path::new("/t/vmrig.toml"))
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults_follow_nixos() {
        let d = parse("[nodes.server]\n[nodes.client]\n").unwrap();
        let client = &d.nodes["client"];
        let server = &d.nodes["server"];
        assert_eq!((client.index, server.index), (1, 2));
        assert_eq!(
            server.vlans,
            vec![VlanAttachment {
                id: 1,
                address: Ipv4Addr::new(192, 168, 1, 2),
                prefix: 24
            }]
        );
        assert_eq!(server.vlans[0].mac(server.index), "52:54:00:12:01:02");
        assert_eq!(server.memory, DEFAULT_MEMORY);
        assert_eq!(server.flavour, Flavour::Busybox);
        assert_eq!(
            d.hosts(),
            vec![
                (Ipv4Addr::new(192, 168, 1, 1), "client".into()),
                (Ipv4Addr::new(192, 168, 1, 2), "server".into())
            ]
        );
    }

    #[test]
    fn no_nodes_is_a_driver_only_test() {
        for text in ["", "nodes = {}"] {
            let d = parse(text).unwrap();
            assert!(d.nodes.is_empty() && d.hosts().is_empty(), "{text:?}");
            assert!(d.enable_ocr, "OCR is on unless turned off");
        }
        assert!(!parse("enable_ocr = false").unwrap().enable_ocr);
        assert!(error("enable_ocr = 1").contains("enable_ocr"));
    }

    #[test]
    fn full_node() {
        let d = parse(
            r#"
            [nodes.machine]
            memory = 256
            cores = 2
            vlans = [2, { id = 12, address = "10.0.0.5/8" }]
            packages = ["curl", "/usr/bin/env"]
            kernel_params = ["quiet"]
            [nodes.machine.users.alice]
            uid = 1001
            groups = ["wheel"]
            packages = ["jq"]
            [nodes.machine.users.bob]
            [nodes.machine.services.web]
            command = "httpd -f"
            user = "alice"
            [nodes.machine.files]
            "/etc/motd" = "hi"
            "/usr/bin/tool" = { source = "tool.sh", mode = "0755" }
            "#,
        )
        .unwrap();
        let m = &d.nodes["machine"];
        assert_eq!(m.vlans[1].address, Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(m.vlans[1].prefix, 8);
        assert_eq!(m.vlans[1].mac(1), "52:54:00:12:0c:01");
        assert_eq!(m.users["alice"].uid, 1001);
        assert_eq!(m.users["bob"].uid, 1000);
        assert_eq!(m.users["bob"].home, "/home/bob");
        assert_eq!(m.services["web"].wanted_by, vec!["multi-user.target"]);
        assert_eq!(
            m.files["/etc/motd"],
            File {
                content: FileContent::Text("hi".into()),
                mode: 0o644
            }
        );
        assert_eq!(
            m.files["/usr/bin/tool"],
            File {
                content: FileContent::Source("/t/tool.sh".into()),
                mode: 0o755
            }
        );
        assert_eq!(d.vlans(), vec![2, 12]);
    }

    #[test]
    fn unknown_key_names_file_node_and_field() {
        let e = error("[nodes.machine]\nmemroy = 512\n");
        assert!(e.contains("/t/vmrig.toml"), "{e}");
        assert!(e.contains("node `machine`"), "{e}");
        assert!(e.contains("memroy"), "{e}");
        let e = error("[nodes.machine.users.alice]\nuid = \"x\"\n");
        assert!(e.contains("users.alice.uid"), "{e}");
        let e = error("nodez = 1\n");
        assert!(e.contains("nodez") && e.contains("/t/vmrig.toml"), "{e}");
    }

    #[test]
    fn syntax_error_names_line() {
        let e = error("[nodes.machine\n");
        assert!(e.contains("/t/vmrig.toml") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn invalid_values() {
        assert!(error("[nodes.my_machine]").contains("not a valid hostname"));
        assert!(error("[nodes.-x]").contains("not a valid hostname"));
        assert!(error("[nodes.a]\nvlans = [0]").contains("vlans[0]"));
        assert!(error("[nodes.a]\nvlans = [1, 1]").contains("listed twice"));
        assert!(error("[nodes.a]\nvlans = [300]").contains("out of range"));
        assert!(error("[nodes.a]\nmemory = 1").contains("memory"));
        assert!(error("[nodes.a]\npackages = [\"a b\"]").contains("packages[0]"));
        assert!(error("[nodes.a]\npackages = [\"x\", \"x\"]").contains("listed twice"));
        assert!(error("[nodes.a.users.Alice]").contains("users.Alice"));
        assert!(error("[nodes.a.users.root]").contains("root always exists"));
        assert!(error("[nodes.a.users.x]\nuid = 0").contains("uid 0"));
        assert!(
            error("[nodes.a.users.x]\nuid = 5\n[nodes.a.users.y]\nuid = 5").contains("used twice")
        );
        assert!(
            error("[nodes.a.services.s]\ncommand = \"x\"\nuser = \"nobody\"")
                .contains("services.s.user")
        );
        assert!(error("[nodes.a.files]\n\"rel\" = \"x\"").contains("absolute guest path"));
        assert!(error("[nodes.a.files.\"/x\"]\nmode = \"999\"\ntext=\"\"").contains("octal"));
        assert!(error("[nodes.a.files.\"/x\"]\nmode = \"644\"").contains("exactly one"));
        assert!(error("[nodes.a]\nkernel_params = [\"a b\"]").contains("kernel_params[0]"));
    }

    #[test]
    fn duplicate_addresses_are_rejected() {
        let e = error("[nodes.a]\nvlans = [{ id = 1, address = \"192.168.1.2\" }]\n[nodes.b]\n");
        assert!(e.contains("192.168.1.2") && e.contains("node `a`"), "{e}");
    }

    #[test]
    fn net_is_vde_unless_the_test_or_the_node_says_otherwise() {
        let d = parse("[nodes.a]\n[nodes.b]\nnet = \"vhost-user\"\n").unwrap();
        assert_eq!(d.net, Net::Vde);
        assert_eq!(
            (d.nodes["a"].net, d.nodes["b"].net),
            (Net::Vde, Net::VhostUser)
        );
        let d = parse("net = \"vhost-user\"\n[nodes.a]\n[nodes.b]\nnet = \"vde\"\n").unwrap();
        assert_eq!(
            (d.nodes["a"].net, d.nodes["b"].net),
            (Net::VhostUser, Net::Vde)
        );
        // The test script sees it in `nodes`, as written.
        let json = serde_json::to_value(&d.nodes).unwrap();
        assert_eq!(json["a"]["net"], "vhost-user");
    }

    #[test]
    fn unknown_net_names_file_node_and_choices() {
        let e = error("[nodes.a]\n[nodes.b]\nnet = \"vhostuser\"\n");
        assert!(
            e.starts_with("/t/vmrig.toml: node `b`: net: ") && e.contains("`vhostuser`"),
            "{e}"
        );
        assert!(e.contains("`vde`") && e.contains("`vhost-user`"), "{e}");
        let e = error("net = \"tap\"\n[nodes.a]\n");
        assert!(
            e.starts_with("/t/vmrig.toml: net: ") && e.contains("`tap`"),
            "{e}"
        );
        assert!(e.contains("`vhost-user`"), "{e}");
        assert!(error("[nodes.a]\nnet = 1\n").contains("node `a`: net: "));
    }

    #[test]
    fn vga_is_std_unless_a_node_asks_for_virtio() {
        let d = parse("[nodes.a]\n[nodes.b]\nvga = \"virtio\"\n").unwrap();
        assert_eq!(
            (d.nodes["a"].vga, d.nodes["b"].vga),
            (Vga::Std, Vga::Virtio)
        );
        let e = error("[nodes.a]\nvga = \"cirrus\"\n");
        assert!(
            e.contains("node `a`") && e.contains("vga") && e.contains("`cirrus`"),
            "{e}"
        );
    }

    #[test]
    fn explicit_uids_win_over_automatic_ones() {
        let d = parse("[nodes.a.users.x]\n[nodes.a.users.y]\nuid = 1000\n").unwrap();
        assert_eq!(d.nodes["a"].users["y"].uid, 1000);
        assert_eq!(d.nodes["a"].users["x"].uid, 1001);
    }
}
