//! Preview images a person can read: the axial, coronal and sagittal mid-slices of volumes
//! side by side, one labelled row per volume, upscaled (nearest neighbour) to at least 256 px
//! per view, under a title, with the display window stated. Anterior is up in the axial view
//! and superior up in the others, the patient's left on the viewer's right (radiological).

use std::path::Path;

use plotters::style::RGBColor;

use super::volume::{Orientation, ValueRange, Volume, Window};
use crate::draw::{Canvas, text_width};
use crate::error::Result;

/// Smallest edge of one view in pixels.
pub const MIN_VIEW_PX: usize = 256;
const GAP: usize = 6;
const TITLE_H: usize = 40;
const HEADER_H: usize = 28;
const FOOTER_H: usize = 30;
const BACKGROUND: [u8; 3] = [24, 24, 24];
const TEXT: RGBColor = RGBColor(235, 235, 235);
const DIM: RGBColor = RGBColor(170, 170, 170);

/// What a preview shows.
pub struct Preview<'a> {
    /// The first line (e.g. run, step, t).
    pub title: String,
    /// One row per volume: its label and the volume.
    pub rows: Vec<(String, &'a Volume)>,
    /// Values `[lo, hi]` shown black to white.
    pub window: [f32; 2],
    /// How the window reads (`window [-1000, 1000] HU`, `model space [-1, 1]`).
    pub window_label: String,
    /// The orientation of the volumes' arrays (LAS arrays are mirrored along j for display).
    pub orientation: Orientation,
}

/// How volumes stored in a dataset's `range` are shown: converted to HU and shown over the
/// data's `window` when it is known, else as they are over the range. Returns the display
/// window, how it reads (`window [-1000, 1000] HU`, `model space [0, 1]`) and the volumes.
pub fn shown(
    volumes: &[Volume],
    window: Option<Window>,
    range: ValueRange,
) -> ([f32; 2], String, Vec<Volume>) {
    match window {
        Some(w) => {
            let hu = volumes
                .iter()
                .map(|v| Volume {
                    data: v.data.iter().map(|x| w.to_hu_from(*x, range)).collect(),
                    ..v.clone()
                })
                .collect();
            ([w.min_hu, w.max_hu], format!("window [{:.0}, {:.0}] HU", w.min_hu, w.max_hu), hu)
        }
        None => (range.bounds(), format!("model space {}", range.describe()), volumes.to_vec()),
    }
}

/// The three mid-slices of `v` as (width, height, grey pixels) with `[lo, hi]` → [0, 255]:
/// axial (k = mid; rows j, columns i), coronal (j = mid; rows k from the top, columns i),
/// sagittal (i = mid; rows k from the top, columns j). `flip_j` mirrors j (LAS arrays).
fn views(v: &Volume, lo: f32, hi: f32, flip_j: bool) -> [(usize, usize, Vec<u8>); 3] {
    let [x, y, z] = v.dims;
    let grey = |val: f32| (((val - lo) / (hi - lo)).clamp(0.0, 1.0) * 255.0).round() as u8;
    let jj = |b: usize| if flip_j { y - 1 - b } else { b };
    let axial =
        (0..y).flat_map(|b| (0..x).map(move |a| (a, b))).map(|(a, b)| grey(v.data[v.index(a, jj(b), z / 2)]));
    let coronal = (0..z)
        .rev()
        .flat_map(|c| (0..x).map(move |a| (a, c)))
        .map(|(a, c)| grey(v.data[v.index(a, y / 2, c)]));
    let sagittal = (0..z)
        .rev()
        .flat_map(|c| (0..y).map(move |b| (b, c)))
        .map(|(b, c)| grey(v.data[v.index(x / 2, jj(b), c)]));
    [(x, y, axial.collect()), (x, z, coronal.collect()), (y, z, sagittal.collect())]
}

/// Writes the preview as an RGB PNG (atomically).
pub fn write_preview(path: &Path, p: &Preview) -> Result<()> {
    let [lo, hi] = p.window;
    let hi = if hi > lo { hi } else { lo + 1.0 };
    let edge = p.rows.iter().flat_map(|(_, v)| v.dims).max().unwrap_or(1).max(1);
    let scale = MIN_VIEW_PX.div_ceil(edge).max(1);
    let cell = edge * scale;
    let label_w =
        p.rows.iter().map(|(l, _)| text_width(l, 16.0) as usize).max().unwrap_or(0).max(90) + 2 * GAP;
    let width = label_w + 3 * (cell + GAP) + GAP;
    let top = TITLE_H + HEADER_H;
    let height = top + p.rows.len() * (cell + GAP) + FOOTER_H;
    let mut canvas = Canvas::new(width, height, BACKGROUND);
    let flip_j = p.orientation == Orientation::Las;
    for (r, (_, v)) in p.rows.iter().enumerate() {
        let y0 = top + r * (cell + GAP);
        for (c, (w, h, pixels)) in views(v, lo, hi, flip_j).into_iter().enumerate() {
            // Centred in its cell, each voxel a scale × scale block.
            let x0 = label_w + c * (cell + GAP) + (cell - w * scale) / 2;
            let y1 = y0 + (cell - h * scale) / 2;
            for py in 0..h * scale {
                for px in 0..w * scale {
                    canvas.grey(x0 + px, y1 + py, pixels[(py / scale) * w + px / scale]);
                }
            }
        }
    }
    let [x, y, z] = p.rows.first().map_or([0; 3], |(_, v)| v.dims);
    let headers = [
        format!("axial (k = {})", z / 2),
        format!("coronal (j = {})", y / 2),
        format!("sagittal (i = {})", x / 2),
    ];
    let (title, title_size) = fit(&p.title, width - 2 * GAP);
    let mut lines: Vec<(String, i32, i32, f64, RGBColor)> = vec![(title, GAP as i32, 8, title_size, TEXT)];
    for (c, h) in headers.iter().enumerate() {
        let cx = label_w + c * (cell + GAP) + cell / 2;
        lines.push((h.clone(), cx as i32 - text_width(h, 16.0) as i32 / 2, (TITLE_H + 4) as i32, 16.0, DIM));
    }
    for (r, (label, _)) in p.rows.iter().enumerate() {
        let y = top + r * (cell + GAP) + cell / 2 - 8;
        lines.push((label.clone(), GAP as i32, y as i32, 16.0, TEXT));
    }
    let footer = format!(
        "{} · {}×{}×{} voxels shown {scale}× · anterior up (axial), superior up, patient's left on the right",
        p.window_label, x, y, z
    );
    lines.push((footer, GAP as i32, (height - FOOTER_H + 7) as i32, 14.0, DIM));
    let refs: Vec<(&str, i32, i32, f64, RGBColor)> =
        lines.iter().map(|(t, a, b, s, c)| (t.as_str(), *a, *b, *s, *c)).collect();
    canvas.text(&refs)?;
    canvas.write_png(path)
}

/// `text` at the largest size from 22 down to 14 px that fits `width`, cut with "…" if none does.
fn fit(text: &str, width: usize) -> (String, f64) {
    for size in [22.0, 20.0, 18.0, 16.0, 14.0] {
        if text_width(text, size) as usize <= width {
            return (text.to_string(), size);
        }
    }
    let mut cut: String = text.to_string();
    while !cut.is_empty() && text_width(&format!("{cut}…"), 14.0) as usize > width {
        cut.pop();
    }
    (format!("{cut}…"), 14.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size_of(path: &Path) -> (u32, u32) {
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
        let reader = decoder.read_info().unwrap();
        (reader.info().width, reader.info().height)
    }

    #[test]
    fn views_are_at_least_256_px_and_labelled() {
        let dir = tempfile::tempdir().unwrap();
        let mut v = Volume::filled([32, 32, 32], -1.0);
        // A bright column at small i and j, through every k.
        for a in 0..4 {
            for b in 0..4 {
                for c in 0..32 {
                    let i = v.index(a, b, c);
                    v.data[i] = 1.0;
                }
            }
        }
        let path = dir.path().join("p.png");
        let p = Preview {
            title: "run · step 10 · t = 100".into(),
            rows: vec![("data".into(), &v), ("noisy input".into(), &v)],
            window: [-1.0, 1.0],
            window_label: "model space [-1, 1]".into(),
            orientation: Orientation::Lps,
        };
        write_preview(&path, &p).unwrap();
        let (w, h) = size_of(&path);
        assert!(w >= 3 * 256 && h >= 2 * 256, "{w}×{h}");
        // Every voxel is an 8×8 block (32 voxels → 256 px): the bright 4×4 column crosses only
        // the axial mid-slice, so each of the two rows shows (4·8)² white pixels (the text is
        // never pure white).
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let frame = reader.next_frame(&mut buf).unwrap();
        assert_eq!(frame.color_type, png::ColorType::Rgb);
        let white = buf[..frame.buffer_size()].chunks_exact(3).filter(|p| p == &[255, 255, 255]).count();
        assert_eq!(white, 2 * 32 * 32, "white pixels");
        // The views themselves: an 8× nearest-neighbour copy of the slices.
        let [axial, ..] = views(&v, -1.0, 1.0, false);
        assert_eq!((axial.0, axial.1), (32, 32));
        let [las_axial, ..] = views(&v, -1.0, 1.0, true);
        assert_ne!(axial.2, las_axial.2, "LAS arrays are mirrored along j for display");
    }
}
