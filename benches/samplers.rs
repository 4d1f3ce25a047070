//! The exact sampler benchmark (no trained model): data whose denoiser E[x₀ | x_t] is closed-form
//! (`prdit::diffusion::exact`), sampled by every sampler at N ∈ {5, 10, 20, 50, 100, 1000} steps
//! from the same noise, and the distance of each sample set to the data — the sliced
//! 1-Wasserstein distance to the exact law (its CDF), and the errors of the first two moments —
//! next to the official deterministic and hot samplers at 1000 steps, and PRDiT-FM's Euler and
//! Heun on the flow-matching path of the same data with its exact velocity. The fitted grids are fitted
//! on pilot noise of another seed (a sixteenth of the samples; up to 100 steps). Prints markdown tables
//! (`docs/samplers.md` holds them). Settings: `PRDIT_BENCH_SAMPLES` (4096 vectors; 256 volumes of
//! the per-voxel data), `PRDIT_BENCH_STEPS` (5,10,20,50,100,1000), `PRDIT_BENCH_SEED` (11: the
//! samplers' noise; the pilot's is the next seed), `PRDIT_BENCH_ROWS` (all: comma-separated
//! labels, such as `unipc (fitted),dpm3m (fitted)`; the official samplers' rows always run).

use burn::tensor::{Device, Tensor};
use prdit::bench::env_or;
use prdit::diffusion::exact::{Distance, Mixture, benchmark_mixtures, distance};
use prdit::diffusion::fit;
use prdit::diffusion::flow::{self, AsVelocity, FlowSolver};
use prdit::diffusion::sampler::{Field, Grid, Sampler, Solver, integrate, network_calls, sample};
use prdit::diffusion::{Denoiser, NOISE_STD, NoiseSource, SeededNoise};

fn to_sets(t: Tensor<5>, batch: usize) -> Vec<Vec<f64>> {
    let v = prdit::device::to_host(t, "samples").expect("host copy");
    let per = v.len() / batch;
    v.chunks(per).map(|c| c.iter().map(|&x| x as f64).collect()).collect()
}

/// The exact velocity of the flow path presented back as a denoiser of the diffusion's time.
struct FlowAsDenoiser<'a>(&'a Mixture);

impl Denoiser for FlowAsDenoiser<'_> {
    fn predict(&self, x_t: Tensor<5>, t: &[f32]) -> (Tensor<5>, Tensor<5>) {
        flow::denoise(&AsVelocity(self.0), x_t, t)
    }
}

fn run(
    model: &impl Denoiser,
    data: &Mixture,
    edge: usize,
    n: usize,
    sampler: Sampler,
    steps: usize,
) -> Distance {
    let device = Device::flex();
    let shape = [n, 1, edge, edge, edge];
    let seed: u64 = env_or("PRDIT_BENCH_SEED", 11);
    // The same starting noise for every sampler (and the hot sampler's corrector noise after it).
    let mut noise = SeededNoise::new(seed, NOISE_STD);
    let x = noise.draw(shape, &device).expect("noise");
    let out = match sampler {
        Sampler::Ode { solver, grid: Grid::Fitted, field } => {
            // The pilot: other noise (the next seed), a sixteenth of the samples.
            let pilot = SeededNoise::new(seed + 1, NOISE_STD)
                .draw([n / 16, 1, edge, edge, edge], &device)
                .expect("noise");
            let fitted = fit::fit_times(model, pilot, solver, field, steps, &mut |_, _| {}).expect("fits");
            integrate(model, x, &fitted.times, solver, field, &mut |_, _| {}).expect("sampling runs")
        }
        _ => sample(model, x, steps, sampler, &mut noise, &mut |_, _| {}).expect("sampling runs"),
    };
    distance(data, &to_sets(out.x, n))
}

/// PRDiT-FM's solver on the flow-matching path of the same data, with its exact velocity
/// (`AsVelocity` of the exact denoiser), from the same noise at unit scale (t = 0).
fn run_flow(data: &Mixture, edge: usize, n: usize, solver: FlowSolver, steps: usize) -> Distance {
    let device = Device::flex();
    let seed: u64 = env_or("PRDIT_BENCH_SEED", 11);
    let x =
        SeededNoise::new(seed, flow::FLOW_NOISE_STD).draw([n, 1, edge, edge, edge], &device).expect("noise");
    let out = flow::sample(&AsVelocity(data), x, steps, solver, &mut |_, _| {}).expect("sampling runs");
    distance(data, &to_sets(out, n))
}

fn cell(d: &Distance) -> String {
    format!("{:.4} ({:.4}, {:.4})", d.sliced_w1, d.mean_err, d.cov_err)
}

fn main() {
    let steps: Vec<usize> = env_or("PRDIT_BENCH_STEPS", "5,10,20,50,100,1000".to_string())
        .split(',')
        .map(|s| s.trim().parse().expect("steps are numbers"))
        .collect();
    let rows: [(&str, Solver, Grid); 15] = [
        ("ddim (uniform)", Solver::Ddim, Grid::Uniform),
        ("ddim (logsnr)", Solver::Ddim, Grid::LogSnr),
        ("ddim (fitted)", Solver::Ddim, Grid::Fitted),
        ("dpm2m (uniform)", Solver::DpmPp2m, Grid::Uniform),
        ("dpm2m (logsnr)", Solver::DpmPp2m, Grid::LogSnr),
        ("dpm2m (edm)", Solver::DpmPp2m, Grid::Edm),
        ("dpm2m (fitted)", Solver::DpmPp2m, Grid::Fitted),
        ("dpm3m (uniform)", Solver::DpmPp3m, Grid::Uniform),
        ("dpm3m (logsnr)", Solver::DpmPp3m, Grid::LogSnr),
        ("dpm3m (fitted)", Solver::DpmPp3m, Grid::Fitted),
        ("unipc (uniform)", Solver::UniPc, Grid::Uniform),
        ("unipc (logsnr)", Solver::UniPc, Grid::LogSnr),
        ("unipc (fitted)", Solver::UniPc, Grid::Fitted),
        ("heun (uniform)", Solver::Heun, Grid::Uniform),
        ("heun (edm)", Solver::Heun, Grid::Edm),
    ];
    let only: Option<Vec<String>> =
        std::env::var("PRDIT_BENCH_ROWS").ok().map(|r| r.split(',').map(|l| l.trim().to_string()).collect());
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|(label, ..)| only.as_ref().is_none_or(|o| o.iter().any(|l| l == label)))
        .collect();
    println!(
        "noise seed {} (pilot {})",
        env_or("PRDIT_BENCH_SEED", 11u64),
        env_or("PRDIT_BENCH_SEED", 11u64) + 1
    );
    for (name, data, edge) in benchmark_mixtures() {
        let n = if data.per_voxel {
            env_or("PRDIT_BENCH_SAMPLES", 4096) / 16
        } else {
            env_or("PRDIT_BENCH_SAMPLES", 4096)
        };
        let voxels = edge * edge * edge;
        // The floor: an exact sample set of the same size (seed 100 with the default noise seed).
        let floor = distance(&data, &data.draw(n, voxels, 89 + env_or("PRDIT_BENCH_SEED", 11u64)));
        println!(
            "\n### {name}: {n} samples; cells: sliced W1 to the exact law (mean error, covariance error)\n"
        );
        println!("exact draws (the floor of these numbers at this sample size): {}\n", cell(&floor));
        print!("| sampler |");
        for s in &steps {
            print!(" N = {s} |");
        }
        println!("\n|---|{}", "---|".repeat(steps.len()));
        for &(label, solver, grid) in &rows {
            print!("| {label} |");
            for &s in &steps {
                if grid == Grid::Fitted && s > fit::MAX_STEPS {
                    print!(" — |");
                    continue;
                }
                let calls = network_calls(Sampler::Ode { solver, grid, field: Field::Official }, s)
                    .expect("valid steps");
                let d = run(&data, &data, edge, n, Sampler::Ode { solver, grid, field: Field::Official }, s);
                if calls == s { print!(" {} |", cell(&d)) } else { print!(" {} [{calls} calls] |", cell(&d)) }
            }
            println!();
        }
        // UniPC on the flow's exact velocity through the time change (`flow::denoise`): the same
        // ODE, so the diffusion's numbers up to float32 rounding.
        let label = "unipc (logsnr) on the flow's velocity";
        if only.as_ref().is_none_or(|o| o.iter().any(|l| l == label)) {
            print!("| {label} |");
            for &s in &steps {
                let sampler =
                    Sampler::Ode { solver: Solver::UniPc, grid: Grid::LogSnr, field: Field::Official };
                print!(" {} |", cell(&run(&FlowAsDenoiser(&data), &data, edge, n, sampler, s)));
            }
            println!();
        }
        for (label, solver) in
            [("flow euler (uniform)", FlowSolver::Euler), ("flow heun (uniform)", FlowSolver::Heun)]
        {
            if only.as_ref().is_some_and(|o| !o.iter().any(|l| l == label)) {
                continue;
            }
            print!("| {label} |");
            for &s in &steps {
                let d = run_flow(&data, edge, n, solver, s);
                let calls = flow::network_calls(solver, s);
                if calls == s { print!(" {} |", cell(&d)) } else { print!(" {} [{calls} calls] |", cell(&d)) }
            }
            println!();
        }
        for (label, sampler) in [
            ("official deterministic", Sampler::Deterministic),
            ("official hot (k = 2)", Sampler::PredictorCorrector { k: 2 }),
        ] {
            let d = run(&data, &data, edge, n, sampler, 1000);
            println!("| {label}, 1000 steps | {} |{}", cell(&d), " |".repeat(steps.len() - 1));
        }
    }
}
