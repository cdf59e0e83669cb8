//! Errors as values: every error names what failed, where (file:line:col or step), and a hint.
//!
//! The CLI maps them to exit codes: manifest/usage problems are 2, everything that
//! failed while building (a step, a gate, the toolchain, the cache) is 1.

use std::fmt;

use camino::Utf8PathBuf;

/// A position in a manifest, 1-based like compilers print it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: Utf8PathBuf,
    pub line: u64,
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

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The manifest is not valid: bad YAML, unknown key, wrong type, unknown step, cycle...
    #[error("{location}: {message}{}", hint_suffix(.hint))]
    Manifest {
        location: Location,
        message: String,
        hint: Option<String>,
    },

    /// A step ran and failed (including a failed gate). The report, if any, is kept.
    #[error("step `{step}` failed: {message}{}", hint_suffix(.hint))]
    Step {
        step: String,
        message: String,
        hint: Option<String>,
    },

    /// The Python toolchain or a native runtime library could not be provisioned/loaded.
    #[error("toolchain: {message}{}", hint_suffix(.hint))]
    Toolchain {
        message: String,
        hint: Option<String>,
    },

    /// The model file itself is unreadable or not an ONNX ModelProto.
    #[error("model {path}: {message}{}", hint_suffix(.hint))]
    Model {
        path: Utf8PathBuf,
        message: String,
        hint: Option<String>,
    },

    #[error("{path}: {source}")]
    Io {
        path: Utf8PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The user asked for something that does not exist (a --target, a release...).
    #[error("{message}{}", hint_suffix(.hint))]
    Usage {
        message: String,
        hint: Option<String>,
    },

    /// The run was interrupted (Ctrl-C).
    #[error("interrupted")]
    Interrupted,

    /// Several independent manifest problems, reported together.
    #[error("{}", many(.0))]
    Many(Vec<Error>),

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

fn hint_suffix(hint: &Option<String>) -> String {
    match hint {
        Some(h) => format!("\n  hint: {h}"),
        None => String::new(),
    }
}

impl Error {
    pub fn io(path: impl Into<Utf8PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

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

    pub fn with_hint(mut self, h: impl Into<String>) -> Self {
        match &mut self {
            Error::Manifest { hint, .. }
            | Error::Step { hint, .. }
            | Error::Toolchain { hint, .. }
            | Error::Model { hint, .. }
            | Error::Usage { hint, .. } => *hint = Some(h.into()),
            _ => {}
        }
        self
    }

    pub fn toolchain(message: impl Into<String>) -> Self {
        Error::Toolchain {
            message: message.into(),
            hint: None,
        }
    }

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

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `.fs_context(path)` on io results, so every IO error names its file.
pub(crate) trait IoContext<T> {
    fn fs_context(self, path: impl AsRef<camino::Utf8Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn fs_context(self, path: impl AsRef<camino::Utf8Path>) -> Result<T> {
        self.map_err(|e| Error::io(path.as_ref().to_owned(), e))
    }
}
