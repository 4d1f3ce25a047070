//! The README's walk-through, run line by line in a fresh folder holding the repository's
//! `configs/`: every command must succeed and leave what the README says. Every line runs as
//! written but one: `eval-fid`'s `--weights resnet_50.pth` (MedicalNet's published weights, not
//! in the repository and not fetchable here) becomes `--test-formula-weights 10`, a ResNet-10
//! with deterministic formula weights (the eval tests' stand-in; its scores mean nothing), so
//! that line checks the pipeline, not the metric. The README says the same under the block.

mod common;

use std::path::Path;
use std::process::Command;

/// The marker line above the walk-through's `sh` block in README.md.
const MARKER: &str =
    "<!-- walkthrough: tests/readme.rs runs these lines, with the one substitution it names -->";

/// The walk-through's command lines (comments after ` #` removed).
fn walkthrough() -> Vec<String> {
    let readme = std::fs::read_to_string(common::repo().join("README.md")).unwrap();
    let at = readme.find(MARKER).expect("README.md has the walk-through marker");
    let block = &readme[at..];
    let open = block.find("```sh\n").expect("a sh block follows the marker") + "```sh\n".len();
    let close = block[open..].find("```").expect("the block ends");
    block[open..open + close]
        .lines()
        .map(|l| l.split(" #").next().unwrap_or_default().trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn readme_walkthrough_runs_as_written() {
    let lines = walkthrough();
    assert!(lines.len() >= 8, "{lines:?}");
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&common::repo().join("configs"), &dir.path().join("configs"));
    for line in &lines {
        let mut words: Vec<String> = line.split_whitespace().map(String::from).collect();
        assert_eq!(words[0], "prdit", "every walk-through line runs prdit: {line}");
        if let Some(i) = words.iter().position(|w| w == "--weights") {
            assert_eq!(words[i + 1], "resnet_50.pth", "{line}");
            words[i] = "--test-formula-weights".into();
            words[i + 1] = "10".into();
        }
        let o = Command::new(env!("CARGO_BIN_EXE_prdit"))
            .args(&words[1..])
            .current_dir(dir.path())
            .output()
            .expect("prdit runs");
        assert!(
            o.status.success(),
            "README line failed ({:?}): {line}\n{}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // What the README says the runs and jobs leave.
    let d = dir.path();
    for run in ["runs/local", "runs/global"] {
        for f in ["config.toml", "split.json", "metrics.jsonl", "train.log", "progress.png", "data.json"] {
            assert!(d.join(run).join(f).is_file(), "{run}/{f}");
        }
    }
    let fid: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("fid.json")).unwrap()).unwrap();
    assert!(fid["fid"].as_f64().is_some_and(f64::is_finite), "{fid}");
    assert!(
        d.join("volumes/xs/sample-00000.nii.gz").is_file()
            && d.join("view/previews/sample-00000.png").is_file()
    );
}
