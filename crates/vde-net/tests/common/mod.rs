//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use vmrig_vde_net::VdePlug;

/// An Ethernet frame from `src` to `dst` carrying `tag` in its payload.
pub fn frame(dst: [u8; 6], src: [u8; 6], tag: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]); // local experimental ethertype
    f.resize(60, tag);
    f
}

/// A locally administered unicast MAC ending in `n`.
pub fn mac(n: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, n]
}

/// The broadcast address.
pub const BCAST: [u8; 6] = [0xff; 6];

/// Connects a blocking client with a receive timeout.
pub fn plug(dir: &Path, name: &str) -> VdePlug {
    let p = VdePlug::connect(dir, name).expect("connect to switch");
    p.socket()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    p
}

/// Receives one frame or panics after the timeout.
pub fn recv(p: &VdePlug) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let n = p.recv(&mut buf).expect("frame within 10 s");
    buf.truncate(n);
    buf
}

/// vde2's `vde_plug DIR` with stdin/stdout as a stream (2-byte big-endian length,
/// then the frame), killed on drop.
pub struct VdePlugProcess {
    child: Child,
    stdin: ChildStdin,
    frames: mpsc::Receiver<Vec<u8>>,
}

impl VdePlugProcess {
    /// Starts `vde_plug DIR`.
    pub fn start(dir: &Path) -> Self {
        let mut child = Command::new("vde_plug")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("vde_plug is installed (apt-get install vdeplug)");
        let stdin = child.stdin.take().unwrap();
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let (tx, frames) = mpsc::channel();
        std::thread::spawn(move || {
            let mut stdout = stdout;
            loop {
                let mut len = [0u8; 2];
                if stdout.read_exact(&mut len).is_err() {
                    return;
                }
                let mut f = vec![0u8; u16::from_be_bytes(len) as usize];
                if stdout.read_exact(&mut f).is_err() || tx.send(f).is_err() {
                    return;
                }
            }
        });
        VdePlugProcess {
            child,
            stdin,
            frames,
        }
    }

    /// Sends one frame through vde_plug.
    pub fn send(&mut self, frame: &[u8]) {
        self.stdin
            .write_all(&(frame.len() as u16).to_be_bytes())
            .and_then(|()| self.stdin.write_all(frame))
            .and_then(|()| self.stdin.flush())
            .expect("write to vde_plug");
    }

    /// Receives one frame or panics after 10 s.
    pub fn recv(&self) -> Vec<u8> {
        self.frames
            .recv_timeout(Duration::from_secs(10))
            .expect("frame from vde_plug within 10 s")
    }
}

impl Drop for VdePlugProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` every 20 ms for up to 10 s.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}
