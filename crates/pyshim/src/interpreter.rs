//! Starting the embedded interpreter so that it finds its own standard
//! library, whatever `python3` comes first on `PATH`.
//!
//! An embedded Python locates its prefix from its program name, which
//! defaults to `python3` looked up on `PATH`: with another Python first there
//! (the system's, a Nix shell's), the libpython this binary links loads that
//! Python's standard library and breaks (`No module named 'math'`). So the
//! program name is the interpreter the binary was built against (recorded by
//! build.rs), when it still exists and `PYTHONHOME` does not say otherwise.

use pyo3::ffi;

/// The build interpreter's executable, as pyo3-build-config found it.
const BUILD_PYTHON: Option<&str> = option_env!("VMRIG_PYTHON_EXECUTABLE");

/// Initializes Python once (without its signal handlers, as PyO3 does) and
/// leaves the GIL released; then PyO3's own initialization has nothing to do.
pub(crate) fn initialize() {
    let program = BUILD_PYTHON
        .filter(|p| std::path::Path::new(p).is_file())
        .filter(|_| std::env::var_os("PYTHONHOME").is_none())
        .and_then(|p| std::ffi::CString::new(p).ok());
    if let Some(program) = program {
        initialize_as(&program);
    }
    pyo3::prepare_freethreaded_python();
}

#[allow(unsafe_code)]
fn initialize_as(program: &std::ffi::CStr) {
    // SAFETY: the C API's documented initialization sequence: the config is
    // initialized by PyConfig_InitPythonConfig before any field is read or
    // set, set only through PyConfig_SetBytesString (which copies the
    // string), cleared once; Py_IsInitialized guards against a second start,
    // and this runs on the thread that will hold the GIL before releasing it
    // with PyEval_SaveThread, as pyo3::prepare_freethreaded_python does.
    unsafe {
        if ffi::Py_IsInitialized() != 0 {
            return;
        }
        let mut config = std::mem::MaybeUninit::<ffi::PyConfig>::uninit();
        ffi::PyConfig_InitPythonConfig(config.as_mut_ptr());
        let mut config = config.assume_init();
        config.install_signal_handlers = 0;
        let name = std::ptr::addr_of_mut!(config.program_name);
        let set = ffi::PyConfig_SetBytesString(&mut config, name, program.as_ptr());
        if ffi::PyStatus_Exception(set) == 0 {
            let started = ffi::Py_InitializeFromConfig(&config);
            if ffi::PyStatus_Exception(started) == 0 {
                ffi::PyEval_SaveThread();
            }
        }
        ffi::PyConfig_Clear(&mut config);
    }
}
