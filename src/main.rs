//! The `mpp` binary: parse the command line, start logging, run until SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use mpp::{Args, Config};

/// jemalloc in place of glibc's malloc: see Cargo.toml and BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => return usage_error(&e.to_string()),
    };
    let config = match Config::from_args(args, std::env::var("MPP_KUBE_SERVICE_NAME").ok()) {
        Ok(config) => config,
        Err(e) => return usage_error(&e.to_string()),
    };
    let logging = mpp::logging::init(config.log_level, config.log_format, config.verbose);
    let log_format = config.log_format;
    // This thread accepts connections and runs discovery, probes and selection; the
    // connections themselves are served on one thread per CPU (see `mpp::server`).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("mpp: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(async {
        let listeners = mpp::bind(&config).await?;
        mpp::run(config, listeners, shutdown_signal()).await
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A log pipeline reading JSON lines gets the reason as one of them too.
            // After the lines logged before it (they are written by the log's thread), and
            // written here, whatever the filter or a full queue would do to a log line.
            drop(logging);
            match log_format {
                mpp::logging::LogFormat::Json => {
                    let ts = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
                    let line = serde_json::json!({"ts": ts, "level": "error", "msg": "mpp cannot go on", "error": format!("{e:#}")});
                    eprintln!("{line}");
                }
                mpp::logging::LogFormat::Logfmt => eprintln!("mpp: error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// One line naming the flag and the bad value, exit status 2 (as for any usage error).
fn usage_error(message: &str) -> ExitCode {
    let line = message.lines().next().unwrap_or(message).trim();
    let line = line.strip_prefix("error: ").unwrap_or(line);
    eprintln!("mpp: error: {line}");
    ExitCode::from(2)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::warn!("cannot listen for signals; stop mpp with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
