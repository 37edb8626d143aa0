//! Links the binary against the libpython PyO3 was configured with, and
//! records its directory as the run-time search path, so the interpreter found
//! at build time is the one loaded (not another libpython on the system).
fn main() {
    let config = pyo3_build_config::get();
    if let Some(dir) = &config.lib_dir {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
