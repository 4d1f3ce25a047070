//! The `prdit` command line. Parsing and dispatch live in `cli.rs`; the work in the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    prdit::device::tune_host_allocator();
    let args = cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("PRDIT_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if args.quiet { "warn" } else { "warn,prdit=info" })
    });
    // Colour only on a terminal, and never with NO_COLOR set (https://no-color.org).
    let colour =
        std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(colour)
        .init();
    match cli::run(args) {
        // Stopped by SIGINT/SIGTERM (after a clean stop): 128 + the signal, as shells report it.
        Ok(()) => prdit::interrupt::exit_status().map_or(ExitCode::SUCCESS, ExitCode::from),
        // Exit codes: 0 done, 1 failure while working, 2 usage or input error, 130/143
        // interrupted (README).
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(
                e.chain().find_map(|c| c.downcast_ref::<prdit::Error>()).map_or(2, |e| e.exit_code()),
            )
        }
    }
}
