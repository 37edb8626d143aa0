//! The frame path: one thread waiting on every port's datagram socket with epoll (mio),
//! draining ready sockets in batches and forwarding through [`SwitchCore`].
//!
//! Frames never touch the async runtime: a wake-up costs one `epoll_wait`, and a busy
//! port is read until its queue is empty, so at load the switch makes one receive and
//! one send system call per frame and copy. Delayed frames wait in a bounded
//! [`DelayQueue`].

use std::io::Write;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use mio::net::UnixDatagram;
use mio::{Events, Interest, Poll, Token, Waker};
use tracing::{debug, warn};

use crate::delay_queue::DelayQueue;
use crate::pcap;
use crate::port::PortId;
use crate::server::Shared;

/// Largest frame accepted from a client (jumbo frames included).
pub(crate) const MAX_FRAME: usize = 9216;
/// Frames read from one port before taking the lock to forward them.
const BATCH: usize = 32;
const WAKER: Token = Token(usize::MAX);

/// A request to the engine thread.
pub(crate) enum Cmd {
    /// Start serving a port's connected, non-blocking socket.
    Add(PortId, std::os::unix::net::UnixDatagram),
    /// Stop serving a port.
    Remove(PortId),
    /// Exit the thread.
    Stop,
}

/// The handle the async side uses to talk to the engine thread.
pub(crate) struct EngineHandle {
    cmds: Sender<Cmd>,
    waker: Arc<Waker>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl EngineHandle {
    /// Starts the engine thread.
    pub(crate) fn start(
        shared: std::sync::Weak<Shared>,
        max_ports: usize,
        max_delayed_bytes: usize,
    ) -> std::io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (cmds, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("vde-switch".into())
            .spawn(move || run(shared, poll, rx, max_ports, max_delayed_bytes))?;
        Ok(EngineHandle {
            cmds,
            waker,
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    /// Sends a command and wakes the thread.
    pub(crate) fn send(&self, cmd: Cmd) {
        if self.cmds.send(cmd).is_ok() {
            let _ = self.waker.wake();
        }
    }

    /// Stops the thread and waits for it (never call from the engine thread).
    pub(crate) fn stop(&self) {
        self.send(Cmd::Stop);
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        // May run on the engine thread itself (last reference): no join here.
        self.send(Cmd::Stop);
    }
}

fn run(
    shared: std::sync::Weak<Shared>,
    mut poll: Poll,
    cmds: Receiver<Cmd>,
    max_ports: usize,
    max_delayed_bytes: usize,
) {
    let mut socks: Vec<Option<UnixDatagram>> = (0..=max_ports).map(|_| None).collect();
    let mut events = Events::with_capacity(256);
    let mut delayed = DelayQueue::new(max_delayed_bytes);
    let mut buf = vec![0u8; BATCH * MAX_FRAME];
    let mut lens = [0usize; BATCH];
    let mut ready: Vec<PortId> = Vec::new();
    loop {
        let timeout = delayed
            .next_due()
            .map(|due| due.saturating_duration_since(Instant::now()));
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                warn!(error = %e, "vde switch: epoll failed, frame path stopped");
                return;
            }
        }
        ready.clear();
        // Commands first, on every wake-up and not only on the waker's event: a port
        // is announced before its client gets the reply, so by the time any frame can
        // be addressed to it, its command is in the channel.
        while let Ok(cmd) = cmds.try_recv() {
            match cmd {
                Cmd::Add(port, sock) => {
                    let mut sock = UnixDatagram::from_std(sock);
                    let slot = port.0 as usize;
                    match poll
                        .registry()
                        .register(&mut sock, Token(slot), Interest::READABLE)
                    {
                        Ok(()) if slot < socks.len() => {
                            socks[slot] = Some(sock);
                            // Frames may have arrived before registration.
                            ready.push(port);
                        }
                        Ok(()) => {}
                        Err(e) => {
                            warn!(port = port.0, error = %e, "vde switch: cannot watch port")
                        }
                    }
                }
                Cmd::Remove(port) => {
                    if let Some(mut sock) = socks.get_mut(port.0 as usize).and_then(Option::take) {
                        let _ = poll.registry().deregister(&mut sock);
                    }
                }
                Cmd::Stop => return,
            }
        }
        for ev in events.iter() {
            if ev.token() != WAKER {
                ready.push(PortId(ev.token().0 as u32));
            }
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        for &port in &ready {
            let Some(Some(sock)) = socks.get(port.0 as usize) else {
                continue;
            };
            // Edge-triggered: read until the queue is empty.
            loop {
                let mut n = 0;
                let mut empty = false;
                while n < BATCH {
                    match sock.recv(&mut buf[n * MAX_FRAME..(n + 1) * MAX_FRAME]) {
                        Ok(len) => {
                            lens[n] = len;
                            n += 1;
                        }
                        Err(e) => {
                            if e.kind() != std::io::ErrorKind::WouldBlock {
                                // ECONNREFUSED and the like: the client is going away;
                                // its control connection closing tears the port down.
                                debug!(port = port.0, error = %e, "vde switch: receive failed");
                            }
                            empty = true;
                            break;
                        }
                    }
                }
                if n > 0 {
                    forward_batch(&shared, port, &buf, &lens[..n], &socks, &mut delayed);
                }
                if empty {
                    break;
                }
            }
        }
        if !delayed.is_empty() {
            let now = Instant::now();
            while let Some((port, frame)) = delayed.pop_due(now) {
                if let Some(Some(sock)) = socks.get(port.0 as usize) {
                    if sock.send(&frame).is_err() {
                        shared.lock().core.note_send_failed(port, frame.len());
                    }
                }
            }
        }
    }
}

fn forward_batch(
    shared: &Shared,
    port: PortId,
    buf: &[u8],
    lens: &[usize],
    socks: &[Option<UnixDatagram>],
    delayed: &mut DelayQueue,
) {
    let now = Instant::now();
    let mut guard = shared.lock();
    let state = &mut *guard;
    for (i, &len) in lens.iter().enumerate() {
        let frame = &buf[i * MAX_FRAME..i * MAX_FRAME + len];
        if let Some(cap) = state.capture.as_mut() {
            pcap::encode_record(SystemTime::now(), frame, &mut cap.buf);
            if let Err(e) = cap.file.write_all(&cap.buf) {
                warn!(path = %cap.path.display(), error = %e, "vde switch: capture stopped");
                state.capture = None;
            } else {
                cap.buf.clear();
            }
        }
        state
            .core
            .forward(port, frame, now, &mut state.rng, &mut state.deliveries);
        for d in state.deliveries.iter() {
            let Some(Some(target)) = socks.get(d.port.0 as usize) else {
                continue;
            };
            if d.delay.is_zero() {
                if target.send(frame).is_err() {
                    state.core.note_send_failed(d.port, len);
                }
            } else if !delayed.push(now + d.delay, d.port, frame) {
                state.core.note_delay_overflow(d.port, len);
            }
        }
    }
}
