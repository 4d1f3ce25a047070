//! `progress.png` of a run, redrawn from `metrics.jsonl` at every evaluation and when the run
//! stops: the training loss with its image and noise terms (smoothed, the raw means faint),
//! the validation image MSE, the learning rate and the speed, against the step.

use std::path::Path;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::prelude::*;
use serde_json::Value;

use crate::draw::{SANS, fonts, write_rgb_png};
use crate::error::{Error, Result};

/// Picture size in pixels.
const SIZE: (u32, u32) = (1400, 900);

/// The series of a run's `metrics.jsonl`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Curves {
    /// (step, loss, image term, noise term) of each log record.
    pub train: Vec<(f64, f64, f64, f64)>,
    /// (step, validation image MSE).
    pub val: Vec<(f64, f64)>,
    /// (step, learning rate).
    pub lr: Vec<(f64, f64)>,
    /// (step, steps per second).
    pub speed: Vec<(f64, f64)>,
    /// A flow-matching run: one loss term (the velocity's), no image and noise terms, and the
    /// validation is the reconstruction at t = 0.5.
    pub flow: bool,
}

impl Curves {
    /// Reads the records of `metrics.jsonl` (lines that are not records are ignored).
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut c = Curves::default();
        for v in text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
            let f = |k: &str| v[k].as_f64().filter(|x| x.is_finite());
            let Some(step) = f("step") else { continue };
            match v["kind"].as_str() {
                Some("train") => {
                    if let (Some(l), Some(i), Some(n)) = (f("loss"), f("loss_image"), f("loss_noise")) {
                        c.train.push((step, l, i, n));
                    } else if let (Some(l), Some(_)) = (f("loss"), f("loss_velocity")) {
                        c.train.push((step, l, f64::NAN, f64::NAN));
                        c.flow = true;
                    }
                    if let Some(lr) = f("lr") {
                        c.lr.push((step, lr));
                    }
                    if let Some(s) = f("steps_per_s") {
                        c.speed.push((step, s));
                    }
                }
                Some("eval") => {
                    c.flow |= v["process"] == "flow";
                    if let Some(m) = f("val_mse") {
                        c.val.push((step, m));
                    }
                }
                _ => {}
            }
        }
        Ok(c)
    }
}

/// Exponential moving average with a window of about `span` points (bias-corrected at the start).
pub fn smooth(values: &[f64], span: f64) -> Vec<f64> {
    let a = 2.0 / (span + 1.0);
    let (mut m, mut w) = (0.0, 0.0);
    values
        .iter()
        .map(|&x| {
            m = (1.0 - a) * m + a * x;
            w = (1.0 - a) * w + a;
            m / w
        })
        .collect()
}

/// Draws `progress.png` from `metrics` (title: the run's name and step).
pub fn write_progress(metrics: &Path, png: &Path, title: &str) -> Result<()> {
    let c = Curves::read(metrics)?;
    let (w, h) = SIZE;
    let mut rgb = vec![255u8; (w * h * 3) as usize];
    fonts();
    {
        let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
        let err = |e: &dyn std::fmt::Display| Error::invalid("progress.png", e.to_string());
        let root = root.titled(title, (SANS, 26)).map_err(|e| err(&e))?;
        let panels = root.split_evenly((2, 2));
        let steps: Vec<f64> = c.train.iter().map(|r| r.0).collect();
        let span = (c.train.len() as f64 / 20.0).clamp(1.0, 50.0);
        let loss: [Vec<f64>; 3] = [
            c.train.iter().map(|r| r.1).collect(),
            c.train.iter().map(|r| r.2).collect(),
            c.train.iter().map(|r| r.3).collect(),
        ];
        let mut lines = Vec::new();
        let terms = if c.flow {
            vec![(&loss[0], "velocity MSE", BLACK)]
        } else {
            vec![(&loss[0], "loss", BLACK), (&loss[1], "image term", BLUE), (&loss[2], "noise term", RED)]
        };
        for (values, name, colour) in terms {
            lines.push(Line { points: zip(&steps, values), name: None, colour: colour.mix(0.2) });
            lines.push(Line {
                points: zip(&steps, &smooth(values, span)),
                name: Some(name),
                colour: colour.into(),
            });
        }
        panel(&panels[0], "training loss (smoothed; raw faint)", "loss", &lines, true)
            .map_err(|e| err(&e))?;
        let process = if c.flow { crate::diffusion::Process::Flow } else { crate::diffusion::Process::Ian };
        let val_name = super::evaluate::val_label(process);
        let val = [Line { points: c.val.clone(), name: Some(&val_name), colour: GREEN.into() }];
        panel(&panels[1], "validation (EMA weights)", "MSE", &val, true).map_err(|e| err(&e))?;
        let lr = [Line { points: c.lr.clone(), name: None, colour: MAGENTA.into() }];
        panel(&panels[2], "learning rate", "lr", &lr, false).map_err(|e| err(&e))?;
        let speed = [Line { points: c.speed.clone(), name: None, colour: CYAN.mix(0.9) }];
        panel(&panels[3], "speed", "steps/s", &speed, false).map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    write_rgb_png(png, &rgb, w as usize, h as usize)
}

fn zip(x: &[f64], y: &[f64]) -> Vec<(f64, f64)> {
    x.iter().copied().zip(y.iter().copied()).collect()
}

struct Line<'a> {
    points: Vec<(f64, f64)>,
    name: Option<&'a str>,
    colour: RGBAColor,
}

/// One chart: `lines` against the step, on a log axis when `log` (positive values only).
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    caption: &str,
    y: &str,
    lines: &[Line],
    log: bool,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let pts = || lines.iter().flat_map(|l| l.points.iter()).filter(|p| !log || p.1 > 0.0);
    let mut chart = ChartBuilder::on(area);
    chart.caption(caption, (SANS, 20)).margin(12).x_label_area_size(36).y_label_area_size(72);
    if pts().next().is_none() {
        let mut c = chart.build_cartesian_2d(0f64..1f64, 0f64..1f64)?;
        c.configure_mesh().disable_mesh().x_desc("step").y_desc(y).draw()?;
        area.draw_text(
            "no records yet",
            &TextStyle::from((SANS, 18).into_font()).color(&BLACK.mix(0.6)),
            (area.dim_in_pixel().0 as i32 / 2 - 60, area.dim_in_pixel().1 as i32 / 2),
        )?;
        return Ok(());
    }
    let (x0, x1) = pts().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = pts().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
    // A log axis only where the values span more than a decade or so (else it has no labels).
    let log = log && y0 > 0.0 && y1 / y0 > 20.0;
    if log {
        let (lo, hi) = (y0 * 0.8, if y1 > y0 { y1 * 1.25 } else { y0 * 2.0 });
        let mut c = chart.build_cartesian_2d(x0..x1, (lo..hi).log_scale())?;
        draw_lines(&mut c, y, lines, true)?;
    } else {
        let pad = if y1 > y0 { (y1 - y0) * 0.08 } else { y0.abs().max(1e-12) * 0.1 };
        let mut c = chart.build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))?;
        draw_lines(&mut c, y, lines, false)?;
    }
    Ok(())
}

/// The mesh (steps on x, `y` on the y axis), `lines` (positive points only when `log`) and
/// their legend.
fn draw_lines<'a, DB, X, Y>(
    c: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    y: &str,
    lines: &[Line],
    log: bool,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    c.configure_mesh()
        .x_desc("step")
        .y_desc(y)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| number(*v))
        .draw()?;
    for l in lines {
        let points = l.points.iter().copied().filter(|p| !log || p.1 > 0.0);
        let s = c.draw_series(LineSeries::new(points, l.colour.stroke_width(2)))?;
        if let Some(n) = l.name {
            let colour = l.colour;
            s.label(n)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        }
    }
    if lines.iter().any(|l| l.name.is_some()) {
        c.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((SANS, 16))
            .draw()?;
    }
    Ok(())
}

/// An axis label: three significant digits, scientific notation outside [0.001, 10000).
pub fn number(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e4).contains(&a) {
        format!("{v:.1e}")
    } else {
        let decimals = (2 - a.log10().floor() as i32).max(0) as usize;
        format!("{v:.decimals$}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_numbers_are_short() {
        assert_eq!(
            [number(0.0), number(0.0412), number(2.5), number(1500.0)],
            ["0", "0.0412", "2.50", "1500"]
        );
        assert_eq!([number(5e-4), number(-0.25)], ["5.0e-4", "-0.250"]);
    }

    #[test]
    fn smoothing_follows_a_constant_and_lags_a_step() {
        assert!(smooth(&[2.0; 10], 5.0).iter().all(|v| (v - 2.0).abs() < 1e-12));
        let s = smooth(&[0.0, 0.0, 0.0, 1.0, 1.0], 3.0);
        assert!(s[3] > 0.0 && s[3] < 1.0 && s[4] > s[3]);
    }

    #[test]
    fn progress_png_is_drawn_from_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = dir.path().join("metrics.jsonl");
        let mut text = String::new();
        for s in 1..=40 {
            let l = 1.0 / s as f64;
            text += &format!(
                "{{\"kind\":\"train\",\"step\":{s},\"loss\":{l},\"loss_image\":{},\"loss_noise\":{},\"lr\":1e-4,\"steps_per_s\":{}}}\n",
                l * 0.4,
                l * 0.6,
                2.0 + (s % 3) as f64
            );
            if s % 10 == 0 {
                text += &format!(
                    "{{\"kind\":\"eval\",\"step\":{s},\"val_mse\":{},\"best\":true}}\n",
                    0.1 / s as f64
                );
            }
        }
        text += "{\"kind\":\"skip\",\"step\":41,\"loss\":\"NaN\",\"skipped\":1}\n";
        std::fs::write(&metrics, text).unwrap();
        let c = Curves::read(&metrics).unwrap();
        assert_eq!((c.train.len(), c.val.len(), c.lr.len(), c.speed.len()), (40, 4, 40, 40));
        let png = dir.path().join("progress.png");
        write_progress(&metrics, &png, "run · step 40").unwrap();
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
        let info = decoder.read_info().unwrap().info().clone();
        assert_eq!((info.width, info.height), SIZE);
        // No records yet: still a picture.
        std::fs::write(&metrics, "").unwrap();
        write_progress(&metrics, &png, "empty").unwrap();
    }
}
