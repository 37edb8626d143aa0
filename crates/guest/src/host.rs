//! Host programs and the shared libraries they need, found the way the host's
//! dynamic loader finds them (`ldd`), so that a copy runs inside the guest.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A host program ready to be copied into a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// Where it was found (what `#!` lines and users name).
    pub path: PathBuf,
    /// The file to copy (symlinks resolved).
    pub file: PathBuf,
    /// Shared objects it needs, as the loader names them (where they go in the guest),
    /// and the real host file behind each.
    pub libraries: Vec<Library>,
    /// For scripts: the interpreter (`#!`), itself resolved.
    pub interpreter: Option<Box<Program>>,
}

/// One shared object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Library {
    /// The path the loader opens (e.g. `/lib/x86_64-linux-gnu/libc.so.6`).
    pub path: PathBuf,
    /// The real file behind it.
    pub file: PathBuf,
}

/// Directories searched for a bare program name, after `$PATH`.
const SYSTEM_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// Finds a program by name (on `$PATH`, then the system directories) or by absolute path.
pub fn find_program(name: &str) -> Result<PathBuf, String> {
    if name.starts_with('/') {
        let p = Path::new(name);
        return if is_executable(p) {
            Ok(p.to_owned())
        } else {
            Err(format!("{name} is not an executable file"))
        };
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path_var).collect();
    dirs.extend(SYSTEM_DIRS.iter().map(PathBuf::from));
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
        .ok_or_else(|| "looked on $PATH and in /usr/sbin, /usr/bin, /sbin, /bin".to_owned())
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Resolves a program and everything it needs to run.
pub fn resolve(name: &str) -> Result<Program, String> {
    resolve_depth(name, 0)
}

fn resolve_depth(name: &str, depth: u32) -> Result<Program, String> {
    let found = find_program(name)?;
    let file = std::fs::canonicalize(&found).map_err(|e| format!("{}: {e}", found.display()))?;
    let head = read_head(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    if let Some(interp) = shebang(&head) {
        if depth > 3 {
            return Err(format!(
                "{}: too many nested #! interpreters",
                file.display()
            ));
        }
        let interpreter = resolve_depth(&interp, depth + 1)
            .map_err(|e| format!("{}: its interpreter {interp}: {e}", file.display()))?;
        return Ok(Program {
            path: found,
            file,
            libraries: Vec::new(),
            interpreter: Some(Box::new(interpreter)),
        });
    }
    if !head.starts_with(b"\x7fELF") {
        return Err(format!(
            "{} is neither an ELF binary nor a #! script",
            file.display()
        ));
    }
    let libraries = libraries(&file)?;
    Ok(Program {
        path: found,
        file,
        libraries,
        interpreter: None,
    })
}

fn read_head(p: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = vec![0; 256];
    let n = std::fs::File::open(p)?.read(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// The interpreter of a `#!` line (the program, not its arguments). `env` lines
/// name the program after `env`.
fn shebang(head: &[u8]) -> Option<String> {
    let rest = head.strip_prefix(b"#!")?;
    let line = rest.split(|b| *b == b'\n').next()?;
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let first = words.next()?.to_owned();
    if first.ends_with("/env") {
        words.find(|w| !w.starts_with('-')).map(str::to_owned)
    } else {
        Some(first)
    }
}

/// The shared objects `file` needs, by running the host's `ldd` on it.
pub fn libraries(file: &Path) -> Result<Vec<Library>, String> {
    let out = Command::new("ldd")
        .arg(file)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| format!("cannot run ldd (package libc-bin): {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if stdout.contains("not a dynamic executable")
            || stderr.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        return Err(format!("ldd {}: {}", file.display(), stderr.trim()));
    }
    let paths = parse_ldd(&stdout).map_err(|lib| {
        format!(
            "{} needs {lib}, which the host does not have",
            file.display()
        )
    })?;
    paths
        .into_iter()
        .map(|path| {
            let file =
                std::fs::canonicalize(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(Library { path, file })
        })
        .collect()
}

/// Paths from `ldd` output; `Err(name)` for a library it reports `not found`.
pub fn parse_ldd(output: &str) -> Result<Vec<PathBuf>, String> {
    let mut paths = Vec::new();
    for line in output.lines() {
        let line = line.trim();
        if line.contains("statically linked") || line.is_empty() {
            continue;
        }
        let target = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(name.trim().to_owned());
                }
                rest
            }
            None => line,
        };
        let path = target.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            paths.push(PathBuf::from(path));
        }
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_forms() {
        let out = "\tlinux-vdso.so.1 (0x00007ffc1c5f1000)\n\
                   \tlibbsd.so.0 => /lib/x86_64-linux-gnu/libbsd.so.0 (0x00007f0c)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0b)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f0d)\n";
        assert_eq!(
            parse_ldd(out).unwrap(),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libbsd.so.0"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert_eq!(
            parse_ldd("\tstatically linked\n").unwrap(),
            Vec::<PathBuf>::new()
        );
        assert_eq!(
            parse_ldd("\tlibfoo.so.1 => not found\n"),
            Err("libfoo.so.1".into())
        );
    }

    #[test]
    fn shebangs() {
        assert_eq!(shebang(b"#!/bin/sh -e\necho").as_deref(), Some("/bin/sh"));
        assert_eq!(
            shebang(b"#! /usr/bin/env -S python3 -u\n").as_deref(),
            Some("python3")
        );
        assert_eq!(shebang(b"\x7fELF"), None);
    }

    #[test]
    fn real_dynamic_program() {
        // `ldd` itself is a script and `ls` a dynamic ELF on every glibc host.
        let ls = resolve("ls").unwrap();
        assert!(
            ls.libraries
                .iter()
                .any(|l| l.path.to_string_lossy().contains("libc.so")),
            "{ls:?}"
        );
        assert!(ls.libraries.iter().all(|l| l.file.is_file()));
        let ldd = resolve("ldd").unwrap();
        assert!(ldd.interpreter.is_some());
    }

    #[test]
    fn missing_program_says_where_it_looked() {
        let e = resolve("no-such-program-vmrig").unwrap_err();
        assert!(e.contains("$PATH"), "{e}");
        assert!(resolve("/etc/hostname").is_err());
    }
}
