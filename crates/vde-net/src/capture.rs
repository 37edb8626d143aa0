//! A running switch's pcap capture: records are encoded under the switch lock
//! (one copy of each frame into a buffer) and written to disk by a thread of
//! their own, so a slow or stuck disk never holds the lock that every frame,
//! port change and API call needs.
//!
//! The frame thread hands each pass's records to the writer over a bounded
//! channel, after it has released the lock. If the writer falls
//! [`MAX_QUEUED_BATCHES`] passes behind, further records are dropped (and
//! counted, and logged when the capture stops) rather than stalling the
//! network; in a normal run nothing is lost.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use tracing::warn;

use crate::error::{Error, Result};
use crate::pcap;

/// Passes of records waiting for the writer before new ones are dropped.
pub(crate) const MAX_QUEUED_BATCHES: usize = 1024;

/// Records of one pass of the frame thread.
pub(crate) struct Batch {
    bytes: Bytes,
    frames: u64,
}

/// Where the frame thread sends batches; cheap to clone.
#[derive(Clone)]
pub(crate) struct Sink {
    tx: SyncSender<Batch>,
    dropped: Arc<AtomicU64>,
}

impl Sink {
    /// Queues a batch for the writer without blocking; counts its frames as
    /// dropped when the writer is too far behind or has stopped.
    pub(crate) fn submit(&self, batch: Batch) {
        match self.tx.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(b) | TrySendError::Disconnected(b)) => {
                self.dropped.fetch_add(b.frames, Ordering::Relaxed);
            }
        }
    }
}

/// A capture in progress, kept in the switch state.
pub(crate) struct Capture {
    path: PathBuf,
    buf: BytesMut,
    frames: u64,
    sink: Sink,
    writer: JoinHandle<std::io::Result<()>>,
}

impl Capture {
    /// Creates `path`, writes the pcap header and starts the writer thread.
    pub(crate) fn create(path: &Path) -> Result<Capture> {
        let what = || format!("writing capture file {}", path.display());
        let file = File::create(path)
            .map_err(|e| Error::io(format!("creating capture file {}", path.display()), e))?;
        let mut file = BufWriter::with_capacity(256 << 10, file);
        let mut header = BytesMut::new();
        pcap::encode_header(&mut header);
        file.write_all(&header).map_err(|e| Error::io(what(), e))?;
        let (tx, rx) = sync_channel(MAX_QUEUED_BATCHES);
        let writer = std::thread::Builder::new()
            .name("vde-capture".into())
            .spawn({
                let path = path.to_owned();
                move || write_loop(&path, file, rx)
            })
            .map_err(|e| Error::io("starting the capture writer thread", e))?;
        Ok(Capture {
            path: path.to_owned(),
            buf: BytesMut::new(),
            frames: 0,
            sink: Sink {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            writer,
        })
    }

    /// Encodes one frame's record into the pending batch (a copy, no I/O).
    pub(crate) fn record(&mut self, frame: &[u8]) {
        pcap::encode_record(SystemTime::now(), frame, &mut self.buf);
        self.frames += 1;
    }

    /// Takes the pending records, to be submitted once the lock is released.
    pub(crate) fn take_batch(&mut self) -> Option<(Sink, Batch)> {
        if self.frames == 0 {
            return None;
        }
        let batch = Batch {
            bytes: self.buf.split().freeze(),
            frames: std::mem::take(&mut self.frames),
        };
        Some((self.sink.clone(), batch))
    }

    /// Stops the capture: waits until every submitted record is on disk and the
    /// file is flushed; returns the path. Call it without holding the switch lock.
    pub(crate) fn finish(mut self) -> Result<PathBuf> {
        if let Some((sink, batch)) = self.take_batch() {
            // Blocking is fine here: the caller is not the frame thread.
            if let Err(e) = sink.tx.send(batch) {
                sink.dropped.fetch_add(e.0.frames, Ordering::Relaxed);
            }
        }
        let Capture {
            path, sink, writer, ..
        } = self;
        let dropped = sink.dropped.clone();
        // The writer ends when the last sender is gone: ours here, and the frame
        // thread's clone as soon as its current submit returns.
        drop(sink);
        let result = writer
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("capture writer thread panicked")));
        let dropped = dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            warn!(path = %path.display(), dropped, "vde switch: the capture writer fell behind; frames are missing from the capture");
        }
        result.map_err(|e| Error::io(format!("writing capture file {}", path.display()), e))?;
        Ok(path)
    }
}

fn write_loop(path: &Path, mut file: BufWriter<File>, rx: Receiver<Batch>) -> std::io::Result<()> {
    for batch in rx.iter() {
        if let Err(e) = file.write_all(&batch.bytes) {
            warn!(path = %path.display(), error = %e, "vde switch: capture stopped");
            // Dropping the receiver makes later submits count as dropped.
            return Err(e);
        }
    }
    file.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_recorded_frame_reaches_the_file_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.pcap");
        let mut cap = Capture::create(&path).unwrap();
        let mut sent = Vec::new();
        for i in 0..5000u32 {
            let frame: Vec<u8> = (0..60 + i % 1400).map(|k| (k ^ i) as u8).collect();
            cap.record(&frame);
            sent.push(frame);
            if i % 7 == 0 {
                let (sink, batch) = cap.take_batch().unwrap();
                sink.submit(batch);
            }
        }
        assert!(cap.take_batch().is_some_and(|(s, b)| {
            s.submit(b);
            true
        }));
        assert!(cap.take_batch().is_none());
        cap.record(&sent[0]);
        sent.push(sent[0].clone());
        assert_eq!(cap.finish().unwrap(), path);
        let records = pcap::parse(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(records.len(), sent.len());
        for (r, f) in records.iter().zip(&sent) {
            assert_eq!(&r.data, f);
        }
    }

    #[test]
    fn a_capture_without_frames_is_a_valid_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.pcap");
        Capture::create(&path).unwrap().finish().unwrap();
        assert!(pcap::parse(&std::fs::read(&path).unwrap())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn an_uncreatable_file_is_an_error() {
        let err = Capture::create(Path::new("/nonexistent/dir/c.pcap"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/dir/c.pcap"), "{err}");
    }
}
