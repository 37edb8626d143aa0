//! NixOS's XML log (the file the NixOS driver writes when `LOGFILE` is set):
//! `<logfile>` holding a `<line>` per log line and a `<nest>` per section
//! (subtest, machine action), whose `<head>` carries the section's title and
//! whose last line says how long it took. Console lines are
//! `<line machine="NAME" type="serial">`, without control characters.
//!
//! Unlike NixOS's, the file is always well formed: sections that end out of
//! order are closed with their parent, and [`XmlLog::finish`] closes what is
//! still open and the document.
//!
//! ```
//! use tracing_subscriber::prelude::*;
//! let file = std::env::temp_dir().join("vmrig-doc-log.xml");
//! let (layer, log) = vmrig_driver::xml_log::XmlLayer::create(&file, tracing::Level::INFO).unwrap();
//! tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
//!     let _s = tracing::info_span!("subtest", name = "boots").entered();
//!     tracing::info!(machine = "server", "starting vm");
//! });
//! log.finish();
//! let xml = std::fs::read_to_string(&file).unwrap();
//! assert!(xml.contains("<head>subtest: boots</head>"));
//! assert!(xml.contains(r#"<line machine="server">starting vm</line>"#));
//! ```

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::log::{Fields, CONSOLE_TARGET};

struct Open {
    id: Id,
    title: String,
    started: Instant,
}

struct State {
    /// `None` once finished.
    out: Option<Box<dyn Write + Send>>,
    open: Vec<Open>,
}

impl State {
    fn write(&mut self, text: &str) {
        if let Some(out) = self.out.as_mut() {
            // A full disk must not fail the test: the terminal log still runs.
            let _ = out.write_all(text.as_bytes());
        }
    }

    fn line(&mut self, attrs: &[(&str, &str)], text: &str) {
        let line = format!("<line{}>{}</line>\n", attributes(attrs), escape(text));
        self.write(&line);
    }

    fn close_top(&mut self) {
        if let Some(open) = self.open.pop() {
            let done = format!(
                "(finished: {}, in {:.2} seconds)",
                open.title,
                open.started.elapsed().as_secs_f64()
            );
            self.line(&[], &done);
            self.write("</nest>\n");
        }
    }
}

/// A `tracing` layer writing NixOS's XML log.
pub struct XmlLayer {
    state: Arc<Mutex<State>>,
    min_level: Level,
}

/// Ends the log written by an [`XmlLayer`].
#[derive(Clone)]
pub struct XmlLog {
    state: Arc<Mutex<State>>,
}

impl XmlLog {
    /// Closes the sections still open and the document, and flushes it.
    /// Later events are not written. Idempotent.
    pub fn finish(&self) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while !st.open.is_empty() {
            st.close_top();
        }
        st.write("</logfile>\n");
        if let Some(mut out) = st.out.take() {
            let _ = out.flush();
        }
    }
}

impl XmlLayer {
    /// Writes to `out`; events below `min_level` are left out (as NixOS's
    /// `--log-level` does), sections and errors never are.
    pub fn new(out: Box<dyn Write + Send>, min_level: Level) -> (XmlLayer, XmlLog) {
        let state = Arc::new(Mutex::new(State {
            out: Some(out),
            open: Vec::new(),
        }));
        state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<logfile>\n");
        (
            XmlLayer {
                state: state.clone(),
                min_level,
            },
            XmlLog { state },
        )
    }

    /// Creates (or truncates) `path` and writes the log there.
    pub fn create(path: &Path, min_level: Level) -> std::io::Result<(XmlLayer, XmlLog)> {
        let file = std::fs::File::create(path)?;
        Ok(XmlLayer::new(
            Box::new(std::io::LineWriter::new(file)),
            min_level,
        ))
    }
}

impl<S> Layer<S> for XmlLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _ctx: Context<'_, S>) {
        let (title, machine) = Fields::of_span(attrs);
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let head_attrs: Vec<(&str, &str)> =
            machine.iter().map(|m| ("machine", m.as_str())).collect();
        let head = format!(
            "<nest>\n<head{}>{}</head>\n",
            attributes(&head_attrs),
            escape(&title)
        );
        st.write(&head);
        let title = match &machine {
            Some(m) => format!("{m}: {title}"),
            None => title,
        };
        st.open.push(Open {
            id: id.clone(),
            title,
            started: Instant::now(),
        });
    }

    fn on_close(&self, id: Id, _ctx: Context<'_, S>) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        // Spans of other threads may end out of order: close the inner ones too.
        if let Some(at) = st.open.iter().rposition(|o| o.id == id) {
            while st.open.len() > at {
                st.close_top();
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        // Console lines at every level (NixOS's log_serial ignores it).
        let console = meta.target() == CONSOLE_TARGET;
        if !console && *meta.level() > self.min_level && *meta.level() != Level::ERROR {
            return;
        }
        let f = Fields::of_event(event);
        let machine = f.machine.clone().unwrap_or_default();
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if console {
            if crate::log::serial_stdout() {
                let text: String = f.message.chars().filter(|c| !c.is_control()).collect();
                st.line(&[("machine", &machine), ("type", "serial")], &text);
            }
            return;
        }
        let mut text = f.message;
        text.push_str(&f.rest);
        let attrs: Vec<(&str, &str)> = f
            .machine
            .as_deref()
            .map(|m| ("machine", m))
            .into_iter()
            .collect();
        st.line(&attrs, &text);
    }
}

fn attributes(attrs: &[(&str, &str)]) -> String {
    attrs
        .iter()
        .map(|(k, v)| format!(" {k}=\"{}\"", escape(v)))
        .collect()
}

/// Escapes text or an attribute value for XML; control characters XML 1.0
/// cannot hold become U+FFFD.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 forbids most control characters, even escaped.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\r' | '\t') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::tests::Buf;
    use tracing_subscriber::prelude::*;

    fn capture(min_level: Level, f: impl FnOnce()) -> String {
        let buf = Buf::default();
        let (layer, log) = XmlLayer::new(Box::new(buf.clone()), min_level);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), f);
        log.finish();
        log.finish();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text
    }

    #[test]
    fn nests_lines_and_serial_lines_like_nixos() {
        let xml = capture(Level::INFO, || {
            let _t = tracing::info_span!("subtest", name = "a <b> & \"c\"").entered();
            let _a =
                tracing::info_span!("action", machine = "server", message = "must succeed: true")
                    .entered();
            tracing::info!(target: CONSOLE_TARGET, machine = "server", "\x1b[0mbooted\x07");
            tracing::info!(machine = "server", "connected");
            tracing::debug!("left out at info");
            tracing::error!("errors always");
        });
        let expected_start = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<logfile>\n\
            <nest>\n<head>subtest: a &lt;b&gt; &amp; &quot;c&quot;</head>\n\
            <nest>\n<head machine=\"server\">must succeed: true</head>\n\
            <line machine=\"server\" type=\"serial\">[0mbooted</line>\n\
            <line machine=\"server\">connected</line>\n\
            <line>errors always</line>\n\
            <line>(finished: server: must succeed: true, in ";
        assert!(xml.starts_with(expected_start), "{xml}");
        assert!(
            xml.contains("</nest>\n<line>(finished: subtest: a &lt;b&gt; &amp; &quot;c&quot;, in ")
        );
        assert!(xml.ends_with("</nest>\n</logfile>\n"), "{xml}");
        assert_eq!(
            xml.matches("<nest>").count(),
            xml.matches("</nest>").count()
        );
    }

    #[test]
    fn stays_well_formed_when_sections_end_out_of_order_or_never() {
        let xml = capture(Level::INFO, || {
            // Two unrelated sections (as two threads make them): the first ends first.
            let first = tracing::info_span!(parent: None, "section", message = "first");
            let second = tracing::info_span!(parent: None, "section", message = "second");
            let never = tracing::info_span!(parent: None, "section", message = "never closed");
            drop(first);
            tracing::info!("between");
            drop(second);
            std::mem::forget(never);
        });
        assert!(
            xml.find("(finished: second").unwrap() < xml.find("(finished: first").unwrap(),
            "{xml}"
        );
        assert!(xml.find("(finished: first").unwrap() < xml.find("between").unwrap());
        assert_eq!(xml.matches("<nest>").count(), 3, "{xml}");
        assert_eq!(xml.matches("</nest>").count(), 3, "{xml}");
        assert!(xml.ends_with("</logfile>\n"));
    }

    #[test]
    fn console_lines_at_every_level_others_by_level() {
        let xml = capture(Level::WARN, || {
            tracing::info!(target: CONSOLE_TARGET, machine = "m", "a console line");
            tracing::info!("an info line");
            tracing::warn!("a warning");
        });
        assert!(xml.contains(">a console line</line>"), "{xml}");
        assert!(!xml.contains("an info line"), "{xml}");
        assert!(xml.contains("<line>a warning</line>"), "{xml}");
    }

    #[test]
    fn attribute_values_are_quoted() {
        assert_eq!(
            attributes(&[("machine", "a\"<")]),
            " machine=\"a&quot;&lt;\""
        );
        assert_eq!(escape("ok\u{1}\ttab"), "ok\u{fffd}\ttab");
    }
}
