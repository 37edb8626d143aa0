//! vhost-user-net ports: QEMU (`-netdev vhost-user`) hands a guest NIC's virtqueues and
//! its shared memory to the switch over a unix socket, and the switch's threads move
//! frames between the guests' rings and the other ports (see below).
//!
//! The protocol is rust-vmm's (`vhost`, `vhost-user-backend`): one
//! [`VhostUserDaemon`] per QEMU connection, on a listening socket the port keeps for its
//! whole life. When QEMU goes away (shutdown, crash, SIGKILL) the daemon's connection
//! fails, its worker thread is told to exit, the guest's memory is unmapped, the MAC
//! addresses learned on the port are forgotten and the port waits for the next QEMU on
//! the same socket: the port number, counters and faults stay.
//!
//! Negotiated: `VIRTIO_F_VERSION_1`, `VIRTIO_NET_F_MRG_RXBUF` (QEMU 7.2 and Linux both
//! use it; the switch also serves drivers without it), `VIRTIO_RING_F_EVENT_IDX` (the
//! guest is signalled, and kicks, only when the other side asked for it) and
//! `VHOST_USER_F_PROTOCOL_FEATURES` with `MQ` (one queue pair). QEMU's messages pass
//! through a small relay (`vhost_shim`) that fixes up QEMU 7.2's order of messages for
//! the vhost crate. Not offered: offloads (checksum, TSO): every frame is whole and
//! checksummed, as on a VDE port.
//!
//! Frames move on the ring threads: the thread that polls a guest's TX kick takes its
//! TX chains a batch at a time, each frame copied once into the batch, forwards the
//! batch under one lock of the switch ([`route`]) and writes each destination's frames
//! straight into that guest's RX ring ([`VhostLink::deliver`]); frames for VDE ports,
//! and delayed ones, go to the frame thread, which owns the VDE sockets and the delay
//! queue.

use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use tracing::{debug, info, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::engine::Handed;
use crate::error::{Error, Result};
use crate::port::PortId;
use crate::route::{count_undelivered, route, Outbox};
use crate::server::Shared;
use crate::vhost_link::{RxRing, VhostLink};
use crate::vhost_ring::{take_tx, FrameBatch, HeaderLayout};

/// Queue indices of a single-queue-pair virtio-net device (virtio 1.2, 5.1.2).
const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
const NUM_QUEUES: usize = 2;
/// Our wake eventfd's id in the worker's epoll: ids up to `NUM_QUEUES` are the
/// library's (queues, then its exit and vring-enabled events).
const WAKE_EVENT: u16 = NUM_QUEUES as u16 + 1;
/// Largest ring QEMU may configure (its `rx_queue_size`/`tx_queue_size` go to 1024).
const MAX_QUEUE_SIZE: usize = 1024;
/// TX chains taken and forwarded per batch.
const TX_BUDGET: usize = 64;
/// Batches taken per TX event before the ring thread serves its other events (the
/// guest's RX kicks, the library's exit event): a guest that keeps its TX ring full
/// is served in turns, its thread woken again by its own eventfd.
const TX_BATCHES_PER_EVENT: usize = 8;

/// Names of the relays' private sockets.
static RELAY_SEQ: AtomicU64 = AtomicU64::new(0);

const LISTENER: Token = Token(0);
const STOP: Token = Token(1);

/// The switch's handle on one vhost-user port: its socket and its thread.
pub(crate) struct VhostPort {
    pub(crate) socket: PathBuf,
    pub(crate) link: Arc<VhostLink>,
    control: Arc<PortControl>,
    thread: Option<JoinHandle<()>>,
}

/// What the switch needs to stop a port's thread, whatever it is doing.
struct PortControl {
    stop: AtomicBool,
    waker: Waker,
    /// The connection being served, to cut it on stop.
    conn: Mutex<Option<ShutdownHandle>>,
}

impl VhostPort {
    /// Binds `socket` and starts the port's thread; QEMU may connect once this returns.
    pub(crate) fn start(shared: Weak<Shared>, port: PortId, socket: &Path) -> Result<VhostPort> {
        let listener = bind(socket, port)?;
        let link = Arc::new(VhostLink::new(port).map_err(|e| {
            Error::io(format!("creating the eventfd of vhost-user port {port}"), e)
        })?);
        let poll = Poll::new().map_err(|e| Error::io("creating an epoll instance", e))?;
        let waker = Waker::new(poll.registry(), STOP)
            .map_err(|e| Error::io("creating an epoll waker", e))?;
        let control = Arc::new(PortControl {
            stop: AtomicBool::new(false),
            waker,
            conn: Mutex::new(None),
        });
        let thread = std::thread::Builder::new()
            .name(format!("vhost-port-{port}"))
            .spawn({
                let (link, control, socket) = (link.clone(), control.clone(), socket.to_owned());
                move || serve(shared, link, control, poll, listener, &socket)
            })
            .map_err(|e| Error::io(format!("starting the thread of vhost-user port {port}"), e))?;
        Ok(VhostPort {
            socket: socket.to_owned(),
            link,
            control,
            thread: Some(thread),
        })
    }

    /// Cuts any connection, stops the thread and removes the socket.
    pub(crate) fn stop(mut self) {
        self.control.stop.store(true, Ordering::SeqCst);
        if let Some(conn) = self
            .control
            .conn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            conn.shutdown();
        }
        let _ = self.control.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Binds the port's listening socket, replacing a stale socket file (nobody serving
/// it) but never a live one or a file that is not a socket.
fn bind(socket: &Path, port: PortId) -> Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    let bad = |why: String| Error::VhostUserSocket {
        path: socket.to_owned(),
        why,
    };
    if socket.as_os_str().is_empty() {
        return Err(bad("the path is empty".into()));
    }
    // sockaddr_un's sun_path holds 108 bytes, NUL included.
    if socket.as_os_str().len() > 107 {
        return Err(bad(format!(
            "the path is {} bytes long, unix sockets allow 107",
            socket.as_os_str().len()
        )));
    }
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(bad("a file that is not a socket is in the way".into()));
        }
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return Err(bad("another process is serving this socket".into()));
            }
            let _ = std::fs::remove_file(socket);
        }
        Err(_) => {}
    }
    UnixListener::bind(socket).map_err(|e| {
        Error::io(
            format!(
                "binding vhost-user socket {} for port {port}",
                socket.display()
            ),
            e,
        )
    })
}

/// The port's thread: waits for QEMU, serves it until it goes, and again.
fn serve(
    shared: Weak<Shared>,
    link: Arc<VhostLink>,
    control: Arc<PortControl>,
    mut poll: Poll,
    listener: UnixListener,
    socket: &Path,
) {
    let port = link.port;
    let fd = listener.as_raw_fd();
    if let Err(e) = poll
        .registry()
        .register(&mut SourceFd(&fd), LISTENER, Interest::READABLE)
    {
        warn!(port = port.0, error = %e, "vhost-user port: cannot watch its socket, port dead");
        return;
    }
    let mut events = Events::with_capacity(4);
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                warn!(port = port.0, error = %e, "vhost-user port: epoll failed, port dead");
                return;
            }
        }
        if control.stop.load(Ordering::SeqCst) {
            return;
        }
        if !events.iter().any(|e| e.token() == LISTENER) {
            continue;
        }
        match serve_one(&shared, &link, &control, &listener) {
            Ok(()) => {
                info!(port = port.0, socket = %socket.display(), "vhost-user port: QEMU disconnected")
            }
            Err(e) => {
                warn!(port = port.0, socket = %socket.display(), "vhost-user port: connection ended: {e}");
                // EMFILE and the like leave the socket readable: back off, don't spin.
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        // Forgotten before the port reads as disconnected, so that whoever sees it
        // disconnected finds its addresses gone.
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.lock().core.forget_macs(port);
        link.set_connected(false);
    }
}

/// Accepts one QEMU and serves it until it disconnects.
fn serve_one(
    shared: &Weak<Shared>,
    link: &Arc<VhostLink>,
    control: &PortControl,
    listener: &UnixListener,
) -> std::result::Result<(), String> {
    let port = link.port;
    let backend = Arc::new(NetBackend::new(shared.clone(), link.clone()));
    let mut daemon = VhostUserDaemon::new(
        format!("vhost-user-{port}"),
        backend.clone(),
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(|e| e.to_string())?;
    let handlers = daemon.get_epoll_handlers();
    for h in &handlers {
        h.register_listener(
            link.wake_rx.as_raw_fd(),
            EventSet::IN,
            u64::from(WAKE_EVENT),
        )
        .map_err(|e| format!("cannot watch the port's eventfd: {e}"))?;
    }
    // QEMU talks to the request handler through the relay (see `vhost_shim`). The
    // daemon only accepts from a listener: a private one, in the abstract namespace.
    let (qemu, _) = listener
        .accept()
        .map_err(|e| format!("cannot accept QEMU's connection: {e}"))?;
    let name = format!(
        "vmrig-vhost-{}-{}-{}",
        std::process::id(),
        port,
        RELAY_SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .map_err(|e| format!("cannot name the relay socket: {e}"))?;
    let private =
        UnixListener::bind_addr(&addr).map_err(|e| format!("cannot bind the relay socket: {e}"))?;
    let to_handler = std::os::unix::net::UnixStream::connect_addr(&addr)
        .map_err(|e| format!("cannot connect the relay: {e}"))?;
    crate::vhost_shim::relay(qemu, to_handler)
        .map_err(|e| format!("cannot start the relay: {e}"))?;
    let mut l = Listener::from(private);
    let started = daemon.start(&mut l).map_err(|e| e.to_string());
    let result = started.and_then(|()| {
        *control.conn.lock().unwrap_or_else(|e| e.into_inner()) = daemon.shutdown_handle();
        if control.stop.load(Ordering::SeqCst) {
            daemon.request_shutdown();
        }
        info!(port = port.0, "vhost-user port: QEMU connected");
        match daemon.wait() {
            // QEMU closing its end is how a connection normally ends.
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            )) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    });
    control
        .conn
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    // The worker threads only exit when told.
    for h in &handlers {
        h.send_exit_event();
    }
    // Whatever the worker still does from here on forwards nothing: the caller forgets
    // the port's MAC addresses next, and a frame of the dead guest must not teach them
    // again.
    backend.close();
    result
}

/// The virtio-net device seen by one QEMU connection.
struct NetBackend {
    shared: Weak<Shared>,
    link: Arc<VhostLink>,
    mem: Mutex<Option<GuestMemoryAtomic<GuestMemoryMmap>>>,
    acked: AtomicU64,
    /// The ring thread's forwarding state (only that thread takes it: one uncontended
    /// lock per kick).
    tx: Mutex<TxWork>,
}

/// What the ring thread forwards a TX batch with.
struct TxWork {
    batch: FrameBatch,
    outbox: Outbox,
    /// For the frame thread: frames to VDE ports, or delayed.
    handed: Vec<Handed>,
    undelivered: Vec<(PortId, usize)>,
    /// The connection ended: take nothing more from the guest.
    closed: bool,
}

impl NetBackend {
    fn new(shared: Weak<Shared>, link: Arc<VhostLink>) -> Self {
        let ports = shared
            .upgrade()
            .map_or(0, |s| s.lock().core.config().max_ports as usize + 1);
        NetBackend {
            shared,
            link,
            mem: Mutex::new(None),
            acked: AtomicU64::new(0),
            tx: Mutex::new(TxWork {
                batch: FrameBatch::new(TX_BUDGET),
                outbox: Outbox::new(ports),
                handed: Vec::new(),
                undelivered: Vec::new(),
                closed: false,
            }),
        }
    }

    /// Stops the forwarding of TX frames, waiting for a batch under way.
    fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
    }

    fn layout(&self) -> HeaderLayout {
        HeaderLayout::from_features(self.acked.load(Ordering::SeqCst))
    }

    /// Takes the guest's TX chains a batch at a time (each frame copied once, into the
    /// batch), returns them as used with one signal per batch, forwards the batch and
    /// writes each destination's frames straight into its RX ring.
    fn process_tx(&self, vring: &VringRwLock, mem: &GuestMemoryMmap) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let port = self.link.port;
        let layout = self.layout();
        let mut work = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let work = &mut *work;
        if work.closed {
            return;
        }
        let mut empty = 0;
        for batches in 1.. {
            work.batch.clear();
            let (stats, signal, more) = {
                let mut state = vring.get_mut();
                let queue = state.get_queue_mut();
                let stats = take_tx(queue, mem, layout, TX_BUDGET, &mut work.batch);
                let signal = stats.chains > 0 && queue.needs_notification(mem).unwrap_or(true);
                // A short batch emptied the ring: ask for the next kick (with EVENT_IDX,
                // avail_event moves here), and go on if chains came meanwhile. Chains that
                // are announced but cannot be taken (an impossible avail index, a used
                // ring outside memory) get one more pass, not a spin.
                let came = queue.enable_notification(mem).unwrap_or(false);
                empty = if stats.chains == 0 { empty + 1 } else { 0 };
                let more = stats.chains == TX_BUDGET || (came && empty < 2);
                (stats, signal, more)
            };
            if signal {
                let _ = vring.signal_used_queue();
            }
            if stats.bad > 0 {
                debug!(
                    port = port.0,
                    bad = stats.bad,
                    "vhost-user port: malformed TX chains dropped"
                );
                shared.lock().core.note_bad_ingress(port, stats.bad as u64);
            }
            let handed = &mut work.handed;
            route(
                &shared,
                &work.batch,
                |_| port,
                &mut work.outbox,
                |due, to, frame| {
                    handed.push((due, to, frame.to_vec()));
                    true
                },
            );
            {
                let links = shared.links();
                let (batch, undelivered) = (&work.batch, &mut work.undelivered);
                work.outbox.drain(|to, frames| {
                    let frames = frames.iter().map(|&i| batch.frame(usize::from(i)));
                    match links.get(to.0 as usize) {
                        Some(Some(link)) => link.deliver(frames, undelivered),
                        // A VDE port: its socket is the frame thread's.
                        _ => {
                            let now = Instant::now();
                            handed.extend(frames.map(|f| (now, to, f.to_vec())));
                        }
                    }
                });
            }
            if !work.handed.is_empty() {
                if let Some(engine) = shared.engine() {
                    engine.hand_over(&mut work.handed);
                }
                work.handed.clear();
            }
            count_undelivered(&shared, &mut work.undelivered);
            if !more {
                break;
            }
            if batches == TX_BATCHES_PER_EVENT {
                // Chains are left: come back after the other events.
                self.link.wake();
                break;
            }
        }
    }

    /// The guest refilled its RX ring: delivers the frames held for it.
    fn process_rx(&self) {
        let mut undelivered = Vec::new();
        self.link.put_held(&mut undelivered);
        if !undelivered.is_empty() {
            if let Some(shared) = self.shared.upgrade() {
                count_undelivered(&shared, &mut undelivered);
            }
        }
    }
}

impl VhostUserBackend for NetBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        // VHOST_USER_F_PROTOCOL_FEATURES is required by QEMU 7.2's vhost-user-net
        // (it enables the rings with SET_VRING_ENABLE); `vhost_shim` makes its order
        // of messages acceptable to the vhost crate.
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_NET_F_MRG_RXBUF)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&self, features: u64) {
        self.acked.store(features, Ordering::SeqCst);
        self.link.set_layout(HeaderLayout::from_features(features));
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // One queue pair; no REPLY_ACK, so that no reply is due for a message the relay
        // swallows.
        VhostUserProtocolFeatures::MQ
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The library sets it on the queues, whose `needs_notification` and
        // `enable_notification` then follow `used_event` and `avail_event`.
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> std::io::Result<()> {
        *self.mem.lock().unwrap_or_else(|e| e.into_inner()) = Some(mem);
        self.link.set_connected(true);
        // The ring thread learns the RX ring (for the link) on its next event.
        self.link.wake();
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> std::io::Result<()> {
        // Never return an error: the library stops the worker thread on one, and
        // nothing here is worth losing the port over.
        if device_event == WAKE_EVENT {
            let _ = self.link.wake_rx.consume();
        }
        let Some(mem) = self.mem.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return Ok(());
        };
        let [rx, tx] = vrings else {
            return Ok(());
        };
        self.link.attach(|| RxRing {
            vring: rx.clone(),
            mem: mem.clone(),
        });
        let mem = mem.memory();
        match device_event {
            RX_QUEUE => self.process_rx(),
            TX_QUEUE => {
                if tx.get_ref().is_enabled() {
                    self.process_tx(tx, &mem);
                }
            }
            _ => {
                self.process_rx();
                if tx.get_ref().is_enabled() {
                    self.process_tx(tx, &mem);
                }
            }
        }
        Ok(())
    }
}
