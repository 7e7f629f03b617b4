//! The `overlayd` binary: parses flags, sets up logging, and runs the daemon or a
//! client command.

use std::process::ExitCode;

use overlayd::config::{Command, DiagnoseTarget, LogFormat, ParseError, StatusPart};
use tracing_subscriber::EnvFilter;

fn init_logging(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours for a terminal only: journald, files and pipes get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A log line that can't be written (stderr piped to a reader that went away)
        // is lost, not reported with `eprintln!`, which would panic on the same pipe.
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Installs the SIGTERM/SIGINT handlers now (not when first polled), so a signal that
/// arrives while the daemon is still setting up still means "shut down cleanly".
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Writes a command's output to standard output and returns `code`. A reader that went
/// away early (`overlayd status | head -1`) has what it wanted, so a broken pipe ends the
/// command quietly with `code`; any other write error is reported and fails it.
/// Writes a message and a newline to standard error, ignoring a failure: there is
/// nowhere left to report it (`eprintln!` would panic on a closed pipe instead).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

fn write_out(text: &str, code: ExitCode) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => code,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => code,
        Err(e) => {
            say!("overlayd: cannot write to standard output: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `overlayd uninstall`: removes, says what it removed, and with `--wait` stays until
/// told to stop (a DaemonSet's pod must not exit).
async fn uninstall(daemon: &overlayd::config::DaemonArgs, wait: bool) -> ExitCode {
    let stop = match shutdown_signal() {
        Ok(s) => s,
        Err(e) => {
            say!("overlayd: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    match overlayd::daemon::uninstall::uninstall(daemon).await {
        Ok(removed) => {
            for r in &removed {
                tracing::info!("removed {r}");
            }
            tracing::info!(
                removed = removed.len(),
                "overlayd is uninstalled from this node (left: empty mount-point dirs, the plugin's IPAM dir and log file, and its iptables masquerade rule on a host without nft)"
            );
            if wait {
                tracing::info!("waiting to be stopped (--wait)");
                stop.await;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}");
            say!("overlayd uninstall: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What a client command prints on standard output, and its exit code.
struct Printed {
    text: String,
    code: ExitCode,
}

impl Printed {
    fn ok(text: String) -> Printed {
        Printed {
            text,
            code: ExitCode::SUCCESS,
        }
    }
}

/// Why a client command failed, as `overlayd COMMAND: MESSAGE` says it.
struct Failed {
    command: &'static str,
    message: String,
}

fn failed(command: &'static str) -> impl FnOnce(String) -> Failed {
    move |message| Failed { command, message }
}

fn pretty(value: &impl serde::Serialize) -> String {
    format!(
        "{}\n",
        serde_json::to_string_pretty(value).unwrap_or_default()
    )
}

/// `overlayd diagnose`: a pod address, or each address of the pod NAMESPACE/NAME on
/// this node. Fails when something stands in the way of any of them.
async fn diagnose(
    target: DiagnoseTarget,
    json: bool,
    run_dir: &std::path::Path,
) -> Result<Printed, String> {
    let (label, ips) = match target {
        DiagnoseTarget::Ip(ip) => (None, vec![ip]),
        DiagnoseTarget::Pod { namespace, name } => {
            let report = overlayd::ops::admin::pods(run_dir)
                .await
                .map_err(|e| format!("{namespace}/{name}: {e}"))?;
            let found = report.find(&namespace, &name);
            // A pod restarted in a new sandbox may still have its old one listed.
            let running: Vec<_> = found
                .iter()
                .filter(|p| p.state == overlayd::pods::PodState::Running)
                .collect();
            let chosen = if running.is_empty() {
                found.iter().collect()
            } else {
                running
            };
            let ips: Vec<std::net::IpAddr> = chosen.iter().flat_map(|p| p.ips.clone()).collect();
            if ips.is_empty() {
                return Err(format!(
                    "no pod {namespace}/{name} on this node ({} pod(s) here; `overlayd pods` lists them). \
                     A node knows only its own pods: run this on the pod's node, or give the pod's address.",
                    report.pods.len()
                ));
            }
            (Some(format!("{namespace}/{name}")), ips)
        }
    };
    let mut code = ExitCode::SUCCESS;
    let mut text = String::new();
    let mut all = Vec::new();
    for ip in ips {
        let d = overlayd::ops::admin::diagnose(run_dir, ip)
            .await
            .map_err(|e| e.to_string())?;
        if !d.reachable {
            code = ExitCode::FAILURE;
        }
        if !json {
            if let Some(label) = &label {
                text.push_str(&format!("pod {label}, address {ip}:\n"));
            }
            text.push_str(&overlayd::ops::diagnose::render(&d));
        }
        all.push(d);
    }
    if json {
        text = match (label.is_some(), all.as_slice()) {
            (false, [one]) => pretty(one),
            _ => pretty(&all),
        };
    }
    Ok(Printed { text, code })
}

/// Runs a command other than the daemon: a client of the daemon, one that needs none,
/// or `uninstall`.
async fn run_cli(command: Command) -> Result<Printed, Failed> {
    use overlayd::ops::admin;
    match command {
        Command::Genkey => Ok(Printed::ok(format!(
            "{}\n",
            overlayd::control::auth::generate_key()
        ))),
        Command::Pubkey { state_dir } => {
            use overlayd::dataplane::wg::key;
            let pair = match key::load(&state_dir) {
                Ok(Some(pair)) => Ok(pair),
                Ok(None) => key::load_or_create(&state_dir),
                Err(e) => Err(e),
            }
            .map_err(|e| failed("pubkey")(e.to_string()))?;
            Ok(Printed::ok(format!(
                "{}\n",
                key::encode(&pair.public_bytes())
            )))
        }
        Command::RotateKey { run_dir } => admin::rotate_key(&run_dir)
            .await
            .map(|key| Printed::ok(format!("{key}\n")))
            .map_err(|e| failed("rotate-key")(e.to_string())),
        Command::Status {
            part,
            json,
            run_dir,
        } => {
            let report = admin::status(&run_dir)
                .await
                .map_err(|e| failed("status")(e.to_string()))?;
            let text = match (part, json) {
                (None, true) => pretty(&report),
                (Some(StatusPart::Peers), true) => pretty(&report.peers),
                (Some(StatusPart::Leases), true) => pretty(&serde_json::json!({
                    "subnet": report.node.subnet,
                    "control": report.control,
                })),
                (None, false) => overlayd::ops::status::render(&report),
                (Some(StatusPart::Peers), false) => overlayd::ops::status::render_peers(&report),
                (Some(StatusPart::Leases), false) => overlayd::ops::status::render_leases(&report),
            };
            Ok(Printed::ok(format!("{}\n", text.trim_end())))
        }
        Command::Diagnose {
            target,
            json,
            run_dir,
        } => diagnose(target, json, &run_dir)
            .await
            .map_err(failed("diagnose")),
        Command::Pods { json, run_dir } => {
            let report = admin::pods(&run_dir)
                .await
                .map_err(|e| failed("pods")(e.to_string()))?;
            Ok(Printed::ok(if json {
                pretty(&report)
            } else {
                overlayd::pods::render(&report)
            }))
        }
        Command::Leave { run_dir } => admin::leave(&run_dir)
            .await
            .map(|message| Printed::ok(format!("{message}\n")))
            .map_err(|e| failed("leave")(e.to_string())),
        Command::Rmpeer { name, run_dir } => {
            say!(
                "overlayd rmpeer: reclaiming {name}'s subnet now. If {name} is alive behind a network \
                 partition, two nodes use the same subnet until it heals; use this only for nodes that are gone."
            );
            let subnets = admin::rmpeer(&run_dir, &name)
                .await
                .map_err(|e| failed("rmpeer")(e.to_string()))?;
            Ok(Printed::ok(if subnets.is_empty() {
                format!("{name} held no subnet this node could reclaim\n")
            } else {
                let list: Vec<String> = subnets.iter().map(ToString::to_string).collect();
                format!("reclaimed {}\n", list.join(", "))
            }))
        }
        Command::Uninstall { wait, daemon } => {
            init_logging(&daemon.log_level, daemon.log_format);
            Ok(Printed {
                text: String::new(),
                code: uninstall(&daemon, wait).await,
            })
        }
    }
}

fn main() -> ExitCode {
    let cli = match overlayd::config::parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(ParseError::Clap(e)) => e.exit(),
        Err(e) => {
            say!("overlayd: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.command.is_none() {
        init_logging(&cli.daemon.log_level, cli.daemon.log_format);
        // Bad flags are reported first, whatever the privileges.
        if let Err(e) = cli.daemon.validate() {
            tracing::error!("{e}");
            say!("overlayd: {e}");
            return ExitCode::FAILURE;
        }
        // Before the runtime starts its threads: capabilities are per thread.
        let d = &cli.daemon;
        let metrics_port = match d.metrics_addr {
            overlayd::config::MetricsAddr::On(a) => a.port(),
            overlayd::config::MetricsAddr::Off => 0,
        };
        let low =
            overlayd::daemon::privilege::needs_low_port(&[d.port, d.gossip_port, metrics_port]);
        match overlayd::daemon::privilege::drop_capabilities(low) {
            Ok(kept) => tracing::info!(
                keep = ?kept.caps,
                bounding_reduced = kept.bounding_reduced,
                "dropped all other capabilities"
            ),
            Err(e) => {
                tracing::error!("{e}");
                say!("overlayd: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say!("overlayd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(command) => match runtime.block_on(run_cli(command)) {
            Ok(printed) => write_out(&printed.text, printed.code),
            Err(f) => {
                say!("overlayd {}: {}", f.command, f.message);
                ExitCode::FAILURE
            }
        },
        None => {
            let shutdown = {
                let _rt = runtime.enter();
                shutdown_signal()
            };
            let shutdown = match shutdown {
                Ok(s) => s,
                Err(e) => {
                    say!("overlayd: cannot install signal handlers: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(overlayd::daemon::run(cli.daemon, shutdown)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    say!("overlayd: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
