//! The demo service: `cargo run --release -p tessera-demo -- --help`.

use tessera_demo::{run, DemoArgs};

/// glibc's allocator serialises tokio workers on its arena locks under load; mimalloc does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(err) = run(DemoArgs::from_command_line()).await {
        eprintln!("error: {err}");
        std::process::exit(1);
    }
}
