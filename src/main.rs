//! The `overlayd` binary: parses flags, sets up logging, and runs the daemon or a
//! client command.

use std::process::ExitCode;

use overlayd::config::{Command, LogFormat, ParseError};
use tracing_subscriber::EnvFilter;

fn init_logging(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn main() -> ExitCode {
    let cli = match overlayd::config::parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(ParseError::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("overlayd: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("overlayd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::Status { json, run_dir }) => runtime.block_on(async {
            match overlayd::status::request(&run_dir).await {
                Ok(report) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&report).unwrap_or_default()
                        );
                    } else {
                        print!("{}", overlayd::status::render(&report));
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("overlayd status: {e}");
                    ExitCode::FAILURE
                }
            }
        }),
        None => {
            init_logging(&cli.daemon.log_level, cli.daemon.log_format);
            match runtime.block_on(overlayd::daemon::run(cli.daemon, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("overlayd: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
