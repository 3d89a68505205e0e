//! The `sluice` binary: CLI, logging, runtime and signals around [`sluice::Proxy`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use sluice::config::Config;
use sluice::Proxy;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A Postgres sidecar: transaction pooling that apps don't notice"
)]
struct Cli {
    /// Path to proxy.toml.
    #[arg(
        long,
        short,
        global = true,
        env = "SLUICE_CONFIG",
        default_value = "proxy.toml"
    )]
    config: PathBuf,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config file and print the effective configuration (secrets masked).
    Check,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: log files and journald get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Some(Command::Check) => check(&cli.config),
        None => match serve(&cli.config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("sluice: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(cfg) => {
            println!("# {} is valid; effective configuration:\n", path.display());
            print!("{}", cfg.display_masked());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let runtime = if config.worker_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.worker_threads)
            .enable_all()
            .build()
    }
    .context("building the runtime")?;
    runtime.block_on(async move {
        let proxy = Proxy::bind(config, Some(path.to_path_buf()))
            .await
            .context("binding the listener")?;
        let shutdown = proxy.shutdown();
        let reloader = proxy.reloader();
        tokio::spawn(signals(shutdown, reloader));
        proxy.serve().await;
        Ok(())
    })
}

#[cfg(unix)]
async fn signals(shutdown: sluice::shutdown::Shutdown, reloader: sluice::Reloader) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM"); shutdown.trigger(); }
            _ = int.recv() => { tracing::info!("SIGINT"); shutdown.trigger(); }
            _ = hup.recv() => { let _ = reloader.reload(); }
        }
    }
}
