//! Typed QMP commands (QEMU's `qapi/*.json` schema) and the [`Command`] trait.
//!
//! Each command is a struct whose serde form is the command's `arguments` object,
//! with the command's wire name and the type of its `return` value attached by
//! [`Command`]. [`Execute`] runs anything else by name with `serde_json::Value`s.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::message::{VersionInfo, VersionTriple};

/// A QMP command: its `arguments` (the `Serialize` impl; `null` or `{}` means none),
/// its name on the wire and the type of its `return` value.
pub trait Command: Serialize {
    /// What QEMU's `return` value deserializes into.
    type Output: DeserializeOwned;

    /// The command's name, the value of `execute`.
    fn name(&self) -> &str;
}

/// The `{}` that most commands return.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

macro_rules! unit_command {
    ($(#[$doc:meta])* $ty:ident, $name:literal, $out:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
        pub struct $ty;

        impl Command for $ty {
            type Output = $out;
            fn name(&self) -> &str {
                $name
            }
        }
    };
}

macro_rules! command {
    ($ty:ident, $name:literal, $out:ty) => {
        impl Command for $ty {
            type Output = $out;
            fn name(&self) -> &str {
                $name
            }
        }
    };
}

/// `qmp_capabilities`: leave capabilities negotiation mode. The client sends it itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QmpCapabilities {
    /// Capabilities to enable (e.g. `oob`); none by default.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub enable: Vec<String>,
}
command!(QmpCapabilities, "qmp_capabilities", Empty);

unit_command!(
    /// `query-version`: QEMU's version.
    QueryVersion, "query-version", VersionInfo
);
unit_command!(
    /// `query-status`: whether the VM runs, and its run state.
    QueryStatus, "query-status", StatusInfo
);
unit_command!(
    /// `stop`: pause all vCPUs (emits `STOP`).
    Stop, "stop", Empty
);
unit_command!(
    /// `cont`: resume all vCPUs (emits `RESUME`).
    Cont, "cont", Empty
);
unit_command!(
    /// `system_reset`: hard-reset the machine (emits `RESET`).
    SystemReset, "system_reset", Empty
);
unit_command!(
    /// `system_powerdown`: press the ACPI power button (emits `POWERDOWN`).
    SystemPowerdown, "system_powerdown", Empty
);
unit_command!(
    /// `quit`: make QEMU exit (emits `SHUTDOWN`, then closes the socket).
    Quit, "quit", Empty
);
unit_command!(
    /// `query-migrate`: state of the current or last migration.
    QueryMigrate, "query-migrate", MigrationInfo
);

/// The VM's run state (`RunState` in `qapi/run-state.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum RunState {
    /// Stopped by a debugger.
    Debug,
    /// Waiting for an incoming migration.
    Inmigrate,
    /// An internal error occurred.
    InternalError,
    /// An I/O error paused the VM.
    IoError,
    /// Paused by `stop`.
    Paused,
    /// Paused after a completed outgoing migration.
    Postmigrate,
    /// Started with `-S`, not yet run.
    Prelaunch,
    /// Finishing a migration.
    FinishMigrate,
    /// Restoring a snapshot.
    RestoreVm,
    /// Running.
    Running,
    /// Saving a snapshot.
    SaveVm,
    /// Shut down (with `-no-shutdown`).
    Shutdown,
    /// Suspended (ACPI S3).
    Suspended,
    /// Stopped by a watchdog.
    Watchdog,
    /// The guest panicked.
    GuestPanicked,
    /// COLO fault tolerance state.
    Colo,
    /// A state this crate does not know yet.
    #[serde(other)]
    Other,
}

/// The `query-status` return value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// True when the vCPUs run.
    pub running: bool,
    /// The run state.
    pub status: RunState,
}

/// Image format for [`Screendump`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// Portable pixmap (every QEMU).
    #[default]
    Ppm,
    /// PNG (QEMU 7.1 and later).
    Png,
}

/// `screendump`: write the display's contents to a file on QEMU's host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Screendump {
    /// Output file path, as QEMU sees it.
    pub filename: String,
    /// Display device id; the primary console when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Head of the device; 0 when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<u32>,
    /// Image format; PPM when absent (QEMU before 7.1 knows nothing else).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<ImageFormat>,
}
command!(Screendump, "screendump", Empty);

impl Screendump {
    /// Screendump of the primary console to `filename` in `format`.
    pub fn new(filename: impl Into<String>, format: ImageFormat) -> Self {
        Self {
            filename: filename.into(),
            device: None,
            head: None,
            format: Some(format),
        }
    }
}

/// A key, by QEMU key code name or by number (`KeyValue` in `qapi/ui.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "lowercase")]
pub enum KeyValue {
    /// A `QKeyCode` name such as `ctrl`, `alt`, `a`, `ret`, `f1`, `kp_add`.
    Qcode(String),
    /// A raw scancode number.
    Number(i64),
}

impl KeyValue {
    /// A key by its QKeyCode name.
    pub fn qcode(name: impl Into<String>) -> Self {
        KeyValue::Qcode(name.into())
    }
}

/// `send-key`: press the keys together, then release them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SendKey {
    /// Keys pressed at once, in order (e.g. `ctrl`, `alt`, `delete`).
    pub keys: Vec<KeyValue>,
    /// How long to hold them in milliseconds; QEMU's default (100) when absent.
    #[serde(rename = "hold-time", skip_serializing_if = "Option::is_none")]
    pub hold_time: Option<u32>,
}
command!(SendKey, "send-key", Empty);

impl SendKey {
    /// Parses a NixOS/HMP-style combination such as `ctrl-alt-delete` or `a` into
    /// QKeyCodes (a `0x..` part becomes a number key).
    pub fn combo(combo: &str) -> Self {
        let keys = combo
            .split('-')
            .filter(|k| !k.is_empty())
            .map(|k| {
                match k
                    .strip_prefix("0x")
                    .and_then(|h| i64::from_str_radix(h, 16).ok())
                {
                    Some(n) => KeyValue::Number(n),
                    None => KeyValue::qcode(k),
                }
            })
            .collect();
        Self {
            keys,
            hold_time: None,
        }
    }
}

/// One input event for [`InputSendEvent`] (`InputEvent` in `qapi/ui.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "lowercase")]
pub enum InputEvent {
    /// A key goes down or up.
    Key {
        /// The key.
        key: KeyValue,
        /// True for press, false for release.
        down: bool,
    },
    /// A button goes down or up.
    Btn {
        /// `left`, `middle`, `right`, `wheel-up`, `wheel-down`, `side`, `extra`, ...
        button: String,
        /// True for press, false for release.
        down: bool,
    },
    /// Relative pointer motion.
    Rel {
        /// `x` or `y`.
        axis: String,
        /// Distance.
        value: i64,
    },
    /// Absolute pointer position.
    Abs {
        /// `x` or `y`.
        axis: String,
        /// Position, 0..=0x7fff.
        value: i64,
    },
}

/// `input-send-event`: inject raw input events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InputSendEvent {
    /// Input device id; the default device when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Display head; 0 when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<u32>,
    /// The events, in order.
    pub events: Vec<InputEvent>,
}
command!(InputSendEvent, "input-send-event", Empty);

/// `set_link`: plug or unplug a network device's virtual cable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SetLink {
    /// The NIC's or netdev's id.
    pub name: String,
    /// Link up (true) or down (false).
    pub up: bool,
}
command!(SetLink, "set_link", Empty);

/// `human-monitor-command`: run an HMP command line; returns its output text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HumanMonitorCommand {
    /// The command line, e.g. `info status` or `hostfwd_add tcp::2222-:22`.
    #[serde(rename = "command-line")]
    pub command_line: String,
    /// CPU index the command applies to, when relevant.
    #[serde(rename = "cpu-index", skip_serializing_if = "Option::is_none")]
    pub cpu_index: Option<i64>,
}
command!(HumanMonitorCommand, "human-monitor-command", String);

impl HumanMonitorCommand {
    /// Runs `command_line`.
    pub fn new(command_line: impl Into<String>) -> Self {
        Self {
            command_line: command_line.into(),
            cpu_index: None,
        }
    }
}

/// `migrate`: start an outgoing migration to `uri` (e.g. `exec:cat > FILE`,
/// `unix:PATH`, `tcp:HOST:PORT`); watch it with [`QueryMigrate`] or the
/// `MIGRATION` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Migrate {
    /// Destination URI.
    pub uri: String,
    /// Resume a paused postcopy migration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume: Option<bool>,
}
command!(Migrate, "migrate", Empty);

impl Migrate {
    /// Migrates to `uri`.
    pub fn new(uri: impl Into<String>) -> Self {
        Self {
            uri: uri.into(),
            resume: None,
        }
    }
}

/// `migrate-incoming`: accept an incoming migration (QEMU started with `-incoming defer`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrateIncoming {
    /// Source URI, e.g. `exec:cat FILE`.
    pub uri: String,
}
command!(MigrateIncoming, "migrate-incoming", Empty);

/// State of a migration (`MigrationStatus` in `qapi/migration.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum MigrationStatus {
    /// No migration has started.
    None,
    /// Being set up.
    Setup,
    /// Cancelling.
    Cancelling,
    /// Cancelled.
    Cancelled,
    /// In progress.
    Active,
    /// Postcopy phase.
    PostcopyActive,
    /// Postcopy paused.
    PostcopyPaused,
    /// Postcopy recovering.
    PostcopyRecover,
    /// Finished successfully.
    Completed,
    /// Failed.
    Failed,
    /// COLO state.
    Colo,
    /// Paused before switchover.
    PreSwitchover,
    /// Device state being migrated.
    Device,
    /// Waiting for unplug.
    WaitUnplug,
    /// A state this crate does not know yet.
    #[serde(other)]
    Other,
}

/// The `query-migrate` return value; fields QEMU omits are `None`/empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationInfo {
    /// The migration's state; absent before any migration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<MigrationStatus>,
    /// Why it failed, when it did.
    #[serde(
        rename = "error-desc",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub error_desc: Option<String>,
    /// Total time in milliseconds, once completed.
    #[serde(
        rename = "total-time",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub total_time: Option<u64>,
    /// Everything else QEMU reported (`ram`, `downtime`, ...).
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// `device_add`: hot-plug a device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceAdd {
    /// Device model, e.g. `virtio-net-pci`.
    pub driver: String,
    /// The new device's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The bus to plug into.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bus: Option<String>,
    /// Further device properties (`netdev`, `mac`, ...).
    #[serde(flatten)]
    pub properties: Map<String, Value>,
}
command!(DeviceAdd, "device_add", Empty);

impl DeviceAdd {
    /// Adds a `driver` device with id `id`.
    pub fn new(driver: impl Into<String>, id: impl Into<String>) -> Self {
        Self {
            driver: driver.into(),
            id: Some(id.into()),
            bus: None,
            properties: Map::new(),
        }
    }

    /// Sets a device property.
    pub fn property(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.properties.insert(name.into(), value.into());
        self
    }
}

/// `device_del`: request unplugging a device (completion is the `DEVICE_DELETED` event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceDel {
    /// The device's id or QOM path.
    pub id: String,
}
command!(DeviceDel, "device_del", Empty);

/// Any command by name, with untyped arguments and return value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Execute {
    #[serde(skip)]
    name: String,
    arguments: Value,
}

impl Execute {
    /// `name` with `arguments` (a JSON object, or `Value::Null` for none).
    pub fn new(name: impl Into<String>, arguments: Value) -> Self {
        Self {
            name: name.into(),
            arguments,
        }
    }
}

impl Command for Execute {
    type Output = Value;
    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args<C: Command>(c: &C) -> Value {
        serde_json::to_value(c).unwrap()
    }

    #[test]
    fn argument_shapes_match_the_qapi_schema() {
        assert_eq!(args(&Stop), Value::Null);
        assert_eq!(args(&QmpCapabilities::default()), json!({}));
        assert_eq!(
            args(&Screendump::new("/tmp/s.png", ImageFormat::Png)),
            json!({"filename": "/tmp/s.png", "format": "png"})
        );
        let mut keys = SendKey::combo("ctrl-alt-0x3b");
        keys.hold_time = Some(50);
        assert_eq!(
            args(&keys),
            json!({"keys": [{"type": "qcode", "data": "ctrl"}, {"type": "qcode", "data": "alt"},
                            {"type": "number", "data": 59}], "hold-time": 50})
        );
        assert_eq!(
            args(&InputSendEvent {
                device: None,
                head: None,
                events: vec![
                    InputEvent::Key {
                        key: KeyValue::qcode("a"),
                        down: true
                    },
                    InputEvent::Btn {
                        button: "left".into(),
                        down: false
                    },
                    InputEvent::Abs {
                        axis: "x".into(),
                        value: 100
                    },
                ],
            }),
            json!({"events": [
                {"type": "key", "data": {"key": {"type": "qcode", "data": "a"}, "down": true}},
                {"type": "btn", "data": {"button": "left", "down": false}},
                {"type": "abs", "data": {"axis": "x", "value": 100}}]})
        );
        assert_eq!(
            args(&SetLink {
                name: "nic0".into(),
                up: false
            }),
            json!({"name": "nic0", "up": false})
        );
        assert_eq!(
            args(&HumanMonitorCommand::new("info status")),
            json!({"command-line": "info status"})
        );
        assert_eq!(
            args(&Migrate::new("exec:cat > f")),
            json!({"uri": "exec:cat > f"})
        );
        assert_eq!(
            args(&DeviceAdd::new("e1000", "n1").property("netdev", "u1")),
            json!({"driver": "e1000", "id": "n1", "netdev": "u1"})
        );
        let e = Execute::new("query-cpus-fast", json!({"a": 1}));
        assert_eq!(e.name(), "query-cpus-fast");
        assert_eq!(args(&e), json!({"a": 1}));
    }

    #[test]
    fn return_values_decode() {
        let s: StatusInfo = serde_json::from_value(
            json!({"status": "prelaunch", "singlestep": false, "running": false}),
        )
        .unwrap();
        assert_eq!(s.status, RunState::Prelaunch);
        let s: StatusInfo =
            serde_json::from_value(json!({"status": "brand-new", "running": true})).unwrap();
        assert_eq!(s.status, RunState::Other);
        let m: MigrationInfo = serde_json::from_value(json!({})).unwrap();
        assert_eq!(m.status, None);
        let m: MigrationInfo = serde_json::from_value(
            json!({"status": "completed", "total-time": 150, "ram": {"total": 1}}),
        )
        .unwrap();
        assert_eq!(m.status, Some(MigrationStatus::Completed));
        assert_eq!(m.total_time, Some(150));
        assert!(m.other.contains_key("ram"));
        let _: Empty = serde_json::from_value(json!({})).unwrap();
    }
}
