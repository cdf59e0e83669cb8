//! Errors as values: every error names what failed, where (file:line:col or step), and a hint.
//!
//! The CLI maps them to exit codes: manifest/usage problems are 2, everything that
//! failed while building (a step, a gate, the toolchain, the cache) is 1.

use std::fmt;

use camino::Utf8PathBuf;

/// A position in a manifest, 1-based like compilers print it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The manifest file.
    pub file: Utf8PathBuf,
    /// 1-based line; 0 when only the file is known.
    pub line: u64,
    /// 1-based column.
    pub column: u64,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file)
        } else {
            write!(f, "{}:{}:{}", self.file, self.line, self.column)
        }
    }
}

/// Every error facebuild reports: what failed, where, and a hint for the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The manifest is not valid: bad YAML, unknown key, wrong type, unknown step, cycle...
    #[error("{location}: {message}{}", hint_suffix(.hint))]
    Manifest {
        /// Where in the manifest.
        location: Location,
        /// What is wrong.
        message: String,
        /// How to fix it, when facebuild knows.
        hint: Option<String>,
    },

    /// A step ran and failed (including a failed gate). The report, if any, is kept.
    #[error("step `{step}` failed: {message}{}", hint_suffix(.hint))]
    Step {
        /// The step that failed.
        step: String,
        /// What is wrong.
        message: String,
        /// How to fix it, when facebuild knows.
        hint: Option<String>,
    },

    /// The Python toolchain or a native runtime library could not be provisioned/loaded.
    #[error("toolchain: {message}{}", hint_suffix(.hint))]
    Toolchain {
        /// What is wrong.
        message: String,
        /// How to fix it, when facebuild knows.
        hint: Option<String>,
    },

    /// The model file itself is unreadable or not an ONNX ModelProto.
    #[error("model {path}: {message}{}", hint_suffix(.hint))]
    Model {
        /// The file concerned.
        path: Utf8PathBuf,
        /// What is wrong.
        message: String,
        /// How to fix it, when facebuild knows.
        hint: Option<String>,
    },

    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: Utf8PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The user asked for something that does not exist (a --target, a release...).
    #[error("{message}{}", hint_suffix(.hint))]
    Usage {
        /// What is wrong.
        message: String,
        /// How to fix it, when facebuild knows.
        hint: Option<String>,
    },

    /// One of facebuild's Python helpers failed: what it was doing, the exception, where it
    /// was raised, and the likely cause. The traceback is kept apart (the step keeps it in
    /// its output folder), not in the message.
    #[error("{what} failed: {exception}{}{}", origin_suffix(.origin), hint_suffix(.hint))]
    Helper {
        /// What the helper was doing (`Q/DQ quantization`).
        what: String,
        /// The exception's last line (`TypeError: object of type 'NoneType' has no len()`).
        exception: String,
        /// The innermost frame: `symbolic_shape_infer.py:1224 in _infer_Expand`.
        origin: Option<String>,
        /// Everything the helper wrote to stderr.
        traceback: String,
        /// The likely cause and the fix, when facebuild knows the failure.
        hint: Option<String>,
    },

    /// The run was interrupted (Ctrl-C).
    #[error("interrupted")]
    Interrupted,

    /// Several independent manifest problems, reported together.
    #[error("{}", many(.0))]
    Many(Vec<Error>),

    /// Anything else, with its context chain.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

fn many(errors: &[Error]) -> String {
    let mut s = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    if errors.len() > 1 {
        s += &format!("\n{} problems in the manifest", errors.len());
    }
    s
}

fn origin_suffix(origin: &Option<String>) -> String {
    match origin {
        Some(o) => format!(" (in {o})"),
        None => String::new(),
    }
}

fn hint_suffix(hint: &Option<String>) -> String {
    match hint {
        Some(h) => format!("\n  hint: {h}"),
        None => String::new(),
    }
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<Utf8PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A manifest error at `location`.
    pub fn manifest(location: Location, message: impl Into<String>) -> Self {
        Error::Manifest {
            location,
            message: message.into(),
            hint: None,
        }
    }

    /// One error, or all of several (a single one is returned as it is).
    pub fn many(mut errors: Vec<Error>) -> Self {
        if errors.len() == 1 {
            errors.remove(0)
        } else {
            Error::Many(errors)
        }
    }

    /// The same error with a hint for the fix (kinds without a hint are returned as they are).
    pub fn with_hint(mut self, h: impl Into<String>) -> Self {
        match &mut self {
            Error::Manifest { hint, .. }
            | Error::Step { hint, .. }
            | Error::Toolchain { hint, .. }
            | Error::Model { hint, .. }
            | Error::Helper { hint, .. }
            | Error::Usage { hint, .. } => *hint = Some(h.into()),
            _ => {}
        }
        self
    }

    /// A toolchain error.
    pub fn toolchain(message: impl Into<String>) -> Self {
        Error::Toolchain {
            message: message.into(),
            hint: None,
        }
    }

    /// A usage error: the user asked for something that does not exist.
    pub fn usage(message: impl Into<String>) -> Self {
        Error::Usage {
            message: message.into(),
            hint: None,
        }
    }

    /// Process exit code: 2 for bad usage or manifest, 130 for Ctrl-C, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Manifest { .. } | Error::Usage { .. } | Error::Many(_) => 2,
            Error::Interrupted => 130,
            _ => 1,
        }
    }
}

/// facebuild's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `.fs_context(path)` on io results, so every IO error names its file.
pub trait IoContext<T> {
    fn fs_context(self, path: impl AsRef<camino::Utf8Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn fs_context(self, path: impl AsRef<camino::Utf8Path>) -> Result<T> {
        self.map_err(|e| Error::io(path.as_ref().to_owned(), e))
    }
}
