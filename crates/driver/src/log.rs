//! The terminal log: nested, timed sections (subtests and machine actions,
//! as `tracing` spans) and each machine's serial console prefixed with its
//! name. Colour only on a terminal, and never with `NO_COLOR` set.
//!
//! Install it with [`init`] (the CLI does), or add [`TerminalLayer`] to your
//! own `tracing` subscriber.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

static SERIAL_STDOUT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Shows (true) or hides (false) machines' console lines in the log
/// (NixOS's `serial_stdout_on`/`serial_stdout_off`); they are still recorded.
pub fn set_serial_stdout(on: bool) {
    SERIAL_STDOUT.store(on, std::sync::atomic::Ordering::SeqCst);
}

/// The target of console lines (`tracing::info!(target: CONSOLE_TARGET, machine = %name, "{line}")`).
pub const CONSOLE_TARGET: &str = "vmrig::console";

/// The target of a test failure's report lines: printed unindented after
/// `!!! ` (NixOS's `log_test_error`), whatever the level.
pub const TEST_ERROR_TARGET: &str = "vmrig::test_error";

/// A `tracing` layer that prints vmrig's terminal log to a writer.
pub struct TerminalLayer<W: Write + Send + 'static> {
    out: Mutex<W>,
    colour: bool,
    min_level: Level,
}

impl TerminalLayer<std::io::Stderr> {
    /// Prints to stderr; colour when stderr is a terminal and `NO_COLOR` is unset.
    pub fn stderr(min_level: Level) -> Self {
        let colour = std::io::stderr().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        TerminalLayer::new(std::io::stderr(), colour, min_level)
    }
}

impl<W: Write + Send + 'static> TerminalLayer<W> {
    /// Prints to `out`.
    pub fn new(out: W, colour: bool, min_level: Level) -> Self {
        TerminalLayer {
            out: Mutex::new(out),
            colour,
            min_level,
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    fn line(&self, depth: usize, text: &str) {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = writeln!(out, "{}{text}", "  ".repeat(depth));
    }
}

/// Stable colour for a machine name (ANSI 31-36).
fn machine_colour(name: &str) -> String {
    let sum: u32 = name.bytes().map(u32::from).sum();
    format!("{}", 31 + sum % 6)
}

struct Started(Instant, String);

/// Whether console lines are shown (see [`set_serial_stdout`]).
pub(crate) fn serial_stdout() -> bool {
    SERIAL_STDOUT.load(std::sync::atomic::Ordering::SeqCst)
}

/// The fields of a span or event: its message, its machine, the rest as ` key=value`.
#[derive(Default)]
pub(crate) struct Fields {
    pub(crate) message: String,
    pub(crate) machine: Option<String>,
    pub(crate) rest: String,
}

impl Fields {
    /// A new span's title without the machine prefix (`subtest: NAME`, a
    /// section's message, `NAME: MESSAGE` for other spans) and its machine.
    pub(crate) fn of_span(attrs: &Attributes<'_>) -> (String, Option<String>) {
        let mut f = Fields::default();
        attrs.record(&mut f);
        let what = if f.message.is_empty() {
            f.rest.trim().to_owned()
        } else {
            f.message
        };
        let name = attrs.metadata().name();
        let title = match (&f.machine, name) {
            (Some(_), _) | (None, "section") => what,
            (None, "subtest") => format!("subtest: {what}"),
            (None, name) => format!("{name}: {what}"),
        };
        (title, f.machine)
    }

    /// An event's fields.
    pub(crate) fn of_event(event: &Event<'_>) -> Fields {
        let mut f = Fields::default();
        event.record(&mut f);
        f
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" | "name" if self.message.is_empty() => self.message = format!("{value:?}"),
            "machine" => self.machine = Some(format!("{value:?}")),
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" | "name" if self.message.is_empty() => self.message = value.to_owned(),
            "machine" => self.machine = Some(value.to_owned()),
            name => {
                let _ = write!(self.rest, " {name}={value}");
            }
        }
    }
}

impl<S, W> Layer<S> for TerminalLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: Write + Send + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let (what, machine) = Fields::of_span(attrs);
        let title = match &machine {
            Some(m) => format!("{}: {what}", self.paint(&machine_colour(m), m)),
            None => what,
        };
        let depth = span.scope().skip(1).count();
        self.line(depth, &title);
        span.extensions_mut().insert(Started(Instant::now(), title));
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let depth = span.scope().skip(1).count();
        if let Some(Started(at, title)) = span.extensions().get::<Started>() {
            self.line(
                depth,
                &format!(
                    "(finished: {title}, in {:.2} seconds)",
                    at.elapsed().as_secs_f64()
                ),
            );
        };
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        if meta.target() == TEST_ERROR_TARGET {
            let f = Fields::of_event(event);
            let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = writeln!(out, "{} {}", self.paint("31", "!!!"), f.message);
            return;
        }
        // Console lines show at every log level, as in NixOS (only
        // serial_stdout_off hides them).
        if meta.target() == CONSOLE_TARGET {
            if !serial_stdout() {
                return;
            }
            let f = Fields::of_event(event);
            let m = f.machine.unwrap_or_default();
            let prefix = self.paint(&machine_colour(&m), &format!("{m} #"));
            let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = writeln!(out, "{prefix} {}", f.message);
            return;
        }
        if *meta.level() > self.min_level {
            return;
        }
        let f = Fields::of_event(event);
        let depth = ctx.event_scope(event).map_or(0, |s| s.count());
        let mut text = f.message;
        text.push_str(&f.rest);
        if let Some(m) = &f.machine {
            text = format!("{}: {text}", self.paint(&machine_colour(m), m));
        }
        let text = match *meta.level() {
            Level::ERROR => self.paint("1;31", &text),
            Level::WARN => self.paint("33", &text),
            _ => text,
        };
        self.line(depth, &text);
    }
}

/// Installs the terminal log on stderr as the global subscriber (once; later
/// calls do nothing).
pub fn init(min_level: Level) {
    init_with_xml(min_level, None);
}

/// Installs the terminal log on stderr and, when given, NixOS's XML log
/// ([`crate::xml_log`]) as the global subscriber. Only the first call installs
/// anything; it returns whether this one did.
pub fn init_with_xml(min_level: Level, xml: Option<crate::xml_log::XmlLayer>) -> bool {
    use tracing_subscriber::prelude::*;
    tracing_subscriber::registry()
        .with(TerminalLayer::stderr(min_level))
        .with(xml)
        .try_init()
        .is_ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;
    use tracing_subscriber::prelude::*;

    /// A writer tests read back.
    #[derive(Clone, Default)]
    pub(crate) struct Buf(pub(crate) Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn capture(colour: bool, f: impl FnOnce()) -> String {
        let buf = Buf::default();
        let sub = tracing_subscriber::registry().with(TerminalLayer::new(
            buf.clone(),
            colour,
            Level::INFO,
        ));
        tracing::subscriber::with_default(sub, f);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text
    }

    #[test]
    fn nested_timed_sections_and_console_lines() {
        let text = capture(false, || {
            let _outer = tracing::info_span!("subtest", name = "boots").entered();
            {
                let _inner = tracing::info_span!(
                    "action",
                    machine = "server",
                    message = "must succeed: true"
                )
                .entered();
                tracing::info!(target: CONSOLE_TARGET, machine = "server", "[ 1.0] booting");
                tracing::info!(machine = "server", "connected");
            }
            tracing::debug!("hidden");
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "subtest: boots");
        assert_eq!(lines[1], "  server: must succeed: true");
        assert_eq!(lines[2], "server # [ 1.0] booting");
        assert_eq!(lines[3], "    server: connected");
        assert!(
            lines[4].starts_with("  (finished: server: must succeed: true, in "),
            "{text}"
        );
        assert!(
            lines[5].starts_with("(finished: subtest: boots, in "),
            "{text}"
        );
        assert_eq!(lines.len(), 6, "{text}");
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn test_errors_are_unindented_bang_lines() {
        let text = capture(false, || {
            let _s = tracing::info_span!("section", message = "run the VM test script").entered();
            tracing::error!(target: TEST_ERROR_TARGET, "Traceback (most recent call last):");
        });
        assert!(
            text.lines()
                .any(|l| l == "!!! Traceback (most recent call last):"),
            "{text}"
        );
    }

    #[test]
    fn colour_only_when_asked() {
        let text = capture(true, || tracing::error!(machine = "m", "broke"));
        assert!(text.contains("\x1b[1;31m"), "{text:?}");
    }
}
