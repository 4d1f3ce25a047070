//! Crash-safe file writes: every file prdit writes goes through [`write_atomic_with`] — written
//! under a scratch name in the target's folder, flushed to disk, renamed into place, and the
//! folder flushed — so a crash, kill or full disk leaves either the old file or the new one,
//! never a torn one. Scratch names start with `.partial-`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Prefix of every scratch file and folder prdit writes (removed by the commands that own the
/// folder when they find them left over).
pub const SCRATCH_PREFIX: &str = ".partial-";

/// Flushes a folder's entries (a rename is durable only then); best effort.
pub fn fsync_dir(dir: &Path) {
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Writes `contents` to `path` atomically.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    write_atomic_with(path, |scratch| fs::write(scratch, contents).map_err(|e| Error::io(path, e)))
}

/// A report as pretty JSON, keys sorted at every level (through `serde_json::Value`, whose maps
/// are ordered).
pub fn json_text<T: serde::Serialize>(report: &T) -> Result<String> {
    let value = serde_json::to_value(report).map_err(|e| Error::invalid("report", e.to_string()))?;
    Ok(serde_json::to_string_pretty(&value).expect("a JSON value serialises"))
}

/// Writes a report as [`json_text`] to `path` atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, report: &T) -> Result<()> {
    write_atomic(path, json_text(report)?.as_bytes())
}

/// Writes `path` atomically with `write`, which is handed a scratch file path to create (in a
/// private scratch folder next to `path`, named `out.EXT` with `path`'s extension — `nii.gz`
/// counts as one — for writers that derive the format from the name).
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let folder = parent.join(format!("{SCRATCH_PREFIX}{}-{n}-{name}", std::process::id()));
    fs::create_dir_all(&folder).map_err(|e| Error::io(&folder, e))?;
    let scratch = folder.join(scratch_name(name));
    let result = write(&scratch).and_then(|()| publish(&scratch, path));
    let _ = fs::remove_dir_all(&folder);
    result
}

fn scratch_name(name: &str) -> String {
    if name.ends_with(".nii.gz") {
        return "out.nii.gz".into();
    }
    match Path::new(name).extension().and_then(|e| e.to_str()) {
        Some(ext) => format!("out.{ext}"),
        None => "out".into(),
    }
}

fn publish(scratch: &Path, path: &Path) -> Result<()> {
    let f = fs::File::open(scratch).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))?;
    fs::rename(scratch, path).map_err(|e| Error::io(path, e))?;
    if let Some(parent) = path.parent() {
        fsync_dir(if parent.as_os_str().is_empty() { Path::new(".") } else { parent });
    }
    Ok(())
}

/// Scratch entries (files or folders named `.partial-*`) directly in `dir`.
pub fn scratch_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if entry.file_name().to_string_lossy().starts_with(SCRATCH_PREFIX) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Removes the scratch entries directly in `dir` (left by a process killed mid-write; call only
/// while holding the folder's lock), best effort; returns what was there.
pub fn remove_scratch(dir: &Path) -> Result<Vec<PathBuf>> {
    let found = scratch_entries(dir)?;
    for path in &found {
        let _ = fs::remove_dir_all(path).or_else(|_| fs::remove_file(path));
    }
    Ok(found)
}

/// Name of the lock file in a folder that a prdit command writes.
pub const LOCK_FILE: &str = ".prdit.lock";

/// An exclusive claim on a folder for one writing command (a training run, a sampling job):
/// an OS file lock (`flock`) on `DIR/.prdit.lock`, which also holds the holder's pid, host and
/// command for the message a second writer gets. The OS drops the lock when the process ends
/// in any way (exit, crash, kill -9), so a stale lock file is simply taken over, with a notice.
/// On NFS, Linux maps `flock` to NFS byte-range locks (NFSv4, or v3 with lockd); a filesystem
/// without lock support is an error rather than an unprotected run.
#[derive(Debug)]
pub struct FolderLock {
    path: PathBuf,
    file: fs::File,
}

/// Who holds (or held) a folder lock, as written in the lock file.
fn holder_text() -> String {
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown host".into());
    let command: Vec<String> = std::env::args().collect();
    format!("pid {} on {host}: {}", std::process::id(), command.join(" "))
}

impl FolderLock {
    /// Takes the lock of `dir` (created if missing), or fails at once naming the holder.
    pub fn acquire(dir: &Path) -> Result<Self> {
        use std::io::{Read, Seek, Write};
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(LOCK_FILE);
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let mut previous = String::new();
        let _ = file.read_to_string(&mut previous);
        let previous = previous.trim().to_string();
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let holder = if previous.is_empty() { "another process".to_string() } else { previous };
                return Err(Error::Locked { dir: dir.to_path_buf(), holder });
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(Error::io(
                    &path,
                    std::io::Error::new(e.kind(), format!("cannot lock the folder: {e}")),
                ));
            }
        }
        if !previous.is_empty() {
            tracing::warn!("{}: taking over a stale lock ({previous}; that process is gone)", dir.display());
        }
        let mut write = || -> std::io::Result<()> {
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "{}", holder_text())?;
            file.sync_all()
        };
        write().map_err(|e| Error::io(&path, e))?;
        Ok(FolderLock { path, file })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        // Emptied (not removed: removing would race with a process opening it) before the OS
        // lock goes with the file handle.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_has_one_writer_and_a_released_lock_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let first = FolderLock::acquire(dir.path()).unwrap();
        let e = FolderLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(first);
        let again = FolderLock::acquire(dir.path()).unwrap();
        assert!(again.path().is_file());
    }

    #[test]
    fn a_stale_lock_file_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(LOCK_FILE), "pid 999999999 on elsewhere: prdit train-local\n").unwrap();
        let lock = FolderLock::acquire(dir.path()).unwrap();
        let text = fs::read_to_string(lock.path()).unwrap();
        assert!(text.starts_with(&format!("pid {} on ", std::process::id())), "{text}");
    }

    #[test]
    fn writes_replace_whole_files_and_leave_no_scratch() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert!(scratch_entries(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.nii.gz");
        write_atomic(&p, b"old").unwrap();
        let e = write_atomic_with(&p, |scratch| {
            assert_eq!(scratch.file_name().unwrap(), "out.nii.gz");
            fs::write(scratch, b"half").unwrap();
            Err(Error::invalid("test", "failed halfway"))
        });
        assert!(e.is_err());
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert!(scratch_entries(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn a_writer_that_creates_nothing_is_an_error_naming_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.png");
        let e = write_atomic_with(&p, |_| Ok(())).unwrap_err().to_string();
        assert!(e.contains("x.png"), "{e}");
        assert!(!p.exists());
    }
}
