//! The `wssgate-client` command: parses flags and calls the library
//! (`wssgate_client::chat` on top of `wssgate_client::connect`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{ArgGroup, Parser};
use wssgate_client::Expect;
use wssgate_client::chat::{self, Chat, Exit, Reconnect, Task};
use wssgate_client::connect::{ConnectOptions, default_known_hosts};
use wssgate_client::tls::{ClientTls, ServerTrust};
use wssgate_wire::check_room;

const AFTER_HELP: &str = "\
Input (a terminal, or lines piped to stdin):
  text            plain text to the server       @name text     private message
  #room text      message to a joined room       /join #room, /leave #room
  /list [#room]   who is connected               /raw TEXT, //text, /help, /quit
In a pipe the client exits at end of input, after a clean close.

Output: received messages on stdout (`from bob: hi`, `[#room] from bob: hi`,
`error: ...`, `server: TEXT`), or one JSON line each with --json;
connection status and errors on stderr.

Exit codes:
  0  ok (closed normally)
  1  usage or configuration error (bad flags or URL, unreadable certificate,
     key or known-hosts file)
  2  connection failed (TCP, TLS, or the gateway refused the handshake);
     the message names the flag to change
  3  the gateway reported an error for --send (e.g. recipient not connected)
  4  connection lost (without --reconnect)";

const TLS_HEADING: &str =
    "Certificate policy (wss:// only; default: verify against the system roots)";
const SCRIPT_HEADING: &str = "Scripting";

#[derive(Parser)]
#[command(
    name = "wssgate-client",
    version,
    about = "Chat client for wssgate: talk to named clients, rooms and the operator over ws:// or wss://",
    after_help = AFTER_HELP
)]
#[command(group(ArgGroup::new("trust").args(["ca", "accept_all", "verify_none", "pin"])))]
struct Cli {
    /// Gateway URL: ws://host:port/path or wss://host:port/path.
    url: String,

    /// Your name, sent in the Origin header as the Qt chat example does.
    #[arg(long)]
    name: String,
    /// A token for a listener with `identity = "token"` (e.g. from `wssgate
    /// token --name NAME`), sent as `Authorization: Bearer`; its name must
    /// be --name.
    #[arg(long, env = "WSSGATE_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// Trust only the CA certificate(s) in FILE (PEM) instead of the system roots.
    #[arg(long, value_name = "FILE", help_heading = TLS_HEADING)]
    ca: Option<PathBuf>,

    /// Trust on first use, like ssh: remember the server certificate's
    /// fingerprint in the known-hosts file and refuse a different one later.
    /// The chain is not validated.
    #[arg(long, help_heading = TLS_HEADING)]
    accept_all: bool,

    /// With --accept-all: accept and remember a certificate that changed
    /// since first use.
    #[arg(long, requires = "accept_all", help_heading = TLS_HEADING)]
    accept_new: bool,

    /// With --accept-all: the known-hosts file [default: $XDG_CONFIG_HOME
    /// or ~/.config, then wssgate/known_hosts].
    #[arg(long, value_name = "FILE", requires = "accept_all", help_heading = TLS_HEADING)]
    known_hosts: Option<PathBuf>,

    /// DANGEROUS: verify nothing about the server certificate; anyone on the
    /// network path can read and change the connection. For tests only.
    #[arg(long, help_heading = TLS_HEADING)]
    verify_none: bool,

    /// Accept exactly the server certificate with this SHA-256 fingerprint
    /// (no chain validation, no hostname check).
    #[arg(long, value_name = "sha256:HEX", value_parser = parse_pin, help_heading = TLS_HEADING)]
    pin: Option<String>,

    /// Client certificate (PEM) for mutual TLS; needs --key.
    #[arg(long, value_name = "FILE", requires = "key", help_heading = TLS_HEADING)]
    cert: Option<PathBuf>,

    /// Private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", requires = "cert", help_heading = TLS_HEADING)]
    key: Option<PathBuf>,

    /// Send TEXT, wait until the gateway handled it, close and exit
    /// (exit 3 if the gateway answers with an error).
    #[arg(long, value_name = "TEXT", help_heading = SCRIPT_HEADING)]
    send: Option<String>,

    /// With --send: a private message to NAME, or to a room if NAME starts
    /// with # (joined for the message); without --to, plain text to the server.
    #[arg(long, value_name = "NAME", requires = "send", help_heading = SCRIPT_HEADING)]
    to: Option<String>,

    /// Print every received frame as one JSON line: JSON objects as they
    /// arrive, other text as {"text":...}, binary as {"binary_base64":...}.
    #[arg(long, help_heading = SCRIPT_HEADING)]
    json: bool,

    /// With --json: exit after N received frames (stdin is not read).
    #[arg(long, value_name = "N", requires = "json", conflicts_with = "send",
          value_parser = clap::value_parser!(u64).range(1..), help_heading = SCRIPT_HEADING)]
    wait: Option<u64>,

    /// Reconnect after a lost connection or a failed attempt, with
    /// exponential backoff (0.5 s doubling to 30 s, jittered). Refused
    /// certificates and names are not retried.
    #[arg(long, help_heading = SCRIPT_HEADING)]
    reconnect: bool,

    /// With --reconnect: give up after N attempts in a row [default: unlimited].
    #[arg(long, value_name = "N", requires = "reconnect", help_heading = SCRIPT_HEADING)]
    max_retries: Option<u32>,
}

/// `sha256:` and 64 hex digits, lowercased.
fn parse_pin(pin: &str) -> Result<String, String> {
    let hex = pin
        .strip_prefix("sha256:")
        .ok_or("expected sha256:HEX (the form `wssgate gen-certs` and the client print)")?;
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err("expected sha256: and 64 hex digits".into());
    }
    Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// The run the flags describe.
fn chat(cli: Cli) -> Result<Chat> {
    let trust = if let Some(ca) = cli.ca {
        ServerTrust::Ca(ca)
    } else if cli.accept_all {
        ServerTrust::Fingerprint(Expect::FirstUse {
            known: None,
            accept_new: cli.accept_new,
        })
    } else if cli.verify_none {
        ServerTrust::Fingerprint(Expect::Anything)
    } else if let Some(pin) = cli.pin {
        ServerTrust::Fingerprint(Expect::Pin(pin))
    } else {
        ServerTrust::SystemRoots
    };
    if let Some(to) = &cli.to {
        if to.is_empty() {
            bail!("--to needs a name or a #room");
        }
        if to.starts_with('#') {
            check_room(to).map_err(anyhow::Error::msg)?;
        }
    }
    let task = match (cli.send, cli.wait) {
        (Some(text), _) => Task::Send { text, to: cli.to },
        (None, Some(frames)) => Task::Receive { frames },
        (None, None) => Task::Lines {
            interactive: std::io::stdin().is_terminal(),
        },
    };
    Ok(Chat {
        connect: ConnectOptions {
            url: cli.url,
            name: cli.name,
            tls: ClientTls {
                trust,
                identity: cli.cert.zip(cli.key),
            },
            known_hosts: cli.known_hosts.unwrap_or_else(default_known_hosts),
            token: cli.token,
        },
        task,
        json: cli.json,
        reconnect: cli.reconnect.then_some(Reconnect {
            max_retries: cli.max_retries,
        }),
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(Exit::Usage.code())
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logs();
    match chat(cli) {
        Ok(chat) => ExitCode::from(chat::run(chat).await.code()),
        Err(e) => {
            eprintln!("wssgate-client: {e:#}");
            ExitCode::from(Exit::Usage.code())
        }
    }
}

/// Library logs (warnings by default; RUST_LOG overrides) go to stderr.
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
