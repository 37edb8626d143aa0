//! The tokio adapter: control socket, credential and request checks, one datagram socket
//! per port (handed to the frame thread in `engine`), and the control API of a running
//! switch.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::{AbortHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::capture::Capture;
use crate::delay_queue::DEFAULT_MAX_DELAYED_BYTES;
use crate::engine::{Cmd, EngineConfig, EngineHandle};
use crate::error::{Error, Result};
use crate::port::{LinkFaults, PortId, PortInfo};
use crate::request::{encode_reply, PortWish, Request, RequestDecoder, MAX_REQUEST_LEN};
use crate::switch::{Delivery, SwitchConfig, SwitchCore};
#[cfg(feature = "vhost-user")]
use crate::vhost_user::VhostPort;

/// How to start a switch.
#[derive(Debug, Clone)]
pub struct SwitchOptions {
    /// The switch directory: holds `ctl` and the port sockets. Created if missing.
    pub dir: PathBuf,
    /// Mode of the directory (vde_switch's `--dirmode`), 0700 by default.
    pub dir_mode: u32,
    /// Forwarding settings.
    pub config: SwitchConfig,
    /// How long a client may take to send its request.
    pub handshake_timeout: Duration,
    /// How many handshakes may be in progress at once; further connections are closed.
    pub max_pending: usize,
    /// Bound of the queue of frames held back by a delay fault, in bytes of frame data
    /// (default [`DEFAULT_MAX_DELAYED_BYTES`], 16 MiB). A delayed frame that would pass
    /// it is dropped and counted in its egress port's `drops` and `delay_drops`.
    pub max_delayed_bytes: usize,
    /// How long the frame thread keeps polling, without sleeping, after the last frame
    /// it moved (default zero: it sleeps as soon as no frame is waiting). 20 us nearly
    /// halves the median latency of an otherwise idle switch (measured 30 -> 17 us one
    /// way), at the price of CPU time that QEMU guests on the same host would otherwise
    /// get: on a 2-vCPU host saturation throughput came out a few percent lower.
    pub busy_poll: Duration,
}

impl SwitchOptions {
    /// Defaults for a switch in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SwitchOptions {
            dir: dir.into(),
            dir_mode: 0o700,
            config: SwitchConfig::default(),
            handshake_timeout: Duration::from_secs(5),
            max_pending: 64,
            max_delayed_bytes: DEFAULT_MAX_DELAYED_BYTES,
            busy_poll: Duration::ZERO,
        }
    }

    /// Sets hub mode.
    pub fn hub(mut self, hub: bool) -> Self {
        self.config.hub = hub;
        self
    }
}

pub(crate) struct State {
    pub(crate) core: SwitchCore,
    /// Each port's files in the directory: our data socket and the client's.
    data_paths: HashMap<PortId, [PathBuf; 2]>,
    pub(crate) capture: Option<Capture>,
    pub(crate) rng: SmallRng,
    pub(crate) deliveries: Vec<Delivery>,
    /// The vhost-user ports, with their sockets and threads.
    #[cfg(feature = "vhost-user")]
    vhost: HashMap<PortId, VhostPort>,
}

pub(crate) struct Shared {
    dir: PathBuf,
    uid: u32,
    started: Instant,
    state: Mutex<State>,
    next_sock: AtomicU64,
    opts: SwitchOptions,
    engine: std::sync::OnceLock<EngineHandle>,
    /// Each vhost-user port's receiving side, by port number: where the ring threads
    /// write the frames they forward.
    #[cfg(feature = "vhost-user")]
    pub(crate) links: std::sync::RwLock<Vec<Option<Arc<crate::vhost_link::VhostLink>>>>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counters at worst off by one frame:
        // keep serving rather than poisoning every later frame.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The frame thread's handle (set once the switch has started).
    #[cfg(feature = "vhost-user")]
    pub(crate) fn engine(&self) -> Option<&EngineHandle> {
        self.engine.get()
    }

    /// The vhost-user ports' receiving sides.
    #[cfg(feature = "vhost-user")]
    pub(crate) fn links(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, Vec<Option<Arc<crate::vhost_link::VhostLink>>>> {
        self.links.read().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(feature = "vhost-user")]
    fn set_link(&self, port: PortId, link: Option<Arc<crate::vhost_link::VhostLink>>) {
        let mut links = self.links.write().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = links.get_mut(port.0 as usize) {
            *slot = link;
        }
    }
}

/// A running switch. Dropping it stops every task and removes its sockets.
pub struct Switch {
    shared: Arc<Shared>,
    background: Vec<AbortHandle>,
    created_dir: bool,
}

impl std::fmt::Debug for Switch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Switch")
            .field("dir", &self.shared.dir)
            .finish()
    }
}

impl Switch {
    /// Creates the directory and the control socket and starts serving on the current
    /// tokio runtime.
    pub async fn start(opts: SwitchOptions) -> Result<Switch> {
        let created_dir = !opts.dir.exists();
        std::fs::create_dir_all(&opts.dir).map_err(|e| {
            Error::io(
                format!("creating switch directory {}", opts.dir.display()),
                e,
            )
        })?;
        std::fs::set_permissions(&opts.dir, std::fs::Permissions::from_mode(opts.dir_mode))
            .map_err(|e| Error::io(format!("setting mode of {}", opts.dir.display()), e))?;
        let dir = opts
            .dir
            .canonicalize()
            .map_err(|e| Error::io(format!("resolving {}", opts.dir.display()), e))?;
        let ctl = dir.join("ctl");
        if ctl.exists() {
            if std::os::unix::net::UnixStream::connect(&ctl).is_ok() {
                return Err(Error::io(
                    format!("binding {}", ctl.display()),
                    std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        "another switch is serving this directory",
                    ),
                ));
            }
            let _ = std::fs::remove_file(&ctl);
        }
        let listener = UnixListener::bind(&ctl)
            .map_err(|e| Error::io(format!("binding {}", ctl.display()), e))?;
        let uid = std::fs::metadata(&ctl)
            .map_err(|e| Error::io(format!("reading owner of {}", ctl.display()), e))?
            .uid();
        let engine_config = EngineConfig {
            max_ports: opts.config.max_ports as usize,
            max_delayed_bytes: opts.max_delayed_bytes,
            busy_poll: opts.busy_poll,
        };
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            uid,
            started: Instant::now(),
            state: Mutex::new(State {
                core: SwitchCore::new(opts.config.clone()),
                data_paths: HashMap::new(),
                capture: None,
                rng: SmallRng::from_entropy(),
                deliveries: Vec::new(),
                #[cfg(feature = "vhost-user")]
                vhost: HashMap::new(),
            }),
            next_sock: AtomicU64::new(0),
            opts,
            engine: std::sync::OnceLock::new(),
            #[cfg(feature = "vhost-user")]
            links: std::sync::RwLock::new(vec![None; engine_config.max_ports + 1]),
        });
        let engine = EngineHandle::start(Arc::downgrade(&shared), engine_config)
            .map_err(|e| Error::io("starting the switch's frame thread", e))?;
        let _ = shared.engine.set(engine);
        let accept = tokio::spawn(accept_loop(shared.clone(), listener)).abort_handle();
        let weak = Arc::downgrade(&shared);
        let ageing = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                shared.lock().core.expire(Instant::now());
            }
        })
        .abort_handle();
        info!(dir = %dir.display(), hub = shared.opts.config.hub, "vde switch listening");
        Ok(Switch {
            shared,
            background: vec![accept, ageing],
            created_dir,
        })
    }

    /// The switch directory (canonical), what `-netdev vde,sock=` and `vde_plug` take.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// How long the switch has been running.
    pub fn uptime(&self) -> Duration {
        self.shared.started.elapsed()
    }

    /// Whether this switch is a hub.
    pub fn is_hub(&self) -> bool {
        self.shared.opts.config.hub
    }

    /// The ports in use, with counters and learned addresses.
    pub fn ports(&self) -> Vec<PortInfo> {
        self.shared.lock().core.ports()
    }

    /// The port a MAC address was learned on (a guest's NIC has a known MAC).
    pub fn port_of(&self, mac: [u8; 6]) -> Option<PortId> {
        self.shared.lock().core.port_of(&mac, Instant::now())
    }

    /// Sets every fault of one port at once.
    pub fn set_port_faults(&self, port: PortId, faults: LinkFaults) -> Result<()> {
        self.shared.lock().core.set_port_faults(port, faults)
    }

    /// The faults set on one port.
    pub fn port_faults(&self, port: PortId) -> Result<LinkFaults> {
        self.shared.lock().core.port_faults(port)
    }

    fn update_port(&self, port: PortId, f: impl FnOnce(&mut LinkFaults)) -> Result<()> {
        let mut state = self.shared.lock();
        let mut faults = state.core.port_faults(port)?;
        f(&mut faults);
        state.core.set_port_faults(port, faults)
    }

    fn update_vlan(&self, f: impl FnOnce(&mut LinkFaults)) -> Result<()> {
        let mut state = self.shared.lock();
        let mut faults = state.core.vlan_faults();
        f(&mut faults);
        state.core.set_vlan_faults(faults)
    }

    /// Brings one port's link up or down.
    pub fn set_port_link(&self, port: PortId, up: bool) -> Result<()> {
        self.update_port(port, |f| f.up = up)
    }

    /// Sets one port's random loss, in percent.
    pub fn set_port_loss(&self, port: PortId, percent: f64) -> Result<()> {
        self.update_port(port, |f| f.loss_percent = percent)
    }

    /// Sets one port's added delay and jitter.
    pub fn set_port_delay(&self, port: PortId, delay: Duration, jitter: Duration) -> Result<()> {
        self.update_port(port, |f| {
            f.delay = delay;
            f.jitter = jitter;
        })
    }

    /// Brings the whole VLAN (this switch) up or down.
    pub fn set_vlan_link(&self, up: bool) -> Result<()> {
        self.update_vlan(|f| f.up = up)
    }

    /// Sets the VLAN-wide random loss, in percent.
    pub fn set_vlan_loss(&self, percent: f64) -> Result<()> {
        self.update_vlan(|f| f.loss_percent = percent)
    }

    /// Sets the VLAN-wide added delay and jitter.
    pub fn set_vlan_delay(&self, delay: Duration, jitter: Duration) -> Result<()> {
        self.update_vlan(|f| {
            f.delay = delay;
            f.jitter = jitter;
        })
    }

    /// The VLAN-wide faults.
    pub fn vlan_faults(&self) -> LinkFaults {
        self.shared.lock().core.vlan_faults()
    }

    /// Splits ports into groups that cannot reach each other; ports in no group form
    /// one more group. See [`SwitchCore::set_partition`].
    pub fn partition(&self, groups: &[Vec<PortId>]) {
        self.shared.lock().core.set_partition(groups);
    }

    /// Removes any partition.
    pub fn heal(&self) {
        self.shared.lock().core.set_partition(&[]);
    }

    /// Starts writing every frame the switch receives to a pcap file (replacing any
    /// capture in progress, which is finished first).
    ///
    /// Frames are written by a thread of their own, never under the switch's lock.
    pub fn start_capture(&self, path: &Path) -> Result<()> {
        let capture = Capture::create(path)?;
        let old = self.shared.lock().capture.replace(capture);
        if let Some(old) = old {
            old.finish()?;
        }
        Ok(())
    }

    /// Stops the capture and waits until every frame captured so far is in the
    /// file; returns its path.
    pub fn stop_capture(&self) -> Result<Option<PathBuf>> {
        let cap = self.shared.lock().capture.take();
        cap.map(Capture::finish).transpose()
    }
}

/// vhost-user ports (feature `vhost-user`): QEMU connects with
/// `-chardev socket,id=c,path=SOCKET -netdev vhost-user,id=n,chardev=c -device
/// virtio-net-pci,netdev=n`, and its guest RAM must be shared (`-object
/// memory-backend-memfd,id=mem,size=SIZE,share=on -machine memory-backend=mem`).
#[cfg(feature = "vhost-user")]
impl Switch {
    /// Adds a vhost-user port listening on `socket` and returns its number.
    ///
    /// The port serves one QEMU at a time, for as long as the switch runs: when its
    /// QEMU goes away (even under SIGKILL) the port forgets the addresses learned on
    /// it and waits for the next QEMU on the same socket; its number, counters and
    /// faults stay. A stale socket file is replaced; a live socket or another kind of
    /// file at `socket` is an error ([`Error::VhostUserSocket`]).
    pub fn add_vhost_user_port(&self, socket: impl AsRef<Path>) -> Result<PortId> {
        let socket = socket.as_ref();
        let port = self
            .shared
            .lock()
            .core
            .add_port(None, &format!("vhost-user {}", socket.display()))?;
        match VhostPort::start(Arc::downgrade(&self.shared), port, socket) {
            Ok(vport) => {
                if let Some(engine) = self.shared.engine.get() {
                    engine.send(Cmd::AddVhost(vport.link.clone()));
                }
                self.shared.set_link(port, Some(vport.link.clone()));
                self.shared.lock().vhost.insert(port, vport);
                info!(port = port.0, socket = %socket.display(), "vhost-user port listening");
                Ok(port)
            }
            Err(e) => {
                self.shared.lock().core.remove_port(port);
                Err(e)
            }
        }
    }

    /// Removes a vhost-user port: disconnects its QEMU, if any, and removes its socket.
    pub fn remove_vhost_user_port(&self, port: PortId) -> Result<()> {
        let vport = {
            let mut state = self.shared.lock();
            let vport = state
                .vhost
                .remove(&port)
                .ok_or(Error::NotVhostUserPort(port.0))?;
            state.core.remove_port(port);
            vport
        };
        self.shared.set_link(port, None);
        if let Some(engine) = self.shared.engine.get() {
            engine.send(Cmd::Remove(port));
        }
        // Outside the lock: the port's thread takes it on its way out.
        vport.stop();
        Ok(())
    }

    /// Whether a QEMU is connected to a vhost-user port (and has sent its memory).
    pub fn vhost_user_connected(&self, port: PortId) -> Result<bool> {
        self.shared
            .lock()
            .vhost
            .get(&port)
            .map(|v| v.link.is_connected())
            .ok_or(Error::NotVhostUserPort(port.0))
    }

    /// The socket a vhost-user port listens on.
    pub fn vhost_user_socket(&self, port: PortId) -> Result<PathBuf> {
        self.shared
            .lock()
            .vhost
            .get(&port)
            .map(|v| v.socket.clone())
            .ok_or(Error::NotVhostUserPort(port.0))
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        for task in &self.background {
            task.abort();
        }
        #[cfg(feature = "vhost-user")]
        {
            let ports: Vec<_> = self.shared.lock().vhost.drain().map(|(_, v)| v).collect();
            for vport in ports {
                self.shared.set_link(vport.link.port, None);
                vport.stop();
            }
        }
        if let Some(engine) = self.shared.engine.get() {
            engine.stop();
        }
        let mut state = self.shared.lock();
        for path in state.data_paths.drain().flat_map(|(_, paths)| paths) {
            let _ = std::fs::remove_file(path);
        }
        let capture = state.capture.take();
        drop(state);
        if let Some(cap) = capture {
            let _ = cap.finish();
        }
        let _ = std::fs::remove_file(self.shared.dir.join("ctl"));
        if self.created_dir {
            let _ = std::fs::remove_dir(&self.shared.dir);
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: UnixListener) {
    let pending = Arc::new(Semaphore::new(shared.opts.max_pending));
    // Connection tasks live in the set: aborting the accept loop aborts them all.
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "vde switch: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Credentials first: another user must not even hold a handshake slot.
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == shared.uid => {}
            Ok(cred) => {
                warn!(dir = %shared.dir.display(), "vde switch: rejected client: {}", Error::ForeignUid { peer: cred.uid(), ours: shared.uid });
                continue;
            }
            Err(e) => {
                warn!(dir = %shared.dir.display(), error = %e, "vde switch: rejected client: cannot read peer credentials");
                continue;
            }
        }
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            warn!(
                dir = %shared.dir.display(),
                "vde switch: too many handshakes in progress, closing a new connection"
            );
            continue;
        };
        let shared = shared.clone();
        conns.spawn(async move {
            match handshake(&shared, stream).await {
                Ok(Some((port, ctl))) => {
                    drop(permit);
                    serve_control(shared, port, ctl).await;
                }
                Ok(None) => {}
                Err(e) => warn!(dir = %shared.dir.display(), "vde switch: rejected client: {e}"),
            }
        });
    }
}

/// Reads and checks the request, creates the port; returns it with the control stream.
async fn handshake(
    shared: &Arc<Shared>,
    mut ctl: UnixStream,
) -> Result<Option<(PortId, UnixStream)>> {
    let timeout = shared.opts.handshake_timeout;
    let mut buf = BytesMut::with_capacity(MAX_REQUEST_LEN);
    let req = tokio::time::timeout(timeout, async {
        loop {
            let n = ctl
                .read_buf(&mut buf)
                .await
                .map_err(|e| Error::io("reading vde request", e))?;
            if n == 0 {
                return match RequestDecoder.decode_eof(&mut buf)? {
                    Some(req) => Ok(Some(req)),
                    None => Ok(None),
                };
            }
            if let Some(req) = RequestDecoder.decode(&mut buf)? {
                return Ok(Some(req));
            }
            if buf.len() >= MAX_REQUEST_LEN {
                buf.truncate(MAX_REQUEST_LEN);
            }
        }
    })
    .await
    .map_err(|_| Error::Timeout(timeout))??;
    let Some(req) = req else {
        debug!("vde switch: client closed before sending a request");
        return Ok(None);
    };
    let client = check_client_path(&shared.dir, shared.uid, &req)?;
    let (port, sock, data_path) = open_port(shared, &req, &client)?;
    let mut reply = BytesMut::new();
    if let Err(e) = encode_reply(data_path.as_os_str().as_bytes(), &mut reply) {
        close_port(shared, port);
        return Err(e);
    }
    // The frame thread must know the port before the client can send to it.
    if let Some(engine) = shared.engine.get() {
        engine.send(Cmd::Add(port, sock));
    }
    use tokio::io::AsyncWriteExt;
    if let Err(e) = ctl.write_all(&reply).await {
        close_port(shared, port);
        return Err(Error::io("sending reply", e));
    }
    info!(
        port = port.0,
        description = %req.description,
        "vde switch: port connected"
    );
    Ok(Some((port, ctl)))
}

/// The client's socket must be a socket of ours, directly inside the switch directory.
fn check_client_path(dir: &Path, uid: u32, req: &Request) -> Result<PathBuf> {
    let path = PathBuf::from(std::ffi::OsStr::from_bytes(&req.sock_path));
    let outside = || Error::PathOutsideDir {
        path: path.clone(),
        dir: dir.to_owned(),
    };
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        || path.parent() != Some(dir)
    {
        return Err(outside());
    }
    let meta = std::fs::symlink_metadata(&path)
        .map_err(|e| Error::io(format!("checking client socket {}", path.display()), e))?;
    if !meta.file_type().is_socket() {
        return Err(Error::BadPath(format!(
            "{} is not a socket",
            path.display()
        )));
    }
    if meta.uid() != uid {
        return Err(Error::ForeignUid {
            peer: meta.uid(),
            ours: uid,
        });
    }
    Ok(path)
}

fn open_port(
    shared: &Arc<Shared>,
    req: &Request,
    client: &Path,
) -> Result<(PortId, std::os::unix::net::UnixDatagram, PathBuf)> {
    let wish = match req.port {
        PortWish::Number(n) => Some(n),
        PortWish::Any | PortWish::Port0 => None,
    };
    let port = shared.lock().core.add_port(wish, &req.description)?;
    let seq = shared.next_sock.fetch_add(1, Ordering::Relaxed);
    let data_path = shared.dir.join(format!("p{}.{}", port.0, seq));
    let opened = (|| {
        let _ = std::fs::remove_file(&data_path);
        let sock = std::os::unix::net::UnixDatagram::bind(&data_path)
            .map_err(|e| Error::io(format!("binding data socket {}", data_path.display()), e))?;
        std::fs::set_permissions(&data_path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(format!("setting mode of {}", data_path.display()), e))?;
        // Connect now: libvdeplug unlinks its socket as soon as it has our reply.
        sock.connect(client).map_err(|e| {
            Error::io(
                format!("connecting to client socket {}", client.display()),
                e,
            )
        })?;
        // A deeper send queue rides out bursts a slow client cannot take at once
        // (the kernel's per-receiver limit, net.unix.max_dgram_qlen, still applies).
        let _ = socket2::SockRef::from(&sock).set_send_buffer_size(4 << 20);
        sock.set_nonblocking(true)
            .map_err(|e| Error::io(format!("setting {} non-blocking", data_path.display()), e))?;
        Ok(sock)
    })();
    match opened {
        Ok(sock) => {
            shared
                .lock()
                .data_paths
                .insert(port, [data_path.clone(), client.to_owned()]);
            Ok((port, sock, data_path))
        }
        Err(e) => {
            shared.lock().core.remove_port(port);
            let _ = std::fs::remove_file(&data_path);
            Err(e)
        }
    }
}

fn close_port(shared: &Shared, port: PortId) {
    {
        let mut state = shared.lock();
        // The socket files go before the port does: whoever sees the port gone sees a
        // clean directory. A client killed before it unlinked its own socket (QEMU
        // under SIGKILL) would otherwise leave it behind in our directory.
        for path in state.data_paths.remove(&port).into_iter().flatten() {
            let _ = std::fs::remove_file(path);
        }
        state.core.remove_port(port);
    }
    if let Some(engine) = shared.engine.get() {
        engine.send(Cmd::Remove(port));
    }
}

/// Waits for the control connection to close, then tears the port down.
async fn serve_control(shared: Arc<Shared>, port: PortId, mut ctl: UnixStream) {
    let mut sink = [0u8; 256];
    loop {
        match ctl.read(&mut sink).await {
            Ok(0) | Err(_) => break,
            // libvdeplug sends nothing more; ignore anything that comes.
            Ok(_) => {}
        }
    }
    info!(port = port.0, "vde switch: port disconnected");
    close_port(&shared, port);
}
