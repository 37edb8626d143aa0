//! Links the binary against the libpython PyO3 was configured with, and
//! records its directory as the run-time search path, so the interpreter found
//! at build time is the one loaded (not another libpython on the system).
//! The extension module (the wheel) links no libpython: nothing to do there.
fn main() {
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_EXTENSION_MODULE");
    if std::env::var_os("CARGO_FEATURE_EXTENSION_MODULE").is_some() {
        return;
    }
    let config = pyo3_build_config::get();
    if let Some(dir) = &config.lib_dir {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
