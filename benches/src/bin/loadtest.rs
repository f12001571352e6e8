//! `cargo run --release -p tessera-benches --bin loadtest -- [--quick] [--scenarios …] [--systems …]`
//!
//! Runs the load benchmark (see `tessera_benches::loadtest`) and prints its tables.

use std::process::ExitCode;

use clap::Parser;
use tessera_benches::loadtest::{run, serve, Args, Config, Error};

/// Every system runs in this process on the same allocator; mimalloc, because glibc's arena locks
/// turn allocations freed on another tokio worker into futex calls.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = Config::from_args(Args::parse());
    if let Some(dir) = config.serve.clone() {
        return serve_until_ctrl_c(&config, &dir);
    }
    eprintln!(
        "loadtest: {} x {} …",
        config
            .systems
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(","),
        config
            .scenarios
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(",")
    );
    match run(&config) {
        Ok(report) => {
            println!("{}\n", report.setting);
            print!("{}", report.table());
            let ratios = report.ratios_table();
            if !ratios.is_empty() {
                println!(
                    "\nreq/s ratios (with several rounds: the median of the rounds' own ratios)"
                );
                print!("{ratios}");
            }
            if let Some(svg) = &config.svg {
                println!("\nchart: {}", svg.display());
            }
            if report.errors() > 0 {
                eprintln!("loadtest: {} requests failed", report.errors());
                return ExitCode::from(2);
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("loadtest: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `--serve`: the systems on loopback ports until Ctrl-C, for an outside load tool.
fn serve_until_ctrl_c(config: &Config, dir: &std::path::Path) -> ExitCode {
    let ready = |lines: &[String]| {
        for line in lines {
            println!("{line}");
        }
        println!("serving; Ctrl-C stops");
    };
    let ctrl_c = async {
        tokio::signal::ctrl_c()
            .await
            .map_err(|err| Error::new(format!("cannot wait for Ctrl-C: {err}")))
    };
    match serve(config, dir, ready, ctrl_c) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("loadtest: {err}");
            ExitCode::FAILURE
        }
    }
}
