//! `facebuild init`: a commented manifest written from an ONNX file, and the built-in
//! pipelines, reachable without a checkout (`run --builtin recognition`).
//!
//! The model is read natively: its input (name, layout, shape, dynamic dims) and its outputs,
//! from which the task is guessed (an embedding, SCRFD's or RetinaFace's heads, else
//! generic). Dataset paths are left as placeholders that the manifest reader refuses with a
//! located message, so a written file plans once they are filled in, and not before.

use camino::{Utf8Path, Utf8PathBuf};

use crate::error::{Error, Result};
use crate::onnx::inspect::{DimInfo, ModelInfo, TensorInfo};
use crate::onnx::layout::OutputLayout;

/// The pipelines built into the binary, by name: the same files as `pipelines/`.
const BUILTIN_PIPELINES: &[(&str, &str)] = &[
    (
        "recognition",
        include_str!("../../pipelines/recognition.yaml"),
    ),
    ("detection", include_str!("../../pipelines/detection.yaml")),
    ("landmarks", include_str!("../../pipelines/landmarks.yaml")),
    ("attribute", include_str!("../../pipelines/attribute.yaml")),
    ("swapper", include_str!("../../pipelines/swapper.yaml")),
    ("pack", include_str!("../../pipelines/pack.yaml")),
];

pub(crate) fn builtin_names() -> Vec<&'static str> {
    BUILTIN_PIPELINES.iter().map(|(n, _)| *n).collect()
}

/// A built-in pipeline's manifest text.
pub(crate) fn builtin_pipeline(name: &str) -> Result<&'static str> {
    BUILTIN_PIPELINES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            Error::usage(format!("there is no built-in pipeline `{name}`")).with_hint(format!(
                "built-in pipelines: {}",
                builtin_names().join(", ")
            ))
        })
}

const PLACEHOLDER_START: &str = "<REPLACE: ";

/// A dataset path `init` left for the user to fill in.
pub(crate) fn is_placeholder(path: &str) -> bool {
    path.starts_with(PLACEHOLDER_START)
}

/// What the placeholder asks for.
pub(crate) fn placeholder_text(path: &str) -> &str {
    path.trim_start_matches(PLACEHOLDER_START)
        .trim_end_matches('>')
}

fn placeholder(what: &str) -> String {
    format!("\"{PLACEHOLDER_START}{what}>\"")
}

/// What `init` read from the model and decided.
#[derive(Debug)]
pub(crate) struct Guess {
    pub input: String,
    pub layout: &'static str,
    /// The shape as the manifest writes it: numbers, `H`/`W` for dynamic image dims.
    pub shape: Vec<String>,
    /// Named dims with (min, opt, max).
    pub dims: Vec<(String, [u64; 3])>,
    /// [height, width] images are prepared at.
    pub size: [u64; 2],
    pub layout_of_outputs: OutputLayout,
    /// Comments on what was read: a dynamic batch, renamed dims, other inputs.
    pub notes: Vec<String>,
    /// ArcFace exports with the normalisation inside the graph (InsightFace's check: `Sub`
    /// and `Mul` among the first nodes) take raw pixels.
    pub normalised_inside: bool,
    /// The quantized operators the graph already has: such a model gets no INT8 steps
    /// (quantizing it again fails in ONNX Runtime's quantizer, and measures nothing new).
    pub quantized: Vec<String>,
    /// A swapper's source input (a second, `[N, D]` input beside the image one).
    pub source: Option<SourceInput>,
    /// The image input's channels: 1 (a grayscale model, fed `color: GRAY`) or 3.
    pub channels: u64,
    /// The detector preset whose head binds the outputs, for a detector with no native
    /// decoder.
    pub preset: Option<(String, crate::domain::head::HeadSpec)>,
}

/// A swapper's latent input, as `init` writes it.
#[derive(Debug)]
pub(crate) struct SourceInput {
    pub name: String,
    /// The latent's size D.
    pub dim: u64,
    /// Whether the model's last initializer is a D x D matrix: INSwapper's `emap`.
    pub emap: bool,
}

/// Operators that only a quantized graph holds (static Q/DQ, dynamic quantization, QLinear
/// and integer kernels).
const QUANTIZED_OPS: [&str; 9] = [
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "ConvInteger",
    "MatMulInteger",
    "QLinearConv",
    "QLinearMatMul",
    "QLinearAdd",
    "QGemm",
];

impl Guess {
    pub(crate) fn task(&self) -> &'static str {
        if self.source.is_some() {
            return "swapper";
        }
        if self.preset.is_some() {
            return "detection";
        }
        match self.layout_of_outputs {
            OutputLayout::Embedding { .. } => "recognition",
            OutputLayout::Scrfd { .. } | OutputLayout::Retinaface { .. } => "detection",
            OutputLayout::Landmarks { .. } => "landmarks",
            OutputLayout::Attribute => "attribute",
            OutputLayout::Other => "generic",
        }
    }
}

/// The model's image input, and a swapper's latent input when there is one (InsightFace's
/// routing: two inputs, one a 128 x 128 image, is INSwapper); a model with no input, or
/// with others, is refused, saying why.
fn image_input<'a>(
    path: &Utf8Path,
    info: &'a ModelInfo,
) -> Result<(&'a TensorInfo, Option<&'a TensorInfo>)> {
    let rank = |t: &TensorInfo| t.shape.as_ref().map_or(0, Vec::len);
    match &info.inputs[..] {
        [] => Err(Error::Model {
            path: path.to_owned(),
            message: "the graph has no inputs".into(),
            hint: None,
        }),
        // An input that is not an image (points, a vector) needs a tensor dataset, which
        // facebuild does not have yet: say so here instead of writing a manifest that `check`
        // refuses.
        [one] if rank(one) != 4 => Err(Error::Model {
            path: path.to_owned(),
            message: format!(
                "the model's one input, {}, has rank {}: it is not an image (N, C, H, W or N, H, W, C), and facebuild feeds models from images; it cannot yet feed one from tensors alone",
                crate::onnx::layout::shapes(std::slice::from_ref(one)),
                rank(one)
            ),
            hint: Some("a model with an image input beside this one can take it from a `.npy` file (`model.inputs`, `feed: {npy: file.npy}` in docs/manifest.md)".into()),
        }),
        [one] => Ok((one, None)),
        [a, b] if rank(a) == 4 && rank(b) == 2 => Ok((a, Some(b))),
        [a, b] if rank(a) == 2 && rank(b) == 4 => Ok((b, Some(a))),
        many => Err(Error::Model {
            path: path.to_owned(),
            message: format!(
                "the model takes {} inputs ({}); `init` writes pipelines for one image input, or a swapper's image and latent",
                many.len(),
                crate::onnx::layout::shapes(many)
            ),
            hint: Some("declare every input under `model.inputs` by hand, each with what feeds it (docs/manifest.md, `model.inputs`)".into()),
        }),
    }
}

/// A swapper's latent input: its size, and whether the model carries `emap`.
fn source_input(
    t: &TensorInfo,
    last_initializer: Option<&[i64]>,
    notes: &mut Vec<String>,
) -> SourceInput {
    let dim = match t.shape.as_deref() {
        Some([_, DimInfo::Static(d)]) if *d > 0 => *d as u64,
        _ => {
            notes.push(format!(
                "CHECK: the latent input `{}` has no fixed size; 512 (INSwapper's) is assumed",
                t.name
            ));
            512
        }
    };
    let d = dim as i64;
    SourceInput {
        name: t.name.clone(),
        dim,
        emap: last_initializer == Some(&[d, d][..]),
    }
}

/// A dim's size where it is fixed.
fn fixed_dim(d: &DimInfo) -> Option<u64> {
    match d {
        DimInfo::Static(v) if *v > 0 => Some(*v as u64),
        _ => None,
    }
}

/// The image input's layout, the positions of its H and W dims, and its channels (1, fed
/// `GRAY`, or 3): channels last where the last dim is 3 (or 1) and the second is not.
fn image_layout(
    input: &TensorInfo,
    notes: &mut Vec<String>,
) -> (&'static str, (usize, usize), u64) {
    let dims = input.shape.as_deref().unwrap_or_default();
    let (layout, hw, c) = match (
        dims.len(),
        dims.get(1).and_then(fixed_dim),
        dims.get(3).and_then(fixed_dim),
    ) {
        (4, c1, Some(c3 @ (1 | 3))) if c1 != Some(c3) && c1 != Some(3) => ("NHWC", (1, 2), 3),
        _ => ("NCHW", (2, 3), 1),
    };
    let channels = dims.get(c).and_then(fixed_dim);
    if dims.len() == 4 && !matches!(channels, Some(1 | 3)) {
        notes.push(format!(
            "CHECK: the input {} has no fixed 3- or 1-channel dim; facebuild feeds RGB/BGR (or GRAY) images",
            crate::onnx::layout::shapes(std::slice::from_ref(input))
        ));
    }
    (layout, hw, if channels == Some(1) { 1 } else { 3 })
}

/// Read what `init` needs from a model.
pub(crate) fn guess(
    path: &Utf8Path,
    info: &ModelInfo,
    first_nodes: &[(String, String)],
    last_initializer: Option<&[i64]>,
) -> Result<Guess> {
    let (input, latent) = image_input(path, info)?;
    let mut notes = Vec::new();
    let source = latent.map(|t| source_input(t, last_initializer, &mut notes));
    let dims = input.shape.clone().unwrap_or_default();
    let layout_of_outputs = OutputLayout::of(&info.outputs);
    let detection = layout_of_outputs.family().is_some();
    let (layout, (hi, wi), channels) = image_layout(input, &mut notes);
    let fixed = fixed_dim;
    // Dynamic H and W get a range: a detector's realistic one, else the usual input size.
    let (lo, opt, hi_) = match layout_of_outputs {
        _ if detection => (320, 640, 640),
        OutputLayout::Embedding { .. } => (112, 112, 112),
        // InsightFace's landmark models (2d106det, 1k3d68) take 192 x 192 box crops.
        OutputLayout::Landmarks { .. } => (192, 192, 192),
        // INSwapper's target is the ArcFace crop at 128.
        _ if source.is_some() => (128, 128, 128),
        _ => (224, 224, 224),
    };
    let mut shape = Vec::new();
    let mut named = Vec::new();
    let mut size = [opt, opt];
    for (i, d) in dims.iter().enumerate() {
        match (fixed(d), d) {
            (Some(v), _) => {
                shape.push(v.to_string());
                if dims.len() == 4 && i == hi {
                    size[0] = v;
                }
                if dims.len() == 4 && i == wi {
                    size[1] = v;
                }
            }
            (None, _) if i == 0 => {
                let n = match d {
                    DimInfo::Symbolic(n) => n.clone(),
                    _ => "?".into(),
                };
                notes.push(format!(
                    "the model's batch dim is dynamic (`{n}`): pipelines feed batch 1 (compare and benchmark batch where the runtime allows)"
                ));
                shape.push("1".into());
            }
            (None, d) if dims.len() == 4 && (i == hi || i == wi) => {
                let name = if i == hi { "H" } else { "W" };
                match d {
                    DimInfo::Symbolic(n) if n.starts_with('?') => notes.push(format!(
                        "dim {i} is dynamic and unnamed in the model; here it is `{name}`"
                    )),
                    DimInfo::Symbolic(n) if n != name => notes.push(format!(
                        "the model calls dim {i} `{n}`; here it is `{name}`"
                    )),
                    _ => {}
                }
                shape.push(name.to_string());
                named.push((name.to_string(), [lo, opt, hi_]));
            }
            (None, _) => {
                let name = format!("D{i}");
                notes.push(format!(
                    "CHECK: dim {i} is dynamic; give `{name}` the range your deployment feeds"
                ));
                shape.push(name.clone());
                named.push((name, [1, 1, 1]));
            }
        }
    }
    let layout_of_outputs = with_input_size(layout_of_outputs, &info.outputs, size, &mut notes);
    let preset = match (&layout_of_outputs, channels, &source) {
        (OutputLayout::Other, 3, None) => find_preset(&info.outputs, size, &mut notes),
        _ => None,
    };
    // InsightFace reads recognizers, landmark and attribute models this way
    // (arcface_onnx.py, landmark.py, attribute.py).
    let normalised_inside = matches!(
        layout_of_outputs,
        OutputLayout::Embedding { .. } | OutputLayout::Landmarks { .. } | OutputLayout::Attribute
    ) && {
        let has = |p: &[&str]| {
            first_nodes.iter().take(8).any(|(name, op)| {
                p.iter().any(|x| name.starts_with(x)) || p.iter().any(|x| op == x)
            })
        };
        has(&["Sub", "_minus"]) && has(&["Mul", "_mul"])
    };
    let quantized: Vec<String> = QUANTIZED_OPS
        .iter()
        .filter(|op| info.op_types.contains_key(**op))
        .map(|op| op.to_string())
        .collect();
    Ok(Guess {
        input: input.name.clone(),
        layout,
        shape,
        dims: named,
        size,
        layout_of_outputs,
        notes,
        normalised_inside,
        quantized,
        source,
        channels,
        preset,
    })
}

/// The first preset (in [`INIT_ORDER`](crate::domain::head::INIT_ORDER)) whose head binds
/// these outputs at this input size: names, channel counts, and the candidate count its
/// anchors imply. None leaves the model generic, with a CHECK naming the preset that got
/// furthest and what did not fit.
fn find_preset(
    outputs: &[TensorInfo],
    [h, w]: [u64; 2],
    notes: &mut Vec<String>,
) -> Option<(String, crate::domain::head::HeadSpec)> {
    use crate::domain::head::{INIT_ORDER, resolve};
    let shapes = crate::onnx::inspect::static_shapes(outputs)?;
    let hw = (h as usize, w as usize);
    let mut closest: Option<(u8, &str, String)> = None;
    for name in INIT_ORDER {
        let head = resolve(Some(name), None).ok()?;
        match crate::detect::head::binds(&head, &shapes, hw) {
            Ok(()) => return Some((name.to_string(), head)),
            Err(e) if e.stage > 0 && closest.as_ref().is_none_or(|c| e.stage > c.0) => {
                closest = Some((e.stage, name, e.message));
            }
            Err(_) => {}
        }
    }
    if let Some((_, name, why)) = closest {
        notes.push(format!(
            "CHECK: no detector preset fits these outputs; the closest is `{name}`: {why}. A head facebuild has no preset for can be described under `detector.head` (docs/detectors.md)"
        ));
    }
    None
}

/// What the outputs say, refined by the input size: RetinaFace only when its priors fit, and
/// a 96 x 96 model with one `[N, 3]` output an attribute model (InsightFace's routing,
/// model_zoo.py).
fn with_input_size(
    layout: OutputLayout,
    outputs: &[TensorInfo],
    size: [u64; 2],
    notes: &mut Vec<String>,
) -> OutputLayout {
    match layout {
        OutputLayout::Retinaface { .. } => retinaface_or_decoded(layout, outputs, size, notes),
        OutputLayout::Other
            if size == [96, 96]
                && outputs.len() == 1
                && matches!(outputs[0].shape.as_deref(), Some([_, DimInfo::Static(3)])) =>
        {
            OutputLayout::Attribute
        }
        other => other,
    }
}

/// RetinaFace's layout only when its priors at the input size match the box rows: outputs of
/// N x 4 and N x 2 whose N is not the prior count are boxes some export decoded already
/// (UltraFace's corner boxes in [0, 1]), which decoding with priors again would get wrong.
/// Those are generic, with a CHECK saying why.
fn retinaface_or_decoded(
    layout: OutputLayout,
    outputs: &[TensorInfo],
    [h, w]: [u64; 2],
    notes: &mut Vec<String>,
) -> OutputLayout {
    let (steps, min_sizes) = crate::detect::retinaface::prior_settings(None, None);
    let size = [h as usize, w as usize];
    match crate::detect::retinaface::prior_mismatch(outputs, size, &steps, &min_sizes) {
        Some((n, priors)) => {
            notes.push(format!(
                "CHECK: the outputs look like RetinaFace's (N x 4 boxes, N x 2 scores), but {n} rows are not its {priors} priors at {h}x{w}: the boxes are likely decoded already (as UltraFace exports them), not prior-decoded"
            ));
            OutputLayout::Other
        }
        None => layout,
    }
}

/// A file-friendly pipeline name from the model's file name.
pub(crate) fn pipeline_name(model: &Utf8Path) -> String {
    let stem = model.file_stem().unwrap_or("pipeline");
    let s: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let s = s.trim_start_matches('.').to_string();
    if s.is_empty() { "pipeline".into() } else { s }
}

/// `to` relative to the folder `from` (both absolute), as a manifest path.
pub(crate) fn relative_to(to: &Utf8Path, from: &Utf8Path) -> Utf8PathBuf {
    let t: Vec<_> = to.components().collect();
    let f: Vec<_> = from.components().collect();
    let common = t.iter().zip(&f).take_while(|(a, b)| a == b).count();
    // Nothing shared but the root: the absolute path says more than a climb to `/`.
    if common <= 1 {
        return to.to_owned();
    }
    let mut out = Utf8PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c.as_str());
    }
    out
}

fn list(v: &[String]) -> String {
    format!("[{}]", v.join(", "))
}

/// The manifest text for a model at `model_path` (as the manifest will write it).
pub(crate) fn manifest_text(
    name: &str,
    model_path: &Utf8Path,
    model_file: &str,
    g: &Guess,
) -> String {
    let task = g.task();
    let mut y = String::new();
    let mut line = |s: &str| {
        y.push_str(s);
        y.push('\n');
    };
    model_section(&mut line, name, (model_path, model_file), g);
    preprocessing_section(&mut line, g);
    // An already-quantized model gets FP32/FP16 artifacts only.
    let int8 = g.quantized.is_empty();
    let dataset = datasets_section(&mut line, task, int8);
    build_steps(&mut line, g, dataset);
    let candidates = compare_section(&mut line, g, dataset);
    benchmark_and_release(&mut line, task, int8, candidates);
    y
}

/// The header and `model:` up to its preprocessing: path, task, input and its dims.
fn model_section(
    line: &mut impl FnMut(&str),
    name: &str,
    (model_path, model_file): (&Utf8Path, &str),
    g: &Guess,
) {
    let task = g.task();
    line(&format!(
        "# Written by `facebuild init` from {model_file}. Fill in the lines marked REPLACE (the"
    ));
    line("# pipeline is refused until then) and review those marked CHECK, then run");
    line("# `facebuild plan` on this file. Every key is in docs/manifest.md.");
    line("schema: 1");
    line(&format!("name: {name}"));
    line("");
    line("model:");
    line(&format!("  path: {model_path}"));
    match &g.source {
        Some(src) => line(&format!(
            "  # Guessed from the inputs (an image and a latent of {}, as InsightFace routes INSwapper): a face swapper.",
            src.dim
        )),
        None if g.preset.is_some() => line(&format!(
            "  # Guessed from the outputs: a face detector whose head is the `{}` preset's (docs/detectors.md).",
            g.preset.as_ref().map_or("", |p| p.0.as_str())
        )),
        None => line(&format!(
            "  # Guessed from the outputs ({}): {}.",
            g.layout_of_outputs.describe(),
            match task {
                "recognition" => "a face recognizer",
                "detection" => "a face detector",
                "landmarks" => "a face landmark model",
                "attribute" => "a face attribute model",
                _ =>
                    "CHECK: not a family facebuild decodes, so outputs are compared tensor by tensor",
            }
        )),
    }
    line(&format!("  task: {task}"));
    // A swapper's inputs go under `inputs:`, by name; one image input is `input:`.
    let i = if g.source.is_some() {
        line("  inputs:");
        line(&format!("    {}:", yaml_str(&g.input)));
        "      "
    } else {
        line("  input:");
        line(&format!("    name: {}", yaml_str(&g.input)));
        "    "
    };
    line(&format!("{i}layout: {}", g.layout));
    for n in &g.notes {
        line(&format!("{i}# {n}"));
    }
    line(&format!("{i}shape: {}", list(&g.shape)));
    if !g.dims.is_empty() {
        line(&format!(
            "{i}# Dynamic dims: OpenVINO IRs are converted for this range, TensorRT profiles built"
        ));
        line(&format!(
            "{i}# from it, and `opt` is the size steps feed by default."
        ));
        line(&format!("{i}dims:"));
        for (n, [a, b, c]) in &g.dims {
            line(&format!("{i}  {n}: {{min: {a}, opt: {b}, max: {c}}}"));
        }
    }
    crop_lines(line, g, i);
    if let Some(src) = &g.source {
        source_lines(line, src);
    }
}

/// The image input's crop, as InsightFace crops for the family.
fn crop_lines(line: &mut impl FnMut(&str), g: &Guess, i: &str) {
    match g.task() {
        "attribute" => {
            line(&format!(
                "{i}# InsightFace's attribute crop (attribute.py): a square 1.5 times the detected box."
            ));
            line(&format!("{i}crop: {{mode: box, scale: 1.5}}"));
        }
        "landmarks" if g.size == [192, 192] => {
            line(&format!(
                "{i}# InsightFace's landmark crop (landmark.py): a square 1.5 times the detected box."
            ));
            line(&format!("{i}crop: {{mode: box, scale: 1.5}}"));
        }
        "landmarks" => {
            line(&format!(
                "{i}# CHECK: a square around the detected box, 1.5 times its longer side as InsightFace"
            ));
            line(&format!(
                "{i}# crops (PFLD exports are fed 1.1); the scale your model was trained on."
            ));
            line(&format!("{i}crop: {{mode: box, scale: 1.5}}"));
        }
        _ => {}
    }
    if matches!(g.task(), "attribute" | "landmarks") {
        line(&format!(
            "{i}# The largest face of each photo; `faces: all` takes every face, as FaceAnalysis"
        ));
        line(&format!(
            "{i}# does, and `min_face: 40` leaves out faces under 40 px (docs/manifest.md)."
        ));
    }
    if g.task() == "swapper" {
        line(&format!(
            "{i}# INSwapper's target (inswapper.py): the ArcFace crop on estimate_norm's 128 branch."
        ));
        line(&format!("{i}crop: {{mode: arcface128}}"));
    }
}

/// A swapper's latent input: fed a recognizer's embedding, through `emap` when the model
/// has one.
fn source_lines(line: &mut impl FnMut(&str), src: &SourceInput) {
    line(&format!("    {}:", yaml_str(&src.name)));
    line(&format!("      shape: [1, {}]", src.dim));
    line(
        "      # The source latent as INSwapper makes it: a recognizer's L2-normed embedding of a face",
    );
    if src.emap {
        line(&format!(
            "      # of the source identity, times this model's emap (its last initializer, {d} x {d}), normed.",
            d = src.dim
        ));
    } else {
        line(
            "      # of the source identity. CHECK: the model's last initializer is not a D x D emap, so the",
        );
        line("      # embedding is fed as it is.");
    }
    line("      feed:");
    line("        embedding:");
    line(&format!(
        "          model: {}",
        placeholder(&format!(
            "a face recognizer ONNX whose embedding has {} values, e.g. w600k_r50.onnx",
            src.dim
        ))
    ));
    line(&format!("          emap: {}", src.emap));
}

/// `model.preprocessing` (and `model.detector`) as the family is fed.
fn preprocessing_section(line: &mut impl FnMut(&str), g: &Guess) {
    let (task, family) = (g.task(), g.layout_of_outputs.family());
    let [h, w] = g.size;
    match (task, family) {
        ("recognition", _) => {
            if g.normalised_inside {
                line(
                    "  # The graph normalises its input itself (Sub and Mul first, as InsightFace checks):",
                );
                line("  # it takes raw pixels, as InsightFace feeds such ArcFace exports.");
            } else {
                line(
                    "  # InsightFace's ArcFace feeding: RGB, (x - 127.5) / 127.5, aligned 112x112 crops.",
                );
            }
            let (m, s) = if g.normalised_inside {
                ("0", "1")
            } else {
                ("127.5", "127.5")
            };
            line("  preprocessing:");
            pixels(line, g, "RGB", (m, s));
            line(&format!("    size: [{h}, {w}]"));
        }
        ("landmarks", _) => landmarks_preprocessing(line, g),
        ("swapper", _) => {
            line(
                "  # INSwapper's feeding (inswapper.py): RGB, x / 255; its output is an RGB face in [0, 1].",
            );
            line("  preprocessing:");
            pixels(line, g, "RGB", ("0", "255"));
            line(&format!("    size: [{h}, {w}]"));
        }
        ("attribute", _) => {
            let (m, s) = if g.normalised_inside {
                line(
                    "  # The graph normalises its input itself (Sub and Mul first, as InsightFace checks).",
                );
                ("0", "1")
            } else {
                line("  # InsightFace's attribute feeding (attribute.py): RGB, (x - 127.5) / 128.");
                ("127.5", "128")
            };
            line("  preprocessing:");
            pixels(line, g, "RGB", (m, s));
            line(&format!("    size: [{h}, {w}]"));
        }
        (_, Some(crate::manifest::DetectorFamily::Scrfd)) => {
            line("  # SCRFD's own feeding (InsightFace): RGB, (x - 127.5) / 128, letterboxed.");
            line("  preprocessing:");
            pixels(line, g, "RGB", ("127.5", "128"));
            line(&format!("    size: [{h}, {w}]"));
            line("    resize: letterbox");
            line("  detector:");
            line("    family: scrfd");
            line("    score_threshold: 0.5");
            line("    nms_iou: 0.4");
        }
        (_, Some(crate::manifest::DetectorFamily::Retinaface)) => {
            line(
                "  # RetinaFace's feeding (Pytorch_Retinaface): BGR, x - (104, 117, 123), letterboxed.",
            );
            line("  preprocessing:");
            line("    color: BGR");
            line("    mean: [104, 117, 123]");
            line("    std: [1, 1, 1]");
            line(&format!("    size: [{h}, {w}]"));
            line("    resize: letterbox");
            line("  detector:");
            line("    family: retinaface");
            line("    score_threshold: 0.6");
            line("    nms_iou: 0.4");
        }
        _ if g.preset.is_some() => preset_preprocessing(line, g),
        _ => {
            line("  # CHECK: how your model expects its pixels; this scales them to [0, 1].");
            line("  preprocessing:");
            pixels(line, g, "RGB", ("0", "255"));
            line(&format!("    size: [{h}, {w}]"));
        }
    }
}

/// A preset detector's feeding, as its authors feed it (the preset's `input`), and its
/// `detector:` with the authors' threshold and NMS IoU.
fn preset_preprocessing(line: &mut impl FnMut(&str), g: &Guess) {
    let Some((name, head)) = &g.preset else {
        return;
    };
    let [h, w] = g.size;
    let nums = |v: &[f32]| {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    line(&format!(
        "  # The `{name}` preset's feeding, as its authors feed it; letterboxed."
    ));
    if let Some(c) = head.input.as_ref().and_then(|i| i.check.as_deref()) {
        line(&format!("  # CHECK: {c}"));
    }
    line("  preprocessing:");
    match &head.input {
        Some(i) => {
            line(&format!("    color: {:?}", i.color));
            line(&format!("    mean: [{}]", nums(&i.mean)));
            line(&format!("    std: [{}]", nums(&i.std)));
        }
        None => pixels(line, g, "RGB", ("0", "255")),
    }
    line(&format!("    size: [{h}, {w}]"));
    line("    resize: letterbox");
    line("  detector:");
    line(&format!("    preset: {name}"));
    let d = head
        .defaults
        .map_or((0.5, 0.4), |d| (d.score_threshold, d.nms_iou));
    line(&format!("    score_threshold: {}", d.0));
    line(&format!("    nms_iou: {}", d.1));
    if head.landmarks.as_ref().is_none_or(|l| l.five.is_none()) {
        line(
            "    # This head has no InsightFace five points: it cannot align crops for a recognizer.",
        );
    }
}

/// `color`, `mean` and `std`: three channels as the family feeds them, or for a 1-channel
/// input the photo's luma (`GRAY`) with the same `mean` and `std` once.
fn pixels(line: &mut impl FnMut(&str), g: &Guess, color: &str, (m, s): (&str, &str)) {
    if g.channels == 1 {
        line("    # CHECK: a 1-channel input: the photo's luma, as OpenCV's cvtColor(BGR2GRAY).");
        line("    color: GRAY");
        line(&format!("    mean: [{m}]"));
        line(&format!("    std: [{s}]"));
    } else {
        line(&format!("    color: {color}"));
        line(&format!("    mean: [{m}, {m}, {m}]"));
        line(&format!("    std: [{s}, {s}, {s}]"));
    }
}

/// A landmark model's feeding and how its points are read: InsightFace's for its 192 input
/// (landmark.py), else PFLD's (the open-source landmark exports most users bring), marked
/// CHECK.
fn landmarks_preprocessing(line: &mut impl FnMut(&str), g: &Guess) {
    let [h, w] = g.size;
    let insightface = g.size == [192, 192];
    let (m, s) = match (g.normalised_inside, insightface) {
        (true, _) => {
            line(
                "  # The graph normalises its input itself (Sub and Mul first, as InsightFace checks):",
            );
            line("  # it takes raw pixels.");
            ("0", "1")
        }
        (false, true) => {
            line("  # InsightFace's landmark feeding (landmark.py): RGB, (x - 127.5) / 128.");
            ("127.5", "128")
        }
        (false, false) => {
            line("  # CHECK: not InsightFace's 192 input; this is PFLD's feeding (RGB, x / 255).");
            ("0", "255")
        }
    };
    line("  preprocessing:");
    pixels(line, g, "RGB", (m, s));
    line(&format!("    size: [{h}, {w}]"));
    let two_d_106 = matches!(g.layout_of_outputs, OutputLayout::Landmarks { width: 212 });
    if insightface && two_d_106 {
        line("  # Points in [-1, 1] of the crop, as InsightFace's models give them. 106 points at");
        line("  # 192: 2d106det's markup, whose outer eye corners (35, 93) normalise NME.");
        line("  # CHECK: a JD-106 model (PFLD-106 exports) numbers them otherwise: `scheme: box`.");
        line("  landmarks: {coords: signed, scheme: insightface106}");
    } else if insightface {
        line(
            "  # Points in [-1, 1] of the crop, as InsightFace's models give them; NME is normalised",
        );
        line(
            "  # by the outer eye corners for 68 points, by the box otherwise (docs/manifest.md).",
        );
        line("  landmarks: {coords: signed}");
    } else {
        line("  # CHECK: points in [0, 1] of the crop (PFLD); InsightFace's models give [-1, 1]");
        line("  # (`coords: signed`). compare's feeding check says which fits your model.");
        line("  landmarks: {coords: unit}");
    }
}

/// `datasets:`, with the placeholder the task needs; the dataset's name.
fn datasets_section(line: &mut impl FnMut(&str), task: &str, int8: bool) -> &'static str {
    let calibrates = if int8 { " Also calibrates INT8." } else { "" };
    line("");
    line("datasets:");
    match task {
        "recognition" => {
            line(
                "  # REPLACE: aligned face crops, a subfolder per identity (genuine and impostor pairs",
            );
            line(
                "  # come from the folders), or add `pairs:` (a CSV or LFW pairs.txt); an InsightFace",
            );
            line(&format!(
                "  # verification .bin (lfw.bin, cfp_fp.bin) works as `path` too.{calibrates}"
            ));
            line("  faces:");
            line(&format!(
                "    path: {}",
                placeholder("a folder of aligned face crops, a subfolder per identity")
            ));
            "faces"
        }
        "landmarks" | "attribute" | "swapper" => {
            line(&format!(
                "  # REPLACE: photos with faces, and the detector whose boxes are cropped for the model.{calibrates}"
            ));
            if task == "swapper" {
                line(
                    "  # Each target face is swapped with a face of another identity: give a subfolder per",
                );
                line("  # identity, or `pairs:` (a CSV whose different-person pairs are used).");
            }
            line("  faces:");
            line(&format!(
                "    path: {}",
                placeholder("a folder of photos with faces")
            ));
            line("    align:");
            line(&format!(
                "      model: {}",
                placeholder("a face detector ONNX model for the crops, e.g. SCRFD")
            ));
            line("      detector: {family: scrfd}");
            "faces"
        }
        "detection" => {
            line(&format!(
                "  # REPLACE: photos with faces, as your deployment sees them.{calibrates}"
            ));
            line("  scenes:");
            line(&format!(
                "    path: {}",
                placeholder("a folder of photos with faces")
            ));
            "scenes"
        }
        _ => {
            line(&format!(
                "  # REPLACE: images as your deployment feeds them.{calibrates}"
            ));
            line("  images:");
            line(&format!(
                "    path: {}",
                placeholder("a folder of input images")
            ));
            "images"
        }
    }
}

/// The steps that build artifacts: check, simplify, OpenVINO, calibration and Q/DQ INT8.
fn build_steps(line: &mut impl FnMut(&str), g: &Guess, dataset: &str) {
    let int8 = g.quantized.is_empty();
    line("");
    line("steps:");
    line("  check:");
    line("    kind: check");
    line("  simplify:");
    line("    kind: simplify");
    line("    needs: [check]");
    line("    params: {samples: 2, cosine_min: 0.9999}");
    for p in ["fp32", "fp16"] {
        line(&format!("  openvino_{p}:"));
        line("    kind: convert");
        line("    from: simplify");
        line(&format!(
            "    params: {{backend: openvino, precision: {p}}}"
        ));
    }
    let detection = g.task() == "detection";
    if !int8 {
        line(&format!(
            "  # No INT8 steps: the model is already quantized ({}). Quantizing it again fails in",
            g.quantized.join(", ")
        ));
        line("  # ONNX Runtime's quantizer; its FP32/FP16 conversions keep its own quantization.");
    } else {
        line("  calibrate:");
        line("    kind: calibrate");
        line(&format!(
            "    params: {{dataset: {dataset}, count: 32, seed: 0}}"
        ));
        line("  openvino_int8:");
        line("    kind: convert");
        line("    from: simplify");
        line("    params: {backend: openvino, precision: int8, calibration: calibrate}");
    }
    if int8 && detection {
        line(
            "  # Q/DQ INT8 for TensorRT engines. Plain post-training Q/DQ loses many boxes on face",
        );
        line(
            "  # detectors (RetinaFace-MobileNet: recall 0.39 on group photos), and ONNX Runtime's",
        );
        line(
            "  # quantizer needs a static H x W. Uncomment it, and add it to compare's candidates,",
        );
        line("  # to measure it on your data before you deploy it:");
        line("  # quantize: {kind: quantize, from: simplify, params: {calibration: calibrate}}");
    } else if int8 {
        line("  # Q/DQ INT8 for TensorRT, checked in ONNX Runtime by compare.");
        line("  quantize:");
        line("    kind: quantize");
        line("    from: simplify");
        line("    params: {calibration: calibrate}");
    }
    line("  # TensorRT engines build where TensorRT is installed and report `unavailable`");
    line("  # elsewhere (docs/tensorrt.md). Uncomment to build them:");
    line(
        "  # tensorrt_fp16: {kind: convert, from: simplify, params: {backend: tensorrt, precision: fp16}}",
    );
    if int8 {
        line(
            "  # tensorrt_int8: {kind: convert, from: quantize, params: {backend: tensorrt, precision: int8}}",
        );
    }
}

/// The `compare` step with the task's gates; its candidates.
fn compare_section(line: &mut impl FnMut(&str), g: &Guess, dataset: &str) -> &'static str {
    let (int8, detection) = (g.quantized.is_empty(), g.task() == "detection");
    line("  compare:");
    line("    kind: compare");
    line("    params:");
    line(&format!("      dataset: {dataset}"));
    let candidates = if !int8 {
        "[openvino_fp32, openvino_fp16]"
    } else if detection {
        "[openvino_fp32, openvino_fp16, openvino_int8]"
    } else {
        "[openvino_fp32, openvino_fp16, openvino_int8, quantize]"
    };
    line(&format!("      candidates: {candidates}"));
    line("      precision_hint: f32");
    compare_gates(line, g);
    candidates
}

/// compare's landmark gates: NME, the pose of 3D-68 models, INT8's looser ones.
fn landmark_gates(line: &mut impl FnMut(&str), g: &Guess, int8: bool) {
    line("      # NME per face: mean point distance over the eye-corner distance (or the box).");
    line("      nme_max: 0.05");
    if matches!(g.layout_of_outputs, OutputLayout::Landmarks { width: 3309 }) {
        line("      # 3D-68: the head pose from each candidate's points against the reference's,");
        line("      # largest of pitch, yaw and roll, degrees (as InsightFace estimates pose).");
        line("      pose_error_max: 2.0");
    }
    if int8 {
        line("      candidate_gates:");
        line("        openvino_fp32: {nme_max: 0.001}");
        line("        openvino_fp16: {nme_max: 0.005}");
        line(
            "        # CHECK: INT8 moves points (PFLD-68 on 61 photos, 1.5 crops: NME 0.076 on the worst",
        );
        line(
            "        # face with NNCF, 0.079 with Q/DQ); gate it at what your deployment accepts.",
        );
        line("        openvino_int8: {nme_max: 0.1}");
        line("        quantize: {nme_max: 0.1}");
    }
}

/// compare's gates for the task: every candidate's, and INT8's looser ones.
fn compare_gates(line: &mut impl FnMut(&str), g: &Guess) {
    let (task, int8) = (g.task(), g.quantized.is_empty());
    let [h, w] = g.size;
    match task {
        "recognition" => {
            line("      cosine_min: 0.99");
            line(
                "      # With identities (folders or pairs), gate what a release cares about too:",
            );
            line(
                "      # operating_far: 1.0e-3   # TAR is measurable only above 1 / impostor pairs",
            );
            line("      # tar_drop_max: 0.01");
            if !int8 {
                already_quantized_gates(line);
            } else {
                line("      candidate_gates:");
                line("        openvino_fp32: {cosine_min: 0.9999}");
                line("        openvino_fp16: {cosine_min: 0.999}");
                line(
                    "        # CHECK: INT8 loses some fidelity (MobileFaceNet on unaligned photos: NNCF ~0.95,",
                );
                line(
                    "        # plain Q/DQ ~0.91 minimum cosine); gate it at what your deployment accepts.",
                );
                line("        openvino_int8: {cosine_min: 0.9}");
                line("        quantize: {cosine_min: 0.9}");
            }
        }
        "landmarks" => landmark_gates(line, g, int8),
        "attribute" => {
            line("      # Face by face: gender flips, and age error in years.");
            line("      gender_flips_max: 0");
            line("      age_mae_max: 0.5");
            if int8 {
                line("      candidate_gates:");
                line(
                    "        # CHECK: INT8 moves ages and can swap close genders; gate it at what your",
                );
                line("        # deployment accepts.");
                line("        openvino_int8: {gender_flips_max: 2, age_mae_max: 2}");
                line("        quantize: {gender_flips_max: 2, age_mae_max: 2}");
            }
        }
        "swapper" => {
            line(
                "      # Pair by pair: the swapped face as a picture (PSNR, SSIM) and as an identity",
            );
            line(
                "      # (the recognizer's cosine to the reference's swap; flips of the source match).",
            );
            line("      psnr_min: 40");
            line("      ssim_min: 0.99");
            line("      identity_cosine_min: 0.99");
            line("      identity_flips_max: 0");
            if int8 {
                line("      candidate_gates:");
                line(
                    "        # CHECK: INT8 changes pixels; gate it at what your deployment accepts.",
                );
                line(
                    "        openvino_int8: {psnr_min: 25, ssim_min: 0.9, identity_cosine_min: 0.9}",
                );
                line("        quantize: {psnr_min: 25, ssim_min: 0.9, identity_cosine_min: 0.9}");
            }
        }
        "detection" => {
            if let Some((_, [lo, ..])) = g.dims.iter().find(|(n, _)| n == "H") {
                line("      # One dynamic IR, compared at two input sizes.");
                line(&format!("      input_sizes: [[{h}, {w}], [{lo}, {lo}]]"));
            }
            line("      recall_min: 0.99");
            line("      fp_per_image_max: 0.01");
            // A head without InsightFace's five points has no landmark error to gate.
            let five = g
                .preset
                .as_ref()
                .is_none_or(|(_, h)| h.landmarks.as_ref().is_some_and(|l| l.five.is_some()));
            if five {
                line("      landmark_nme_max: 0.01");
            }
            if int8 {
                line("      candidate_gates:");
                line(
                    "        # CHECK: plain INT8 keeps 0.85-0.98 of the boxes on crowded photos, with a few",
                );
                line("        # extra ones; gate it at what your deployment accepts.");
                line(&format!(
                    "        openvino_int8: {{recall_min: 0.8, fp_per_image_max: 2.0{}}}",
                    if five { ", landmark_nme_max: 0.2" } else { "" }
                ));
            }
        }
        _ => {
            line("      # Per output: cosine, and elements out of atol/rtol (Polygraphy's rule).");
            line("      cosine_min: 0.99");
            if !int8 {
                already_quantized_gates(line);
            } else {
                line("      candidate_gates:");
                line("        openvino_fp16: {cosine_min: 0.999}");
                line("        openvino_int8: {cosine_min: 0.9}");
                line("        quantize: {cosine_min: 0.9}");
            }
        }
    }
}

/// The `benchmark` and `release` steps.
fn benchmark_and_release(line: &mut impl FnMut(&str), task: &str, int8: bool, candidates: &str) {
    line("  # Speed, cold start and memory of every artifact, each in 3 fresh processes taken in");
    line("  # turn, with OpenVINO's benchmark_app beside them as a reference. Every figure has a");
    line("  # 95% interval over the processes, and the release's gates decide on it.");
    line("  benchmark:");
    line("    kind: benchmark");
    line("    params:");
    line(&format!(
        "      targets: [simplify, {}]",
        candidates.trim_matches(|c| c == '[' || c == ']')
    ));
    line("      batch_sizes: [1]");
    line("      iterations: 100000");
    line("      time_budget_s: 1");
    line("      processes: 3");
    line("      reference: benchmark_app");
    line("  # What meets every gate goes to releases/<name>/<version>/, and becomes current.");
    line("  release:");
    line("    kind: release");
    line("    params:");
    line(if int8 {
        "      artifacts: [openvino_fp16, openvino_int8]"
    } else {
        "      artifacts: [openvino_fp16]"
    });
    line("      compare: compare");
    line("      benchmark: benchmark");
    if int8 {
        line(
            "      # Absolute speed limits are service bounds; whether INT8 pays is a ratio against",
        );
        line(
            "      # the FP32 IR, measured in interleaved pairs of processes (see docs/release.md).",
        );
        line("      # CHECK: INT8 must be 1.1x as fast as FP32 here, or it is refused.");
    }
    match task {
        "recognition" => {
            line(
                "      gates: {cosine_min: 0.99, p99_ms_max: 50, throughput_min: 20, rss_mib_max: 2048, cold_start_ms_max: 10000}",
            );
            if int8 {
                line("      # CHECK: as compare's INT8 gate above.");
                line(
                    "      artifact_gates: {openvino_int8: {cosine_min: 0.9, speedup_min: {over: openvino_fp32, value: 1.1}}}",
                );
            }
        }
        "landmarks" => {
            line(
                "      gates: {nme_max: 0.05, p99_ms_max: 50, throughput_min: 20, rss_mib_max: 2048, cold_start_ms_max: 10000}",
            );
            if int8 {
                line("      # CHECK: as compare's INT8 gate above.");
                line(
                    "      artifact_gates: {openvino_int8: {nme_max: 0.1, speedup_min: {over: openvino_fp32, value: 1.1}}}",
                );
            }
        }
        "attribute" => {
            line(
                "      gates: {gender_flips_max: 0, age_mae_max: 0.5, p99_ms_max: 50, throughput_min: 20, rss_mib_max: 2048, cold_start_ms_max: 10000}",
            );
            if int8 {
                line("      # CHECK: as compare's INT8 gate above.");
                line(
                    "      artifact_gates: {openvino_int8: {gender_flips_max: 2, age_mae_max: 2, speedup_min: {over: openvino_fp32, value: 1.1}}}",
                );
            }
        }
        "detection" => {
            line(
                "      gates: {recall_min: 0.8, p99_ms_max: 200, throughput_min: 5, rss_mib_max: 2048, cold_start_ms_max: 10000}",
            );
            if int8 {
                line(
                    "      artifact_gates: {openvino_int8: {speedup_min: {over: openvino_fp32, value: 1.1}}}",
                );
            }
        }
        "swapper" => {
            line(
                "      gates: {psnr_min: 40, identity_cosine_min: 0.99, p99_ms_max: 200, throughput_min: 5, rss_mib_max: 2048, cold_start_ms_max: 10000}",
            );
            if int8 {
                line("      # CHECK: as compare's INT8 gate above.");
                line(
                    "      artifact_gates: {openvino_int8: {psnr_min: 25, identity_cosine_min: 0.9, speedup_min: {over: openvino_fp32, value: 1.1}}}",
                );
            }
        }
        _ => {
            line(
                "      gates: {p99_ms_max: 200, throughput_min: 5, rss_mib_max: 2048, cold_start_ms_max: 10000}",
            );
            if int8 {
                line(
                    "      artifact_gates: {openvino_int8: {speedup_min: {over: openvino_fp32, value: 1.1}}}",
                );
            }
        }
    }
}

/// Compare's comment for an already-quantized model, in place of per-candidate gates.
fn already_quantized_gates(line: &mut impl FnMut(&str)) {
    line(
        "      # CHECK: the model is already quantized. ONNX Runtime (the reference) and OpenVINO",
    );
    line(
        "      # run its integer kernels each their own way, so its IRs differ from it more than a",
    );
    line(
        "      # float model's do (min cosine 0.998 on ONNX Runtime's dynamic quantization of the",
    );
    line("      # built-in iresnet): one gate for both, at what your deployment accepts.");
}

/// A YAML scalar for a tensor name (names like `input.1` or `data:0` need no quotes; others
/// are quoted).
fn yaml_str(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
        && !s
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c == '-' || c == '.')
    {
        s.to_string()
    } else {
        format!("{s:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_between_folders() {
        assert_eq!(
            relative_to("/w/shared/models/a.onnx".into(), "/w/repo/pipelines".into()),
            Utf8PathBuf::from("../../shared/models/a.onnx")
        );
        assert_eq!(
            relative_to("/w/repo/m.onnx".into(), "/w/repo".into()),
            Utf8PathBuf::from("m.onnx")
        );
    }

    #[test]
    fn placeholders_are_recognised_and_explained() {
        let p = placeholder("a folder of photos");
        let p = p.trim_matches('"');
        assert!(is_placeholder(p));
        assert_eq!(placeholder_text(p), "a folder of photos");
        assert!(!is_placeholder("faces/aligned"));
    }

    #[test]
    fn names_and_scalars_are_yaml_safe() {
        assert_eq!(
            pipeline_name("/m/scrfd 2.5g+kps.onnx".into()),
            "scrfd_2.5g_kps"
        );
        assert_eq!(yaml_str("input.1"), "input.1");
        assert_eq!(yaml_str("1input"), "\"1input\"");
        assert_eq!(yaml_str("in put"), "\"in put\"");
    }
}
