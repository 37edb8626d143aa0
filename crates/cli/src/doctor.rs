//! `vmrig doctor`: can this host run vmrig tests, and what is missing?
//!
//! Each check finds the real thing (runs `--version`, boots the KVM probe
//! guest, starts the embedded Python in a child process) rather than
//! trusting that a file exists. Exits 1 when a required part is missing.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use vmrig_guest::accel::{probe_kvm, Accel, PROBE_TIMEOUT};
use vmrig_guest::host;
use vmrig_guest::kernel::Kernel;

/// The flags of `vmrig doctor`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Do not boot the KVM probe guest (it takes up to 8 s).
    #[arg(long)]
    pub no_probe: bool,
    /// Internal: start the embedded Python and describe it.
    #[arg(long, hide = true)]
    pub python_probe: bool,
}

/// How long a `--version` may take.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Missing,
    /// KVM unusable: TCG works, slower.
    Tcg,
}

struct Check {
    name: &'static str,
    required: bool,
    status: Status,
    detail: String,
    /// What `apt-get install` brings it.
    package: Option<String>,
}

impl Check {
    fn ok(name: &'static str, required: bool, detail: String) -> Self {
        Check {
            name,
            required,
            status: Status::Ok,
            detail,
            package: None,
        }
    }

    fn missing(name: &'static str, required: bool, detail: String, package: &str) -> Self {
        Check {
            name,
            required,
            status: Status::Missing,
            detail,
            package: Some(package.to_owned()),
        }
    }
}

/// `vmrig doctor`.
pub fn run(args: &Args) -> ExitCode {
    if args.python_probe {
        return python_probe();
    }
    let checks = checks(args);
    print_table(&checks);
    println!();
    let required = report_missing(&checks, true);
    if required == 0 {
        println!("vmrig can run tests on this host.");
    }
    report_missing(&checks, false);
    if required == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Prints the missing required (or optional) parts and how to install them;
/// returns how many there are.
fn report_missing(checks: &[Check], required: bool) -> usize {
    let missing: Vec<&Check> = checks
        .iter()
        .filter(|c| c.required == required && c.status == Status::Missing)
        .collect();
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|c| c.name).collect();
        let kind = if required { "required" } else { "optional" };
        println!("missing, {kind}: {}", names.join(", "));
        println!("  install: apt-get install {}", packages(&missing));
    }
    missing.len()
}

fn packages(checks: &[&Check]) -> String {
    let mut p: Vec<&str> = checks
        .iter()
        .filter_map(|c| c.package.as_deref())
        .flat_map(str::split_whitespace)
        .collect();
    p.sort_unstable();
    p.dedup();
    p.join(" ")
}

fn print_table(checks: &[Check]) {
    let w = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    println!("{:<w$}  {:<8}  DETAIL", "CHECK", "STATUS");
    for c in checks {
        let status = match (c.status, c.required) {
            (Status::Ok, _) => "OK",
            (Status::Tcg, _) => "TCG",
            (Status::Missing, true) => "MISSING",
            (Status::Missing, false) => "missing",
        };
        let detail = match (&c.package, c.status) {
            (Some(p), Status::Missing) => format!(
                "{}{}: apt-get install {p}",
                c.detail,
                if c.required { "" } else { " (optional)" }
            ),
            _ => c.detail.clone(),
        };
        // Multi-line reasons (QEMU's stderr) stay on the check's row.
        let detail = detail.trim().replace('\n', " / ");
        println!("{:<w$}  {status:<8}  {detail}", c.name);
    }
}

fn checks(args: &Args) -> Vec<Check> {
    let mut checks = Vec::new();
    let qemu = host::find_program("qemu-system-x86_64").ok();
    checks.push(match &qemu {
        Some(q) => match first_line(q, &["--version"]) {
            Ok(v) => Check::ok("qemu", true, format!("{v} ({})", q.display())),
            Err(e) => Check::missing("qemu", true, e, "qemu-system-x86"),
        },
        None => Check::missing(
            "qemu",
            true,
            "no qemu-system-x86_64 on $PATH".into(),
            "qemu-system-x86",
        ),
    });
    checks.push(qemu_img(qemu.as_deref()));

    let kernel = Kernel::find(Path::new("/boot"), Path::new("/lib/modules"));
    checks.push(match &kernel {
        Ok(k) => match std::fs::File::open(&k.image) {
            Ok(_) => Check::ok(
                "kernel",
                true,
                format!(
                    "{} (modules in {})",
                    k.image.display(),
                    k.modules_dir.display()
                ),
            ),
            Err(e) => Check::missing(
                "kernel",
                true,
                format!(
                    "{} cannot be read ({e}); QEMU boots it as this user",
                    k.image.display()
                ),
                "linux-image-amd64",
            ),
        },
        Err(_) => Check::missing(
            "kernel",
            true,
            "no /boot/vmlinuz-* with a module tree in /lib/modules/<release>".into(),
            "linux-image-amd64",
        ),
    });

    let busybox = static_program("busybox");
    checks.push(match &busybox {
        Ok(p) => Check::ok("busybox-static", true, p.display().to_string()),
        Err(e) => Check::missing("busybox-static", true, e.clone(), "busybox-static"),
    });
    checks.push(match static_program("bash-static") {
        Ok(p) => Check::ok("bash-static", true, p.display().to_string()),
        Err(e) => Check::missing("bash-static", true, e, "bash-static"),
    });
    let tools: Vec<&str> = vmrig_guest::image::BASE_PROGRAMS
        .iter()
        .map(|(_, host_name)| *host_name)
        .collect();
    checks.push(programs(
        ("guest tools", true),
        &tools,
        "copied into busybox guests",
        "coreutils netcat-openbsd",
    ));
    checks.push(kvm(args, qemu.as_deref(), kernel.ok(), busybox.ok()));
    checks.push(programs(
        ("vde2", false),
        &["vde_switch", "vde_plug"],
        "vmrig has its own switch; these interoperate with it",
        "vde2",
    ));
    checks.push(python());

    checks.push(match host::find_program("tesseract") {
        Ok(t) => match first_line(&t, &["--version"]) {
            Ok(v) => Check::ok(
                "tesseract",
                false,
                format!("{v} (OCR: get_screen_text, wait_for_text)"),
            ),
            Err(e) => Check::missing("tesseract", false, e, "tesseract-ocr"),
        },
        Err(_) => Check::missing(
            "tesseract",
            false,
            "no tesseract: get_screen_text and wait_for_text need it".into(),
            "tesseract-ocr",
        ),
    });

    let bootstrap = ["mmdebstrap", "debootstrap"]
        .into_iter()
        .find_map(|p| host::find_program(p).ok());
    checks.push(match bootstrap {
        Some(b) => {
            let v = first_line(&b, &["--version"]).unwrap_or_default();
            Check::ok(
                "debootstrap",
                false,
                format!("{} {v} (the debian flavour)", b.display()),
            )
        }
        None => Check::missing(
            "debootstrap",
            false,
            "neither mmdebstrap nor debootstrap: the debian flavour needs one".into(),
            "mmdebstrap",
        ),
    });
    checks
}

/// `qemu-img`, and whether it comes from the same QEMU release as
/// `qemu-system-x86_64`: apt can leave a backported one beside the archive's
/// QEMU, and their image formats and options drift apart.
fn qemu_img(qemu: Option<&Path>) -> Check {
    let img = match host::find_program("qemu-img") {
        Ok(p) => p,
        Err(_) => {
            return Check::missing(
                "qemu-img",
                true,
                "no qemu-img on $PATH (start scripts create scratch disks with it)".into(),
                "qemu-utils",
            )
        }
    };
    let line = match first_line(&img, &["--version"]) {
        Ok(l) => l,
        Err(e) => return Check::missing("qemu-img", true, e, "qemu-utils"),
    };
    let system = qemu.and_then(|q| first_line(q, &["--version"]).ok());
    match mismatch(&line, system.as_deref()) {
        Some((img_v, system_v)) => Check::missing(
            "qemu-img",
            true,
            format!(
                "{} is QEMU {img_v} but qemu-system-x86_64 is QEMU {system_v}: \
                 install both from one release (./setup.sh does)",
                img.display()
            ),
            "qemu-utils qemu-system-x86",
        ),
        None => Check::ok("qemu-img", true, format!("{line} ({})", img.display())),
    }
}

/// The version numbers of `qemu-img --version` and `qemu-system-x86_64
/// --version` first lines, when both parse and they differ.
fn mismatch(img: &str, system: Option<&str>) -> Option<(String, String)> {
    let (i, s) = (qemu_version(img)?, qemu_version(system?)?);
    (i != s).then_some((i, s))
}

/// `7.2.22` from "QEMU emulator version 7.2.22 (Debian ...)" or
/// "qemu-img version 10.0.2 (Debian ...)".
fn qemu_version(line: &str) -> Option<String> {
    let rest = &line[line.find("version ")? + "version ".len()..];
    let v: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    (!v.is_empty()).then_some(v)
}

/// `/dev/kvm` and the guest kit's bounded probe boot.
fn kvm(
    args: &Args,
    qemu: Option<&Path>,
    kernel: Option<Kernel>,
    busybox: Option<std::path::PathBuf>,
) -> Check {
    let device = Path::new("/dev/kvm");
    let tcg = |detail: String| Check {
        name: "kvm",
        required: false,
        status: Status::Tcg,
        detail: format!("{detail}; guests run under TCG (slower)"),
        package: None,
    };
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
    {
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
            " (add this user to the kvm group)"
        } else {
            ""
        };
        return tcg(format!("{} cannot be opened: {e}{hint}", device.display()));
    }
    if args.no_probe {
        return Check::ok(
            "kvm",
            false,
            format!("{} opens; not probed (--no-probe)", device.display()),
        );
    }
    let (Some(qemu), Some(kernel), Some(busybox)) = (qemu, kernel, busybox) else {
        return tcg("not probed: the probe needs QEMU, a kernel and busybox-static".into());
    };
    let probe = probe_kvm(
        &qemu.to_string_lossy(),
        device,
        &kernel.image,
        &busybox,
        PROBE_TIMEOUT,
    );
    match probe.accel {
        Accel::Kvm => Check::ok(
            "kvm",
            false,
            format!("{} (use --accel auto or kvm)", probe.reason),
        ),
        Accel::Tcg => tcg(format!("probe: {}", probe.reason)),
    }
}

/// Several host programs that come together.
fn programs(
    (name, required): (&'static str, bool),
    list: &[&str],
    purpose: &str,
    package: &str,
) -> Check {
    let missing: Vec<&str> = list
        .iter()
        .copied()
        .filter(|p| host::resolve(p).is_err())
        .collect();
    if missing.is_empty() {
        Check::ok(name, required, format!("{} ({purpose})", list.join(", ")))
    } else {
        let detail = format!("not found: {} ({purpose})", missing.join(", "));
        Check::missing(name, required, detail, package)
    }
}

/// A program the guest kit copies into guests as is: it must be static.
fn static_program(name: &str) -> Result<std::path::PathBuf, String> {
    let path = host::find_program(name).map_err(|why| format!("no {name}: {why}"))?;
    let libs = host::libraries(&path)?;
    if libs.is_empty() {
        Ok(path)
    } else {
        Err(format!("{} is dynamically linked", path.display()))
    }
}

/// The embedded interpreter, started in a child process: a broken Python
/// installation aborts the process that starts it.
fn python() -> Check {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            return Check::missing(
                "python",
                true,
                format!("cannot find the vmrig binary: {e}"),
                "python3",
            )
        }
    };
    let report = output_within(&exe, &["doctor", "--python-probe"]);
    match report {
        Ok(text) if text.contains("version=") => {
            let field = |k: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .unwrap_or("?")
                    .to_owned()
            };
            let version = field("version=");
            Check::ok(
                "python",
                true,
                format!(
                    "Python {} embedded ({}), standard library in {}",
                    version.split_whitespace().next().unwrap_or("?"),
                    field("libpython="),
                    field("stdlib=")
                ),
            )
        }
        Ok(text) | Err(text) => Check::missing(
            "python",
            true,
            format!(
                "the embedded Python does not start: {}",
                text.lines().last().unwrap_or("no output").trim()
            ),
            "python3 libpython3-stdlib",
        ),
    }
}

/// `vmrig doctor --python-probe`: starts Python the way test runs do.
fn python_probe() -> ExitCode {
    use pyo3::prelude::*;
    pyo3::prepare_freethreaded_python();
    let described = Python::with_gil(|py| -> PyResult<(String, String)> {
        let version: String = py.import("sys")?.getattr("version")?.extract()?;
        let os_file: String = py.import("os")?.getattr("__file__")?.extract()?;
        Ok((version, os_file))
    });
    let libpython = std::fs::read_to_string("/proc/self/maps")
        .ok()
        .and_then(|maps| {
            maps.lines()
                .filter_map(|l| l.split_whitespace().nth(5))
                .find(|p| p.contains("libpython"))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "linked statically".into());
    match described {
        Ok((version, os_file)) => {
            println!("version={}", version.replace('\n', " "));
            println!("libpython={libpython}");
            let stdlib = Path::new(&os_file)
                .parent()
                .map_or(os_file.clone(), |p| p.display().to_string());
            println!("stdlib={stdlib}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("error={e}");
            ExitCode::FAILURE
        }
    }
}

fn first_line(program: &Path, args: &[&str]) -> Result<String, String> {
    let text = output_within(program, args)?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| format!("{} {} printed nothing", program.display(), args.join(" ")))
}

/// stdout and stderr of a command that exited 0 within [`VERSION_TIMEOUT`];
/// the command is killed if it takes longer.
fn output_within(program: &Path, args: &[&str]) -> Result<String, String> {
    let what = format!("{} {}", program.display(), args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    // Readers in threads: a chatty command must not block on a full pipe.
    let reader = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = reader(out.take().map(|p| Box::new(p) as _));
    let err = reader(err.take().map(|p| Box::new(p) as _));
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() < VERSION_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{what} did not finish within {} s",
                    VERSION_TIMEOUT.as_secs()
                ));
            }
        }
    };
    let text = format!(
        "{}{}",
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default()
    );
    if status.success() {
        Ok(text)
    } else {
        Err(format!("{what}: {status}: {}", text.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_parts_of_one_release_match() {
        let system = "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)";
        assert_eq!(qemu_version(system).as_deref(), Some("7.2.22"));
        let same = "qemu-img version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)";
        assert_eq!(mismatch(same, Some(system)), None);
        let backport = "qemu-img version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)";
        assert_eq!(
            mismatch(backport, Some(system)),
            Some(("10.0.2".into(), "7.2.22".into()))
        );
        // No QEMU, or a version line we cannot read: nothing to compare.
        assert_eq!(mismatch(backport, None), None);
        assert_eq!(mismatch("qemu-img (custom build)", Some(system)), None);
    }
}
