//! The generic decoder: any [`HeadSpec`] — anchors, box/score/landmark encodings, output
//! binding — turns raw outputs into [`Detection`]s. A family is a preset (data), so adding
//! one adds no code here.
//!
//! Everything works in network-input pixels: anchors are (cx, cy, w, h, stride) in pixels,
//! whatever their generator's own units.

use crate::domain::head::{
    Activation, Anchors, BoxEncoding, BoxForm, Combine, Grid, HeadSpec, MediapipeAnchors, NmsKind,
    Part, PointEncoding, Priors, RowLayout, TensorRef,
};
use crate::runtime::NamedTensor;

use super::Detection;

/// One candidate's anchor, in input pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Anchor {
    /// Centre x.
    pub cx: f32,
    /// Centre y.
    pub cy: f32,
    /// Width.
    pub w: f32,
    /// Height.
    pub h: f32,
    /// The feature stride (1 where the generator has none).
    pub stride: f32,
}

/// A binding failure, with how far binding got: `stage` 0 = no part found, 1 = some parts
/// found, 2 = every part found but the counts disagree. `init` names the preset that got
/// furthest as the closest.
#[derive(Debug, Clone, PartialEq)]
pub struct BindError {
    /// How far binding got.
    pub stage: u8,
    /// What did not fit.
    pub message: String,
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn fail(stage: u8, message: String) -> BindError {
    BindError { stage, message }
}

/// The strides a head's outputs are split by (for `{stride}` names).
fn strides(a: &Anchors) -> Vec<u32> {
    match a {
        Anchors::Grid(g) => g.strides.clone(),
        Anchors::Priors(p) => p.steps.clone(),
        Anchors::Mediapipe(_) | Anchors::None => Vec::new(),
    }
}

/// A part's rows: (channels, row-major values).
struct Rows {
    width: usize,
    values: Vec<f32>,
}

impl Rows {
    fn len(&self) -> usize {
        self.values.len() / self.width.max(1)
    }
    fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.width..(i + 1) * self.width]
    }
}

/// (rows, channels) of a tensor under a layout.
fn shape_of(t: &ndarray::ArrayD<f32>, layout: RowLayout) -> (usize, usize) {
    let s = t.shape();
    match layout {
        RowLayout::Rows => {
            let c = s.last().copied().unwrap_or(1).max(1);
            (t.len() / c, c)
        }
        RowLayout::ChannelsFirst => {
            let c = if s.len() >= 2 { s[s.len() - 2] } else { 1 }.max(1);
            (t.len() / c, c)
        }
    }
}

fn row_major(t: &ndarray::ArrayD<f32>, layout: RowLayout) -> Vec<f32> {
    match layout {
        RowLayout::Rows => t.iter().copied().collect(),
        RowLayout::ChannelsFirst => {
            let (n, c) = shape_of(t, layout);
            let flat: Vec<f32> = t.iter().copied().collect();
            // [.., C, N] -> N x C (leading dims are batch 1).
            let mut out = vec![0.0; n * c];
            for ch in 0..c {
                for r in 0..n {
                    out[r * c + ch] = flat[ch * n + r];
                }
            }
            out
        }
    }
}

/// The tensors a part names, in candidate order. None when a `columns` reference matches
/// no output.
fn tensors_of<'a>(
    outputs: &'a [NamedTensor],
    r: &TensorRef,
    layout: RowLayout,
    strides: &[u32],
) -> Result<Option<Vec<&'a ndarray::ArrayD<f32>>>, String> {
    match r {
        TensorRef::Name(n) if n.contains("{stride}") => {
            if strides.is_empty() {
                return Err(format!(
                    "`{n}` names one output per stride, but the anchors have no strides"
                ));
            }
            let mut v = Vec::new();
            for s in strides {
                let name = n.replace("{stride}", &s.to_string());
                match outputs.iter().find(|(o, _)| *o == name) {
                    Some((_, t)) => v.push(t),
                    None => return Ok(None),
                }
            }
            Ok(Some(v))
        }
        TensorRef::Name(n) => Ok(outputs.iter().find(|(o, _)| o == n).map(|(_, t)| vec![t])),
        TensorRef::Columns {
            columns,
            per_stride,
        } => {
            let mut v: Vec<&ndarray::ArrayD<f32>> = outputs
                .iter()
                .map(|(_, t)| t)
                .filter(|t| shape_of(t, layout).1 == *columns)
                .collect();
            // Stable: equal row counts keep the model's order.
            v.sort_by_key(|t| std::cmp::Reverse(shape_of(t, layout).0));
            let fits = !v.is_empty() && (!per_stride || v.len() == strides.len());
            Ok(fits.then_some(v))
        }
    }
}

fn describe(r: &TensorRef) -> String {
    match r {
        TensorRef::Name(n) => format!("an output named `{n}`"),
        TensorRef::Columns {
            columns,
            per_stride: false,
        } => format!("outputs with {columns} channels"),
        TensorRef::Columns { columns, .. } => {
            format!("one output with {columns} channels per stride")
        }
    }
}

fn gather(
    outputs: &[NamedTensor],
    part: &Part,
    layout: RowLayout,
    strides: &[u32],
    what: &str,
) -> Result<Option<Rows>, String> {
    let Some(ts) = tensors_of(outputs, &part.tensor, layout, strides)? else {
        return Ok(None);
    };
    let mut values = Vec::new();
    let mut width = 0;
    for t in ts {
        let (n, c) = shape_of(t, layout);
        let [a, b] = part.channels.unwrap_or([0, c]);
        if a >= b || b > c {
            return Err(format!(
                "{what}: channels [{a}, {b}) do not fit an output with {c} channels"
            ));
        }
        width = b - a;
        let all = row_major(t, layout);
        for i in 0..n {
            values.extend_from_slice(&all[i * c + a..i * c + b]);
        }
    }
    Ok(Some(Rows { width, values }))
}

/// Anchors of `anchors` for an `h` x `w` input with `rows` candidates.
fn anchors(a: &Anchors, (h, w): (usize, usize), rows: usize) -> Result<Vec<Anchor>, String> {
    match a {
        Anchors::Grid(g) => grid(g, (h, w), rows),
        Anchors::Priors(p) => Ok(priors(p, (h, w))),
        Anchors::Mediapipe(m) => Ok(mediapipe(m, (h, w))),
        Anchors::None => Ok(vec![
            Anchor {
                cx: 0.0,
                cy: 0.0,
                w: 0.0,
                h: 0.0,
                stride: 1.0,
            };
            rows
        ]),
    }
}

fn grid(g: &Grid, (h, w): (usize, usize), rows: usize) -> Result<Vec<Anchor>, String> {
    let per_cell = g
        .sizes
        .as_ref()
        .map(|s| s.first().map_or(0, |l| l.len()))
        .or(g.per_cell);
    // Exports fed multiples of the largest stride have floor = ceil; a padded export rounds up.
    let dims = |ceil: bool| -> Vec<(usize, usize)> {
        g.strides
            .iter()
            .map(|&s| {
                let s = s as usize;
                if ceil {
                    (h.div_ceil(s), w.div_ceil(s))
                } else {
                    (h / s, w / s)
                }
            })
            .collect()
    };
    let fits = |d: &[(usize, usize)]| {
        let cells: usize = d.iter().map(|(a, b)| a * b).sum();
        match per_cell {
            Some(k) => (cells * k == rows).then_some(k),
            None => (cells > 0 && rows.is_multiple_of(cells) && rows > 0).then(|| rows / cells),
        }
    };
    let (d, k) = [dims(true), dims(false)]
        .into_iter()
        .find_map(|d| fits(&d).map(|k| (d, k)))
        .ok_or_else(|| {
            let cells: usize = dims(true).iter().map(|(a, b)| a * b).sum();
            format!(
                "{rows} candidates do not fit strides {:?} on a {w}x{h} input ({cells} cells{})",
                g.strides,
                per_cell.map_or(String::new(), |k| format!(" x {k} anchors"))
            )
        })?;
    let mut out = Vec::with_capacity(rows);
    for (li, (&s, (fh, fw))) in g.strides.iter().zip(d).enumerate() {
        let s = s as f32;
        let size = |a: usize| {
            g.sizes
                .as_ref()
                .and_then(|sz| sz.get(li))
                .and_then(|l| l.get(a))
                .map_or([s, s], |v| *v)
        };
        let at = |a: usize, r: usize, c: usize| {
            let [aw, ah] = size(a);
            Anchor {
                cx: (c as f32 + g.offset) * s,
                cy: (r as f32 + g.offset) * s,
                w: aw,
                h: ah,
                stride: s,
            }
        };
        if g.anchors_outer {
            for a in 0..k {
                for r in 0..fh {
                    for c in 0..fw {
                        out.push(at(a, r, c));
                    }
                }
            }
        } else {
            for r in 0..fh {
                for c in 0..fw {
                    for a in 0..k {
                        out.push(at(a, r, c));
                    }
                }
            }
        }
    }
    Ok(out)
}

fn priors(p: &Priors, (h, w): (usize, usize)) -> Vec<Anchor> {
    let (wf, hf) = (w as f32, h as f32);
    let mut out = Vec::new();
    for (k, &step) in p.steps.iter().enumerate() {
        let s = step as f32;
        let (fh, fw) = (h.div_ceil(step as usize), w.div_ceil(step as usize));
        let sizes = p.min_sizes.get(k).cloned().unwrap_or_default();
        for i in 0..fh {
            for j in 0..fw {
                for &m in &sizes {
                    let n = p
                        .densify
                        .iter()
                        .find(|d| d.min_size == m)
                        .map_or(1, |d| d.grid.max(1));
                    // FaceBoxes: offsets t / n of the cell when densified, else its centre.
                    let offs: Vec<f32> = if n == 1 {
                        vec![0.5]
                    } else {
                        (0..n).map(|t| t as f32 / n as f32).collect()
                    };
                    for &oy in &offs {
                        for &ox in &offs {
                            let mut a = [
                                (j as f32 + ox) * s / wf,
                                (i as f32 + oy) * s / hf,
                                m / wf,
                                m / hf,
                            ];
                            if p.clip {
                                a = a.map(|v| v.clamp(0.0, 1.0));
                            }
                            out.push(Anchor {
                                cx: a[0] * wf,
                                cy: a[1] * hf,
                                w: a[2] * wf,
                                h: a[3] * hf,
                                stride: s,
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

/// MediaPipe's `SsdAnchorsCalculator::GenerateAnchors`, for the options BlazeFace uses.
fn mediapipe(m: &MediapipeAnchors, (h, w): (usize, usize)) -> Vec<Anchor> {
    let n = m.strides.len();
    let scale = |i: usize| {
        if n == 1 {
            (m.min_scale + m.max_scale) / 2.0
        } else {
            m.min_scale + (m.max_scale - m.min_scale) * i as f32 / (n - 1) as f32
        }
    };
    let mut out = Vec::new();
    let mut layer = 0;
    while layer < m.num_layers.min(n) {
        let (mut ratios, mut scales) = (Vec::new(), Vec::new());
        let mut last = layer;
        while last < n && m.strides[last] == m.strides[layer] {
            let sc = scale(last);
            if last == 0 && m.reduce_boxes_in_lowest_layer {
                ratios.extend([1.0, 2.0, 0.5]);
                scales.extend([0.1, sc, sc]);
            } else {
                for &r in &m.aspect_ratios {
                    ratios.push(r);
                    scales.push(sc);
                }
                if m.interpolated_scale_aspect_ratio > 0.0 {
                    let next = if last == n - 1 { 1.0 } else { scale(last + 1) };
                    scales.push((sc * next).sqrt());
                    ratios.push(m.interpolated_scale_aspect_ratio);
                }
            }
            last += 1;
        }
        let s = m.strides[layer] as usize;
        let (fh, fw) = (h.div_ceil(s), w.div_ceil(s));
        for y in 0..fh {
            for x in 0..fw {
                for (r, sc) in ratios.iter().zip(&scales) {
                    let (aw, ah) = if m.fixed_anchor_size {
                        (1.0, 1.0)
                    } else {
                        (sc * r.sqrt(), sc / r.sqrt())
                    };
                    out.push(Anchor {
                        cx: (x as f32 + m.offset) / fw as f32 * w as f32,
                        cy: (y as f32 + m.offset) / fh as f32 * h as f32,
                        w: aw * w as f32,
                        h: ah * h as f32,
                        stride: s as f32,
                    });
                }
            }
        }
        layer = last;
    }
    out
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Every part bound to its rows, the counts checked against the anchors.
struct Bound {
    anchors: Vec<Anchor>,
    boxes: Rows,
    scores: Rows,
    obj: Option<Rows>,
    kps: Option<Rows>,
}

fn bind(head: &HeadSpec, outputs: &[NamedTensor], hw: (usize, usize)) -> Result<Bound, BindError> {
    let st = strides(&head.anchors);
    let b = &head.outputs;
    let get = |p: &Part, what: &str| gather(outputs, p, b.layout, &st, what);
    let boxes = get(&b.boxes, "boxes").map_err(|m| fail(1, m))?;
    let scores = get(&b.scores, "scores").map_err(|m| fail(1, m))?;
    let obj = match &b.objectness {
        Some(p) => Some(get(p, "objectness").map_err(|m| fail(1, m))?),
        None => None,
    };
    let kps = match &b.landmarks {
        Some(p) => get(p, "landmarks").map_err(|m| fail(1, m))?,
        None => None,
    };
    let found = [boxes.is_some(), scores.is_some()]
        .into_iter()
        .chain(obj.as_ref().map(|o| o.is_some()))
        .filter(|x| *x)
        .count();
    let shapes = || {
        outputs
            .iter()
            .map(|(n, t)| format!("{n} {:?}", t.shape()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (Some(boxes), Some(scores), Some(obj)) =
        (boxes, scores, obj.map_or(Some(None), |o| o.map(Some)))
    else {
        let missing: Vec<String> = [
            ("boxes", Some(&b.boxes)),
            ("scores", Some(&b.scores)),
            ("objectness", b.objectness.as_ref()),
        ]
        .into_iter()
        .filter_map(|(w, p)| p.map(|p| (w, p)))
        .filter(|(_, p)| !matches!(tensors_of(outputs, &p.tensor, b.layout, &st), Ok(Some(_))))
        .map(|(w, p)| format!("{w} ({})", describe(&p.tensor)))
        .collect();
        return Err(fail(
            u8::from(found > 0),
            format!(
                "no {} among the outputs {}",
                missing.join(", no "),
                shapes()
            ),
        ));
    };
    let n = boxes.len();
    if boxes.width != 4 {
        return Err(fail(2, format!("boxes have {} values, not 4", boxes.width)));
    }
    let counts_agree = scores.len() == n
        && obj.as_ref().is_none_or(|o| o.len() == n)
        && kps.as_ref().is_none_or(|k| k.len() == n);
    if !counts_agree {
        return Err(fail(
            2,
            format!(
                "boxes, scores, objectness and landmarks disagree on the number of candidates: {}",
                shapes()
            ),
        ));
    }
    if let Some(l) = &head.landmarks
        && !(2..=3).contains(&l.values_per_point)
    {
        return Err(fail(
            2,
            format!(
                "landmarks.values_per_point is {}: a point is (x, y) or (x, y, visibility)",
                l.values_per_point
            ),
        ));
    }
    if let (Some(l), Some(k)) = (&head.landmarks, &kps)
        && k.width != l.count * l.values_per_point
    {
        return Err(fail(
            2,
            format!(
                "landmarks have {} values per candidate, not {} points x {}",
                k.width, l.count, l.values_per_point
            ),
        ));
    }
    let anchors = anchors(&head.anchors, hw, n).map_err(|m| fail(2, m))?;
    if anchors.len() != n {
        return Err(fail(
            2,
            format!(
                "{} anchors for a {}x{} input, but the outputs have {n} candidates",
                anchors.len(),
                hw.1,
                hw.0
            ),
        ));
    }
    Ok(Bound {
        anchors,
        boxes,
        scores,
        obj,
        kps: if head.landmarks.is_some() { kps } else { None },
    })
}

/// Whether `head` binds outputs of these shapes (zeros stand in for values): what `init`
/// and the plan check.
pub fn binds(
    head: &HeadSpec,
    shapes: &[(String, Vec<usize>)],
    hw: (usize, usize),
) -> Result<(), BindError> {
    let outs: Vec<NamedTensor> = shapes
        .iter()
        .map(|(n, s)| (n.clone(), ndarray::ArrayD::zeros(ndarray::IxDyn(s))))
        .collect();
    bind(head, &outs, hw).map(|_| ())
}

/// Decode and threshold (NMS is the caller's, per `head.nms`).
pub fn decode(
    head: &HeadSpec,
    outputs: &[NamedTensor],
    hw: (usize, usize),
    threshold: f32,
) -> crate::error::Result<Vec<Detection>> {
    let b = bind(head, outputs, hw).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (hf, wf) = (hw.0 as f32, hw.1 as f32);
    let act = |v: f32| match head.scores.activation {
        Activation::Sigmoid => sigmoid(v.clamp(-100.0, 100.0)),
        _ => v,
    };
    let mut out = Vec::new();
    for (i, a) in b.anchors.iter().enumerate() {
        let cls = b.scores.row(i);
        let c = match head.scores.activation {
            Activation::Softmax => {
                let m = cls.iter().copied().fold(f32::MIN, f32::max);
                let sum: f32 = cls.iter().map(|v| (v - m).exp()).sum();
                cls.get(head.scores.class)
                    .map_or(0.0, |v| (v - m).exp() / sum)
            }
            _ => cls.get(head.scores.class).copied().map_or(0.0, act),
        };
        let o = b.obj.as_ref().map_or(1.0, |o| act(o.row(i)[0]));
        let score = match head.scores.combine {
            Combine::Class => c,
            Combine::ObjTimesClass => o * c,
            Combine::SqrtClassObj => (c.clamp(0.0, 1.0) * o.clamp(0.0, 1.0)).sqrt(),
        };
        if score < threshold {
            continue;
        }
        let r = b.boxes.row(i);
        let bbox = decode_box(&head.boxes, r, a, (hf, wf));
        let kps = match (&head.landmarks, &b.kps) {
            (Some(l), Some(k)) => {
                let k = k.row(i);
                let pts: Vec<[f32; 2]> = (0..l.count)
                    .map(|p| {
                        let v = &k[p * l.values_per_point..];
                        decode_point(l.encoding, &head.boxes, [v[0], v[1]], a, (hf, wf))
                    })
                    .collect();
                l.five
                    .map(|f| f.map(|j| pts.get(j).copied().unwrap_or([0.0, 0.0])))
            }
            _ => None,
        };
        out.push(Detection { bbox, score, kps });
    }
    Ok(out)
}

fn decode_box(e: &BoxEncoding, r: &[f32], a: &Anchor, (hf, wf): (f32, f32)) -> [f32; 4] {
    let center =
        |cx: f32, cy: f32, w: f32, h: f32| [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0];
    match e {
        BoxEncoding::Distance => {
            let s = a.stride;
            [
                a.cx - r[0] * s,
                a.cy - r[1] * s,
                a.cx + r[2] * s,
                a.cy + r[3] * s,
            ]
        }
        BoxEncoding::CenterVariance { variance: [v0, v1] } => center(
            a.cx + r[0] * v0 * a.w,
            a.cy + r[1] * v0 * a.h,
            a.w * (r[2] * v1).exp(),
            a.h * (r[3] * v1).exp(),
        ),
        BoxEncoding::CenterExp => center(
            a.cx + r[0] * a.stride,
            a.cy + r[1] * a.stride,
            r[2].exp() * a.stride,
            r[3].exp() * a.stride,
        ),
        BoxEncoding::Yolo { sigmoid: sig } => {
            let f = |v: f32| if *sig { sigmoid(v) } else { v };
            center(
                a.cx + (2.0 * f(r[0]) - 0.5) * a.stride,
                a.cy + (2.0 * f(r[1]) - 0.5) * a.stride,
                (2.0 * f(r[2])).powi(2) * a.w,
                (2.0 * f(r[3])).powi(2) * a.h,
            )
        }
        BoxEncoding::Scaled {
            scale: [xs, ys, ws, hs],
        } => center(
            r[0] / xs * a.w + a.cx,
            r[1] / ys * a.h + a.cy,
            r[2] / ws * a.w,
            r[3] / hs * a.h,
        ),
        BoxEncoding::Decoded { form, normalized } => {
            let (sx, sy) = if *normalized { (wf, hf) } else { (1.0, 1.0) };
            let v = [r[0] * sx, r[1] * sy, r[2] * sx, r[3] * sy];
            match form {
                BoxForm::Corners => v,
                BoxForm::Center => center(v[0], v[1], v[2], v[3]),
            }
        }
    }
}

fn decode_point(
    e: PointEncoding,
    boxes: &BoxEncoding,
    [u, v]: [f32; 2],
    a: &Anchor,
    (hf, wf): (f32, f32),
) -> [f32; 2] {
    match e {
        PointEncoding::Stride => [a.cx + u * a.stride, a.cy + v * a.stride],
        PointEncoding::Variance => {
            let v0 = match boxes {
                BoxEncoding::CenterVariance { variance } => variance[0],
                _ => 0.1,
            };
            [a.cx + u * v0 * a.w, a.cy + v * v0 * a.h]
        }
        PointEncoding::AnchorSize => [a.cx + u * a.w, a.cy + v * a.h],
        PointEncoding::Scaled => {
            let [xs, ys, ..] = match boxes {
                BoxEncoding::Scaled { scale } => *scale,
                _ => [wf, hf, wf, hf],
            };
            [u / xs * a.w + a.cx, v / ys * a.h + a.cy]
        }
        PointEncoding::Decoded => [u, v],
        PointEncoding::DecodedNormalized => [u * wf, v * hf],
    }
}

/// NMS per the head: greedy, or MediaPipe's weighted NMS (each cluster of boxes overlapping
/// the best by more than `thresh` is averaged, weighted by score; the best's score stays).
pub fn suppress(kind: NmsKind, dets: Vec<Detection>, thresh: f32) -> Vec<Detection> {
    match kind {
        NmsKind::Greedy => super::nms(dets, thresh),
        NmsKind::Weighted => {
            let mut rest = dets;
            rest.sort_by(|a, b| b.score.total_cmp(&a.score));
            let mut out = Vec::new();
            while let Some(top) = rest.first().copied() {
                let (cluster, others): (Vec<Detection>, Vec<Detection>) = rest
                    .into_iter()
                    .partition(|d| super::iou(&top.bbox, &d.bbox) > thresh);
                rest = others;
                let total: f32 = cluster.iter().map(|d| d.score).sum();
                let mut m = top;
                if cluster.len() > 1 && total > 0.0 {
                    m.bbox = std::array::from_fn(|k| {
                        cluster.iter().map(|d| d.bbox[k] * d.score).sum::<f32>() / total
                    });
                    if let Some(k0) = top.kps {
                        m.kps = Some(std::array::from_fn(|p| {
                            std::array::from_fn(|c| {
                                cluster
                                    .iter()
                                    .map(|d| d.kps.unwrap_or(k0)[p][c] * d.score)
                                    .sum::<f32>()
                                    / total
                            })
                        }));
                    }
                }
                out.push(m);
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::head::resolve;
    use ndarray::{ArrayD, IxDyn};

    const BOX: [f32; 4] = [100.0, 120.0, 180.0, 220.0];

    fn t(name: &str, shape: &[usize], v: Vec<f32>) -> NamedTensor {
        (
            name.into(),
            ArrayD::from_shape_vec(IxDyn(shape), v).unwrap(),
        )
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4)
    }

    /// One hot candidate, `rows` in all: decoding recovers BOX (and the points) to 1e-4.
    fn recovers(preset: &str, hw: (usize, usize), outs: Vec<NamedTensor>) -> Vec<Detection> {
        let head = resolve(Some(preset), None).unwrap();
        let d = decode(&head, &outs, hw, 0.5).unwrap();
        assert_eq!(d.len(), 1, "{preset}: {d:?}");
        assert!(close(&d[0].bbox, &BOX), "{preset}: {:?}", d[0].bbox);
        d
    }

    #[test]
    fn anchor_counts_match_each_familys_own() {
        let count = |p: &str, hw| {
            anchors(&resolve(Some(p), None).unwrap().anchors, hw, 0)
                .unwrap()
                .len()
        };
        assert_eq!(count("blazeface_front", (128, 128)), 896);
        assert_eq!(count("blazeface_back", (256, 256)), 896);
        // FaceBoxes at 1024: 32 x 32 x (16 + 4 + 1) + 16 x 16 + 8 x 8.
        assert_eq!(count("faceboxes", (1024, 1024)), 21824);
        assert_eq!(count("retinaface", (640, 640)), 16800);
        // MediaPipe's first front anchor: cell (0, 0) of the 16 x 16 map, centre 0.5 / 16.
        let a = anchors(
            &resolve(Some("blazeface_front"), None).unwrap().anchors,
            (128, 128),
            0,
        )
        .unwrap();
        assert_eq!((a[0].cx, a[0].w), (4.0, 128.0));
        assert_eq!(a[512].cx, 8.0);
    }

    #[test]
    fn yolov8_face_decoded_channels_first_with_visibility_triplets() {
        let n = 8400;
        let i = 4321;
        let mut v = vec![0.0f32; 20 * n];
        let c = [140.0, 170.0, 80.0, 100.0, 0.9];
        for (ch, x) in c.iter().enumerate() {
            v[ch * n + i] = *x;
        }
        for p in 0..5 {
            v[(5 + 3 * p) * n + i] = 110.0 + p as f32;
            v[(6 + 3 * p) * n + i] = 150.0 + p as f32;
            v[(7 + 3 * p) * n + i] = 0.99;
        }
        let d = recovers(
            "yolov8_face",
            (640, 640),
            vec![t("output0", &[1, 20, n], v)],
        );
        assert_eq!(d[0].kps.unwrap()[3], [113.0, 153.0]);
    }

    #[test]
    fn blazeface_back_scaled_by_the_input_size_around_fixed_anchors() {
        let head = resolve(Some("blazeface_back"), None).unwrap();
        let a = anchors(&head.anchors, (256, 256), 0).unwrap();
        let i = 700;
        let (cx, cy, w, h) = (140.0, 170.0, 80.0, 100.0);
        let mut preds = vec![0.0f32; 896 * 16];
        let r = [
            (cx - a[i].cx) / a[i].w * 256.0,
            (cy - a[i].cy) / a[i].h * 256.0,
            w / a[i].w * 256.0,
            h / a[i].h * 256.0,
        ];
        preds[i * 16..i * 16 + 4].copy_from_slice(&r);
        let mut conf = vec![-10.0f32; 896];
        conf[i] = 3.0;
        let d = recovers(
            "blazeface_back",
            (256, 256),
            vec![
                t("preds", &[1, 896, 16], preds),
                t("conf", &[1, 896, 1], conf),
            ],
        );
        // Six keypoints, no InsightFace five: nothing to align on.
        assert!(d[0].kps.is_none());
    }

    #[test]
    fn faceboxes_densified_priors_with_variances() {
        let head = resolve(Some("faceboxes"), None).unwrap();
        let a = anchors(&head.anchors, (1024, 1024), 0).unwrap();
        let n = a.len();
        // A densified prior of size 32 (the 6th of cell (3, 4): 4 x 4 lattice, row 1 col 1).
        let i = (3 * 32 + 4) * 21 + 5;
        assert_eq!(
            (a[i].cx, a[i].cy, a[i].w),
            ((4.0 + 0.25) * 32.0, (3.0 + 0.25) * 32.0, 32.0)
        );
        let (cx, cy, w, h) = (140.0, 170.0, 80.0, 100.0);
        let mut loc = vec![0.0f32; n * 4];
        loc[i * 4..i * 4 + 4].copy_from_slice(&[
            (cx - a[i].cx) / (0.1 * a[i].w),
            (cy - a[i].cy) / (0.1 * a[i].h),
            (w / a[i].w).ln() / 0.2,
            (h / a[i].h).ln() / 0.2,
        ]);
        let mut conf = vec![0.0f32; n * 2];
        conf[i * 2 + 1] = 0.95;
        recovers(
            "faceboxes",
            (1024, 1024),
            vec![t("loc", &[1, n, 4], loc), t("conf", &[1, n, 2], conf)],
        );
    }

    #[test]
    fn ultraface_normalised_corners() {
        let n = 4420;
        let mut boxes = vec![0.0f32; n * 4];
        boxes[17 * 4..17 * 4 + 4].copy_from_slice(&[
            100.0 / 320.0,
            120.0 / 240.0,
            180.0 / 320.0,
            220.0 / 240.0,
        ]);
        let mut scores = vec![0.0f32; n * 2];
        scores[17 * 2 + 1] = 0.8;
        recovers(
            "ultraface",
            (240, 320),
            vec![
                t("scores", &[1, n, 2], scores),
                t("boxes", &[1, n, 4], boxes),
            ],
        );
    }

    #[test]
    fn binding_says_how_far_it_got() {
        let head = resolve(Some("yunet"), None).unwrap();
        let e = binds(&head, &[("out".into(), vec![1, 100, 4])], (640, 640)).unwrap_err();
        assert_eq!(e.stage, 0);
        assert!(e.message.contains("cls_{stride}"), "{e}");
        let head = resolve(Some("retinaface"), None).unwrap();
        let e = binds(
            &head,
            &[
                ("a".into(), vec![1, 4420, 4]),
                ("b".into(), vec![1, 4420, 2]),
            ],
            (640, 640),
        )
        .unwrap_err();
        assert_eq!(e.stage, 2, "{e}");
        assert!(
            binds(
                &head,
                &[
                    ("a".into(), vec![1, 16800, 4]),
                    ("b".into(), vec![1, 16800, 2])
                ],
                (640, 640)
            )
            .is_ok()
        );
    }

    #[test]
    fn a_point_of_one_value_is_refused_not_read_past() {
        let o = serde_json::json!({"landmarks": {"count": 10, "values_per_point": 1}});
        let head = resolve(Some("yunet"), Some(&o)).unwrap();
        let shapes: Vec<(String, Vec<usize>)> = ["cls", "obj", "bbox", "kps"]
            .iter()
            .flat_map(|p| {
                let c = match *p {
                    "bbox" => 4,
                    "kps" => 10,
                    _ => 1,
                };
                [(8, 6400), (16, 1600), (32, 400)].map(|(s, n)| (format!("{p}_{s}"), vec![1, n, c]))
            })
            .collect();
        let e = binds(&head, &shapes, (640, 640)).unwrap_err();
        assert!(e.message.contains("values_per_point is 1"), "{e}");
    }

    #[test]
    fn weighted_nms_averages_a_cluster_by_score() {
        let d = |x: f32, s: f32| Detection {
            bbox: [x, 0.0, x + 10.0, 10.0],
            score: s,
            kps: None,
        };
        let kept = suppress(
            NmsKind::Weighted,
            vec![d(0.0, 0.9), d(1.0, 0.3), d(50.0, 0.8)],
            0.3,
        );
        assert_eq!(kept.len(), 2);
        assert!((kept[0].bbox[0] - 0.25).abs() < 1e-6 && kept[0].score == 0.9);
    }
}
