//! The async tokio client: a unix socket, one reader task and one writer task
//! around the sans-IO [`Codec`].
//!
//! Commands from any number of tasks are tagged with distinct numeric ids and
//! matched to their responses; events go into a bounded queue. When the socket
//! closes (QEMU exited, was killed, or ran `quit`), every command in flight and
//! every later call fails at once with [`Error::Disconnected`].

use std::collections::{HashMap, VecDeque};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::codec::{Codec, DEFAULT_MAX_MESSAGE_SIZE};
use crate::command::{Command, Execute, QmpCapabilities};
use crate::error::{Error, Result};
use crate::message::{Event, Greeting, Message, QmpError, Response};

/// How a [`Client`] connects and behaves; start from `ClientOptions::default()`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientOptions {
    /// Bound on connecting, reading the greeting and negotiating (default 30 s).
    /// Connecting is retried while the socket does not exist or refuses, since
    /// QEMU creates it a moment after it starts.
    pub connect_timeout: Duration,
    /// Bound on each command's answer; `None` (the default) waits until QEMU
    /// answers or the connection closes.
    pub command_timeout: Option<Duration>,
    /// Events kept unread before the oldest are dropped (default 1024).
    pub event_capacity: usize,
    /// Largest message accepted from QEMU (default [`DEFAULT_MAX_MESSAGE_SIZE`]).
    pub max_message_size: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(30),
            command_timeout: None,
            event_capacity: 1024,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

impl ClientOptions {
    /// Sets [`connect_timeout`](Self::connect_timeout).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`command_timeout`](Self::command_timeout).
    pub fn command_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.command_timeout = timeout;
        self
    }

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
}

/// A negotiated QMP connection. Cheap to clone; clones share the connection,
/// which closes when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    outgoing: mpsc::UnboundedSender<Bytes>,
    next_id: AtomicU64,
    greeting: Greeting,
    command_timeout: Option<Duration>,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

type Outcome = Result<Box<RawValue>, QmpError>;

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    state: Mutex<State>,
    /// Woken whenever an event is queued or the connection closes.
    events_changed: Notify,
}

#[derive(Debug)]
struct State {
    pending: HashMap<u64, oneshot::Sender<Outcome>>,
    events: VecDeque<Event>,
    event_capacity: usize,
    dropped_events: u64,
    /// Why the connection closed, once it has.
    closed: Option<String>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves the state consistent (every
        // critical section is a few container operations), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn disconnected(&self, what: String, reason: &str) -> Error {
        Error::Disconnected {
            path: self.path.clone(),
            what,
            reason: reason.to_owned(),
        }
    }

    /// Marks the connection closed and fails every command in flight.
    fn close(&self, reason: String) {
        let mut state = self.lock();
        if state.closed.is_none() {
            tracing::debug!(path = %self.path.display(), %reason, "qmp connection closed");
            state.closed = Some(reason);
        }
        // Dropping the senders wakes every waiter, which then reads `closed`.
        state.pending.clear();
        drop(state);
        self.events_changed.notify_waiters();
    }

    fn dispatch(&self, message: Message) {
        match message {
            Message::Response(Response { id, outcome }) => {
                let sender = id
                    .as_ref()
                    .and_then(Value::as_u64)
                    .and_then(|id| self.lock().pending.remove(&id));
                match sender {
                    // The receiver may be gone (caller timed out or was cancelled).
                    Some(sender) => drop(sender.send(outcome)),
                    None => {
                        let err = Error::UnmatchedId {
                            id: id.map_or_else(|| "none".to_owned(), |v| v.to_string()),
                        };
                        tracing::warn!(path = %self.path.display(), "{err}");
                    }
                }
            }
            Message::Event(event) => {
                let mut state = self.lock();
                if state.events.len() >= state.event_capacity {
                    state.events.pop_front();
                    state.dropped_events += 1;
                }
                state.events.push_back(event);
                drop(state);
                self.events_changed.notify_waiters();
            }
            Message::Greeting(_) => {
                tracing::warn!(path = %self.path.display(), "ignoring a second qmp greeting");
            }
        }
    }
}

/// Removes a command's pending entry if its caller gives up (timeout, cancellation).
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.lock().pending.remove(&self.id);
    }
}

impl Client {
    /// Connects to QEMU's QMP socket at `path`, reads the greeting and negotiates
    /// capabilities, all within `timeout`.
    pub async fn connect(path: impl AsRef<Path>, timeout: Duration) -> Result<Client> {
        Self::connect_with(path, ClientOptions::default().connect_timeout(timeout)).await
    }

    /// Like [`connect`](Self::connect) with every option spelled out.
    pub async fn connect_with(path: impl AsRef<Path>, options: ClientOptions) -> Result<Client> {
        let path = path.as_ref().to_path_buf();
        let timeout = options.connect_timeout;
        match tokio::time::timeout(timeout, Self::connect_inner(path.clone(), options)).await {
            Ok(result) => result,
            Err(_) => Err(Error::ConnectTimeout { path, timeout }),
        }
    }

    async fn connect_inner(path: PathBuf, options: ClientOptions) -> Result<Client> {
        let stream = loop {
            match UnixStream::connect(&path).await {
                Ok(stream) => break stream,
                // QEMU has not created or started listening on the socket yet.
                Err(e)
                    if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(source) => return Err(Error::Connect { path, source }),
            }
        };
        let (mut read, write) = stream.into_split();
        let mut codec = Codec::with_max_message_size(options.max_message_size);
        let mut buf = BytesMut::with_capacity(8192);
        let negotiation = |reason: String| Error::Negotiation {
            path: path.clone(),
            reason,
        };
        let greeting = loop {
            match codec.decode(&mut buf) {
                Ok(Some(Message::Greeting(g))) => break g,
                Ok(Some(other)) => {
                    return Err(negotiation(format!(
                        "expected the greeting first, got {}",
                        other.to_value()
                    )))
                }
                Ok(None) => {}
                Err(e) => return Err(negotiation(format!("bad greeting: {e}"))),
            }
            match read.read_buf(&mut buf).await {
                Ok(0) => return Err(negotiation("socket closed before the greeting".into())),
                Ok(_) => {}
                Err(source) => return Err(Error::Io { path, source }),
            }
        };

        let shared = Arc::new(Shared {
            path: path.clone(),
            state: Mutex::new(State {
                pending: HashMap::new(),
                events: VecDeque::new(),
                event_capacity: options.event_capacity.max(1),
                dropped_events: 0,
                closed: None,
            }),
            events_changed: Notify::new(),
        });
        let (outgoing, outgoing_rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(shared.clone(), read, codec, buf));
        let writer = tokio::spawn(write_loop(shared.clone(), write, outgoing_rx));
        let client = Client {
            inner: Arc::new(Inner {
                shared,
                outgoing,
                next_id: AtomicU64::new(1),
                greeting,
                command_timeout: options.command_timeout,
                tasks: [reader, writer],
            }),
        };
        client
            .execute(QmpCapabilities::default())
            .await
            .map_err(|e| negotiation(format!("qmp_capabilities: {e}")))?;
        Ok(client)
    }

    /// QEMU's greeting (version, offered capabilities).
    pub fn greeting(&self) -> &Greeting {
        &self.inner.greeting
    }

    /// The socket path this client connected to.
    pub fn path(&self) -> &Path {
        &self.inner.shared.path
    }

    /// Why the connection closed, or `None` while it is open.
    pub fn closed_reason(&self) -> Option<String> {
        self.inner.shared.lock().closed.clone()
    }

    /// Runs a typed command and decodes its return value.
    ///
    /// Safe to call from many tasks at once. Fails with [`Error::Command`] when QEMU
    /// rejects the command and [`Error::Disconnected`] when the connection is or
    /// becomes closed.
    pub async fn execute<C: Command>(&self, command: C) -> Result<C::Output> {
        let name = command.name().to_owned();
        let ret = self.execute_value(&name, &command).await?;
        serde_json::from_str(ret.get()).map_err(|source| Error::DecodeReturn {
            command: name,
            source,
        })
    }

    /// Runs any command by name with JSON `arguments` (an object, or `Value::Null`
    /// for none) and returns QEMU's raw `return` value.
    pub async fn execute_raw(&self, name: &str, arguments: Value) -> Result<Value> {
        self.execute(Execute::new(name, arguments)).await
    }

    /// Like [`execute`](Self::execute) with a bound on the wait for the answer.
    pub async fn execute_timeout<C: Command>(
        &self,
        command: C,
        timeout: Duration,
    ) -> Result<C::Output> {
        let name = command.name().to_owned();
        match tokio::time::timeout(timeout, self.execute(command)).await {
            Ok(result) => result,
            Err(_) => Err(Error::CommandTimeout {
                command: name,
                timeout,
            }),
        }
    }

    async fn execute_value<A: serde::Serialize + ?Sized>(
        &self,
        name: &str,
        arguments: &A,
    ) -> Result<Box<RawValue>> {
        let shared = &*self.inner.shared;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut buf = BytesMut::new();
        Codec::new().encode_command(name, arguments, Some(id), &mut buf)?;
        let what = || format!("command `{name}`");

        let (tx, rx) = oneshot::channel();
        {
            let mut state = shared.lock();
            if let Some(reason) = &state.closed {
                return Err(shared.disconnected(what(), reason));
            }
            state.pending.insert(id, tx);
        }
        let _guard = PendingGuard { shared, id };
        if self.inner.outgoing.send(buf.freeze()).is_err() {
            let reason = shared.lock().closed.clone();
            return Err(shared.disconnected(what(), reason.as_deref().unwrap_or("writer stopped")));
        }
        let answer = match self.inner.command_timeout {
            None => rx.await,
            Some(timeout) => match tokio::time::timeout(timeout, rx).await {
                Ok(answer) => answer,
                Err(_) => {
                    return Err(Error::CommandTimeout {
                        command: name.to_owned(),
                        timeout,
                    })
                }
            },
        };
        match answer {
            Ok(Ok(ret)) => Ok(ret),
            Ok(Err(QmpError { class, desc })) => Err(Error::Command {
                command: name.to_owned(),
                class,
                desc,
            }),
            Err(_closed) => {
                let reason = shared.lock().closed.clone();
                Err(shared.disconnected(what(), reason.as_deref().unwrap_or("connection lost")))
            }
        }
    }

    /// Number of events dropped because the queue was full (oldest first).
    pub fn dropped_events(&self) -> u64 {
        self.inner.shared.lock().dropped_events
    }

    /// Takes every queued event, oldest first.
    pub fn take_events(&self) -> Vec<Event> {
        self.inner.shared.lock().events.drain(..).collect()
    }

    /// Waits up to `timeout` for the next event and takes it off the queue.
    pub async fn next_event(&self, timeout: Duration) -> Result<Event> {
        self.wait_for_event(|_| true, timeout).await
    }

    /// Waits up to `timeout` for an event `filter` accepts and returns it.
    ///
    /// Like NixOS's `wait_for_qmp_event`, it consumes the queue in order: events
    /// before the match are taken off and discarded. Events still queued when the
    /// connection closed are looked at before reporting [`Error::Disconnected`],
    /// so `SHUTDOWN` after `quit` can still be waited for.
    pub async fn wait_for_event<F>(&self, mut filter: F, timeout: Duration) -> Result<Event>
    where
        F: FnMut(&Event) -> bool,
    {
        let shared = &*self.inner.shared;
        let deadline = Instant::now() + timeout;
        loop {
            let notified = shared.events_changed.notified();
            tokio::pin!(notified);
            // Register before looking, so an event queued in between still wakes us.
            notified.as_mut().enable();
            {
                let mut state = shared.lock();
                while let Some(event) = state.events.pop_front() {
                    if filter(&event) {
                        return Ok(event);
                    }
                }
                if let Some(reason) = &state.closed {
                    return Err(shared.disconnected("wait for event".into(), reason));
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(Error::EventTimeout { timeout });
            }
        }
    }
}

async fn read_loop(
    shared: Arc<Shared>,
    mut read: OwnedReadHalf,
    mut codec: Codec,
    mut buf: BytesMut,
) {
    loop {
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(message)) => shared.dispatch(message),
                Ok(None) => break,
                Err(e) => tracing::warn!(path = %shared.path.display(), "skipping qmp input: {e}"),
            }
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(8192);
        }
        match read.read_buf(&mut buf).await {
            Ok(0) => return shared.close("QEMU closed the socket".into()),
            Ok(_) => {}
            Err(e) => return shared.close(format!("read failed: {e}")),
        }
    }
}

async fn write_loop(
    shared: Arc<Shared>,
    mut write: OwnedWriteHalf,
    mut outgoing: mpsc::UnboundedReceiver<Bytes>,
) {
    while let Some(bytes) = outgoing.recv().await {
        if let Err(e) = write.write_all(&bytes).await {
            shared.close(format!("write failed: {e}"));
            return;
        }
    }
}
