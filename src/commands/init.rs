//! `facebuild init`: a commented pipeline for an ONNX model, or a built-in pipeline.

use camino::{Utf8Path, Utf8PathBuf};
use clap::Args;

use crate::error::{Error, Result};
use crate::toolchain::{Pins, Toolchain};

/// `init`'s flags.
#[derive(Args)]
pub(super) struct InitArgs {
    /// The ONNX model to write a pipeline for
    #[arg(required_unless_present = "builtin", conflicts_with = "builtin")]
    pub(super) model: Option<Utf8PathBuf>,
    /// Write this built-in pipeline instead: recognition or detection
    #[arg(long, value_name = "NAME")]
    pub(super) builtin: Option<String>,
    /// Where to write it (default: pipelines/<name>.yaml; `-` for standard output)
    #[arg(short, long)]
    pub(super) output: Option<Utf8PathBuf>,
    /// Replace an existing file
    #[arg(long)]
    pub(super) force: bool,
}

pub(super) fn init_cmd(args: InitArgs, cache_dir: &Utf8Path) -> Result<i32> {
    init(
        args.model.as_deref(),
        args.builtin.as_deref(),
        args.output,
        args.force,
        cache_dir,
    )
}

/// `facebuild init`: write the manifest, say what was guessed and what to fill in.
fn init(
    model: Option<&Utf8Path>,
    builtin: Option<&str>,
    output: Option<Utf8PathBuf>,
    force: bool,
    cache_dir: &Utf8Path,
) -> Result<i32> {
    use crate::manifest::init;
    let cwd = crate::util::absolute(Utf8Path::new("."));
    let (name, text, summary) = match (model, builtin) {
        (_, Some(b)) => (
            b.to_string(),
            init::builtin_pipeline(b)?.to_string(),
            format!("the built-in `{b}` pipeline (built-in model and data; runs as it is)"),
        ),
        (Some(m), None) => {
            let proto = crate::onnx::inspect::load_model(m)?;
            let mut info = crate::onnx::inspect::inspect(&proto, m)?;
            let sized = size_symbolic_outputs(m, &mut info, cache_dir);
            let first: Vec<(String, String)> = proto
                .graph
                .as_ref()
                .map(|g| {
                    g.node
                        .iter()
                        .take(8)
                        .map(|n| (n.name.clone(), n.op_type.clone()))
                        .collect()
                })
                .unwrap_or_default();
            let last = proto
                .graph
                .as_ref()
                .and_then(|g| g.initializer.last())
                .map(|t| t.dims.as_slice());
            let mut g = init::guess(m, &info, &first, last)?;
            g.notes.extend(sized);
            let name = init::pipeline_name(m);
            let out_dir = match &output {
                Some(o) if o.as_str() != "-" => crate::util::absolute(o)
                    .parent()
                    .map(Utf8Path::to_owned)
                    .unwrap_or_else(|| cwd.clone()),
                Some(_) => cwd.clone(),
                None => cwd.join("pipelines"),
            };
            let rel = init::relative_to(&crate::util::absolute(m), &out_dir);
            let text = init::manifest_text(&name, &rel, m.file_name().unwrap_or("the model"), &g);
            let summary = format!(
                "task `{}` ({}){}",
                g.task(),
                g.layout_of_outputs.describe(),
                if g.dims.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", dynamic {}",
                        g.dims
                            .iter()
                            .map(|(n, _)| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            );
            (name, text, summary)
        }
        (None, None) => return Err(Error::usage("name an ONNX model or --builtin NAME")),
    };
    let out = output.unwrap_or_else(|| Utf8PathBuf::from(format!("pipelines/{name}.yaml")));
    if out.as_str() == "-" {
        print!("{text}");
        return Ok(0);
    }
    if out.exists() && !force {
        return Err(Error::usage(format!("{out} already exists"))
            .with_hint("pass --force to replace it, or -o to write elsewhere"));
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::write(&out, &text).map_err(|e| Error::io(&out, e))?;
    let placeholders = text.matches("<REPLACE: ").count();
    println!("wrote {out}: {summary}");
    if placeholders > 0 {
        println!(
            "next: fill in the {placeholders} path(s) marked REPLACE, review the lines marked CHECK, then `facebuild plan {out}`"
        );
    } else {
        println!("next: `facebuild run {out}`");
    }
    Ok(0)
}

/// Outputs whose size the graph leaves symbolic (`[batch_size, Divoutput_dim_1]`, a PyTorch
/// export) get it from one run in ONNX Runtime on zeros, when the toolchain is installed:
/// `init` guesses the task from the outputs' last dims. Returns a note for the manifest.
fn size_symbolic_outputs(
    model: &Utf8Path,
    info: &mut crate::onnx::inspect::ModelInfo,
    cache_dir: &Utf8Path,
) -> Option<String> {
    use crate::onnx::inspect::DimInfo;
    use crate::runtime::Runtime;
    let symbolic = |o: &crate::onnx::inspect::TensorInfo| {
        !matches!(o.shape.as_deref(), Some([.., DimInfo::Static(_)]))
    };
    if !info.outputs.iter().any(symbolic) {
        return None;
    }
    let names: Vec<String> = info
        .outputs
        .iter()
        .filter(|o| symbolic(o))
        .map(|o| o.name.clone())
        .collect();
    let place = crate::settings::toolchain_place(cache_dir);
    let pins = Pins::resolve(&Default::default(), place.python.as_deref());
    let Some(tc) = Toolchain::find(&place, &pins) else {
        return Some(format!(
            "CHECK: the size of output(s) {} is symbolic in the graph; with the toolchain installed (`facebuild toolchain install`) init runs the model once to read it",
            names.join(", ")
        ));
    };
    // Batch 1; other dynamic dims 112 (a face crop: detectors take any multiple of 16).
    let input = info.inputs.first()?;
    let shape: Vec<usize> = input
        .shape
        .as_deref()?
        .iter()
        .enumerate()
        .map(|(i, d)| match d {
            DimInfo::Static(v) if *v > 0 => *v as usize,
            _ if i == 0 => 1,
            _ => 112,
        })
        .collect();
    let run = || -> Result<Vec<crate::runtime::NamedTensor>> {
        let mut loaded =
            crate::runtime::onnxruntime::OnnxRuntime::new(&tc, Some(1))?.load(model)?;
        let zeros = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&shape));
        loaded.run(&[(input.name.clone(), zeros)])
    };
    match run() {
        Ok(outs) => {
            let mut read = Vec::new();
            for (name, t) in outs {
                let Some(o) = info
                    .outputs
                    .iter_mut()
                    .find(|o| o.name == name && symbolic(o))
                else {
                    continue;
                };
                let (Some(dims), Some(&last)) = (o.shape.as_mut(), t.shape().last()) else {
                    continue;
                };
                if dims.len() == t.ndim() {
                    if let Some(d) = dims.last_mut() {
                        *d = DimInfo::Static(last as i64);
                    }
                    read.push(format!("`{name}` {:?}", t.shape()));
                }
            }
            Some(format!(
                "output sizes read from one run in ONNX Runtime on zeros {shape:?}: {}",
                read.join(", ")
            ))
        }
        Err(e) => Some(format!(
            "CHECK: output(s) {} have a symbolic size, and one run in ONNX Runtime to read it failed: {}",
            names.join(", "),
            e.to_string().lines().next().unwrap_or_default()
        )),
    }
}
