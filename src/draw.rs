//! Pictures a person reads: the training curves of a run (`progress.png`) and labelled preview
//! images. Charts and text are drawn with `plotters` on an RGB buffer (its `ab_glyph` text
//! backend with a built-in subset of DejaVu Sans, so nothing depends on the fonts of the
//! machine), written as PNG with the `png` crate.

use std::io::BufWriter;
use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::error::{Error, Result};

/// DejaVu Sans cut down to ASCII and a few symbols (`scripts/make-font-subset.sh`;
/// licence in `assets/fonts/LICENSE`).
const FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans-prdit.ttf");

/// The font family name the pictures use.
pub const SANS: &str = "sans-serif";

/// Registers the built-in font with plotters (once per process).
pub fn fonts() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        // The bytes are compiled in and parse (a test draws text); nothing to report otherwise.
        let _ = register_font(SANS, FontStyle::Normal, FONT);
    });
}

/// An RGB image being drawn.
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    /// `width × height × 3` bytes, rows from the top.
    pub rgb: Vec<u8>,
}

impl Canvas {
    /// A canvas filled with one colour.
    pub fn new(width: usize, height: usize, fill: [u8; 3]) -> Self {
        let rgb = fill.iter().copied().cycle().take(width * height * 3).collect();
        Canvas { width, height, rgb }
    }

    /// Sets pixel (x, y) to a grey level.
    pub fn grey(&mut self, x: usize, y: usize, level: u8) {
        let i = (y * self.width + x) * 3;
        self.rgb[i..i + 3].fill(level);
    }

    /// Writes `lines` of text: (text, left x, top y, size in px, colour).
    pub fn text(&mut self, lines: &[(&str, i32, i32, f64, RGBColor)]) -> Result<()> {
        fonts();
        let root = BitMapBackend::with_buffer(&mut self.rgb, (self.width as u32, self.height as u32))
            .into_drawing_area();
        for &(text, x, y, size, colour) in lines {
            let style = TextStyle::from((SANS, size).into_font()).color(&colour);
            root.draw_text(text, &style, (x, y)).map_err(|e| Error::invalid("picture", e.to_string()))?;
        }
        root.present().map_err(|e| Error::invalid("picture", e.to_string()))
    }

    /// Writes the canvas as an 8-bit RGB PNG (atomically).
    pub fn write_png(&self, path: &Path) -> Result<()> {
        write_rgb_png(path, &self.rgb, self.width, self.height)
    }
}

/// Writes an RGB buffer as PNG, atomically.
pub fn write_rgb_png(path: &Path, rgb: &[u8], width: usize, height: usize) -> Result<()> {
    crate::fsio::write_atomic_with(path, |scratch| {
        let write = || -> std::io::Result<()> {
            let file = std::fs::File::create(scratch)?;
            let mut enc = png::Encoder::new(BufWriter::new(file), width as u32, height as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().map_err(std::io::Error::other)?;
            w.write_image_data(rgb).map_err(std::io::Error::other)?;
            w.finish().map_err(std::io::Error::other)
        };
        write().map_err(|e| Error::io(path, e))
    })
}

/// The width in pixels of `text` at `size` px (for laying out labels).
pub fn text_width(text: &str, size: f64) -> u32 {
    fonts();
    let font = (SANS, size).into_font();
    font.box_size(text).map(|(w, _)| w).unwrap_or((text.len() as f64 * size * 0.6) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_drawn_with_the_built_in_font() {
        let mut c = Canvas::new(120, 40, [255; 3]);
        c.text(&[("step 12 · t = 100 → x0", 4, 8, 18.0, BLACK)]).unwrap();
        let dark = c.rgb.chunks(3).filter(|p| p[0] < 128).count();
        assert!(dark > 50, "only {dark} dark pixels: no text drawn");
        assert!(text_width("axial", 16.0) > 20);
    }
}
