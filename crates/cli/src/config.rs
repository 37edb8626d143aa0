//! The current NixOS driver's JSON config (`nixos-test-driver -c CONFIG`),
//! written by nixpkgs' `nixos/lib/testing/driver.nix`:
//! `{"vms": {NAME: {"name": NAME, "start_script": PATH}}, "containers": {},
//! "vlans": [1], "global_timeout": 3600, "enable_ssh_backdoor": false,
//! "test_script": PATH}`. Keys NixOS does not know are ignored (as its
//! pydantic model does); a value of the wrong type is an error that names its
//! key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The parts of the config vmrig uses.
#[derive(Debug, Deserialize)]
pub struct Config {
    /// The machines, by name.
    pub vms: BTreeMap<String, Vm>,
    /// systemd-nspawn containers: vmrig has none, so only `{}` is accepted.
    #[serde(default)]
    pub containers: BTreeMap<String, serde_json::Value>,
    /// VLAN numbers.
    #[serde(default)]
    pub vlans: Vec<Vlan>,
    /// Seconds for the whole test.
    #[serde(default)]
    pub global_timeout: Option<f64>,
    /// The SSH backdoor (vsock): not supported.
    #[serde(default)]
    pub enable_ssh_backdoor: bool,
    /// vmrig's own key: `false` turns OCR off (NixOS decides by whether its
    /// driver was built with `enableOCR`).
    #[serde(default)]
    pub enable_ocr: Option<bool>,
    /// The test script (`--test-script` overrides it).
    #[serde(default)]
    pub test_script: Option<PathBuf>,
}

/// One machine.
#[derive(Debug, Deserialize)]
pub struct Vm {
    /// Its name (vmrig names machines after `run-NAME-vm`; they must agree).
    pub name: Option<String>,
    /// Its start script.
    pub start_script: PathBuf,
}

/// A VLAN number, 1-255.
#[derive(Debug, Clone, Copy)]
pub struct Vlan(pub u8);

impl<'de> Deserialize<'de> for Vlan {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        u8::try_from(n)
            .ok()
            .filter(|n| *n >= 1)
            .map(Vlan)
            .ok_or_else(|| serde::de::Error::custom(format!("{n} is not a VLAN number (1-255)")))
    }
}

impl Config {
    /// Reads and checks `path`; errors name the file and the bad key.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the config {}: {e}", path.display()))?;
        Config::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses and checks a config's text.
    pub fn parse(text: &str) -> Result<Config, String> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let at = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                format!("not valid JSON: {inner}")
            } else if at == "." {
                format!("{inner}")
            } else {
                format!("`{at}`: {inner}")
            }
        })?;
        if !config.containers.is_empty() {
            return Err("`containers` (systemd-nspawn machines) are not supported by vmrig".into());
        }
        if config.enable_ssh_backdoor {
            return Err("`enable_ssh_backdoor` is not supported by vmrig yet".into());
        }
        if let Some(t) = config.global_timeout {
            if !(t.is_finite() && t > 0.0) {
                return Err(format!(
                    "`global_timeout`: {t} is not a positive number of seconds"
                ));
            }
        }
        for (key, vm) in &config.vms {
            let derived = vmrig_guest::contract::machine_name(&vm.start_script);
            if let Some(name) = vm.name.as_deref().filter(|n| *n != derived) {
                return Err(format!(
                    "`vms.{key}.name` is `{name}`, but vmrig names a machine after its start \
                     script, and {} gives `{derived}`: rename the script run-{name}-vm",
                    vm.start_script.display()
                ));
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"vms": {"server": {"name": "server", "start_script": "/r/bin/run-server-vm"}},
        "containers": {}, "vlans": [1, 2], "global_timeout": 3600,
        "enable_ssh_backdoor": false, "test_script": "/t.py", "display_viewers": {}}"#;

    #[test]
    fn reads_nixos_config() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(
            c.vms["server"].start_script,
            PathBuf::from("/r/bin/run-server-vm")
        );
        assert_eq!(c.vlans.iter().map(|v| v.0).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(c.global_timeout, Some(3600.0));
        assert_eq!(c.test_script, Some(PathBuf::from("/t.py")));
        assert_eq!(c.enable_ocr, None, "NixOS's config has no such key");
        let off = GOOD.replacen('{', "{\"enable_ocr\": false, ", 1);
        assert_eq!(Config::parse(&off).unwrap().enable_ocr, Some(false));
    }

    #[test]
    fn errors_name_the_bad_key() {
        // (replace this, with that, the error says)
        let cases = [
            (
                "[1, 2]",
                "[1, \"two\"]",
                "`vlans[1]`: invalid type: string \"two\"",
            ),
            ("[1, 2]", "[1, 300]", "`vlans[1]`: 300 is not a VLAN number"),
            (
                "\"start_script\"",
                "\"start-script\"",
                "`vms.server`: missing field `start_script`",
            ),
            (
                "3600",
                "\"an hour\"",
                "`global_timeout`: invalid type: string",
            ),
            (
                "\"enable_ssh_backdoor\": false",
                "\"enable_ssh_backdoor\": 0",
                "`enable_ssh_backdoor`: invalid type: integer",
            ),
            (
                "\"name\": \"server\"",
                "\"name\": \"db\"",
                "`vms.server.name` is `db`",
            ),
            (
                "{}, \"vlans\"",
                "{\"c\": {}}, \"vlans\"",
                "`containers` (systemd-nspawn machines)",
            ),
        ];
        for (from, to, says) in cases {
            let e = Config::parse(&GOOD.replace(from, to)).unwrap_err();
            assert!(e.contains(says), "{from} -> {to}: {e}");
        }
        let e = Config::parse("{\"vms\": {}").unwrap_err();
        assert!(e.starts_with("not valid JSON: EOF"), "{e}");
        let e = Config::parse("{}").unwrap_err();
        assert!(e.contains("missing field `vms`"), "{e}");
    }
}
