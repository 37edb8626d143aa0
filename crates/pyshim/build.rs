//! Links the binary against the libpython PyO3 was configured with, and
//! records its directory as the run-time search path, so the interpreter found
//! at build time is the one loaded (not another libpython on the system).
//! Records the interpreter's executable for the embedded interpreter's
//! program name. The extension module (the wheel) links no libpython and
//! runs in Python's own process: nothing to do there.
fn main() {
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_EXTENSION_MODULE");
    if std::env::var_os("CARGO_FEATURE_EXTENSION_MODULE").is_some() {
        return;
    }
    let config = pyo3_build_config::get();
    if let Some(dir) = &config.lib_dir {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    // The embedded interpreter's program name (see src/interpreter.rs).
    if let Some(python) = &config.executable {
        println!("cargo:rustc-env=VMRIG_PYTHON_EXECUTABLE={python}");
    }
}
