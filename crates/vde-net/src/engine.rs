//! The frame path: one thread waiting on every port's datagram socket with epoll (mio),
//! moving frames in batches and forwarding them through [`SwitchCore`].
//!
//! Frames never touch the async runtime. Each pass over the ready ports receives up to
//! [`PORT_BUDGET`] frames from each with one `recvmmsg` (a flooding port cannot starve
//! the others: it waits for the next pass), decides where every frame goes under one
//! lock, then sends each destination its frames with one `sendmmsg`. At load the switch
//! thus makes a few system calls per batch rather than two per frame, and a receiving
//! client is woken once per batch. Optionally (`busy_poll`, off by default) the thread
//! keeps polling for a while after traffic before it blocks in `epoll_wait`: a frame
//! arriving then costs no wake-up. Delayed frames wait in a bounded [`DelayQueue`].
//!
//! [`SwitchCore`]: crate::SwitchCore

use std::os::fd::AsFd;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use mio::net::UnixDatagram;
use mio::{Events, Interest, Poll, Token, Waker};
use tracing::{debug, warn};

use crate::delay_queue::DelayQueue;
use crate::mmsg::{RecvArena, SendBatch};
use crate::port::PortId;
use crate::route::{count_undelivered, route, Outbox};
use crate::server::Shared;
#[cfg(feature = "vhost-user")]
use crate::vhost_link::VhostLink;

/// Largest frame accepted from a client (jumbo frames included).
pub(crate) const MAX_FRAME: usize = 9216;
/// Frames taken from one port in one pass.
const PORT_BUDGET: usize = 64;
/// Frames held between receiving and sending (the batch one lock covers).
const ARENA_SLOTS: usize = 256;
const WAKER: Token = Token(usize::MAX);

/// Settings of the frame thread.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EngineConfig {
    /// Highest port number.
    pub(crate) max_ports: usize,
    /// Bound of the delay queue, in bytes of frames.
    pub(crate) max_delayed_bytes: usize,
    /// How long to keep polling without sleeping after the last frame.
    pub(crate) busy_poll: Duration,
}

/// A request to the engine thread.
pub(crate) enum Cmd {
    /// Start serving a port's connected, non-blocking socket.
    Add(PortId, std::os::unix::net::UnixDatagram),
    /// Start serving a vhost-user port (frames from VDE ports are written into its RX
    /// ring through the link; its own frames are forwarded by its ring thread).
    #[cfg(feature = "vhost-user")]
    AddVhost(Arc<VhostLink>),
    /// Stop serving a port.
    Remove(PortId),
    /// Exit the thread.
    Stop,
}

/// The handle the async side uses to talk to the engine thread.
pub(crate) struct EngineHandle {
    cmds: Sender<Cmd>,
    waker: Arc<Waker>,
    /// Frames forwarded by vhost-user ring threads for the thread to send: to VDE
    /// ports, or after a delay.
    #[cfg(feature = "vhost-user")]
    handed: Arc<std::sync::Mutex<Vec<Handed>>>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl EngineHandle {
    /// Starts the engine thread.
    pub(crate) fn start(shared: Weak<Shared>, config: EngineConfig) -> std::io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (cmds, rx) = std::sync::mpsc::channel();
        #[cfg(feature = "vhost-user")]
        let handed = Arc::new(std::sync::Mutex::new(Vec::new()));
        #[cfg(feature = "vhost-user")]
        let engine_handed = handed.clone();
        let thread = std::thread::Builder::new()
            .name("vde-switch".into())
            .spawn(move || {
                #[allow(unused_mut)]
                let mut engine = Engine::new(shared, poll, rx, config);
                #[cfg(feature = "vhost-user")]
                {
                    engine.handed = engine_handed;
                }
                engine.run()
            })?;
        Ok(EngineHandle {
            cmds,
            waker,
            #[cfg(feature = "vhost-user")]
            handed,
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    /// Sends a command and wakes the thread.
    pub(crate) fn send(&self, cmd: Cmd) {
        if self.cmds.send(cmd).is_ok() {
            let _ = self.waker.wake();
        }
    }

    /// Hands the thread frames a vhost-user ring thread forwarded but cannot send
    /// itself (to VDE ports, whose sockets the thread owns, or after a delay).
    #[cfg(feature = "vhost-user")]
    pub(crate) fn hand_over(&self, frames: &mut Vec<Handed>) {
        self.handed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .append(frames);
        let _ = self.waker.wake();
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

/// A frame for the thread to send to `port` once `due`: (due, port, frame).
#[cfg(feature = "vhost-user")]
pub(crate) type Handed = (Instant, PortId, Vec<u8>);

struct Engine {
    shared: Weak<Shared>,
    poll: Poll,
    cmds: Receiver<Cmd>,
    config: EngineConfig,
    socks: Vec<Option<UnixDatagram>>,
    /// Ports that may have frames waiting (edge-triggered epoll reports each arrival
    /// once), each once, flagged in `queued`.
    pending: Vec<PortId>,
    queued: Vec<bool>,
    /// The ports a pass walks (kept to reuse its allocation).
    ready: Vec<PortId>,
    arena: RecvArena,
    /// The port each arena slot's frame came in on.
    ingress: Vec<PortId>,
    outbox: Outbox,
    sender: SendBatch,
    failed: Vec<usize>,
    /// (port, bytes) of deliveries that could not be made, to count under the lock.
    undelivered: Vec<(PortId, usize)>,
    delayed: DelayQueue,
    /// Each vhost-user port's link, by port number.
    #[cfg(feature = "vhost-user")]
    links: Vec<Option<Arc<VhostLink>>>,
    #[cfg(feature = "vhost-user")]
    handed: Arc<std::sync::Mutex<Vec<Handed>>>,
}

impl Engine {
    fn new(shared: Weak<Shared>, poll: Poll, cmds: Receiver<Cmd>, config: EngineConfig) -> Self {
        let slots = config.max_ports + 1;
        Engine {
            shared,
            poll,
            cmds,
            config,
            socks: (0..slots).map(|_| None).collect(),
            pending: Vec::new(),
            queued: vec![false; slots],
            ready: Vec::new(),
            arena: RecvArena::new(ARENA_SLOTS, MAX_FRAME),
            ingress: Vec::with_capacity(ARENA_SLOTS),
            outbox: Outbox::new(slots),
            sender: SendBatch::default(),
            failed: Vec::new(),
            undelivered: Vec::new(),
            delayed: DelayQueue::new(config.max_delayed_bytes),
            #[cfg(feature = "vhost-user")]
            links: (0..slots).map(|_| None).collect(),
            #[cfg(feature = "vhost-user")]
            handed: Arc::default(),
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        let mut last_frame = Instant::now();
        loop {
            let spinning =
                !self.config.busy_poll.is_zero() && last_frame.elapsed() < self.config.busy_poll;
            let timeout = if !self.pending.is_empty() || spinning {
                Some(Duration::ZERO)
            } else {
                self.delayed
                    .next_due()
                    .map(|due| due.saturating_duration_since(Instant::now()))
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    warn!(error = %e, "vde switch: epoll failed, frame path stopped");
                    return;
                }
            }
            // Commands first, on every wake-up and not only on the waker's event: a
            // port is announced before its client gets the reply, so by the time any
            // frame can be addressed to it, its command is in the channel.
            if !self.commands() {
                return;
            }
            #[cfg(feature = "vhost-user")]
            self.take_handed();
            for ev in events.iter() {
                if ev.token() != WAKER {
                    self.mark_ready(PortId(ev.token().0 as u32));
                }
            }
            let Some(shared) = self.shared.upgrade() else {
                return;
            };
            if self.pass(&shared) {
                last_frame = Instant::now();
            }
            if !self.delayed.is_empty() {
                self.send_due(&shared);
            }
        }
    }

    /// Applies queued commands; false when the thread must stop.
    fn commands(&mut self) -> bool {
        while let Ok(cmd) = self.cmds.try_recv() {
            match cmd {
                Cmd::Add(port, sock) => {
                    let mut sock = UnixDatagram::from_std(sock);
                    let slot = port.0 as usize;
                    if slot >= self.socks.len() {
                        continue;
                    }
                    match self
                        .poll
                        .registry()
                        .register(&mut sock, Token(slot), Interest::READABLE)
                    {
                        Ok(()) => {
                            self.socks[slot] = Some(sock);
                            // Frames may have arrived before registration.
                            self.mark_ready(port);
                        }
                        Err(e) => {
                            warn!(port = port.0, error = %e, "vde switch: cannot watch port")
                        }
                    }
                }
                #[cfg(feature = "vhost-user")]
                Cmd::AddVhost(link) => {
                    if let Some(slot) = self.links.get_mut(link.port.0 as usize) {
                        *slot = Some(link);
                    }
                }
                Cmd::Remove(port) => {
                    #[cfg(feature = "vhost-user")]
                    if let Some(slot) = self.links.get_mut(port.0 as usize) {
                        *slot = None;
                    }
                    if let Some(mut sock) =
                        self.socks.get_mut(port.0 as usize).and_then(Option::take)
                    {
                        let _ = self.poll.registry().deregister(&mut sock);
                    }
                }
                Cmd::Stop => return false,
            }
        }
        true
    }

    fn mark_ready(&mut self, port: PortId) {
        if let Some(q) = self.queued.get_mut(port.0 as usize) {
            if !*q {
                *q = true;
                self.pending.push(port);
            }
        }
    }

    /// One pass over the ready ports: receive, forward, send. Ports left with frames
    /// (they used their whole budget) stay pending for the next pass. Returns whether
    /// any frame moved.
    fn pass(&mut self, shared: &Shared) -> bool {
        // `pending` collects the ports to revisit while this pass walks `ready`.
        std::mem::swap(&mut self.pending, &mut self.ready);
        let mut moved = false;
        for i in 0..self.ready.len() {
            let port = self.ready[i];
            let slot = port.0 as usize;
            self.queued[slot] = false;
            if self.socks[slot].is_none() {
                continue;
            }
            if self.arena.free() < PORT_BUDGET {
                self.flush(shared);
            }
            let Some(sock) = self.socks[slot].as_ref() else {
                continue;
            };
            match self.arena.recv_from(sock.as_fd(), PORT_BUDGET, false) {
                Ok(n) => {
                    self.ingress.extend(std::iter::repeat_n(port, n));
                    moved |= n > 0;
                    if n == PORT_BUDGET {
                        // Maybe more: come back next pass.
                        self.queued[slot] = true;
                        self.pending.push(port);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    self.queued[slot] = true;
                    self.pending.push(port);
                }
                Err(e) => {
                    // ECONNREFUSED and the like: the client is going away; its control
                    // connection closing tears the port down.
                    debug!(port = port.0, error = %e, "vde switch: receive failed");
                }
            }
            debug_assert_eq!(self.ingress.len(), self.arena.len());
        }
        self.ready.clear();
        self.flush(shared);
        moved
    }

    /// Forwards every frame in the arena and sends the immediate deliveries.
    fn flush(&mut self, shared: &Shared) {
        let (ingress, delayed) = (&self.ingress, &mut self.delayed);
        route(
            shared,
            &self.arena,
            |i| ingress[i],
            &mut self.outbox,
            |due, port, frame| delayed.push(due, port, frame),
        );
        let (arena, socks, sender) = (&self.arena, &self.socks, &mut self.sender);
        let (failed, undelivered) = (&mut self.failed, &mut self.undelivered);
        #[cfg(feature = "vhost-user")]
        let links = &self.links;
        self.outbox.drain(|port, queue| {
            let slot = port.0 as usize;
            if let Some(sock) = socks[slot].as_ref() {
                failed.clear();
                sender.send(
                    sock.as_fd(),
                    queue.iter().map(|&i| arena.frame(i as usize)),
                    false,
                    failed,
                );
                for &f in failed.iter() {
                    undelivered.push((port, arena.frame(queue[f] as usize).len()));
                }
            }
            #[cfg(feature = "vhost-user")]
            if let Some(link) = links[slot].as_ref() {
                link.deliver(queue.iter().map(|&i| arena.frame(i as usize)), undelivered);
            }
        });
        self.arena.clear();
        self.ingress.clear();
        count_undelivered(shared, &mut self.undelivered);
    }

    /// Queues the frames vhost-user ring threads handed over: all go through the delay
    /// queue, those already due to be sent at once.
    #[cfg(feature = "vhost-user")]
    fn take_handed(&mut self) {
        let handed = std::mem::take(&mut *self.handed.lock().unwrap_or_else(|e| e.into_inner()));
        if handed.is_empty() {
            return;
        }
        let mut overflow = Vec::new();
        for (due, port, frame) in handed {
            if !self.delayed.push(due, port, &frame) {
                overflow.push((port, frame.len()));
            }
        }
        if let Some(shared) = self.shared.upgrade() {
            let mut state = shared.lock();
            for (port, len) in overflow {
                state.core.note_delay_overflow(port, len);
            }
        }
    }

    /// Sends the delayed frames that are due.
    fn send_due(&mut self, shared: &Shared) {
        let now = Instant::now();
        while let Some((port, frame)) = self.delayed.pop_due(now) {
            #[cfg(feature = "vhost-user")]
            if let Some(Some(link)) = self.links.get(port.0 as usize) {
                link.deliver([&frame[..]], &mut self.undelivered);
                continue;
            }
            if let Some(Some(sock)) = self.socks.get(port.0 as usize) {
                if sock.send(&frame).is_err() {
                    self.undelivered.push((port, frame.len()));
                }
            }
        }
        count_undelivered(shared, &mut self.undelivered);
    }
}
