//! Settings: what a command runs with, resolved once from flags, the environment and
//! defaults (as uv's `*Settings::resolve` and ripgrep's `HiArgs` do), then handed down and
//! never changed. The environment variables that configure facebuild are read here.

use std::time::Duration;

use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};

use crate::cache::remote::{RemoteConfig, parse_public_key, parse_signing_key};
use crate::error::{Error, Result};
use crate::scheduler::RunOptions;

/// How outputs of cached steps reach `out/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Materialize {
    /// Copy every step's outputs to `out/` (fetching remote hits).
    #[default]
    All,
    /// Only the outputs of steps nothing else depends on.
    Leaves,
    /// No outputs; a remote hit is fetched only when a step that runs consumes it.
    None,
}

/// Where steps run (`run --executor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub(crate) enum Executor {
    /// As the manifest's `runs_on` says.
    #[default]
    Auto,
    /// Every step on this machine (keys unchanged: a GPU class still names the machine).
    Local,
}

/// What a build context is opened with.
#[derive(Debug, Clone)]
pub(crate) struct ContextSettings {
    /// The cache, absolute (tools run in scratch folders are handed paths into it).
    pub cache_dir: Utf8PathBuf,
    pub executor: Executor,
    pub materialize: Materialize,
    /// The remote cache, when `--remote` or `FACEBUILD_REMOTE` names one.
    pub remote: Option<RemoteConfig>,
    /// Where releases are written when a release step names no `releases_dir`.
    pub releases_dir: Utf8PathBuf,
    /// `FACEBUILD_RELEASE_SIGNING_KEY`: a P-256 PEM file's path, or the PEM text (as CI
    /// secrets come). Never part of a cache key.
    pub signing_key: Option<String>,
    /// This invocation, for release provenance.
    pub invocation: Invocation,
    /// The longest wait between two polls of a Slurm job.
    pub slurm_poll_max: Duration,
    /// Where toolchains live and how they are installed.
    pub toolchain: crate::toolchain::Place,
    /// `TENSORRT_HOME`: where trtexec is looked for after the manifest's own path.
    pub tensorrt_home: Option<Utf8PathBuf>,
}

impl ContextSettings {
    /// A context with no remote that runs everything as the manifest says: plan, status,
    /// and the commands that only look.
    pub(crate) fn local(cache_flag: Option<&Utf8Path>) -> ContextSettings {
        let cache_dir = cache_dir(cache_flag);
        ContextSettings {
            toolchain: toolchain_place(&cache_dir),
            tensorrt_home: tensorrt_home(),
            cache_dir,
            executor: Executor::Auto,
            materialize: Materialize::All,
            remote: None,
            releases_dir: releases_dir(None),
            signing_key: var("FACEBUILD_RELEASE_SIGNING_KEY"),
            invocation: Invocation::resolve(),
            slurm_poll_max: slurm_poll_max(),
        }
    }
}

/// The flags of `run` that settings are resolved from.
#[derive(Debug, Clone, Default)]
pub(crate) struct RunFlags {
    pub cache_dir: Option<Utf8PathBuf>,
    pub targets: Vec<String>,
    pub jobs: usize,
    pub keep_going: bool,
    pub no_cache: bool,
    pub remote: RemoteFlags,
    pub materialize: Materialize,
    pub executor: Executor,
}

/// The remote flags of `run` and `cache push`.
#[derive(Debug, Clone, Default)]
pub(crate) struct RemoteFlags {
    pub url: Option<String>,
    pub read_only: bool,
    pub required: bool,
}

/// Everything one `run` needs.
#[derive(Debug, Clone)]
pub(crate) struct RunSettings {
    pub context: ContextSettings,
    pub options: RunOptions,
}

impl RunSettings {
    pub(crate) fn resolve(flags: RunFlags) -> Result<RunSettings> {
        let cache_dir = cache_dir(flags.cache_dir.as_deref());
        Ok(RunSettings {
            context: ContextSettings {
                toolchain: toolchain_place(&cache_dir),
                tensorrt_home: tensorrt_home(),
                cache_dir,
                executor: flags.executor,
                materialize: flags.materialize,
                remote: remote(&flags.remote)?,
                releases_dir: releases_dir(None),
                signing_key: var("FACEBUILD_RELEASE_SIGNING_KEY"),
                invocation: Invocation::resolve(),
                slurm_poll_max: slurm_poll_max(),
            },
            options: RunOptions {
                targets: flags.targets,
                jobs: flags.jobs,
                keep_going: flags.keep_going,
                no_cache: flags.no_cache,
            },
        })
    }
}

/// What ran facebuild, as release provenance records it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Invocation {
    /// The CI run's URL: GitHub Actions' run (and attempt), or GitLab's job.
    pub id: Option<String>,
    /// The command line.
    pub args: Vec<String>,
}

impl Invocation {
    fn resolve() -> Invocation {
        let github = match (
            var("GITHUB_SERVER_URL"),
            var("GITHUB_REPOSITORY"),
            var("GITHUB_RUN_ID"),
        ) {
            (Some(server), Some(repo), Some(run)) => Some(format!(
                "{server}/{repo}/actions/runs/{run}/attempts/{}",
                var("GITHUB_RUN_ATTEMPT").unwrap_or_else(|| "1".into())
            )),
            _ => None,
        };
        Invocation {
            id: github.or_else(|| var("CI_JOB_URL")),
            args: std::env::args().collect(),
        }
    }
}

/// A variable's value, when set and not blank.
fn var(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.trim().is_empty())
}

/// Where toolchains live: `FACEBUILD_TOOLCHAIN_DIR`, else `toolchains/` in the cache; installed
/// with uv, or pip's hash-checking mode when `FACEBUILD_TOOLCHAIN_INSTALLER=pip`; the
/// interpreter `FACEBUILD_PYTHON` when a manifest names none.
pub(crate) fn toolchain_place(cache_dir: &Utf8Path) -> crate::toolchain::Place {
    let default = crate::toolchain::Place::under(cache_dir);
    crate::toolchain::Place {
        root: var("FACEBUILD_TOOLCHAIN_DIR")
            .map(Utf8PathBuf::from)
            .unwrap_or(default.root),
        pip: var("FACEBUILD_TOOLCHAIN_INSTALLER").as_deref() == Some("pip"),
        python: var("FACEBUILD_PYTHON"),
    }
}

/// `TENSORRT_HOME`, when set: trtexec is looked for in its `bin/`.
pub(crate) fn tensorrt_home() -> Option<Utf8PathBuf> {
    var("TENSORRT_HOME").map(Utf8PathBuf::from)
}

/// The public keys (PEM files) a `release pull` trusts when none is given:
/// `FACEBUILD_RELEASE_TRUSTED_KEYS`, comma-separated paths.
pub(crate) fn release_trusted_keys() -> Vec<Utf8PathBuf> {
    var("FACEBUILD_RELEASE_TRUSTED_KEYS")
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(Utf8PathBuf::from)
                .collect()
        })
        .unwrap_or_default()
}

/// Where releases go: `--dir`, else `FACEBUILD_RELEASES`, else `./releases`.
pub(crate) fn releases_dir(flag: Option<&Utf8Path>) -> Utf8PathBuf {
    match flag {
        Some(d) => d.to_owned(),
        None => var("FACEBUILD_RELEASES")
            .map(Utf8PathBuf::from)
            .unwrap_or_else(|| Utf8PathBuf::from("releases")),
    }
}

/// The longest wait between two polls of a Slurm job: `FACEBUILD_SLURM_POLL_MAX_MS`
/// (50 ms to 60 s), default 2 s.
pub(crate) fn slurm_poll_max() -> Duration {
    var("FACEBUILD_SLURM_POLL_MAX_MS")
        .and_then(|s| s.parse::<u64>().ok())
        .map(|ms| Duration::from_millis(ms.clamp(50, 60_000)))
        .unwrap_or(Duration::from_secs(2))
}

/// Whether a worker keeps its job folder after the step (`FACEBUILD_KEEP_JOB_DIR=1`), to
/// debug a job.
pub(crate) fn keep_job_dir() -> bool {
    var("FACEBUILD_KEEP_JOB_DIR").as_deref() == Some("1")
}

/// The cache: `--cache-dir`, else `FACEBUILD_CACHE`, else `./cache`; made absolute.
pub(crate) fn cache_dir(flag: Option<&Utf8Path>) -> Utf8PathBuf {
    let dir = match flag {
        Some(f) => f.to_owned(),
        None => var("FACEBUILD_CACHE")
            .map(Utf8PathBuf::from)
            .unwrap_or_else(|| Utf8PathBuf::from("cache")),
    };
    crate::util::absolute(&dir)
}

/// The remote of a run: `--remote` or `FACEBUILD_REMOTE`; keys from
/// `FACEBUILD_REMOTE_SIGNING_KEY` (hex ed25519 seed) and `FACEBUILD_REMOTE_TRUSTED_KEYS`
/// (hex public keys, comma-separated), `FACEBUILD_REMOTE_READ_ONLY`,
/// `FACEBUILD_REMOTE_TIMEOUT` (seconds). None when no remote is configured.
pub(crate) fn remote(flags: &RemoteFlags) -> Result<Option<RemoteConfig>> {
    let Some(url) = flags.url.clone().or_else(|| var("FACEBUILD_REMOTE")) else {
        return Ok(None);
    };
    let signing_key = var("FACEBUILD_REMOTE_SIGNING_KEY")
        .map(|s| parse_signing_key(&s))
        .transpose()?;
    let mut trusted = Vec::new();
    if let Some(list) = var("FACEBUILD_REMOTE_TRUSTED_KEYS") {
        for k in list.split([',', ' ', '\n']).filter(|k| !k.is_empty()) {
            trusted.push(parse_public_key(k)?);
        }
    }
    let timeout = var("FACEBUILD_REMOTE_TIMEOUT")
        .map(|s| {
            s.parse::<u64>()
                .map_err(|_| Error::usage(format!("FACEBUILD_REMOTE_TIMEOUT `{s}` is not seconds")))
        })
        .transpose()?
        .unwrap_or(60);
    Ok(Some(RemoteConfig {
        url,
        read_only: flags.read_only || var("FACEBUILD_REMOTE_READ_ONLY").is_some_and(|v| v != "0"),
        required: flags.required,
        signing_key,
        trusted,
        timeout: Duration::from_secs(timeout.max(1)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flags land in one value, resolved once: the cache made absolute, the run options and
    /// the context's choices as given.
    #[test]
    fn run_flags_resolve_into_one_value() {
        let s = RunSettings::resolve(RunFlags {
            cache_dir: Some("rel/cache".into()),
            targets: vec!["compare".into()],
            jobs: 3,
            keep_going: true,
            materialize: Materialize::Leaves,
            executor: Executor::Local,
            remote: RemoteFlags {
                url: Some("file:///tmp/fb-remote".into()),
                read_only: true,
                required: true,
            },
            ..Default::default()
        })
        .unwrap();
        assert!(s.context.cache_dir.is_absolute());
        assert!(s.context.cache_dir.ends_with("rel/cache"));
        assert_eq!(s.context.executor, Executor::Local);
        assert_eq!(s.context.materialize, Materialize::Leaves);
        let r = s.context.remote.unwrap();
        assert_eq!(r.url, "file:///tmp/fb-remote");
        assert!(r.read_only && r.required);
        assert_eq!((s.options.jobs, s.options.keep_going), (3, true));
        assert_eq!(s.options.targets, ["compare"]);
    }
}
