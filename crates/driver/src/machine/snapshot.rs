//! Boot once, restore many: a machine whose first boot reached readiness is
//! saved into the snapshot store ([`crate::snapshot`]), and later runs
//! restore it with `-incoming` instead of booting.
//!
//! Saving: the guest settles (`systemctl is-system-running --wait` on systemd
//! guests, then until its CPUs are mostly idle) and unmounts `/tmp/shared`
//! (a mounted 9p share blocks migration); QEMU stops, migrates to a file
//! (device state only when the RAM is a shared file, which is copied apart:
//! [`crate::snapshot::ram`]), the state directory's files (the disk overlay,
//! flushed by the migration) are copied, and the guest goes on with the share
//! mounted again. Restoring: the RAM file is mapped privately, the state
//! directory gets qcow2
//! overlays of the saved disks (the snapshot never changes), QEMU starts with
//! `-incoming defer` and `-device vmgenid` (a new generation id reseeds the
//! guest's RNG), its real command line is checked against the saved one, the
//! stream's hash against the saved hash, and after the migration the guest's
//! clock is set from the host's and the share is mounted again.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::net::UnixStream;
use vmrig_backdoor::{Command, Shell};
use vmrig_guest::contract::{RamFile, StartContract, RAM_ID};
use vmrig_guest::script::sh_quote;
use vmrig_qmp::{Cont, Migrate, MigrateIncoming, MigrationStatus, QueryMigrate, QueryStatus, Stop};

use super::{Machine, Running};
use crate::snapshot::{self, ram, Entry, Meta, Store};

/// The guest's 9p mount of the shared directory, as both guest kits make it
/// (only ever run where it was mounted before, so the mount point is there).
const MOUNT_SHARED: &str =
    "mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=none shared /tmp/shared";

/// Bound for QEMU writing or reading a migration stream.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(60);

/// How long saving a failed machine waits for a command in flight.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Bytes a failed machine's snapshot may take (`$VMRIG_FORENSICS_MAX_MB`, default 4 GiB).
fn forensics_max() -> u64 {
    std::env::var("VMRIG_FORENSICS_MAX_MB")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(4 << 30, |mb| mb << 20)
}

/// Bound for a guest to become idle before it is saved. Generous: what the
/// guest still does then (a browser starting, a database being created) is
/// done once in the snapshot instead of in every restored run, and a test's
/// first command would have waited for most of it anyway.
const IDLE_SECS: u32 = 90;

/// Bound for a systemd guest to finish starting before it is saved.
const SETTLE_SECS: u32 = 120;

/// Why a machine with vhost-user NICs is never saved. QEMU 7.2 migrates a
/// vhost-user device only when its backend logs the pages it writes into a
/// log QEMU shares with it (`VHOST_USER_PROTOCOL_F_LOG_SHMFD` and
/// `VHOST_F_LOG_ALL`, vhost-user spec "Migration"); otherwise it blocks
/// migration ("Migration disabled: vhost-user backend lacks
/// VHOST_USER_PROTOCOL_F_LOG_SHMFD feature"), and the switch's ports do not log.
const VHOST_USER_UNSAVABLE: &str = "vhost-user NICs cannot be saved (QEMU migrates a vhost-user NIC only when its backend logs the guest pages it writes, VHOST_USER_PROTOCOL_F_LOG_SHMFD, which vmrig's switch ports do not)";

/// What a save wrote besides the stream and disks.
struct Saved {
    /// `/tmp/shared` was unmounted (to mount again).
    shared_mounted: bool,
    /// The hash of `mem`, when the RAM was a shared file copied apart.
    mem_hash: Option<String>,
}

/// What `start` does about snapshots for one start of a machine.
pub(super) struct Plan {
    /// The key, when this start may save or restore.
    pub key: String,
    /// The entry to restore, when there is one.
    pub entry: Option<Entry>,
}

impl Machine {
    fn store(&self) -> Option<&Store> {
        self.inner.cfg.snapshots.as_ref()
    }

    /// Whether this start may use a snapshot, and which: only a first start
    /// on an empty state directory (a disk left by an earlier boot is state
    /// no snapshot holds). A machine that may be saved gets its RAM in a
    /// shared file ([`ram`]) when its size is certain.
    pub(super) fn snapshot_plan(&self, contract: &mut StartContract) -> Option<Plan> {
        let store = self.store()?;
        let cfg = &self.inner.cfg;
        if store.is_forensic() {
            return store.lookup(&cfg.name).map(|entry| Plan {
                key: cfg.name.clone(),
                entry: Some(entry),
            });
        }
        if !cfg.vhost_user_ports.is_empty() {
            tracing::info!(machine = %cfg.name, "machine {} boots cold: {VHOST_USER_UNSAVABLE}", cfg.name);
            return None;
        }
        if let Some(file) = state_files(&cfg.state_dir).first() {
            tracing::info!(machine = %cfg.name, "no snapshot: the state directory holds {} from an earlier boot", file.display());
            return None;
        }
        let text = std::fs::read_to_string(&cfg.start_script).unwrap_or_default();
        let opts = std::env::var("QEMU_OPTS").unwrap_or_default();
        match ram::memory_mib(&text, &opts) {
            Some(mib) => match ram::ram_dir(mib) {
                Some(path) => {
                    contract.ram = Some(RamFile {
                        mib,
                        path,
                        shared: true,
                    });
                }
                None => {
                    tracing::info!(machine = %cfg.name, "snapshot RAM in the stream: less than {} MiB free in $VMRIG_RAM_DIR or /dev/shm", 2 * mib)
                }
            },
            None => {
                tracing::debug!(machine = %cfg.name, "snapshot RAM in the stream: the start script's -m is not certain")
            }
        }
        let key = match snapshot::key(&cfg.start_script, contract) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(machine = %cfg.name, "no snapshot: cannot read {}: {e}", cfg.start_script.display());
                return None;
            }
        };
        let entry = store.lookup(&key);
        Some(Plan { key, entry })
    }

    /// A QMP or monitor action, or console input, before the first connection
    /// shapes the machine beyond its inputs: its readiness is not saved.
    pub(super) fn forgo_snapshot(&self, why: &str) {
        let mut key = self
            .inner
            .save_key
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if key.take().is_some() {
            tracing::info!(machine = %self.name(), "no snapshot: {why} before the machine was ready");
        }
    }

    pub(super) fn plan_save(&self, key: String) {
        *self
            .inner
            .save_key
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(key);
    }

    pub(super) fn take_save_key(&self) -> Option<String> {
        self.inner
            .save_key
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// QEMU's last words on the console (why it refused a snapshot).
    fn last_console_line(&self) -> String {
        let tail = self.inner.console.tail();
        tail.trim_end().lines().last().unwrap_or("").to_owned()
    }

    /// Restores `entry` into a new QEMU; on success the machine is connected.
    /// On failure QEMU is gone and the state directory empty again.
    pub(super) async fn restore(
        &self,
        contract: &mut StartContract,
        entry: &Entry,
    ) -> Result<Running, String> {
        let started = Instant::now();
        let cfg = &self.inner.cfg;
        let (stream, mem) = (
            entry.ram(),
            entry.meta.mem_hash.as_ref().map(|_| entry.mem()),
        );
        let hashing = tokio::task::spawn_blocking(move || {
            let mem_hash = mem.map(|m| ram::hash_sparse(&m)).transpose()?;
            hash_file(&stream).map(|(size, hash)| (size, hash, mem_hash))
        });
        prepare_disks(entry, &cfg.state_dir).await?;
        tracing::debug!(machine = %cfg.name, "restore: disks ready after {:.3} s", started.elapsed().as_secs_f64());
        // As it was saved: forensic saves of machines booted without snapshots have none.
        contract.vmgenid = entry.meta.argv.iter().any(|a| a == "vmgenid");
        contract.incoming = true;
        contract.ram = restored_ram(entry);
        let mut r = self
            .launch(contract)
            .await
            .map_err(|e| format!("QEMU did not start: {e}"))?;
        tracing::debug!(machine = %cfg.name, "restore: QEMU connected after {:.3} s", started.elapsed().as_secs_f64());
        let result = self.finish_restore(&mut r, contract, entry, hashing).await;
        if let Err(e) = result {
            let pid = r.child.id().unwrap_or(0);
            vmrig_guest::process::kill_group(pid);
            let _ = r.child.wait().await;
            self.inner.pid.store(0, Ordering::SeqCst);
            for f in state_files(&cfg.state_dir) {
                let _ = std::fs::remove_file(f);
            }
            return Err(e);
        }
        for line in entry.console_lines() {
            self.inner.console.push_line(&line);
        }
        tracing::info!(machine = %cfg.name, "restored from snapshot {} in {:.2} s (saved {}, {} MB)", entry.key, started.elapsed().as_secs_f64(), age(entry.meta.saved_at), entry.size >> 20);
        Ok(r)
    }

    async fn finish_restore(
        &self,
        r: &mut Running,
        contract: &StartContract,
        entry: &Entry,
        hashing: tokio::task::JoinHandle<std::io::Result<(u64, String, Option<String>)>>,
    ) -> Result<(), String> {
        let pid = r.child.id().unwrap_or(0);
        let (argv, exe) = qemu_command_line(pid, contract)?;
        if argv != entry.meta.argv || exe != entry.meta.exe {
            return Err(format!(
                "QEMU's command line is not the saved one (saved: {}; now: {})",
                entry.meta.argv.join(" "),
                argv.join(" ")
            ));
        }
        let (size, hash, mem_hash) = hashing
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot read {}: {e}", entry.dir.display()))?;
        if mem_hash != entry.meta.mem_hash {
            return Err(format!(
                "{} is damaged (hash differs)",
                entry.mem().display()
            ));
        }
        if size != entry.meta.ram_size || hash != entry.meta.ram_hash {
            return Err(format!(
                "{} is damaged ({size} bytes, saved {}; hash differs: {})",
                entry.ram().display(),
                entry.meta.ram_size,
                hash != entry.meta.ram_hash
            ));
        }
        tracing::debug!(machine = %self.name(), "restore: command line and stream checked");
        let t = Instant::now();
        if entry.meta.ignore_shared {
            set_ignore_shared(r, true).await?;
        }
        let uri = format!("exec:cat {}", sh_quote(&entry.ram().to_string_lossy()));
        r.qmp
            .execute(MigrateIncoming { uri })
            .await
            .map_err(|e| format!("migrate-incoming: {e}"))?;
        let deadline = Instant::now() + MIGRATION_TIMEOUT;
        loop {
            if let Ok(Some(status)) = r.child.try_wait() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Err(format!(
                    "QEMU refused the snapshot and exited ({status}): {}",
                    self.last_console_line()
                ));
            }
            match r.qmp.execute(QueryMigrate).await {
                Ok(info) if info.status == Some(MigrationStatus::Completed) => break,
                Ok(info) if info.status == Some(MigrationStatus::Failed) => {
                    return Err(format!(
                        "QEMU refused the snapshot: {}",
                        info.error_desc.unwrap_or_else(|| "migration failed".into())
                    ))
                }
                Ok(_) => {}
                Err(e) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return Err(format!(
                        "QEMU failed while loading the snapshot ({e}): {}",
                        self.last_console_line()
                    ));
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "loading the snapshot took over {} s",
                    MIGRATION_TIMEOUT.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tracing::debug!(machine = %self.name(), "restore: stream loaded in {:.3} s", t.elapsed().as_secs_f64());
        // The machine was stopped to be saved, and QEMU keeps that run state.
        let status = r
            .qmp
            .execute(QueryStatus)
            .await
            .map_err(|e| format!("query-status: {e}"))?;
        if !status.running {
            r.qmp
                .execute(Cont)
                .await
                .map_err(|e| format!("cont: {e}"))?;
        }
        // The guest's shell goes on reading: no magic line comes again.
        let (spare, _) = UnixStream::pair().map_err(|e| e.to_string())?;
        let shell = std::mem::replace(&mut r.shell, Shell::ready(spare));
        r.shell = Shell::ready(shell.into_inner());
        let mut fixup = format!("date -u -s @{} >/dev/null", snapshot::now_secs());
        fixup.push_str(&format!("; printf '{}' >/dev/urandom", random_escapes()));
        if entry.meta.shared_mounted {
            fixup.push_str("; ");
            fixup.push_str(MOUNT_SHARED);
        }
        let out = r
            .shell
            .run(
                &Command::new(fixup.into_bytes()).timeout(Some(Duration::from_secs(30))),
                Duration::from_secs(60),
            )
            .await
            .map_err(|e| format!("the restored guest does not answer: {e}"))?;
        tracing::debug!(machine = %self.name(), "restore: guest fixed up {:.3} s after the stream", t.elapsed().as_secs_f64());
        if out.status != 0 {
            return Err(format!(
                "setting the clock or mounting /tmp/shared failed in the restored guest (exit {}): {}",
                out.status,
                String::from_utf8_lossy(&out.output).trim()
            ));
        }
        if let Some(store) = self.store() {
            store.touch(entry);
        }
        Ok(())
    }

    /// Saves the machine as it is now into `store` under its name (a failed
    /// test's machines, for `vmrig resume`), within `budget`; the machine
    /// stays stopped. Returns the entry, or why it could not be saved.
    pub fn preserve(&self, store: &Store, budget: Duration) -> Result<Entry, String> {
        if !self.is_booted() {
            return Err("it is not running".into());
        }
        if !self.inner.cfg.vhost_user_ports.is_empty() {
            return Err(VHOST_USER_UNSAVABLE.into());
        }
        let started = Instant::now();
        let name = self.name().to_owned();
        self.block(async {
            // A command in flight (the global timeout) holds the machine: wait a little only.
            let wait = budget.min(LOCK_WAIT);
            let mut running = tokio::time::timeout(wait, self.inner.running.lock())
                .await
                .map_err(|_| format!("a command was still running on it after {} s", wait.as_secs()))?;
            let r = running
                .as_mut()
                .ok_or_else(|| "it is not running".to_owned())?;
            if matches!(r.child.try_wait(), Ok(Some(_))) {
                return Err("QEMU has exited".to_owned());
            }
            let staging = store
                .begin(&name)
                .map_err(|e| format!("cannot write in {}: {e}", store.dir().display()))?;
            let result = tokio::time::timeout(
                budget.saturating_sub(started.elapsed()),
                self.preserve_into(r, &staging),
            )
            .await
            .unwrap_or_else(|_| Err(format!("saving took over {} s", budget.as_secs())));
            let saved = match result {
                Ok(saved) => saved,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&staging);
                    return Err(e);
                }
            };
            let entry = self
                .finish_entry(r, store, &staging, &name, &saved, started)
                .inspect_err(|_| {
                    let _ = std::fs::remove_dir_all(&staging);
                })?;
            let max = forensics_max();
            if entry.size > max {
                let _ = store.remove(&name);
                return Err(format!(
                    "its snapshot takes {} MiB, over the limit of {} MiB ($VMRIG_FORENSICS_MAX_MB)",
                    entry.size >> 20,
                    max >> 20
                ));
            }
            tracing::info!(machine = %name, "saved as it failed in {:.2} s ({} MB) to {}", started.elapsed().as_secs_f64(), entry.size >> 20, entry.dir.display());
            Ok(entry)
        })
    }

    /// A failed test's machine: unmount the share if the backdoor is up, then
    /// stop and write the stream and disks.
    async fn preserve_into(&self, r: &mut Running, staging: &Path) -> Result<Saved, String> {
        let mut mounted = false;
        if self.is_connected() {
            let out = r
                .shell
                .run(
                    &Command::new(
                        b"if grep -q ' /tmp/shared ' /proc/mounts; then umount /tmp/shared && echo unmounted; fi"
                            .to_vec(),
                    )
                    .timeout(Some(Duration::from_secs(5))),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|e| format!("the backdoor does not answer: {e}"))?;
            mounted = String::from_utf8_lossy(&out.output).contains("unmounted");
            if out.status != 0 {
                return Err(format!(
                    "cannot unmount /tmp/shared: {}",
                    String::from_utf8_lossy(&out.output).trim()
                ));
            }
        }
        let mem_hash = self.migrate_to(r, staging).await?;
        Ok(Saved {
            shared_mounted: mounted,
            mem_hash,
        })
    }

    /// Writes `staging`'s console, hash and meta and commits it under `key`.
    fn finish_entry(
        &self,
        r: &Running,
        store: &Store,
        staging: &Path,
        key: &str,
        saved: &Saved,
        started: Instant,
    ) -> Result<Entry, String> {
        let (ram_size, ram_hash) = hash_file(&staging.join("ram"))
            .map_err(|e| format!("cannot read the saved stream: {e}"))?;
        std::fs::write(staging.join("console.log"), self.inner.console.log())
            .map_err(|e| format!("cannot write the console: {e}"))?;
        let pid = r.child.id().unwrap_or(0);
        let contract = self.contract(false);
        let (argv, exe) = qemu_command_line(pid, &contract)?;
        let meta = Meta {
            machine: self.name().to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            argv,
            exe,
            ram_size,
            ram_hash,
            mem_hash: saved.mem_hash.clone(),
            ignore_shared: r.ram_shared,
            shared_mounted: saved.shared_mounted,
            saved_at: snapshot::now_secs(),
            save_secs: started.elapsed().as_secs_f64(),
        };
        store
            .commit(staging, key, &meta)
            .map_err(|e| format!("cannot store it: {e}"))
    }

    /// Saves the machine, ready now, under `key`. Never fails the test: a
    /// machine that cannot be saved goes on, and the log says why.
    pub(super) async fn save_snapshot(&self, r: &mut Running, key: &str) {
        let Some(store) = self.store() else { return };
        let mut started = Instant::now();
        let staging = match store.begin(key) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(machine = %self.name(), "no snapshot: cannot write in {}: {e}", store.dir().display());
                return;
            }
        };
        let result = self.save_into(r, &staging, &mut started).await;
        let (saved, outcome) = match result {
            Ok(saved) => (saved, Ok(())),
            Err((mounted, e)) => (
                Saved {
                    shared_mounted: mounted,
                    mem_hash: None,
                },
                Err(e),
            ),
        };
        // The guest goes on as it was, saved or not.
        let resumed = self.resume_after_save(r, saved.shared_mounted).await;
        let outcome = outcome
            .and(resumed)
            .and_then(|()| self.finish_entry(r, store, &staging, key, &saved, started));
        match outcome {
            Ok(entry) => tracing::info!(
                machine = %self.name(),
                "snapshot {key} saved in {:.2} s ({} MB on disk); later runs restore it",
                started.elapsed().as_secs_f64(),
                entry.size >> 20
            ),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                tracing::info!(machine = %self.name(), "no snapshot: {e}");
            }
        }
    }

    /// Settles the guest, stops it and writes the stream and disks into
    /// `staging`. Returns whether `/tmp/shared` was unmounted (to mount again).
    async fn save_into(
        &self,
        r: &mut Running,
        staging: &Path,
        started: &mut Instant,
    ) -> Result<Saved, (bool, String)> {
        // Then until the CPUs are mostly idle (half-second samples of
        // /proc/stat, at most IDLE_SECS): services still initialising at
        // readiness (a database being created) finish in the snapshot, not in
        // every restored run.
        let settle = format!(
            "if command -v systemctl >/dev/null 2>&1; then timeout {SETTLE_SECS} systemctl is-system-running --wait >/dev/null 2>&1 || true; fi; \
             n=0; while [ $n -lt {samples} ]; do read -r _ u1 i1 s1 d1 w1 _ < /proc/stat; sleep 0.5; read -r _ u2 i2 s2 d2 w2 _ < /proc/stat; \
             [ $(( (u2 + i2 + s2 - u1 - i1 - s1) * 5 )) -le $(( d2 + w2 - d1 - w1 )) ] && break; n=$((n + 1)); done; \
             if grep -q ' /tmp/shared ' /proc/mounts; then umount /tmp/shared && echo unmounted; fi",
            samples = IDLE_SECS * 2
        );
        let out = r
            .shell
            .run(
                &Command::new(settle.into_bytes()),
                Duration::from_secs(u64::from(SETTLE_SECS + IDLE_SECS) + 60),
            )
            .await
            .map_err(|e| (false, format!("the guest did not settle: {e}")))?;
        let mounted = String::from_utf8_lossy(&out.output).contains("unmounted");
        tracing::debug!(machine = %self.name(), "snapshot: the guest settled in {:.2} s", started.elapsed().as_secs_f64());
        // Waiting for the guest to finish booting is the boot's time, not the save's.
        *started = Instant::now();
        if out.status != 0 {
            return Err((
                false,
                format!(
                    "cannot unmount /tmp/shared in the guest: {}",
                    String::from_utf8_lossy(&out.output).trim()
                ),
            ));
        }
        let mem_hash = self
            .migrate_to(r, staging)
            .await
            .map_err(|e| (mounted, e))?;
        Ok(Saved {
            shared_mounted: mounted,
            mem_hash,
        })
    }

    /// Stops the machine, migrates it into `staging/ram` and copies the
    /// state directory's files (flushed by the migration) into `staging/disk`.
    /// A shared RAM file is left out of the stream and copied to
    /// `staging/mem`; returns its hash then.
    async fn migrate_to(&self, r: &mut Running, staging: &Path) -> Result<Option<String>, String> {
        // QEMU's default of 128 MiB/s would make a save take seconds.
        r.qmp
            .execute_raw(
                "migrate-set-parameters",
                serde_json::json!({ "max-bandwidth": 1u64 << 40 }),
            )
            .await
            .map_err(|e| format!("migrate-set-parameters: {e}"))?;
        // Also off: a restored machine has it on for its incoming stream.
        set_ignore_shared(r, r.ram_shared).await?;
        r.qmp
            .execute(Stop)
            .await
            .map_err(|e| format!("stop: {e}"))?;
        let ram = staging.join("ram");
        let uri = format!("exec:cat > {}", sh_quote(&ram.to_string_lossy()));
        r.qmp
            .execute(Migrate::new(uri))
            .await
            .map_err(|e| format!("QEMU cannot save this machine: {e}"))?;
        let deadline = Instant::now() + MIGRATION_TIMEOUT;
        loop {
            let info = r
                .qmp
                .execute(QueryMigrate)
                .await
                .map_err(|e| format!("query-migrate: {e}"))?;
            match info.status {
                Some(MigrationStatus::Completed) => break,
                Some(MigrationStatus::Failed | MigrationStatus::Cancelled) => {
                    return Err(format!(
                        "QEMU cannot save this machine: {}",
                        info.error_desc.unwrap_or_else(|| "migration failed".into())
                    ))
                }
                _ if Instant::now() > deadline => {
                    let _ = r
                        .qmp
                        .execute_raw("migrate_cancel", serde_json::json!({}))
                        .await;
                    return Err(format!(
                        "saving took over {} s",
                        MIGRATION_TIMEOUT.as_secs()
                    ));
                }
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        // The migration flushed the disks and handed them over: copy them now.
        for f in state_files(&self.inner.cfg.state_dir) {
            let to = staging.join("disk").join(f.file_name().unwrap_or_default());
            std::fs::copy(&f, &to).map_err(|e| format!("cannot copy {}: {e}", f.display()))?;
        }
        if !r.ram_shared {
            return Ok(None);
        }
        let pid = r.child.id().unwrap_or(0);
        let from = ram::qemu_ram_file(pid, RAM_ID)
            .ok_or_else(|| format!("cannot find QEMU's RAM file among /proc/{pid}/fd"))?;
        let to = staging.join("mem");
        let (_, hash) = tokio::task::spawn_blocking(move || ram::copy_sparse(&from, &to))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot copy the guest's RAM: {e}"))?;
        Ok(Some(hash))
    }

    async fn resume_after_save(&self, r: &mut Running, shared_mounted: bool) -> Result<(), String> {
        let status = r
            .qmp
            .execute(QueryStatus)
            .await
            .map_err(|e| format!("query-status: {e}"))?;
        if !status.running {
            r.qmp
                .execute(Cont)
                .await
                .map_err(|e| format!("cont: {e}"))?;
        }
        let mut again = format!("date -u -s @{} >/dev/null", snapshot::now_secs());
        if shared_mounted {
            again.push_str("; ");
            again.push_str(MOUNT_SHARED);
        }
        let out = r
            .shell
            .run(&Command::new(again.into_bytes()), Duration::from_secs(60))
            .await
            .map_err(|e| format!("the guest did not come back after saving: {e}"))?;
        if out.status != 0 {
            return Err(format!(
                "mounting /tmp/shared again failed: {}",
                String::from_utf8_lossy(&out.output).trim()
            ));
        }
        Ok(())
    }
}

/// Sets QEMU's `x-ignore-shared` migration capability: RAM in a shared file
/// is not in the stream.
async fn set_ignore_shared(r: &mut Running, on: bool) -> Result<(), String> {
    r.qmp
        .execute_raw(
            "migrate-set-capabilities",
            serde_json::json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": on }] }),
        )
        .await
        .map(drop)
        .map_err(|e| format!("migrate-set-capabilities x-ignore-shared: {e}"))
}

/// The RAM file of a restored copy: the saved machine's backend, mapping the
/// snapshot's `mem` privately (or, for a stream that holds the RAM, a new
/// file of its own).
fn restored_ram(entry: &Entry) -> Option<RamFile> {
    let prefix = format!("memory-backend-file,id={RAM_ID},size=");
    let size = entry
        .meta
        .argv
        .iter()
        .find_map(|a| a.strip_prefix(&prefix))?;
    let mib = size.split(['M', ',']).next()?.parse().ok()?;
    let path = if entry.meta.mem_hash.is_some() {
        entry.mem()
    } else {
        ram::ram_dir(mib).unwrap_or_else(std::env::temp_dir)
    };
    Some(RamFile {
        mib,
        path,
        shared: false,
    })
}

/// The regular files of a state directory (sockets and directories are not state).
fn state_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

/// Puts the saved disks into an empty state directory: qcow2 images as
/// overlays of the saved ones (which stay unchanged), other files as copies.
async fn prepare_disks(entry: &Entry, state_dir: &Path) -> Result<(), String> {
    for saved in state_files(&entry.disk_dir()) {
        let target = state_dir.join(saved.file_name().unwrap_or_default());
        if is_qcow2(&saved) {
            let qemu_img = std::env::var_os("VMRIG_QEMU_IMG").unwrap_or_else(|| "qemu-img".into());
            let out = tokio::process::Command::new(&qemu_img)
                .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
                .arg(&saved)
                .arg(&target)
                .output()
                .await
                .map_err(|e| format!("cannot run {}: {e}", qemu_img.to_string_lossy()))?;
            if !out.status.success() {
                return Err(format!(
                    "qemu-img cannot make an overlay of {}: {}",
                    saved.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        } else {
            std::fs::copy(&saved, &target)
                .map_err(|e| format!("cannot copy {}: {e}", saved.display()))?;
        }
    }
    Ok(())
}

fn is_qcow2(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"QFI\xfb"
}

/// Size and BLAKE3 of a file.
fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut h = blake3::Hasher::new();
    let size = std::io::copy(&mut std::fs::File::open(path)?, &mut h)?;
    Ok((size, h.finalize().to_hex().to_string()))
}

/// QEMU's command line without the run's own paths and the restore's
/// `-incoming defer`, and its executable.
fn qemu_command_line(pid: u32, contract: &StartContract) -> Result<(Vec<String>, PathBuf), String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map_err(|e| format!("cannot read QEMU's command line: {e}"))?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map_err(|e| format!("cannot read QEMU's executable: {e}"))?;
    let mut argv: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| contract.without_run_paths(&String::from_utf8_lossy(a)))
        .collect();
    if let Some(i) = argv.windows(2).position(|w| w == ["-incoming", "defer"]) {
        argv.drain(i..i + 2);
    }
    Ok((argv, exe))
}

/// 32 random bytes as `printf` escapes, to stir the guest's pool after a restore.
fn random_escapes() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_err()
    {
        // Without the host's pool, at least differ per call (vmgenid reseeds anyway).
        use std::hash::{BuildHasher, Hasher};
        let state = std::collections::hash_map::RandomState::new();
        for chunk in bytes.chunks_mut(8) {
            chunk.copy_from_slice(&state.build_hasher().finish().to_le_bytes());
        }
    }
    bytes.iter().map(|b| format!("\\{b:03o}")).collect()
}

fn age(saved_at: u64) -> String {
    let secs = snapshot::now_secs().saturating_sub(saved_at);
    match secs {
        0..=119 => format!("{secs} s ago"),
        120..=7199 => format!("{} min ago", secs / 60),
        _ => format!("{} h ago", secs / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qcow2_is_known_by_its_magic() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("a.qcow2");
        std::fs::write(&q, b"QFI\xfb\0\0\0\x03").unwrap();
        let other = dir.path().join("efi.fd");
        std::fs::write(&other, b"\0\0\0\0").unwrap();
        assert!(is_qcow2(&q));
        assert!(!is_qcow2(&other));
        assert!(!is_qcow2(&dir.path().join("missing")));
    }

    #[test]
    fn random_escapes_differ_and_are_octal() {
        let (a, b) = (random_escapes(), random_escapes());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32 * 4);
        assert!(a
            .split('\\')
            .skip(1)
            .all(|o| o.len() == 3 && o.bytes().all(|c| (b'0'..=b'7').contains(&c))));
    }

    #[test]
    fn the_command_line_of_this_process_reads_back() {
        let contract = StartContract::new("t", "/nonexistent-state", "/nonexistent-shared");
        let (argv, exe) = qemu_command_line(std::process::id(), &contract).unwrap();
        assert!(!argv.is_empty());
        assert_eq!(exe, std::env::current_exe().unwrap());
    }
}
