//! The guest kit's error type.

use std::path::PathBuf;

/// Everything that can go wrong while building guests.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The definition file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The definition is not valid TOML or has an unknown top-level key.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message (with line and column).
        message: String,
    },
    /// A field of the definition has a bad value.
    #[error("{}: {}{field}: {message}", path.display(), node.as_ref().map(|n| format!("node `{n}`: ")).unwrap_or_default())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The node, when the field belongs to one.
        node: Option<String>,
        /// The field's path, like `users.alice.uid`.
        field: String,
        /// What is wrong and what to write instead.
        message: String,
    },
    /// A program named in `packages` is not on the host.
    #[error("{}: node `{node}`: {field}: program `{program}` is not on this host ({why}); install it (apt-get install ...) or give an absolute path", path.display())]
    MissingProgram {
        /// The definition file.
        path: PathBuf,
        /// The node.
        node: String,
        /// The field, like `packages[1]`.
        field: String,
        /// The program as written.
        program: String,
        /// What was looked for.
        why: String,
    },
    /// Something the kit needs from the host is missing.
    #[error("{what} not found: {hint}")]
    HostMissing {
        /// What is missing.
        what: String,
        /// How to get it.
        hint: String,
    },
    /// A kernel module the guest needs is not in the host's modules.dep.
    #[error("kernel {kernel}: module `{module}` is neither in {modules_dep} nor built in; the guest needs it ({why})")]
    Module {
        /// Kernel version.
        kernel: String,
        /// Module name.
        module: String,
        /// The modules.dep file read.
        modules_dep: PathBuf,
        /// What it is for.
        why: String,
    },
    /// A flavour that this version cannot build yet.
    #[error("{}: node `{node}`: flavour `{flavour}` is not supported yet; use flavour = \"busybox\"", path.display())]
    Unsupported {
        /// The definition file.
        path: PathBuf,
        /// The node.
        node: String,
        /// The flavour.
        flavour: String,
    },
    /// A host command the kit runs failed.
    #[error("`{command}` failed: {message}")]
    Command {
        /// The command line.
        command: String,
        /// Its status and stderr.
        message: String,
    },
    /// A file-system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// Result with the guest kit's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds a context line to I/O errors.
pub(crate) trait IoContext<T> {
    /// Wraps the error with `context` (evaluated only on error).
    fn context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: context(),
            source,
        })
    }
}
