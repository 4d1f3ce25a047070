//! Preview images: the three orthogonal mid-slices of volumes side by side (axial, coronal,
//! sagittal), one row per volume, as an 8-bit greyscale PNG.

use std::io::BufWriter;
use std::path::Path;

use super::volume::Volume;
use crate::error::{Error, Result};

const GAP: usize = 2;

/// The three mid-slices of `v` as (width, height, pixels) in [lo, hi] → [0, 255]:
/// axial (k = mid; rows j, columns i), coronal (j = mid; rows k from the top, columns i),
/// sagittal (i = mid; rows k from the top, columns j).
fn views(v: &Volume, lo: f32, hi: f32) -> [(usize, usize, Vec<u8>); 3] {
    let [x, y, z] = v.dims;
    let grey = |val: f32| (((val - lo) / (hi - lo)).clamp(0.0, 1.0) * 255.0).round() as u8;
    let axial =
        (0..y).flat_map(|b| (0..x).map(move |a| (a, b))).map(|(a, b)| grey(v.data[v.index(a, b, z / 2)]));
    let coronal = (0..z)
        .rev()
        .flat_map(|c| (0..x).map(move |a| (a, c)))
        .map(|(a, c)| grey(v.data[v.index(a, y / 2, c)]));
    let sagittal = (0..z)
        .rev()
        .flat_map(|c| (0..y).map(move |b| (b, c)))
        .map(|(b, c)| grey(v.data[v.index(x / 2, b, c)]));
    [(x, y, axial.collect()), (x, z, coronal.collect()), (y, z, sagittal.collect())]
}

/// Writes one row of mid-slice views per volume, intensities `[lo, hi]` mapped to black–white.
pub fn write_preview(path: &Path, volumes: &[&Volume], lo: f32, hi: f32) -> Result<()> {
    let rows: Vec<[(usize, usize, Vec<u8>); 3]> = volumes.iter().map(|v| views(v, lo, hi)).collect();
    let width = rows.iter().map(|r| r.iter().map(|(w, ..)| w + GAP).sum::<usize>() - GAP).max().unwrap_or(1);
    let heights: Vec<usize> = rows.iter().map(|r| r.iter().map(|(_, h, _)| *h).max().unwrap_or(0)).collect();
    let height = (heights.iter().sum::<usize>() + GAP * heights.len().saturating_sub(1)).max(1);
    let mut canvas = vec![0u8; width * height];
    let mut top = 0;
    for (row, h) in rows.iter().zip(&heights) {
        let mut left = 0;
        for (w, vh, pixels) in row {
            for r in 0..*vh {
                canvas[(top + r) * width + left..][..*w].copy_from_slice(&pixels[r * w..][..*w]);
            }
            left += w + GAP;
        }
        top += h + GAP;
    }
    crate::fsio::write_atomic_with(path, |scratch| {
        let write = || -> std::io::Result<()> {
            let file = std::fs::File::create(scratch)?;
            let mut enc = png::Encoder::new(BufWriter::new(file), width as u32, height as u32);
            enc.set_color(png::ColorType::Grayscale);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().map_err(std::io::Error::other)?;
            w.write_image_data(&canvas).map_err(std::io::Error::other)?;
            w.finish().map_err(std::io::Error::other)
        };
        write().map_err(|e| Error::io(path, e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png_of_the_right_size() {
        let dir = tempfile::tempdir().unwrap();
        let v = Volume::filled([8, 6, 4], 0.0);
        let path = dir.path().join("p.png");
        write_preview(&path, &[&v, &v], -1.0, 1.0).unwrap();
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let reader = decoder.read_info().unwrap();
        let info = reader.info();
        // Widths 8 + 8 + 6 with two gaps; heights max(6, 4, 4) twice with one gap.
        assert_eq!((info.width, info.height), (8 + 8 + 6 + 2 * GAP as u32, 6 + 6 + GAP as u32));
    }
}
