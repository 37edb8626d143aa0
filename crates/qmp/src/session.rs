//! The sans-IO QMP session: capability negotiation, `id` correlation and the
//! event queue, with no sockets, no runtime and no clock.
//!
//! A [`Session`] is fed what QEMU sends ([`Session::handle_input`]) and asked for
//! what to send back ([`Session::poll_transmit`]); commands are queued with
//! [`Session::send_command`], which returns the id their answer is filed under
//! ([`Session::take_response`]); events wait in a bounded queue
//! ([`Session::poll_event`]). The tokio [`Client`](crate::Client) is this plus a
//! socket, two tasks and timers; the same shape as `quinn-proto` under `quinn`.
//!
//! The QMP spec ("Capabilities Negotiation") puts QEMU in negotiation mode until
//! the client runs `qmp_capabilities`; the session does that by itself as soon as
//! the greeting arrives, and holds commands sent before then until QEMU has
//! accepted it.

use std::collections::{HashMap, VecDeque};

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::codec::{Codec, DEFAULT_MAX_MESSAGE_SIZE};
use crate::command::{Command, QmpCapabilities};
use crate::error::{Error, Result};
use crate::message::{Event, Greeting, Message, QmpError, Response};

/// Problems kept for [`Session::poll_warning`] before the oldest are dropped.
const MAX_WARNINGS: usize = 64;

/// How a [`Session`] behaves; start from `SessionConfig::default()`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SessionConfig {
    /// Events kept unread before the oldest are dropped (default 1024, at least 1).
    pub event_capacity: usize,
    /// Largest message accepted from QEMU (default [`DEFAULT_MAX_MESSAGE_SIZE`]).
    pub max_message_size: usize,
    /// Capabilities to enable with `qmp_capabilities` (none by default).
    pub capabilities: Vec<String>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            event_capacity: 1024,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            capabilities: Vec::new(),
        }
    }
}

impl SessionConfig {
    /// Sets [`event_capacity`](Self::event_capacity) (at least 1).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }

    /// Sets [`max_message_size`](Self::max_message_size).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Sets [`capabilities`](Self::capabilities).
    pub fn capabilities<S: Into<String>>(mut self, caps: impl IntoIterator<Item = S>) -> Self {
        self.capabilities = caps.into_iter().map(Into::into).collect();
        self
    }
}

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Nothing from QEMU yet; its first message must be the greeting.
    AwaitingGreeting,
    /// The greeting came and `qmp_capabilities` is sent; waiting for its answer.
    Negotiating,
    /// Negotiated: commands go out as they are sent.
    Ready,
    /// Closed ([`Session::close`] or a failed negotiation); see [`Session::closed_reason`].
    Closed,
}

/// A command sent and not answered yet.
#[derive(Debug)]
struct Pending {
    name: String,
    /// Its caller gave up; the answer is dropped when it comes.
    cancelled: bool,
}

/// One QMP connection's state, without I/O.
///
/// Feed it what QEMU sends ([`handle_input`](Self::handle_input)), write what
/// [`poll_transmit`](Self::poll_transmit) gives to QEMU, queue commands with
/// [`send_command`](Self::send_command) and take each answer by its id with
/// [`take_response`](Self::take_response); events wait in a bounded queue
/// ([`poll_event`](Self::poll_event)). `qmp_capabilities` is sent by the session
/// itself once the greeting is in, and commands sent earlier are held until
/// QEMU accepts it.
///
/// ```
/// use vmrig_qmp::{Phase, QueryStatus, Session};
///
/// let mut s = Session::new();
/// let id = s.execute(&QueryStatus)?; // held until negotiation is done
/// s.handle_input(br#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}"#)?;
/// assert_eq!(&s.poll_transmit().unwrap()[..], b"{\"execute\":\"qmp_capabilities\",\"id\":2}\r\n");
/// s.handle_input(b"{\"return\": {}, \"id\": 2}\r\n")?;
/// assert_eq!(s.phase(), Phase::Ready);
/// assert_eq!(&s.poll_transmit().unwrap()[..], b"{\"execute\":\"query-status\",\"id\":1}\r\n");
/// s.handle_input(br#"{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 0}}
/// {"return": {"status": "paused", "running": false, "singlestep": false}, "id": 1}
/// "#)?;
/// assert_eq!(id, 1);
/// let ret = s.take_response(id).unwrap()?;
/// assert!(ret.get().contains("paused"));
/// assert_eq!(s.poll_event().unwrap().event, "STOP");
/// # Ok::<(), vmrig_qmp::Error>(())
/// ```
#[derive(Debug)]
pub struct Session {
    codec: Codec,
    config: SessionConfig,
    phase: Phase,
    greeting: Option<Greeting>,
    /// Received bytes not yet decoded.
    rx: BytesMut,
    /// Encoded commands ready to go out.
    tx: BytesMut,
    /// Commands sent before negotiation finished, released when it does.
    held: BytesMut,
    next_id: u64,
    /// The id of our own `qmp_capabilities`, while it is unanswered.
    negotiation_id: Option<u64>,
    /// Every command without an answer yet.
    pending: HashMap<u64, Pending>,
    /// Answers not yet taken.
    completed: HashMap<u64, Result<Box<RawValue>>>,
    events: VecDeque<Event>,
    dropped_events: u64,
    warnings: VecDeque<Error>,
    closed: Option<String>,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    /// A session with the default configuration, waiting for QEMU's greeting.
    pub fn new() -> Self {
        Self::with_config(SessionConfig::default())
    }

    /// A session with `config`, waiting for QEMU's greeting.
    pub fn with_config(mut config: SessionConfig) -> Self {
        config.event_capacity = config.event_capacity.max(1);
        Self {
            codec: Codec::with_max_message_size(config.max_message_size),
            config,
            phase: Phase::AwaitingGreeting,
            greeting: None,
            rx: BytesMut::new(),
            tx: BytesMut::new(),
            held: BytesMut::new(),
            next_id: 1,
            negotiation_id: None,
            pending: HashMap::new(),
            completed: HashMap::new(),
            events: VecDeque::new(),
            dropped_events: 0,
            warnings: VecDeque::new(),
            closed: None,
        }
    }

    /// Where the connection stands.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether negotiation is done and the session is not closed.
    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    /// QEMU's greeting, once it came.
    pub fn greeting(&self) -> Option<&Greeting> {
        self.greeting.as_ref()
    }

    /// Why the session closed, or `None` while it is open.
    pub fn closed_reason(&self) -> Option<&str> {
        self.closed.as_deref()
    }

    /// Feeds bytes received from QEMU, in any chunking; every complete message
    /// in them is handled at once.
    ///
    /// Fails with [`Error::Handshake`] (and closes the session) when the first
    /// message is not a greeting or QEMU rejects `qmp_capabilities`. Once
    /// negotiated, it does not fail: bad input is skipped and reported through
    /// [`poll_warning`](Self::poll_warning).
    pub fn handle_input(&mut self, data: &[u8]) -> Result<()> {
        if self.closed.is_some() {
            return Ok(());
        }
        self.rx.extend_from_slice(data);
        loop {
            match self.codec.decode(&mut self.rx) {
                Ok(Some(message)) => self.handle_message(message)?,
                Ok(None) => return Ok(()),
                Err(e) if self.phase == Phase::AwaitingGreeting => {
                    return Err(self.fail_handshake(format!("bad greeting: {e}")))
                }
                Err(e) => self.warn(e),
            }
        }
    }

    /// Handles one decoded message (for callers that run their own [`Codec`]).
    /// Fails as [`handle_input`](Self::handle_input) does.
    pub fn handle_message(&mut self, message: Message) -> Result<()> {
        if self.closed.is_some() {
            return Ok(());
        }
        match (self.phase, message) {
            (Phase::AwaitingGreeting, Message::Greeting(greeting)) => {
                self.greeting = Some(greeting);
                let id = self.allocate_id();
                let caps = QmpCapabilities {
                    enable: self.config.capabilities.clone(),
                };
                // Encoding a struct of strings into a buffer cannot fail.
                self.codec
                    .encode_command(caps.name(), &caps, Some(id), &mut self.tx)?;
                self.negotiation_id = Some(id);
                self.phase = Phase::Negotiating;
                Ok(())
            }
            (Phase::AwaitingGreeting, other) => Err(self.fail_handshake(format!(
                "expected the greeting first, got {}",
                other.to_value()
            ))),
            (_, Message::Greeting(_)) => {
                self.warn(Error::UnknownShape {
                    reason: "a second greeting".into(),
                    message: "ignored".into(),
                });
                Ok(())
            }
            (_, Message::Event(event)) => {
                if self.events.len() >= self.config.event_capacity {
                    self.events.pop_front();
                    self.dropped_events += 1;
                }
                self.events.push_back(event);
                Ok(())
            }
            (phase, Message::Response(response)) => self.handle_response(phase, response),
        }
    }

    fn handle_response(&mut self, phase: Phase, Response { id, outcome }: Response) -> Result<()> {
        let num = id.as_ref().and_then(Value::as_u64);
        if phase == Phase::Negotiating && num.is_some() && num == self.negotiation_id {
            self.negotiation_id = None;
            if let Err(QmpError { class, desc }) = outcome {
                return Err(self.fail_handshake(format!("qmp_capabilities: {class}: {desc}")));
            }
            self.phase = Phase::Ready;
            let held = self.held.split();
            self.tx.unsplit(held);
            return Ok(());
        }
        match num.and_then(|n| self.pending.remove(&n).map(|p| (n, p))) {
            Some((
                _,
                Pending {
                    cancelled: true, ..
                },
            )) => {}
            Some((n, Pending { name, .. })) => {
                let answer = outcome.map_err(|QmpError { class, desc }| Error::Command {
                    command: name,
                    class,
                    desc,
                });
                self.completed.insert(n, answer);
            }
            None => self.warn(Error::UnmatchedId {
                id: id.map_or_else(|| "none".to_owned(), |v| v.to_string()),
            }),
        }
        Ok(())
    }

    /// Queues command `name` with `arguments` (an object, or `Value::Null` / `()`
    /// for none) and returns the id its answer will be filed under.
    ///
    /// Before negotiation is done the command is held and goes out right after
    /// `qmp_capabilities` succeeds. Fails with [`Error::Closed`] once the session
    /// is closed, and with [`Error::EncodeArguments`] for arguments that are not
    /// a JSON object.
    pub fn send_command<A: Serialize + ?Sized>(
        &mut self,
        name: &str,
        arguments: &A,
    ) -> Result<u64> {
        if let Some(reason) = &self.closed {
            return Err(Error::Closed {
                reason: reason.clone(),
            });
        }
        let id = self.next_id;
        let out = match self.phase {
            Phase::Ready => &mut self.tx,
            _ => &mut self.held,
        };
        self.codec.encode_command(name, arguments, Some(id), out)?;
        self.allocate_id();
        self.pending.insert(
            id,
            Pending {
                name: name.to_owned(),
                cancelled: false,
            },
        );
        Ok(id)
    }

    /// Queues a typed command; see [`send_command`](Self::send_command).
    pub fn execute<C: Command>(&mut self, command: &C) -> Result<u64> {
        self.send_command(command.name(), command)
    }

    fn allocate_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Bytes to write to QEMU, oldest first, or `None` when there is nothing to send.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.tx.is_empty()).then(|| self.tx.split().freeze())
    }

    /// Whether [`poll_transmit`](Self::poll_transmit) has bytes to give.
    pub fn has_transmit(&self) -> bool {
        !self.tx.is_empty()
    }

    /// Takes the answer to command `id`: `Some(Ok(return value))`,
    /// `Some(Err(Error::Command))` when QEMU rejected it, `Some(Err(Error::Closed))`
    /// when the session closed before it was answered. `None` while it is still
    /// pending, and for an id that was never sent, was cancelled or was taken
    /// already: each answer is handed out once.
    pub fn take_response(&mut self, id: u64) -> Option<Result<Box<RawValue>>> {
        if let Some(answer) = self.completed.remove(&id) {
            return Some(answer);
        }
        let reason = self.closed.as_ref()?;
        if self.pending.remove(&id)?.cancelled {
            return None;
        }
        Some(Err(Error::Closed {
            reason: reason.clone(),
        }))
    }

    /// Whether command `id` was sent and its answer is neither in nor taken.
    pub fn is_pending(&self, id: u64) -> bool {
        self.pending.get(&id).is_some_and(|p| !p.cancelled)
    }

    /// Forgets command `id` (its caller gave up): its answer, now or later, is
    /// dropped without a warning.
    pub fn cancel(&mut self, id: u64) {
        if self.completed.remove(&id).is_none() {
            if let Some(pending) = self.pending.get_mut(&id) {
                pending.cancelled = true;
            }
        }
    }

    /// Takes the oldest queued event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Takes every queued event, oldest first.
    pub fn take_events(&mut self) -> Vec<Event> {
        self.events.drain(..).collect()
    }

    /// How many events are queued.
    pub fn queued_events(&self) -> usize {
        self.events.len()
    }

    /// Number of events dropped because the queue was full (oldest first).
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    /// Takes the oldest problem with QEMU's input that did not stop the session:
    /// undecodable or oversized messages, stray bytes, answers whose id matches
    /// no command ([`Error::UnmatchedId`]), a second greeting. At most 64 are
    /// kept.
    pub fn poll_warning(&mut self) -> Option<Error> {
        self.warnings.pop_front()
    }

    fn warn(&mut self, error: Error) {
        if self.warnings.len() >= MAX_WARNINGS {
            self.warnings.pop_front();
        }
        self.warnings.push_back(error);
    }

    /// Closes the session (the socket closed, a read failed): every pending
    /// command's answer becomes [`Error::Closed`] with `reason`. Answers and
    /// events that came before stay available. Only the first reason is kept.
    pub fn close(&mut self, reason: impl Into<String>) {
        if self.closed.is_none() {
            self.closed = Some(reason.into());
        }
        self.phase = Phase::Closed;
        self.held.clear();
        self.tx.clear();
        self.negotiation_id = None;
        // Nobody waits for these any more.
        self.pending.retain(|_, p| !p.cancelled);
    }

    fn fail_handshake(&mut self, reason: String) -> Error {
        self.close(format!("negotiation failed: {reason}"));
        Error::Handshake { reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{QueryStatus, Stop};

    const GREETING: &[u8] = br#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}
"#;

    fn sent(s: &mut Session) -> String {
        let mut out = String::new();
        while let Some(b) = s.poll_transmit() {
            out.push_str(std::str::from_utf8(&b).unwrap());
        }
        out
    }

    fn ready() -> Session {
        let mut s = Session::new();
        s.handle_input(GREETING).unwrap();
        assert_eq!(
            sent(&mut s),
            "{\"execute\":\"qmp_capabilities\",\"id\":1}\r\n"
        );
        s.handle_input(b"{\"return\": {}, \"id\": 1}\r\n").unwrap();
        assert!(s.is_ready());
        s
    }

    fn event(name: &str) -> String {
        format!(
            "{{\"event\": \"{name}\", \"timestamp\": {{\"seconds\": 1, \"microseconds\": 2}}}}\r\n"
        )
    }

    #[test]
    fn negotiates_after_the_greeting_and_releases_held_commands() {
        let mut s = Session::new();
        assert_eq!(s.phase(), Phase::AwaitingGreeting);
        let id = s.execute(&Stop).unwrap();
        assert_eq!(sent(&mut s), "", "nothing goes out before the greeting");
        s.handle_input(&GREETING[..20]).unwrap();
        assert!(s.greeting().is_none());
        s.handle_input(&GREETING[20..]).unwrap();
        assert_eq!(s.greeting().unwrap().capabilities, ["oob"]);
        assert_eq!(s.phase(), Phase::Negotiating);
        assert_eq!(
            sent(&mut s),
            "{\"execute\":\"qmp_capabilities\",\"id\":2}\r\n"
        );
        s.handle_input(b"{\"return\": {}, \"id\": 2}\r\n").unwrap();
        assert_eq!(s.phase(), Phase::Ready);
        assert_eq!(
            sent(&mut s),
            format!("{{\"execute\":\"stop\",\"id\":{id}}}\r\n")
        );
        assert!(s.is_pending(id));
        assert_eq!(s.poll_warning().map(|w| w.to_string()), None);
    }

    #[test]
    fn capabilities_from_the_config_are_enabled() {
        let mut s = Session::with_config(SessionConfig::default().capabilities(["oob"]));
        s.handle_input(GREETING).unwrap();
        assert_eq!(
            sent(&mut s),
            "{\"execute\":\"qmp_capabilities\",\"arguments\":{\"enable\":[\"oob\"]},\"id\":1}\r\n"
        );
    }

    #[test]
    fn a_first_message_that_is_not_a_greeting_fails_the_handshake() {
        let mut s = Session::new();
        let id = s.execute(&Stop).unwrap();
        let err = s.handle_input(event("STOP").as_bytes()).unwrap_err();
        assert!(
            matches!(&err, Error::Handshake { reason } if reason.contains("expected the greeting")),
            "{err}"
        );
        assert_eq!(s.phase(), Phase::Closed);
        assert!(matches!(
            s.take_response(id),
            Some(Err(Error::Closed { .. }))
        ));
        assert!(matches!(s.execute(&Stop), Err(Error::Closed { .. })));

        let mut s = Session::new();
        let err = s.handle_input(b"garbage{").unwrap_err();
        assert!(err.to_string().contains("bad greeting"), "{err}");
    }

    #[test]
    fn rejected_capabilities_fail_the_handshake() {
        let mut s = Session::new();
        s.handle_input(GREETING).unwrap();
        let err = s
            .handle_input(
                b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}, \"id\": 1}\r\n",
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "qmp handshake failed: qmp_capabilities: GenericError: no"
        );
        assert!(s.closed_reason().unwrap().contains("GenericError"));
    }

    #[test]
    fn answers_are_filed_by_id_and_taken_once() {
        let mut s = ready();
        let a = s.execute(&QueryStatus).unwrap();
        let b = s.send_command("no-such", &Value::Null).unwrap();
        assert_eq!(
            sent(&mut s),
            format!("{{\"execute\":\"query-status\",\"id\":{a}}}\r\n{{\"execute\":\"no-such\",\"id\":{b}}}\r\n")
        );
        assert!(s.take_response(a).is_none());
        s.handle_input(
            format!("{{\"error\": {{\"class\": \"CommandNotFound\", \"desc\": \"nope\"}}, \"id\": {b}}}\r\n{{\"return\": {{\"x\": 1}}, \"id\": {a}}}\r\n")
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(s.take_response(a).unwrap().unwrap().get(), "{\"x\": 1}");
        assert!(s.take_response(a).is_none());
        let err = s.take_response(b).unwrap().unwrap_err();
        assert_eq!(err.qmp_class(), Some("CommandNotFound"));
        assert!(err.to_string().contains("`no-such`"), "{err}");
        assert!(!s.is_pending(a) && !s.is_pending(b));
    }

    #[test]
    fn unmatched_and_missing_ids_are_warnings() {
        let mut s = ready();
        let a = s.execute(&Stop).unwrap();
        s.handle_input(b"{\"return\": {}, \"id\": 999}\r\n{\"return\": {}}\r\n{\"return\": {}, \"id\": \"x\"}\r\n")
            .unwrap();
        assert!(s.is_pending(a));
        let warnings: Vec<String> = std::iter::from_fn(|| s.poll_warning())
            .map(|w| w.to_string())
            .collect();
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].contains("id 999"), "{warnings:?}");
        assert!(warnings[1].contains("id none"), "{warnings:?}");
    }

    #[test]
    fn bad_input_after_negotiation_is_skipped_with_a_warning() {
        let mut s = ready();
        s.handle_input(b"junk {\"no\": 1}\r\n").unwrap();
        s.handle_input(event("STOP").as_bytes()).unwrap();
        assert_eq!(s.poll_event().unwrap().event, "STOP");
        assert!(s.poll_warning().is_some());
        assert!(s.poll_warning().is_some());
        assert!(s.poll_warning().is_none());
    }

    #[test]
    fn warnings_are_bounded() {
        let mut s = ready();
        for _ in 0..1000 {
            s.handle_input(b"{\"return\": {}, \"id\": 999}\r\n")
                .unwrap();
        }
        assert_eq!(
            std::iter::from_fn(|| s.poll_warning()).count(),
            MAX_WARNINGS
        );
    }

    #[test]
    fn the_event_queue_drops_the_oldest_when_full() {
        let mut s = Session::with_config(SessionConfig::default().event_capacity(2));
        s.handle_input(GREETING).unwrap();
        s.handle_input(b"{\"return\": {}, \"id\": 1}\r\n").unwrap();
        for name in ["A", "B", "C"] {
            s.handle_input(event(name).as_bytes()).unwrap();
        }
        assert_eq!(s.dropped_events(), 1);
        assert_eq!(s.queued_events(), 2);
        let names: Vec<_> = s.take_events().into_iter().map(|e| e.event).collect();
        assert_eq!(names, ["B", "C"]);
        assert!(s.poll_event().is_none());
    }

    #[test]
    fn closing_fails_pending_commands_but_keeps_what_came() {
        let mut s = ready();
        let a = s.execute(&Stop).unwrap();
        let b = s.execute(&Stop).unwrap();
        s.handle_input(
            format!("{{\"return\": {{}}, \"id\": {a}}}\r\n{}", event("SHUTDOWN")).as_bytes(),
        )
        .unwrap();
        s.close("QEMU closed the socket");
        s.close("a later reason is ignored");
        assert_eq!(s.closed_reason(), Some("QEMU closed the socket"));
        assert!(s.take_response(a).unwrap().is_ok());
        let Some(Err(Error::Closed { reason })) = s.take_response(b) else {
            panic!()
        };
        assert_eq!(reason, "QEMU closed the socket");
        assert!(s.take_response(b).is_none());
        assert_eq!(s.poll_event().unwrap().event, "SHUTDOWN");
        assert!(s.poll_transmit().is_none());
        s.handle_input(event("LATE").as_bytes()).unwrap();
        assert!(s.poll_event().is_none(), "input after close is ignored");
    }

    #[test]
    fn cancelled_commands_drop_their_answer_silently() {
        let mut s = ready();
        let a = s.execute(&Stop).unwrap();
        let b = s.execute(&Stop).unwrap();
        s.cancel(a);
        assert!(!s.is_pending(a));
        s.handle_input(format!("{{\"return\": {{}}, \"id\": {b}}}\r\n").as_bytes())
            .unwrap();
        s.cancel(b); // answered already: the answer goes
        s.handle_input(format!("{{\"return\": {{}}, \"id\": {a}}}\r\n").as_bytes())
            .unwrap();
        assert!(s.take_response(a).is_none());
        assert!(s.take_response(b).is_none());
        assert!(
            s.poll_warning().is_none(),
            "a late answer to a cancelled command is expected"
        );
    }

    #[test]
    fn arguments_must_be_an_object() {
        let mut s = ready();
        assert!(matches!(
            s.send_command("x", &5),
            Err(Error::EncodeArguments { .. })
        ));
        assert!(s.poll_transmit().is_none());
        // The failed command used no id.
        assert_eq!(s.execute(&Stop).unwrap(), 2);
    }
}
