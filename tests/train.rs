//! Training end to end through the real binary: the loss falls, stage 2 leaves stage 1
//! untouched, a killed run resumes to exactly what an uninterrupted one computes (also when
//! the kill hits a checkpoint write), Ctrl-C saves, and bad inputs are named.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::tensor::Device;
use common::run::*;
use prdit::Prdit;
use prdit::weights::{checkpoint, export};
use serde_json::Value;

#[test]
fn both_stages_train_and_stage2_freezes_stage1() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path(), 10);
    let cfg1 = config(dir.path(), "local.toml", &data, 0, "total_steps = 40\neval_every = 20\n");
    let run1 = dir.path().join("local");
    let out = ok(&train("train-local", &cfg1, &run1, &[], &[]));
    assert!(out.contains("finished at step 40/40"), "{out}");
    let l = losses(&run1);
    assert_eq!(l.len(), 40);
    let mean = |s: &[(u64, f64)]| s.iter().map(|x| x.1).sum::<f64>() / s.len() as f64;
    assert!(mean(&l[30..]) < 0.8 * mean(&l[..10]), "loss falls: {:?}", l);
    assert_eq!(records(&run1, "eval").len(), 2);
    assert!(run1.join("previews/step-000000040.png").is_file());
    assert!(run1.join("config.toml").is_file() && run1.join("split.json").is_file());

    let cfg2 = config(dir.path(), "global.toml", &data, 1, "total_steps = 8\n");
    let run2 = dir.path().join("global");
    let out = ok(&train("train-global", &cfg2, &run2, &["--local", run1.to_str().unwrap()], &[]));
    assert!(out.contains("finished at step 8/8"), "{out}");

    // Every stage-1 weight of the stage-2 model is bit-identical to stage 1's raw weights.
    let device = Device::flex();
    let s1 = export::state_dict(
        &checkpoint::load::<Prdit>(&run1.join("checkpoints/step-000000040/model.bpk"), &device).unwrap(),
    )
    .unwrap();
    let s2 = export::state_dict(
        &checkpoint::load::<Prdit>(&run2.join("checkpoints/step-000000008/model.bpk"), &device).unwrap(),
    )
    .unwrap();
    for (k, v) in &s1 {
        assert_eq!(v, &s2[k], "{k}");
    }
    // The optimizer holds state for stage-2 parameters only.
    let reader = burn_pack::Reader::from_file(run2.join("checkpoints/step-000000008/optim.bpk")).unwrap();
    let names = reader.tensor_names();
    assert!(!names.is_empty());
    assert!(
        names.iter().all(|n| n.starts_with("fine.") || n.starts_with("t_embedder.fine_head.")),
        "{names:?}"
    );

    // A stage-1 model of another configuration is refused, naming the difference.
    let other = config(dir.path(), "other.toml", &data, 1, "total_steps = 2\n").to_str().unwrap().to_string();
    std::fs::write(
        &other,
        std::fs::read_to_string(&other).unwrap().replace("hidden_size = 48", "hidden_size = 96"),
    )
    .unwrap();
    let e = err(&train(
        "train-global",
        Path::new(&other),
        &dir.path().join("bad"),
        &["--local", run1.to_str().unwrap()],
        &[],
    ));
    assert!(e.contains("hidden_size: 48 in the file, 96 asked"), "{e}");
}

#[test]
fn killed_runs_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path(), 8);
    let cfg = config(dir.path(), "run.toml", &data, 0, "total_steps = 12\n");
    let full = dir.path().join("full");
    ok(&train("train-local", &cfg, &full, &[], &[]));
    let reference = losses(&full);
    assert_eq!(reference.len(), 12);

    // Killed after step 10 (last checkpoint: 8), then resumed.
    let killed = dir.path().join("killed");
    let o = train("train-local", &cfg, &killed, &[], &[("PRDIT_FAULT_INJECT", "abort-after-step:10")]);
    assert!(!o.status.success());
    ok(&train("train-local", &cfg, &killed, &["--resume"], &[]));
    // Killed in the middle of writing checkpoint 8 (last complete: 4), then resumed.
    let torn = dir.path().join("torn");
    let o = train("train-local", &cfg, &torn, &[], &[("PRDIT_FAULT_INJECT", "abort-in-checkpoint:8")]);
    assert!(!o.status.success());
    assert!(
        std::fs::read_dir(torn.join("checkpoints"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".partial"))
    );
    ok(&train("train-local", &cfg, &torn, &["--resume"], &[]));

    for run in [&killed, &torn] {
        let got = losses(run);
        assert_eq!(got.len(), 12, "{}: one record per step, none duplicated", run.display());
        for ((s, a), (t, b)) in got.iter().zip(&reference) {
            assert_eq!(s, t);
            assert!((a - b).abs() <= 1e-6 * b.abs(), "{}: step {s}: {a} vs {b}", run.display());
        }
        let device = Device::flex();
        let final_model = |r: &Path| {
            export::state_dict(
                &checkpoint::load::<Prdit>(&r.join("checkpoints/step-000000012/model.bpk"), &device).unwrap(),
            )
            .unwrap()
        };
        assert_eq!(final_model(run), final_model(&full), "{}: same final weights", run.display());
    }

    // Starting over into an existing run is refused; resuming with another recipe too.
    let e = err(&train("train-local", &cfg, &full, &[], &[]));
    assert!(e.contains("--resume"), "{e}");
    let changed = config(dir.path(), "changed.toml", &data, 0, "total_steps = 16\nseed = 7\n");
    let e = err(&train("train-local", &changed, &full, &["--resume"], &[]));
    assert!(e.contains("train.seed"), "{e}");
    // A longer schedule is fine: it continues from step 12.
    let longer = config(dir.path(), "longer.toml", &data, 0, "total_steps = 14\n");
    let out = ok(&train("train-local", &longer, &full, &["--resume"], &[]));
    assert!(out.contains("finished at step 14/14"), "{out}");
}

/// SIGINT (Ctrl-C) and SIGTERM (`timeout`, Slurm, Kubernetes): the step finishes, a checkpoint
/// is written, and the exit status says which signal (130, 143).
#[test]
fn signals_stop_with_a_checkpoint_and_say_so() {
    for (signal, status) in [("-INT", 130), ("-TERM", 143)] {
        let dir = tempfile::tempdir().unwrap();
        let data = data(dir.path(), 6);
        let cfg = config(dir.path(), "run.toml", &data, 0, "total_steps = 100000\nckpt_every = 100000\n");
        let run = dir.path().join("run");
        let mut child = spawn_train(&cfg, &run, dir.path());
        wait_for_steps(&mut child, &run, 3);
        Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(status),
            "{signal}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("interrupted at step"), "{stdout}");
        let ckpts: Vec<PathBuf> =
            std::fs::read_dir(run.join("checkpoints")).unwrap().flatten().map(|e| e.path()).collect();
        assert_eq!(ckpts.len(), 1, "{ckpts:?}");
        let state: Value =
            serde_json::from_str(&std::fs::read_to_string(ckpts[0].join("state.json")).unwrap()).unwrap();
        assert!(state["step"].as_u64().unwrap() >= 3);
    }
}

#[test]
fn bad_inputs_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path(), 4);
    // A typo in the configuration.
    let cfg = config(dir.path(), "typo.toml", &data, 0, "total_step = 3\n");
    let e = err(&train("train-local", &cfg, &dir.path().join("a"), &[], &[]));
    assert!(e.contains("total_step") && e.contains("typo.toml"), "{e}");
    // Stage and model disagree.
    let cfg = config(dir.path(), "deep.toml", &data, 1, "total_steps = 3\n");
    let e = err(&train("train-local", &cfg, &dir.path().join("b"), &[], &[]));
    assert!(e.contains("use train-global"), "{e}");
    // A volume of the wrong size, then a corrupt one.
    let cfg = config(dir.path(), "ok.toml", &data, 0, "total_steps = 3\n");
    let big = dir.path().join("big");
    ok(&prdit(
        &["phantom", "--out", big.to_str().unwrap(), "--num", "1", "--size", "24", "--seed", "9"],
        &[],
    ));
    std::fs::copy(big.join("phantom-00009.nii.gz"), data.join("zz-big.nii.gz")).unwrap();
    let e = err(&train("train-local", &cfg, &dir.path().join("c"), &[], &[]));
    assert!(e.contains("zz-big.nii.gz") && e.contains("[24, 24, 24]"), "{e}");
    std::fs::write(data.join("zz-big.nii.gz"), b"\x1f\x8b garbage").unwrap();
    let e = err(&train("train-local", &cfg, &dir.path().join("d"), &[], &[]));
    assert!(e.contains("zz-big.nii.gz"), "{e}");
    std::fs::remove_file(data.join("zz-big.nii.gz")).unwrap();
    // HU volumes instead of model space.
    let e = err(&train(
        "train-local",
        &cfg,
        &dir.path().join("e"),
        &["--data", data.join("hu").to_str().unwrap()],
        &[],
    ));
    assert!(e.contains("model space"), "{e}");
    // A diverging run: every loss is skipped, then the run stops with an error.
    let cfg = config(
        dir.path(),
        "diverge.toml",
        &data,
        0,
        "total_steps = 50\nlr = 1e12\nmax_bad_steps = 3\ngrad_clip = 0.0\n",
    );
    let run = dir.path().join("f");
    let e = err(&train("train-local", &cfg, &run, &[], &[]));
    assert!(e.contains("diverged"), "{e}");
    assert!(!records(&run, "skip").is_empty());
    // train-global without stage-1 weights.
    let cfg = config(dir.path(), "g.toml", &data, 1, "total_steps = 3\n");
    let e = err(&train("train-global", &cfg, &dir.path().join("g"), &[], &[]));
    assert!(e.contains("--local"), "{e}");
}

#[test]
fn micro_batches_match_the_full_batch() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path(), 6);
    let full = config(dir.path(), "full.toml", &data, 0, "total_steps = 5\n");
    let micro = config(dir.path(), "micro.toml", &data, 0, "total_steps = 5\nmicro_batch = 1\n");
    ok(&train("train-local", &full, &dir.path().join("full"), &[], &[]));
    ok(&train("train-local", &micro, &dir.path().join("micro"), &[], &[]));
    // No micro_batch set, and a device said to hold 1 MiB: the default policy splits the batch
    // into single volumes (predicted not to fit even so: a warning) and trains on.
    let small = [("PRDIT_DEVICE_MEMORY", "0.001")];
    let o = train("train-local", &full, &dir.path().join("auto"), &[], &small);
    ok(&o);
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(log.contains("micro-batches of 1") && log.contains("PRDIT_DEVICE_MEMORY=0.001"), "{log}");
    let e =
        err(&train("train-local", &full, &dir.path().join("bad"), &[], &[("PRDIT_DEVICE_MEMORY", "lots")]));
    assert!(e.contains("PRDIT_DEVICE_MEMORY") && e.contains("lots"), "{e}");
    let a = losses(&dir.path().join("full"));
    assert_eq!(a.len(), 5);
    for other in ["micro", "auto"] {
        for ((s, x), (_, y)) in a.iter().zip(&losses(&dir.path().join(other))) {
            assert!((x - y).abs() <= 1e-5 * x.abs(), "{other}, step {s}: {x} vs {y}");
        }
    }
}

/// The command line of a `train-local` run as a child process (for tests that must act while it
/// runs), in `cwd`.
fn spawn_train(cfg: &Path, out: &Path, cwd: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_prdit"))
        .args(["--device", "cpu", "--quiet", "train-local", "--config"])
        .arg(cfg)
        .arg("--out")
        .arg(out)
        .current_dir(cwd)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (at most 2 minutes) until the running `child` has logged `n` steps into `run`.
fn wait_for_steps(child: &mut std::process::Child, run: &Path, n: usize) {
    let started = std::time::Instant::now();
    while !run.join("metrics.jsonl").is_file() || losses(run).len() < n {
        assert!(started.elapsed().as_secs() < 120, "training did not start");
        assert!(child.try_wait().unwrap().is_none(), "prdit exited early");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn one_writer_per_run_folder_and_a_dead_writers_lock_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path(), 6);
    let slow = config(dir.path(), "a.toml", &data, 0, "total_steps = 100000\nckpt_every = 100000\n");
    let other = config(dir.path(), "b.toml", &data, 0, "total_steps = 2\nseed = 3\n");
    let run = dir.path().join("run");
    let mut first = spawn_train(&slow, &run, dir.path());
    wait_for_steps(&mut first, &run, 1);
    // A second run, a resume and a second config into the same folder: refused, naming the holder.
    for extra in [&[][..], &["--resume"][..]] {
        let e = err(&train("train-local", &other, &run, extra, &[]));
        assert!(
            e.contains("in use by another prdit process") && e.contains(&format!("pid {}", first.id())),
            "{e}"
        );
    }
    // The holder dies without cleaning up (kill -9): its lock goes with it.
    first.kill().unwrap();
    first.wait().unwrap();
    let o = train("train-local", &slow, &run, &["--resume", "--steps", "2"], &[]);
    let out = ok(&o);
    assert!(out.contains("finished at step 2/2"), "{out}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("taking over a stale lock"));
}

#[test]
fn runs_resume_from_any_working_directory_and_after_a_move() {
    let dir = tempfile::tempdir().unwrap();
    data(dir.path(), 6);
    let configs = dir.path().join("configs");
    std::fs::create_dir_all(&configs).unwrap();
    // Relative paths everywhere: the data relative to the config, the config and run to the cwd.
    config(&configs, "run.toml", Path::new("../data"), 0, "total_steps = 4\n");
    let o = Command::new(env!("CARGO_BIN_EXE_prdit"))
        .args([
            "--device",
            "cpu",
            "--quiet",
            "train-local",
            "--config",
            "configs/run.toml",
            "--out",
            "runs/r",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    ok(&o);
    let resume = |cwd: &Path, run: &Path, steps: &str| {
        Command::new(env!("CARGO_BIN_EXE_prdit"))
            .args(["--device", "cpu", "--quiet", "train-local", "--resume", "--steps", steps, "--out"])
            .arg(run)
            .current_dir(cwd)
            .output()
            .unwrap()
    };
    // The README's resume command, from the same folder, then from elsewhere.
    let out = ok(&resume(dir.path(), Path::new("runs/r"), "6"));
    assert!(out.contains("finished at step 6/6"), "{out}");
    let elsewhere = tempfile::tempdir().unwrap();
    let out = ok(&resume(elsewhere.path(), &dir.path().join("runs/r"), "7"));
    assert!(out.contains("finished at step 7/7"), "{out}");
    // The run folder moved: it still names the same data.
    let moved = dir.path().join("archive/r");
    std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
    std::fs::rename(dir.path().join("runs/r"), &moved).unwrap();
    let out = ok(&resume(elsewhere.path(), &moved, "8"));
    assert!(out.contains("finished at step 8/8"), "{out}");
    let split: Value =
        serde_json::from_str(&std::fs::read_to_string(moved.join("split.json")).unwrap()).unwrap();
    assert!(split["train"].as_array().unwrap().iter().all(|p| Path::new(p.as_str().unwrap()).is_absolute()));
}

#[test]
fn a_kill_while_pruning_leaves_no_torn_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path(), 6);
    let cfg = config(dir.path(), "run.toml", &data, 0, "total_steps = 12\nkeep_last = 1\n");
    let run = dir.path().join("run");
    // Checkpoint 8 is written, then pruning checkpoint 4 is killed halfway.
    let o = train("train-local", &cfg, &run, &[], &[("PRDIT_FAULT_INJECT", "abort-in-prune:4")]);
    assert!(!o.status.success());
    let names = |r: &Path| -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(r.join("checkpoints"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    };
    let left = names(&run);
    assert!(left.iter().any(|n| n.starts_with(".old-step-000000004")), "{left:?}");
    assert!(left.contains(&"step-000000008".to_string()), "{left:?}");
    let o = train("train-local", &cfg, &run, &["--resume"], &[]);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("removed .old-step-000000004"));
    assert_eq!(names(&run), ["step-000000012"]);
}

/// The weights of a run's checkpoint at `step`.
fn weights_at(run: &Path, step: u64) -> std::collections::BTreeMap<String, prdit::weights::HostTensor> {
    let file = run.join(format!("checkpoints/step-{step:09}/model.bpk"));
    export::state_dict(&checkpoint::load::<Prdit>(&file, &Device::flex()).unwrap()).unwrap()
}

/// Data-parallel training on two host workers (`--devices cpu,cpu`, batch 4 → 2 each): the
/// same arithmetic as one device taking the batch in micro-batches of 2 (bitwise the same
/// weights and losses), the same losses as one device taking it whole (to float tolerance);
/// one skip decision for all workers when one worker's loss is NaN (an injected fault on rank
/// 1 skips exactly what the same fault on the single device skips); and a run resumes on
/// another device count.
#[test]
fn data_parallel_workers_equal_one_device() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = data(d, 6);
    let cfg =
        config(d, "dp.toml", &data, 0, "total_steps = 3\nbatch_size = 4\nckpt_every = 1\nkeep_last = 5\n");
    let micro2 = config(
        d,
        "micro2.toml",
        &data,
        0,
        "total_steps = 3\nbatch_size = 4\nckpt_every = 1\nkeep_last = 5\nmicro_batch = 2\n",
    );
    let two = ["--devices", "cpu,cpu"];
    let run = |name: &str, cfg: &Path, extra: &[&str], envs: &[(&str, &str)]| {
        let out = d.join(name);
        let text = ok(&train("train-local", cfg, &out, extra, envs));
        (out, text)
    };
    let (dp, _) = run("dp", &cfg, &two, &[]);
    let (m2, _) = run("micro2", &micro2, &[], &[]);
    let (whole, _) = run("whole", &cfg, &[], &[]);
    assert_eq!(weights_at(&dp, 3), weights_at(&m2, 3), "2 workers = micro-batches of 2, bitwise");
    assert_eq!(losses(&dp), losses(&m2));
    for ((s, a), (_, b)) in losses(&dp).iter().zip(losses(&whole)) {
        assert!((a - b).abs() <= 1e-5 * b.abs(), "step {s}: loss {a} on 2 workers, {b} on one device");
    }
    let grad_norms = |r: &Path| -> Vec<f64> {
        records(r, "train").iter().map(|v| v["grad_norm"].as_f64().unwrap()).collect()
    };
    for (a, b) in grad_norms(&dp).iter().zip(grad_norms(&whole)) {
        assert!((a - b).abs() <= 1e-5 * b.abs(), "gradient norm {a} on 2 workers, {b} on one device");
    }

    // A NaN on rank 1 at step 2: every worker skips it, as one device skips its own NaN.
    let (dp_bad, text) = run("dp-bad", &cfg, &two, &[("PRDIT_FAULT_INJECT", "nan-on-rank-1:2")]);
    let (one_bad, _) = run("one-bad", &micro2, &[], &[("PRDIT_FAULT_INJECT", "nan-on-rank-0:2")]);
    assert!(text.contains("1 steps skipped"), "{text}");
    assert_eq!(records(&dp_bad, "skip").len(), 1);
    assert_eq!(weights_at(&dp_bad, 3), weights_at(&one_bad, 3));
    assert_ne!(weights_at(&dp_bad, 3), weights_at(&dp, 3), "the skipped batch changed the run");

    // Two steps on two workers, the third on one device: the uninterrupted run's weights.
    let (mixed, _) = run("mixed", &cfg, &["--devices", "cpu,cpu", "--steps", "2"], &[]);
    ok(&train("train-local", &micro2, &mixed, &["--resume"], &[]));
    assert_eq!(weights_at(&mixed, 3), weights_at(&dp, 3));

    // Stage 2 (frozen stage 1 on every worker): the same equality.
    let g = |name: &str, micro: &str| {
        config(d, name, &data, 1, &format!("total_steps = 2\nbatch_size = 4\nckpt_every = 2\n{micro}"))
    };
    let (g_dp, g_m2) = (d.join("g-dp"), d.join("g-micro2"));
    let local = ["--local", dp.to_str().unwrap()];
    ok(&train("train-global", &g("g.toml", ""), &g_dp, &[&local[..], &two[..]].concat(), &[]));
    ok(&train("train-global", &g("g2.toml", "micro_batch = 2\n"), &g_m2, &local, &[]));
    assert_eq!(weights_at(&g_dp, 2), weights_at(&g_m2, 2), "stage 2 on 2 workers = micro-batches of 2");

    // A worker that fails mid-run (rank 1, fourth batch): the run stops with the error, every
    // worker stops with it, and the last checkpoint is complete and resumes to the same weights.
    let failing = d.join("failing");
    let o = train("train-local", &cfg, &failing, &two, &[("PRDIT_FAULT_INJECT", "fail-on-rank-1:3")]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("injected failure"));
    ok(&train("train-local", &cfg, &failing, &[&two[..], &["--resume"]].concat(), &[]));
    assert_eq!(weights_at(&failing, 3), weights_at(&dp, 3));

    // A batch that does not split evenly is refused before anything runs.
    let e = err(&train("train-local", &cfg, &d.join("odd"), &["--devices", "cpu,cpu,cpu"], &[]));
    assert!(e.contains("does not split evenly over 3 devices"), "{e}");
}
