//! A node's package lists, and NixOS-style per-user packages in the image.

use std::collections::BTreeSet;
use std::path::Path;

use super::rootfs::{inside, normalize, symlink};
use crate::definition::Node;
use crate::error::{Error, IoContext, Result};

/// A node's package lists: what its layer is built from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Packages {
    /// `packages`: on everybody's PATH.
    pub system: BTreeSet<String>,
    /// Users' packages that are not system packages: hidden from `/usr/bin`,
    /// reachable through `/etc/profiles/per-user/<user>/bin`.
    pub user_only: BTreeSet<String>,
    /// Every user package (those in `system` too): each gets
    /// `/usr/lib/vmrig/packages/<package>/bin`.
    pub user: BTreeSet<String>,
}

impl Packages {
    /// The lists of one node.
    pub fn of(node: &Node) -> Packages {
        let system: BTreeSet<String> = node.packages.iter().cloned().collect();
        let user: BTreeSet<String> = node
            .users
            .values()
            .flat_map(|u| u.packages.iter().cloned())
            .collect();
        let user_only = user.difference(&system).cloned().collect();
        Packages {
            system,
            user_only,
            user,
        }
    }
}

/// Gives each user package `/usr/lib/vmrig/packages/<package>/bin`, and moves
/// the programs of users' packages out of everybody's PATH (NixOS's per-user
/// packages: alice's firefox is not root's).
pub(super) fn user_package_bins(root: &Path, packages: &Packages) -> Result<()> {
    for pkg in &packages.user {
        let bin = format!("/usr/lib/vmrig/packages/{pkg}/bin");
        let host_bin = root.join(bin.trim_start_matches('/'));
        std::fs::create_dir_all(&host_bin)
            .context(|| format!("cannot create {}", host_bin.display()))?;
        let hide = packages.user_only.contains(pkg);
        for program in package_programs(root, pkg)? {
            let name = program.rsplit('/').next().unwrap_or(&program).to_owned();
            let at = inside(root, &program);
            let meta = match std::fs::symlink_metadata(&at) {
                Ok(m) => m,
                Err(_) => continue,
            };
            let dest = host_bin.join(&name);
            if !hide {
                symlink(&program, &dest)?;
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&at)
                    .context(|| format!("cannot read link {}", at.display()))?;
                let dir = Path::new(&program).parent().unwrap_or(Path::new("/"));
                symlink(normalize(&dir.join(target)), &dest)?;
                std::fs::remove_file(&at).context(|| format!("cannot remove {}", at.display()))?;
            } else {
                std::fs::rename(&at, &dest)
                    .context(|| format!("cannot move {} to {}", at.display(), dest.display()))?;
            }
        }
    }
    Ok(())
}

/// The programs (`/usr/bin/x`, `/bin/x`, `/usr/sbin/x`, `/sbin/x`) a package installed.
fn package_programs(root: &Path, pkg: &str) -> Result<Vec<String>> {
    let info = root.join("var/lib/dpkg/info");
    let name = pkg.split(':').next().unwrap_or(pkg);
    let list = [format!("{name}.list"), format!("{name}:amd64.list")]
        .into_iter()
        .map(|f| info.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::Command {
            command: format!("dpkg -L {name}"),
            message: format!("package `{name}` is not installed in the image (no {name}.list in /var/lib/dpkg/info)"),
        })?;
    let text =
        std::fs::read_to_string(&list).context(|| format!("cannot read {}", list.display()))?;
    let mut out: Vec<String> = text
        .lines()
        .filter(|l| {
            ["/usr/bin/", "/bin/", "/usr/sbin/", "/sbin/"]
                .iter()
                .any(|d| {
                    l.strip_prefix(d)
                        .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
                })
        })
        .map(str::to_owned)
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::test_support::def;

    #[test]
    fn user_only_packages_are_split_from_system_ones() {
        let d = def(r#"
            [nodes.m]
            flavour = "debian"
            packages = ["curl"]
            [nodes.m.users.alice]
            packages = ["firefox-esr", "curl"]
            aliases = { firefox = "firefox-esr" }
        "#);
        let p = Packages::of(&d.nodes["m"]);
        assert_eq!(p.system, BTreeSet::from(["curl".to_owned()]));
        assert_eq!(p.user_only, BTreeSet::from(["firefox-esr".to_owned()]));
        assert_eq!(p.user.len(), 2);
    }
}
