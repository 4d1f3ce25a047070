//! Training data: NIfTI volumes already at the training size and in model space ([−1, 1]),
//! listed by a folder or a list file, validated once (shape, finite values, range) and held
//! in memory in a compact dtype. Every problem names the file; nothing is skipped.

use std::path::{Path, PathBuf};

use chacha20::ChaCha8Rng;
use half::f16;
use rand::SeedableRng;
use rand::seq::SliceRandom;

use super::nifti::{is_nifti, read_volume};
use super::pyrandom::PyRandom;
pub use crate::config::SplitPolicy;
use crate::config::Storage;
use crate::error::{Error, Result};

/// Largest |value| accepted as model space (prepared volumes are clipped to exactly ±1).
pub const RANGE_LIMIT: f32 = 1.001;

/// The volumes of a dataset source: every `.nii`/`.nii.gz` directly in a folder (sorted by
/// name), or the paths of a list file (one per line, `#` comments, relative to the list's
/// folder).
pub fn list_volumes(source: &Path) -> Result<Vec<PathBuf>> {
    if source.is_dir() {
        let entries = std::fs::read_dir(source).map_err(|e| Error::io(source, e))?;
        let mut files = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| Error::io(source, e))?.path();
            if path.is_file() && is_nifti(&path) {
                files.push(path);
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(Error::data(source, "the folder holds no .nii or .nii.gz files"));
        }
        return Ok(files);
    }
    if !source.exists() {
        return Err(Error::data(source, "no such folder or list file"));
    }
    if is_nifti(source) {
        return Ok(vec![source.to_path_buf()]);
    }
    let text = std::fs::read_to_string(source).map_err(|e| Error::io(source, e))?;
    let base = source.parent().unwrap_or(Path::new("."));
    let mut files = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let path = base.join(line);
        if !path.is_file() {
            return Err(Error::data(source, format!("line {}: {} does not exist", n + 1, path.display())));
        }
        if !is_nifti(&path) {
            return Err(Error::data(
                source,
                format!("line {}: {} is not a .nii/.nii.gz file", n + 1, path.display()),
            ));
        }
        files.push(path);
    }
    if files.is_empty() {
        return Err(Error::data(source, "the list file names no volumes"));
    }
    Ok(files)
}

enum Voxels {
    F16(Vec<f16>),
    F32(Vec<f32>),
}

/// Validated volumes in memory.
pub struct Dataset {
    files: Vec<PathBuf>,
    size: usize,
    volumes: Vec<Voxels>,
}

impl Dataset {
    /// Reads and validates every file (in parallel), each `size`³ in model space. Every bad
    /// file is reported, not just the first.
    pub fn load(files: &[PathBuf], size: usize, storage: Storage) -> Result<Self> {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8);
        let chunk = files.len().div_ceil(threads).max(1);
        let results: Vec<Vec<Result<Voxels>>> = std::thread::scope(|s| {
            let handles: Vec<_> = files
                .chunks(chunk)
                .map(|part| s.spawn(move || part.iter().map(|f| load_one(f, size, storage)).collect()))
                .collect();
            handles.into_iter().map(|h| h.join().expect("loader thread panicked")).collect()
        });
        let mut volumes = Vec::with_capacity(files.len());
        let mut problems = Vec::new();
        for r in results.into_iter().flatten() {
            match r {
                Ok(v) => volumes.push(v),
                Err(e) => problems.push(e.to_string()),
            }
        }
        if !problems.is_empty() {
            return Err(Error::Files { what: format!("{} volumes", files.len()), problems });
        }
        Ok(Dataset { files: files.to_vec(), size, volumes })
    }

    /// Number of volumes.
    pub fn len(&self) -> usize {
        self.volumes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.volumes.is_empty()
    }

    /// Edge of the (cubic) volumes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The file of volume `i`.
    pub fn file(&self, i: usize) -> &Path {
        &self.files[i]
    }

    /// Appends volume `i` as f32 to `out`.
    pub fn extend_f32(&self, i: usize, out: &mut Vec<f32>) {
        match &self.volumes[i] {
            Voxels::F16(v) => out.extend(v.iter().map(|x| x.to_f32())),
            Voxels::F32(v) => out.extend_from_slice(v),
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.volumes
            .iter()
            .map(|v| match v {
                Voxels::F16(v) => v.len() * 2,
                Voxels::F32(v) => v.len() * 4,
            })
            .sum()
    }
}

fn load_one(path: &Path, size: usize, storage: Storage) -> Result<Voxels> {
    let v = read_volume(path)?;
    if v.dims != [size; 3] {
        return Err(Error::data(
            path,
            format!(
                "shape {:?}, but the model trains on {size}³ volumes (prepare them at --size {size})",
                v.dims
            ),
        ));
    }
    if let Some(i) = v.first_non_finite() {
        let (a, b, c) = (i / (size * size), (i / size) % size, i % size);
        return Err(Error::data(
            path,
            format!("voxel ({a}, {b}, {c}) is {} (not a finite number)", v.data[i]),
        ));
    }
    let (lo, hi) = v.min_max();
    if lo < -RANGE_LIMIT || hi > RANGE_LIMIT {
        return Err(Error::data(
            path,
            format!(
                "values span [{lo}, {hi}], but training volumes must be in model space [-1, 1] \
                 (HU volumes need `prdit prepare` first)"
            ),
        ));
    }
    Ok(match storage {
        Storage::F16 => Voxels::F16(v.data.iter().map(|&x| f16::from_f32(x)).collect()),
        Storage::F32 => Voxels::F32(v.data),
    })
}

/// Splits `n` volumes (sorted paths) into (train, validation) indices: the last `val_count`
/// (default: 10 % rounded half to even as Python's `round`, at least 1 of 2 or more) of a
/// seeded shuffle are held out. [`SplitPolicy::Official`] shuffles as the official
/// `scripts/split_train_val.py` does (`random.Random(seed).shuffle`), so the same files and
/// seed give the official validation set; [`SplitPolicy::Chacha`] is a ChaCha8 shuffle seeded
/// with `seed`.
pub fn split(
    n: usize,
    val_count: Option<usize>,
    seed: u64,
    policy: SplitPolicy,
) -> Result<(Vec<usize>, Vec<usize>)> {
    let val =
        val_count.unwrap_or(if n >= 2 { ((n as f64 * 0.1).round_ties_even() as usize).max(1) } else { 0 });
    if val >= n {
        return Err(Error::invalid(
            "data.val_count",
            format!("{val} held out of {n} volumes leaves none to train on"),
        ));
    }
    let mut order: Vec<usize> = (0..n).collect();
    match policy {
        SplitPolicy::Official => PyRandom::new(seed).shuffle(&mut order),
        SplitPolicy::Chacha => order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed)),
    }
    let val_idx = order.split_off(n - val);
    Ok((order, val_idx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::nifti::write_volume;
    use crate::data::volume::Volume;

    #[test]
    fn folders_lists_and_validation() {
        let dir = tempfile::tempdir().unwrap();
        let good = Volume::filled([4, 4, 4], 0.5);
        for n in ["b.nii.gz", "a.nii"] {
            write_volume(&dir.path().join(n), &good, "").unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        let files = list_volumes(dir.path()).unwrap();
        assert_eq!(
            files.iter().map(|f| f.file_name().unwrap().to_str().unwrap()).collect::<Vec<_>>(),
            ["a.nii", "b.nii.gz"]
        );
        let ds = Dataset::load(&files, 4, Storage::F16).unwrap();
        assert_eq!((ds.len(), ds.bytes()), (2, 2 * 64 * 2));

        let list = dir.path().join("train.txt");
        std::fs::write(&list, "# comment\na.nii\n\nmissing.nii.gz\n").unwrap();
        let e = list_volumes(&list).unwrap_err().to_string();
        assert!(e.contains("line 4") && e.contains("missing.nii.gz"), "{e}");

        let e = Dataset::load(&files, 8, Storage::F32).err().unwrap().to_string();
        assert!(e.contains("a.nii") && e.contains("[4, 4, 4]"), "{e}");

        let mut hu = good.clone();
        hu.data[5] = -1000.0;
        write_volume(&dir.path().join("hu.nii"), &hu, "").unwrap();
        let e = Dataset::load(&[dir.path().join("hu.nii")], 4, Storage::F32).err().unwrap().to_string();
        assert!(e.contains("hu.nii") && e.contains("model space"), "{e}");

        let mut nan = good.clone();
        nan.data[21] = f32::NAN;
        write_volume(&dir.path().join("nan.nii"), &nan, "").unwrap();
        let e = Dataset::load(&[dir.path().join("nan.nii")], 4, Storage::F32).err().unwrap().to_string();
        assert!(e.contains("nan.nii") && e.contains("voxel (1, 1, 1)"), "{e}");
        // Every bad file is named, not just the first.
        let all = [dir.path().join("hu.nii"), dir.path().join("a.nii"), dir.path().join("nan.nii")];
        let e = Dataset::load(&all, 4, Storage::F32).err().unwrap().to_string();
        assert!(e.starts_with("2 of the 3 volumes") && e.contains("hu.nii") && e.contains("nan.nii"), "{e}");

        let empty = tempfile::tempdir().unwrap();
        assert!(list_volumes(empty.path()).unwrap_err().to_string().contains("no .nii"));
    }

    #[test]
    fn split_is_seeded_and_disjoint() {
        for policy in [SplitPolicy::Official, SplitPolicy::Chacha] {
            let (t, v) = split(20, None, 42, policy).unwrap();
            assert_eq!((t.len(), v.len()), (18, 2));
            assert_eq!(split(20, None, 42, policy).unwrap(), (t.clone(), v.clone()));
            let mut all: Vec<usize> = t.iter().chain(&v).copied().collect();
            all.sort();
            assert_eq!(all, (0..20).collect::<Vec<_>>());
            assert!(split(3, Some(3), 1, policy).is_err());
            assert_eq!(split(1, None, 0, policy).unwrap().1.len(), 0);
        }
    }

    /// Lists printed by CPython 3.11 running the official `split_paths(list(range(n)), seed,
    /// val_ratio=0.1)` (`scripts/split_train_val.py`).
    #[test]
    fn official_split_matches_python() {
        let cases: [(usize, u64, &[usize], &[usize]); 3] = [
            (
                25,
                42,
                &[16, 12, 9, 19, 18, 6, 5, 10, 15, 21, 11, 17, 1, 14, 22, 13, 2, 23, 4, 24, 7, 8, 0],
                &[3, 20],
            ),
            (15, 7, &[3, 12, 14, 7, 11, 4, 13, 9, 8, 1, 0, 10, 6], &[2, 5]),
            (5, 0, &[2, 1, 0, 4], &[3]),
        ];
        for (n, seed, train, val) in cases {
            let (t, v) = split(n, None, seed, SplitPolicy::Official).unwrap();
            assert_eq!((t.as_slice(), v.as_slice()), (train, val), "n {n}, seed {seed}");
        }
    }
}
