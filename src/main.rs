//! The `prdit` command line. Parsing and dispatch live in `cli.rs`; the work in the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("PRDIT_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if args.quiet { "warn" } else { "warn,prdit=info" })
    });
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
