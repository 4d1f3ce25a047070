//! Batches for training, prepared on a background thread so the device never waits on the
//! host. Everything random about a batch — which volumes, their diffusion times, their noise —
//! is a function of (seed, draw number) alone, so a resumed run sees exactly the batches an
//! uninterrupted one would have.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use rand::seq::SliceRandom;

use super::dataset::Dataset;
use crate::diffusion::Process;
use crate::diffusion::noise::{Purpose, normal_noise, stream_rng};
use crate::error::{Error, Result};

/// One training batch on the host.
pub struct Batch {
    /// Draw number (batches taken so far; a skipped step still consumes its draw).
    pub draw: u64,
    /// Dataset indices of its volumes.
    pub indices: Vec<usize>,
    /// `[batch, 1, S, S, S]` model-space volumes, row-major.
    pub x0: Vec<f32>,
    /// One time per volume: a diffusion step uniform in 0..T (an integer as a float), or a
    /// flow time uniform in [0, 1).
    pub t: Vec<f32>,
    /// `[batch, 1, S, S, S]` noise: ε = 0.5·z for the diffusion, z for flow matching.
    pub noise: Vec<f32>,
}

/// Which training volumes make up each draw: epoch `e` visits the training indices in a
/// permutation seeded by (seed, e), in full batches (the remainder is dropped).
#[derive(Clone)]
pub struct BatchPlan {
    pub train: Vec<usize>,
    pub batch: usize,
    pub seed: u64,
    /// Which process's times and noise to draw.
    pub process: Process,
}

impl BatchPlan {
    /// Checks that a full batch fits the training set.
    pub fn new(train: Vec<usize>, batch: usize, seed: u64, process: Process) -> Result<Self> {
        if train.len() < batch {
            return Err(Error::invalid(
                "train.batch_size",
                format!("{batch} is larger than the {} training volumes", train.len()),
            ));
        }
        Ok(BatchPlan { train, batch, seed, process })
    }

    /// Full batches per epoch.
    pub fn batches_per_epoch(&self) -> u64 {
        (self.train.len() / self.batch) as u64
    }

    /// (epoch, batch within the epoch) of a draw.
    pub fn position(&self, draw: u64) -> (u64, u64) {
        (draw / self.batches_per_epoch(), draw % self.batches_per_epoch())
    }

    fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut order = self.train.clone();
        order.shuffle(&mut stream_rng(self.seed, Purpose::Order, epoch, 0));
        order
    }

    /// Builds draw `draw` (reading volumes from `data`).
    pub fn batch(&self, data: &Dataset, draw: u64, cached: &mut Option<(u64, Vec<usize>)>) -> Batch {
        let (epoch, pos) = self.position(draw);
        if cached.as_ref().map(|(e, _)| *e) != Some(epoch) {
            *cached = Some((epoch, self.epoch_order(epoch)));
        }
        let order = &cached.as_ref().expect("set above").1;
        let indices = order[pos as usize * self.batch..][..self.batch].to_vec();
        let voxels = data.size().pow(3);
        let mut x0 = Vec::with_capacity(self.batch * voxels);
        for &i in &indices {
            data.extend_f32(i, &mut x0);
        }
        let mut rng = stream_rng(self.seed, Purpose::Times, draw, 0);
        let t = self.process.draw_times(&mut rng, self.batch);
        let noise =
            normal_noise(self.seed, Purpose::TrainNoise, draw, self.batch * voxels, self.process.noise_std());
        Batch { draw, indices, x0, t, noise }
    }
}

/// The background batch producer.
pub struct Loader {
    rx: Receiver<Batch>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Loader {
    /// Starts producing draws `start..end`, at most `prefetch` ahead of the consumer.
    pub fn spawn(data: Arc<Dataset>, plan: BatchPlan, start: u64, end: u64, prefetch: usize) -> Self {
        let (tx, rx): (SyncSender<Batch>, Receiver<Batch>) = sync_channel(prefetch.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("prdit-loader".into())
            .spawn(move || {
                let mut cached = None;
                for draw in start..end {
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    if tx.send(plan.batch(&data, draw, &mut cached)).is_err() {
                        break;
                    }
                }
            })
            .expect("the loader thread starts");
        Loader { rx, stop, handle: Some(handle) }
    }

    /// The next batch; `None` once the planned draws are exhausted.
    pub fn next(&self) -> Option<Batch> {
        self.rx.recv().ok()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        while self.rx.try_recv().is_ok() {}
        if let Some(h) = self.handle.take() {
            // Unblock a pending send, then wait.
            while !h.is_finished() {
                while self.rx.try_recv().is_ok() {}
                std::thread::yield_now();
            }
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Storage;
    use crate::data::nifti::write_volume;
    use crate::data::volume::Volume;

    #[test]
    fn batches_are_a_function_of_the_draw() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<_> = (0..5)
            .map(|i| {
                let p = dir.path().join(format!("v{i}.nii"));
                write_volume(&p, &Volume::filled([4, 4, 4], i as f32 * 0.1), "").unwrap();
                p
            })
            .collect();
        let data = Arc::new(Dataset::load(&files, 4, Storage::F32).unwrap());
        let plan = BatchPlan::new(vec![0, 1, 2, 3, 4], 2, 9, Process::Ian).unwrap();
        assert_eq!(plan.batches_per_epoch(), 2);
        let loader = Loader::spawn(data.clone(), plan.clone(), 0, 6, 2);
        let all: Vec<Batch> = std::iter::from_fn(|| loader.next()).collect();
        assert_eq!(all.len(), 6);
        // Resuming at draw 3 gives the same batches as the uninterrupted stream.
        let resumed = Loader::spawn(data.clone(), plan.clone(), 3, 6, 1);
        for b in std::iter::from_fn(|| resumed.next()) {
            let a = &all[b.draw as usize];
            assert_eq!((&a.indices, &a.t, &a.noise, &a.x0), (&b.indices, &b.t, &b.noise, &b.x0));
        }
        // An epoch never repeats a volume; the values are the volumes'.
        let mut e0: Vec<usize> = all[..2].iter().flat_map(|b| b.indices.clone()).collect();
        e0.sort();
        e0.dedup();
        assert_eq!(e0.len(), 4);
        assert_eq!(all[0].x0[0], all[0].indices[0] as f32 * 0.1);
        assert!(BatchPlan::new(vec![0, 1], 3, 0, Process::Ian).is_err());
        drop(Loader::spawn(data, plan, 0, 1000, 1)); // dropping a busy loader does not hang
    }
}
