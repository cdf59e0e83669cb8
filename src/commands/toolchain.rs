//! `facebuild toolchain`: show, lock or install the Python toolchain.

use camino::{Utf8Path, Utf8PathBuf};
use clap::Subcommand;
use serde_json::json;

use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::toolchain::{Pins, Place, Toolchain};

#[derive(Subcommand)]
pub(super) enum ToolchainCmd {
    /// Versions and paths of the toolchain a manifest uses (default pins without one)
    Show {
        file: Option<Utf8PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Install the toolchain now (run does this on first use)
    Install {
        file: Option<Utf8PathBuf>,
        /// Remove and reinstall
        #[arg(long)]
        force: bool,
    },
    /// Hash-lock every Python package of a manifest's pins with uv, into
    /// `<manifest>.toolchain.lock` beside it (commit it); without a manifest, print the lock
    /// of the default pins
    Lock {
        file: Option<Utf8PathBuf>,
        /// Write here instead
        #[arg(short, long)]
        output: Option<Utf8PathBuf>,
    },
}

fn pins_for(file: Option<&Utf8Path>, place: &Place) -> Result<Pins> {
    let python = place.python.as_deref();
    Ok(match file {
        Some(f) => {
            let m = Manifest::load(f)?;
            Pins::for_manifest(&m.toolchain, &m.file, python)?
        }
        None => Pins::resolve(&Default::default(), python),
    })
}

/// TensorRT as a manifest (or, without one, the environment) would find it.
fn tensorrt_for(
    file: Option<&Utf8Path>,
    cache_dir: &Utf8Path,
) -> Result<crate::toolchain::tensorrt::Discovery> {
    Ok(match file {
        Some(f) => {
            let m = Manifest::load(f)?;
            crate::toolchain::tensorrt::discover(
                m.toolchain.tensorrt.as_ref(),
                &m.dir,
                cache_dir,
                crate::settings::tensorrt_home().as_deref(),
            )
        }
        None => crate::toolchain::tensorrt::discover(
            None,
            Utf8Path::new("."),
            cache_dir,
            crate::settings::tensorrt_home().as_deref(),
        ),
    })
}

impl ToolchainCmd {
    pub(super) fn json(&self) -> bool {
        matches!(self, ToolchainCmd::Show { json: true, .. })
    }
}

pub(super) fn toolchain_cmd(
    t: ToolchainCmd,
    cache_dir: &Utf8Path,
    out: super::Printer,
) -> Result<i32> {
    let place = crate::settings::toolchain_place(cache_dir);
    match t {
        ToolchainCmd::Show { file, .. } => {
            let pins = pins_for(file.as_deref(), &place)?;
            let tc = Toolchain::find(&place, &pins);
            let dir = place.env_dir(&pins);
            let trt = tensorrt_for(file.as_deref(), cache_dir)?;
            if out.json(|| {
                let trt_json = match &trt {
                    Ok(t) => json!({"available": true, "found": t, "fingerprint": t.fingerprint()}),
                    Err(e) => json!({"available": false, "missing": e.to_string()}),
                };
                json!({"id": pins.id(), "dir": dir, "installed": tc.is_some(), "pins": pins, "info": tc.as_ref().map(|t| &t.info), "tensorrt": trt_json})
            })? {
                return Ok(0);
            }
            println!("toolchain {} at {dir}", pins.id());
            println!("  interpreter {}", pins.interpreter);
            match &tc {
                None => {
                    println!(
                        "  not installed (`facebuild toolchain install`, or any `run`, installs it)"
                    );
                    for (k, v) in &pins.packages {
                        println!("  {k:<12} {v} (pinned)");
                    }
                }
                Some(t) => {
                    println!(
                        "  python       {} ({})",
                        t.info.python_version, t.info.platform
                    );
                    for k in pins.packages.keys() {
                        println!("  {k:<12} {}", t.version(k).unwrap_or("missing"));
                    }
                    println!(
                        "  libonnxruntime {}",
                        t.info
                            .onnxruntime_library
                            .as_ref()
                            .map(|p| p.as_str())
                            .unwrap_or("missing")
                    );
                    println!(
                        "  libopenvino_c  {}",
                        t.info
                            .openvino_c_library
                            .as_ref()
                            .map(|p| p.as_str())
                            .unwrap_or("missing")
                    );
                }
            }
            match &trt {
                Ok(t) => println!("  tensorrt     {} ({})", t.describe(), t.trtexec),
                Err(e) => println!("  tensorrt     unavailable: {e}"),
            }
            Ok(0)
        }
        ToolchainCmd::Lock { file, output } => {
            let (pins, dest) = match &file {
                Some(f) => {
                    let m = Manifest::load(f)?;
                    (
                        Pins::resolve(&m.toolchain, place.python.as_deref()),
                        Some(output.unwrap_or_else(|| Pins::lock_path(&m.file))),
                    )
                }
                None => (
                    Pins::resolve(&Default::default(), place.python.as_deref()),
                    output,
                ),
            };
            let text = crate::toolchain::lock(&pins, &place.root)?;
            let n = text
                .lines()
                .filter(|l| l.contains("==") && !l.starts_with('#'))
                .count();
            match dest {
                Some(d) => {
                    crate::cache::store::write_atomic(&d, text.as_bytes())?;
                    println!("locked {n} packages with their hashes into {d}");
                }
                None => print!("{text}"),
            }
            Ok(0)
        }
        ToolchainCmd::Install { file, force } => {
            let pins = pins_for(file.as_deref(), &place)?;
            if force {
                let dir = place.env_dir(&pins);
                if dir.exists() {
                    std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
                }
            }
            let t = Toolchain::ensure(&place, &pins)?;
            println!("toolchain {} ready at {}", pins.id(), t.dir);
            Ok(0)
        }
    }
}
