//! The `wssgate` command: parses flags and calls the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use wssgate::certgen::{GenCerts, KeyType, gen_certs};
use wssgate::config::{Config, DEFAULT_CONFIG_PATH};
use wssgate::operator::Operator;

#[derive(Parser)]
#[command(
    name = "wssgate",
    version,
    about = "A WebSocket gateway that routes messages between named clients"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Config file; default: config/gateway.toml if present, else built-in defaults.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Generate development certificates: a CA, a server certificate, client certificates.
    GenCerts {
        /// Output directory.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Extra server name or IP (beyond localhost, 127.0.0.1, ::1); repeatable.
        #[arg(long = "san", value_name = "NAME")]
        sans: Vec<String>,
        /// Also issue a client certificate for NAME (mutual TLS); repeatable.
        #[arg(long = "client", value_name = "NAME")]
        clients: Vec<String>,
        /// Overwrite existing files (a new CA invalidates everything it signed).
        #[arg(long)]
        force: bool,
        /// Key algorithm.
        #[arg(long, value_enum, default_value = "ecdsa-p256")]
        key_type: KeyTypeArg,
    },
    /// Mint a development token for NAME, signed with the config's [auth]
    /// hmac_secret (for `identity = "token"` listeners; print it, then
    /// `wssgate-client --token` or `?token=`).
    Token {
        /// The client's name (put in [auth] name_claim, default `sub`).
        #[arg(long)]
        name: String,
        /// How long the token is valid.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// Config to read [auth] from; default: config/gateway.toml.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check a config file and exit (0 when valid).
    CheckConfig {
        /// Config file; default: config/gateway.toml.
        path: Option<PathBuf>,
    },
    /// Talk to a running gateway's operator API.
    Admin {
        /// Admin API base URL; default: from the config's [admin] bind.
        #[arg(long, env = "WSSGATE_ADMIN_URL")]
        url: Option<String>,
        /// Bearer token; default: the config's [admin] token.
        #[arg(long, env = "WSSGATE_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Config to read the admin address and token from.
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: AdminAction,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum KeyTypeArg {
    EcdsaP256,
    Ed25519,
}

#[derive(Subcommand)]
enum AdminAction {
    /// List connected clients.
    Clients {
        /// Print the JSON the API returns.
        #[arg(long)]
        json: bool,
    },
    /// Send TEXT to the client(s) named NAME.
    Send {
        /// Recipient name.
        name: String,
        /// Text to send.
        text: String,
    },
    /// Send TEXT to every client.
    Broadcast {
        /// Text to send.
        text: String,
    },
    /// Disconnect the client(s) named NAME (close code 4001, `kicked: REASON`).
    Kick {
        /// Client name.
        name: String,
        /// Words for the client, sent in the close frame.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Follow operator events (messages to the server, connects, errors) as JSON lines.
    Events,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (runtime, scheduler) = match runtime() {
        Ok(built) => built,
        Err(e) => {
            eprintln!("wssgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, scheduler)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wssgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Tokio's multi-threaded scheduler, one worker per CPU this process may
/// use; its single-threaded one when that is one CPU (a container limited
/// to one, `taskset -c 0`) and `TOKIO_WORKER_THREADS` is not set (set, to
/// any count, it keeps the multi-threaded one with that many workers). With one CPU the work-stealing scheduler's worker does the same
/// work with more synchronisation around every wake-up.
/// Measured (`bench/compare cluster`, one run each, servers on one core):
/// cross-node pairs 244k -> 281k msgs/s, single-node pairs unchanged.
/// Returns the runtime and which scheduler it is, for the log.
fn runtime() -> std::io::Result<(tokio::runtime::Runtime, &'static str)> {
    let one_cpu = std::thread::available_parallelism().map_or(true, |n| n.get() == 1)
        && std::env::var_os("TOKIO_WORKER_THREADS").is_none();
    let (mut builder, scheduler) = if one_cpu {
        (
            tokio::runtime::Builder::new_current_thread(),
            "current-thread",
        )
    } else {
        (tokio::runtime::Builder::new_multi_thread(), "multi-thread")
    };
    Ok((builder.enable_all().build()?, scheduler))
}

async fn run(cli: Cli, scheduler: &'static str) -> Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            // The handlers first: from here on SIGTERM and SIGINT stop the
            // gateway gracefully and SIGHUP reloads it; none takes the
            // default action (termination) while it starts.
            let shutdown = shutdown_signal();
            let hangups = hangup_signal();
            let (config, source) = load(config.as_deref())?;
            init_logs(&config.log.level.0);
            tracing::info!(config = %source, "starting wssgate {}", env!("CARGO_PKG_VERSION"));
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            tracing::info!(scheduler = %scheduler, cpus, "async runtime");
            raise_open_file_limit(config.limits.get_ref());
            let server = wssgate::Server::bind(config).await?;
            tokio::spawn(forward_hangups(hangups, server.reload_handle()));
            server.run(shutdown).await;
            Ok(ExitCode::SUCCESS)
        }
        Command::GenCerts {
            out,
            sans,
            clients,
            force,
            key_type,
        } => {
            let opts = GenCerts {
                out,
                extra_sans: sans,
                clients,
                force,
                key_type: match key_type {
                    KeyTypeArg::EcdsaP256 => KeyType::EcdsaP256,
                    KeyTypeArg::Ed25519 => KeyType::Ed25519,
                },
            };
            let report = gen_certs(&opts)?;
            for file in &report.files {
                let what = if file.created { "wrote" } else { "kept " };
                println!("{what} {}", file.path.display());
            }
            if report.files.iter().any(|f| !f.created) {
                println!("(existing files are kept; --force regenerates everything)");
            }
            println!("CA fingerprint: {}", report.ca_fingerprint);
            println!();
            println!("Next: start the gateway, then connect a client that trusts this CA:");
            println!("  cargo run --release -- serve");
            let name = opts.clients.first().map_or("alice", String::as_str);
            let mut client = format!(
                "  cargo run --release --bin wssgate-client -- wss://localhost:8443/ --name {name} --ca {}",
                report.ca_cert.display()
            );
            if let Some(first) = opts.clients.first() {
                let (cert, key) = wssgate::certgen::files::client(first);
                client += &format!(
                    " --cert {} --key {}",
                    opts.out.join(cert).display(),
                    opts.out.join(key).display()
                );
            }
            println!("{client}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { name, ttl, config } => {
            let path = config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
            let config = Config::load(&path)?;
            let token = wssgate::token::mint(config.auth.get_ref(), &name, ttl)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { path } => {
            let path = path.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
            let config = Config::load(&path)?;
            println!(
                "{}: ok ({} listener(s))",
                path.display(),
                config.listeners.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Admin {
            url,
            token,
            config,
            action,
        } => {
            // The config is only needed for what the flags leave open.
            let (url, token) = match (url, token, config) {
                (Some(url), token, None) => (url, token),
                (url, token, config) => {
                    let (config, _) = load(config.as_deref())?;
                    let admin = config.admin.get_ref();
                    (
                        url.unwrap_or_else(|| format!("http://{}", admin.bind)),
                        token.or_else(|| admin.token.clone()),
                    )
                }
            };
            let operator = Operator::new(&url, token);
            admin_action(&operator, action).await
        }
    }
}

async fn admin_action(operator: &Operator, action: AdminAction) -> Result<ExitCode> {
    match action {
        AdminAction::Clients { json } => {
            let clients = operator.clients().await?;
            if json {
                for c in &clients {
                    println!(
                        "{}",
                        serde_json::json!({"name": c.name, "remote": c.remote, "listener": c.listener, "tls": c.tls, "connected_at": c.connected_at})
                    );
                }
            } else {
                println!("{}", wssgate::operator::clients_table(&clients));
            }
        }
        AdminAction::Send { name, text } => {
            let n = operator.send(&name, &text).await?;
            println!("delivered to {n} session(s) of {name}");
        }
        AdminAction::Broadcast { text } => {
            let n = operator.broadcast(&text).await?;
            println!("delivered to {n} session(s)");
        }
        AdminAction::Kick { name, reason } => {
            let n = operator.kick(&name, reason.as_deref()).await?;
            println!("closed {n} session(s) of {name}");
        }
        AdminAction::Events => {
            operator.events(|json| println!("{json}")).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The config from `path`, else `config/gateway.toml` if present, else built-in.
fn load(path: Option<&Path>) -> Result<(Config, String)> {
    if let Some(path) = path {
        return Ok((Config::load(path)?, path.display().to_string()));
    }
    let default = Path::new(DEFAULT_CONFIG_PATH);
    if default.exists() {
        return Ok((Config::load(default)?, DEFAULT_CONFIG_PATH.to_owned()));
    }
    Ok((Config::builtin(), "built-in defaults".to_owned()))
}

/// Every connection is a file descriptor: raise the soft open-file limit to
/// the hard one, log both, and warn when a configured `max_connections`
/// cannot fit.
fn raise_open_file_limit(limits: &wssgate::config::LimitsConfig) {
    use rlimit::Resource;
    let Ok((soft, hard)) = rlimit::getrlimit(Resource::NOFILE) else {
        tracing::warn!("cannot read the open-file limit");
        return;
    };
    let now = match rlimit::increase_nofile_limit(hard) {
        Ok(now) => now,
        Err(e) => {
            tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit");
            soft
        }
    };
    let max_connections = limits.max_connections();
    tracing::info!(
        soft_before = soft,
        soft = now,
        hard,
        max_connections,
        "open-file limit"
    );
    let reserved = wssgate::config::RESERVED_FILES as u64;
    if (max_connections as u64).saturating_add(reserved) > now {
        tracing::warn!(
            max_connections,
            open_file_limit = now,
            "max_connections is above what the open-file limit allows; raise the hard limit (LimitNOFILE= in systemd) or lower max_connections"
        );
    }
}

fn init_logs(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt().with_env_filter(filter).init();
}

/// Resolves on SIGINT or SIGTERM. On Unix the handlers are installed when
/// this is called, not when the future is first polled: `serve` polls it only
/// after binding and announcing its listeners, and a signal in between would
/// take the default action and kill the process without a graceful shutdown.
#[cfg(unix)]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let int = signal(SignalKind::interrupt());
    let term = signal(SignalKind::terminate());
    async move {
        tokio::select! {
            () = recv_signal(int, "SIGINT") => tracing::info!("SIGINT received"),
            () = recv_signal(term, "SIGTERM") => tracing::info!("SIGTERM received"),
        }
    }
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
async fn shutdown_signal() {
    if let Err(e) = tokio::signal::ctrl_c().await {
        tracing::error!(error = %e, "cannot listen for SIGINT");
        std::future::pending::<()>().await;
    }
    tracing::info!("SIGINT received");
}

/// SIGHUP's handler, installed when this is called (see [`shutdown_signal`]).
#[cfg(unix)]
fn hangup_signal() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
}

/// Turns every SIGHUP into a reload request (`systemctl reload wssgate`).
#[cfg(unix)]
async fn forward_hangups(
    signal: std::io::Result<tokio::signal::unix::Signal>,
    reload: wssgate::Reload,
) {
    match signal {
        Ok(mut signal) => {
            while signal.recv().await.is_some() {
                tracing::info!("SIGHUP received");
                reload.request();
            }
        }
        Err(e) => tracing::warn!(
            error = %e,
            "cannot listen for SIGHUP: a SIGHUP would stop the gateway; certificates reload on file change only"
        ),
    }
}

#[cfg(not(unix))]
fn hangup_signal() {}

#[cfg(not(unix))]
async fn forward_hangups(_signal: (), _reload: wssgate::Reload) {}

/// Waits for one signal; forever if its handler could not be installed.
#[cfg(unix)]
async fn recv_signal(signal: std::io::Result<tokio::signal::unix::Signal>, name: &str) {
    match signal {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for {name}");
            std::future::pending::<()>().await;
        }
    }
}
