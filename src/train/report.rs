//! What a run tells its user: a line every `log_every` steps (losses, learning rate, gradient
//! norm, speed, memory) on the terminal and in `metrics.jsonl`, evaluations and skipped
//! steps; a progress bar with ETA when stderr is a terminal, plain log lines otherwise.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use indicatif::ProgressBar;
use serde_json::{Value, json};

use crate::error::{Error, Result};

/// Logging state of a run.
pub struct Reporter {
    path: PathBuf,
    file: File,
    /// `train.log` next to `metrics.jsonl`: every line shown, plain text with a UTC time.
    log_path: PathBuf,
    log: File,
    bar: Option<ProgressBar>,
    sums: [f64; 3],
    count: u64,
    since: Instant,
    since_step: u64,
    /// The run's process: the diffusion logs its image and noise terms, flow matching its one
    /// velocity term.
    pub process: crate::diffusion::Process,
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of a Unix time (days to a civil date as in Howard Hinnant's
/// `civil_from_days`).
pub fn utc_time(unix: f64) -> String {
    let secs = unix.max(0.0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

impl Reporter {
    /// Opens `metrics.jsonl` for appending, first dropping records past `step` (left by a
    /// run that was killed after its last checkpoint).
    pub fn open(path: &Path, step: u64, progress: bool, total: u64) -> Result<Self> {
        if path.is_file() {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<Value>(l)
                        .ok()
                        .and_then(|v| v["step"].as_u64())
                        .is_some_and(|s| s <= step)
                })
                .collect();
            let mut body = kept.join("\n");
            if !body.is_empty() {
                body.push('\n');
            }
            crate::fsio::write_atomic(path, body.as_bytes())?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
        let log_path = path.with_file_name("train.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| Error::io(&log_path, e))?;
        let bar = crate::progress::bar(total, "steps", progress);
        if let Some(b) = &bar {
            crate::progress::resume_at(b, step);
        }
        Ok(Reporter {
            path: path.to_path_buf(),
            file,
            log_path,
            log,
            bar,
            sums: [0.0; 3],
            count: 0,
            since: Instant::now(),
            since_step: step,
            process: crate::diffusion::Process::Ian,
        })
    }

    fn record(&mut self, mut value: Value) -> Result<()> {
        value["time"] = json!(now());
        // One write per record, so that a reader never sees a line in pieces.
        let line = format!("{value}\n");
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Prints a line above the progress bar (or as a log line), and appends it to `train.log`.
    pub fn line(&mut self, text: &str) -> Result<()> {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => tracing::info!("{text}"),
        }
        writeln!(self.log, "{} {text}", utc_time(now()))
            .and_then(|_| self.log.flush())
            .map_err(|e| Error::io(&self.log_path, e))
    }

    /// Adds one step's losses to the running means.
    pub fn accumulate(&mut self, loss: f64, image: f64, noise: f64) {
        self.sums[0] += loss;
        self.sums[1] += image;
        self.sums[2] += noise;
        self.count += 1;
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    /// Writes a log record with the means since the last one.
    pub fn log(
        &mut self,
        step: u64,
        lr: f64,
        grad_norm: Option<f64>,
        batch: usize,
        mem: Option<u64>,
        skipped: u64,
    ) -> Result<()> {
        let n = self.count.max(1) as f64;
        let [loss, image, noise] = self.sums.map(|s| s / n);
        let secs = self.since.elapsed().as_secs_f64().max(1e-9);
        let steps_per_s = (step - self.since_step) as f64 / secs;
        let flow = self.process == crate::diffusion::Process::Flow;
        let mut rec = json!({
            "kind": "train", "step": step, "loss": loss, "loss_image": image, "loss_noise": noise,
            "lr": lr, "grad_norm": grad_norm, "steps_per_s": steps_per_s,
            "volumes_per_s": steps_per_s * batch as f64, "mem_reserved_bytes": mem, "skipped": skipped,
        });
        let terms = if flow {
            let map = rec.as_object_mut().expect("an object");
            map.remove("loss_image");
            map.remove("loss_noise");
            map.insert("loss_velocity".into(), json!(loss));
            map.insert("process".into(), json!("flow"));
            "velocity MSE".to_string()
        } else {
            format!("image {image:.5}, noise {noise:.5}")
        };
        let mem = mem.map(|m| format!(" mem {:.2} GiB", m as f64 / (1u64 << 30) as f64)).unwrap_or_default();
        let text = format!(
            "step {step} loss {loss:.5} ({terms}) lr {lr:.2e} |g| {} {steps_per_s:.2} steps/s {:.1} vol/s{mem}{}",
            grad_norm.map_or("-".into(), |g| format!("{g:.3}")),
            steps_per_s * batch as f64,
            if skipped > 0 { format!(" skipped {skipped}") } else { String::new() }
        );
        self.line(&text)?;
        if let Some(bar) = &self.bar {
            bar.set_message(format!("loss {loss:.4}"));
        }
        self.sums = [0.0; 3];
        self.count = 0;
        self.since = Instant::now();
        self.since_step = step;
        self.record(rec)
    }

    /// Writes an evaluation record, and redraws `progress.png`.
    pub fn eval(&mut self, step: u64, val_mse: f64, best: bool) -> Result<()> {
        let what = super::evaluate::val_label(self.process);
        self.line(&format!(
            "step {step} validation: {what} {val_mse:.6}{}",
            if best { " (best)" } else { "" }
        ))?;
        self.record(
            json!({"kind": "eval", "step": step, "val_mse": val_mse, "best": best, "process": self.process.key()}),
        )?;
        self.plot(step);
        Ok(())
    }

    /// Redraws `progress.png` next to `metrics.jsonl` (a picture that cannot be written is a
    /// warning: it never stops a run).
    pub fn plot(&mut self, step: u64) {
        let run = self.path.parent().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned());
        let title = format!("{} · step {step}", run.unwrap_or_else(|| "run".into()));
        let png = self.path.with_file_name("progress.png");
        if let Err(e) = super::plot::write_progress(&self.path, &png, &title) {
            let text = format!("warning: progress.png not drawn: {e}");
            let _ = self.line(&text);
        }
    }

    #[cfg(test)]
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap()
    }

    /// Records a skipped step.
    pub fn skipped(&mut self, step: u64, loss: f64, total: u64) -> Result<()> {
        let loss = if loss.is_finite() { json!(loss) } else { json!(loss.to_string()) };
        self.record(json!({"kind": "skip", "step": step, "loss": loss, "skipped": total}))
    }

    /// Redraws `progress.png` for the last step and ends the progress bar.
    pub fn finish(&mut self, step: u64) {
        self.plot(step);
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_and_the_plain_log() {
        assert_eq!(utc_time(0.0), "1970-01-01 00:00:00");
        assert_eq!(utc_time(951_782_400.0), "2000-02-29 00:00:00");
        assert_eq!(utc_time(1_796_148_061.0), "2026-12-01 18:01:01");
        let dir = tempfile::tempdir().unwrap();
        let mut r = Reporter::open(&dir.path().join("metrics.jsonl"), 0, false, 10).unwrap();
        r.line("checkpoint x").unwrap();
        r.accumulate(1.0, 0.5, 0.5);
        r.log(1, 1e-4, Some(0.5), 2, None, 0).unwrap();
        let text = r.log_text();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.lines().all(|l| l.len() > 20 && l.as_bytes()[4] == b'-'), "{text}");
        assert!(text.contains("checkpoint x") && text.contains("step 1 loss 1.00000"), "{text}");
        assert!(!text.contains('\u{1b}'));
    }
}
