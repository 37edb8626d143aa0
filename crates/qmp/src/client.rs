//! The async tokio client: a unix socket, one reader task and one writer task
//! feeding the sans-IO [`Session`].
//!
//! The session does the protocol (negotiation, ids, the event queue); this module
//! only moves bytes between it and the socket, wakes the tasks that wait for an
//! answer or an event, and bounds waits with timers. When the socket closes (QEMU
//! exited, was killed, or ran `quit`), every command in flight and every later
//! call fails at once with [`Error::Disconnected`].

use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::codec::DEFAULT_MAX_MESSAGE_SIZE;
use crate::command::{Command, Execute};
use crate::error::{Error, Result};
use crate::message::{Event, Greeting};
use crate::session::{Session, SessionConfig};

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

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    state: Mutex<State>,
    /// Woken whenever an event comes in or the connection closes.
    events_changed: Notify,
    /// Woken when the session has bytes to send (or closed).
    transmit: Notify,
}

#[derive(Debug)]
struct State {
    session: Session,
    /// The task waiting for each command's answer, woken alone when it is in.
    waiters: HashMap<u64, Waker>,
}

impl std::ops::Deref for State {
    type Target = Session;
    fn deref(&self) -> &Session {
        &self.session
    }
}

impl std::ops::DerefMut for State {
    fn deref_mut(&mut self) -> &mut Session {
        &mut self.session
    }
}

impl State {
    /// Wakes the tasks whose command is no longer pending (answered).
    fn wake_answered(&mut self) {
        let session = &self.session;
        self.waiters.retain(|&id, waker| {
            let pending = session.is_pending(id);
            if !pending {
                waker.wake_by_ref();
            }
            pending
        });
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves the state consistent (every
        // critical section is a session call and a map operation), so
        // poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn disconnected(&self, what: String, reason: &str) -> Error {
        Error::Disconnected {
            path: self.path.clone(),
            what,
            reason: reason.to_owned(),
        }
    }

    /// Marks the connection closed, which fails every command in flight.
    fn close(&self, reason: String) {
        let mut state = self.lock();
        if state.closed_reason().is_none() {
            tracing::debug!(path = %self.path.display(), %reason, "qmp connection closed");
        }
        state.close(reason);
        // Every command still waiting now gets Error::Closed.
        for (_, waker) in state.waiters.drain() {
            waker.wake();
        }
        drop(state);
        self.events_changed.notify_waiters();
        self.transmit.notify_one();
    }

    fn log_warnings(&self, session: &mut Session) {
        while let Some(warning) = session.poll_warning() {
            tracing::warn!(path = %self.path.display(), "skipping qmp input: {warning}");
        }
    }
}

/// Cancels a command in the session if its caller gives up (timeout, cancellation).
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.cancel(self.id);
        state.waiters.remove(&self.id);
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
        let (mut read, mut write) = stream.into_split();
        let mut session = Session::with_config(
            SessionConfig::default()
                .event_capacity(options.event_capacity)
                .max_message_size(options.max_message_size),
        );
        let negotiation = |reason: String| Error::Negotiation {
            path: path.clone(),
            reason,
        };
        // The handshake runs here, before the tasks exist: the session sends
        // `qmp_capabilities` itself once the greeting is in.
        let mut buf = vec![0u8; 8192];
        while !session.is_ready() {
            while let Some(bytes) = session.poll_transmit() {
                if let Err(source) = write.write_all(&bytes).await {
                    return Err(Error::Io { path, source });
                }
            }
            let n = match read.read(&mut buf).await {
                Ok(0) if session.greeting().is_none() => {
                    return Err(negotiation("socket closed before the greeting".into()))
                }
                Ok(0) => return Err(negotiation("socket closed during negotiation".into())),
                Ok(n) => n,
                Err(source) => return Err(Error::Io { path, source }),
            };
            session.handle_input(&buf[..n]).map_err(|e| match e {
                Error::Handshake { reason } => negotiation(reason),
                other => other,
            })?;
        }
        let Some(greeting) = session.greeting().cloned() else {
            return Err(negotiation("negotiated without a greeting".into()));
        };

        let shared = Arc::new(Shared {
            path,
            state: Mutex::new(State {
                session,
                waiters: HashMap::new(),
            }),
            events_changed: Notify::new(),
            transmit: Notify::new(),
        });
        // Commands may have been held during the handshake (none here, but the
        // writer looks at once anyway).
        shared.transmit.notify_one();
        let reader = tokio::spawn(read_loop(shared.clone(), read));
        let writer = tokio::spawn(write_loop(shared.clone(), write));
        Ok(Client {
            inner: Arc::new(Inner {
                shared,
                greeting,
                command_timeout: options.command_timeout,
                tasks: [reader, writer],
            }),
        })
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
        self.inner.shared.lock().closed_reason().map(str::to_owned)
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
        let what = || format!("command `{name}`");
        let closed = |e: Error| match e {
            Error::Closed { reason } => shared.disconnected(what(), &reason),
            other => other,
        };
        let id = shared
            .lock()
            .send_command(name, arguments)
            .map_err(closed)?;
        let _guard = PendingGuard { shared, id };
        shared.transmit.notify_one();
        let answer = std::future::poll_fn(|cx| {
            let mut state = shared.lock();
            match state.take_response(id) {
                Some(answer) => {
                    state.waiters.remove(&id);
                    Poll::Ready(answer)
                }
                None => {
                    // Looked at and registered under one lock: the reader cannot
                    // file the answer in between.
                    state.waiters.insert(id, cx.waker().clone());
                    Poll::Pending
                }
            }
        });
        let answer = match self.inner.command_timeout {
            None => answer.await,
            Some(timeout) => match tokio::time::timeout(timeout, answer).await {
                Ok(answer) => answer,
                Err(_) => {
                    return Err(Error::CommandTimeout {
                        command: name.to_owned(),
                        timeout,
                    })
                }
            },
        };
        answer.map_err(closed)
    }

    /// Number of events dropped because the queue was full (oldest first).
    pub fn dropped_events(&self) -> u64 {
        self.inner.shared.lock().dropped_events()
    }

    /// Takes every queued event, oldest first.
    pub fn take_events(&self) -> Vec<Event> {
        self.inner.shared.lock().take_events()
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
                while let Some(event) = state.poll_event() {
                    if filter(&event) {
                        return Ok(event);
                    }
                }
                if let Some(reason) = state.closed_reason() {
                    return Err(shared.disconnected("wait for event".into(), reason));
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(Error::EventTimeout { timeout });
            }
        }
    }
}

async fn read_loop(shared: Arc<Shared>, mut read: OwnedReadHalf) {
    let mut buf = vec![0u8; 16384];
    loop {
        let n = match read.read(&mut buf).await {
            Ok(0) => return shared.close("QEMU closed the socket".into()),
            Ok(n) => n,
            Err(e) => return shared.close(format!("read failed: {e}")),
        };
        let events = {
            let mut state = shared.lock();
            // Negotiation is over, so input problems are warnings, never errors.
            let _ = state.handle_input(&buf[..n]);
            shared.log_warnings(&mut state);
            state.wake_answered();
            state.queued_events() > 0
        };
        if events {
            shared.events_changed.notify_waiters();
        }
    }
}

async fn write_loop(shared: Arc<Shared>, mut write: OwnedWriteHalf) {
    loop {
        shared.transmit.notified().await;
        loop {
            let bytes = {
                let mut state = shared.lock();
                if state.closed_reason().is_some() {
                    return;
                }
                state.poll_transmit()
            };
            let Some(bytes) = bytes else { break };
            if let Err(e) = write.write_all(&bytes).await {
                shared.close(format!("write failed: {e}"));
                return;
            }
        }
    }
}
