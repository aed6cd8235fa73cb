//! The session logic of `wssgate-client`: connect under a certificate
//! policy, run the task (lines from stdin, one scripted `--send`, or
//! receiving `--wait N` frames), and reconnect with backoff.
//!
//! The pure parts are in [`text`] (input syntax, output format) and
//! [`backoff`], unit-tested there; [`run`] drives real connections and is
//! tested end to end through the binary (`tests/client.rs`).

pub mod backoff;
pub mod text;

use std::io::{BufRead, Write};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;
use wssgate_wire::CloseCode;

pub use backoff::Backoff;
pub use text::{Command, HELP, SYNC_ID, display, json_line, message, parse_line, send_frame};

use crate::connect::{self, ClientStream, ConnectError, ConnectInfo, ConnectOptions};
use crate::tls::ServerTrust;
use text::{clean, error_notice, is_sync_reply, request, sync_request};
use wssgate_pki::danger::Expect;

/// Lines read ahead from stdin.
const INPUT_QUEUE: usize = 64;
/// First delay before a reconnect attempt.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
/// The delay doubles up to this.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A connection that lived this long resets the backoff to its first delay.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(10);
/// Time for TCP, TLS and the WebSocket upgrade together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Time the gateway gets to answer the `list` request that confirms a send.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the gateway gets to answer our close frame.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How the process ends; [`Exit::code`] is its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done (the connection was closed normally).
    Ok,
    /// 1: a usage or configuration error (bad flags or URL, unreadable
    /// certificate or known-hosts files).
    Usage,
    /// 2: the connection failed (TCP, TLS, or a refused handshake).
    ConnectFailed,
    /// 3: the gateway answered a `--send` with an error notice.
    SendFailed,
    /// 4: the connection was lost (and not re-established).
    Lost,
}

impl Exit {
    /// The process exit status.
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Usage => 1,
            Exit::ConnectFailed => 2,
            Exit::SendFailed => 3,
            Exit::Lost => 4,
        }
    }

    /// The exit status for a connection failure: the caller's own files and
    /// flags are a usage error, everything else a connection failure.
    pub fn for_connect_error(error: &ConnectError) -> Exit {
        match error {
            ConnectError::Url { .. } | ConnectError::Files(_) | ConnectError::KnownHosts { .. } => {
                Exit::Usage
            }
            _ => Exit::ConnectFailed,
        }
    }
}

/// What a run does once connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Task {
    /// Read lines from stdin ([`parse_line`] syntax) until EOF or `/quit`;
    /// `interactive` (a terminal) adds hints.
    Lines {
        /// stdin is a terminal.
        interactive: bool,
    },
    /// Send one message, wait for the gateway to handle it, close.
    Send {
        /// The message.
        text: String,
        /// A name (private message), a `#room` (joined first), or `None`
        /// (plain text to the server).
        to: Option<String>,
    },
    /// Print `frames` received frames, then close; stdin is not read.
    Receive {
        /// How many.
        frames: u64,
    },
}

/// When and how often to reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    /// Attempts after a failure before giving up; `None`: never give up.
    pub max_retries: Option<u32>,
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct Chat {
    /// Where to connect and how to trust the server.
    pub connect: ConnectOptions,
    /// What to do once connected.
    pub task: Task,
    /// Print received frames as JSON lines instead of chat lines.
    pub json: bool,
    /// Reconnect after a lost connection or a failed attempt.
    pub reconnect: Option<Reconnect>,
}

/// A status line on stderr (errors writing to stderr are ignored: there is
/// nowhere else to report them).
fn note(text: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// An error line on stderr.
fn fail(text: impl std::fmt::Display) {
    note(format_args!("wssgate-client: {text}"));
}

/// Writes a received frame to stdout; false when stdout is gone.
fn print_frame(frame: &Message, json: bool) -> bool {
    let line = if json {
        json_line(frame)
    } else {
        display(frame)
    };
    match line {
        Some(line) => writeln!(std::io::stdout().lock(), "{line}").is_ok(),
        None => true,
    }
}

/// Lines of stdin, read on a thread of their own: a blocking read cannot be
/// cancelled, and a runtime waits for its blocking tasks at exit, while a
/// plain thread is simply ended with the process. Invalid UTF-8 is replaced.
fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(INPUT_QUEUE);
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match stdin.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf);
                        let line = line.trim_end_matches(['\n', '\r']).to_owned();
                        if tx.blocking_send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    if let Err(e) = spawned {
        fail(format_args!("cannot read stdin: {e}"));
    }
    rx
}

/// Ctrl-C, as a token every wait watches.
fn interrupt_token() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            cancel.cancel();
        }
    });
    token
}

/// How one connection ended.
enum End {
    /// The task is done (or the user quit): exit with this.
    Finished(Exit),
    /// The connection was lost; `permanent` when reconnecting would not help
    /// (replaced by a newer session, refused by policy).
    Lost { permanent: bool },
}

/// Per-run state that outlives a connection.
struct State {
    lines: Option<mpsc::Receiver<String>>,
    received: u64,
    interrupt: CancellationToken,
}

/// Connects, runs the task, reconnects as configured; returns how to exit.
pub async fn run(chat: Chat) -> Exit {
    warn_about_policy(&chat.connect);
    if let Err(e) = check_files(&chat.connect) {
        fail(&e);
        return Exit::for_connect_error(&e);
    }
    let mut state = State {
        lines: matches!(chat.task, Task::Lines { .. }).then(stdin_lines),
        received: 0,
        interrupt: interrupt_token(),
    };
    let mut backoff = Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX);
    let mut retries = 0u32;
    loop {
        let error = match connect(&chat.connect, &state.interrupt).await {
            None => return Exit::ConnectFailed,
            Some(Ok((mut ws, info))) => {
                announce(&chat, &info);
                retries = 0;
                let since = Instant::now();
                match session(&mut ws, &chat, &mut state).await {
                    End::Finished(exit) => return exit,
                    End::Lost { permanent } => {
                        if chat.reconnect.is_none()
                            || permanent
                            || matches!(chat.task, Task::Send { .. })
                        {
                            return Exit::Lost;
                        }
                        if since.elapsed() >= STABLE_CONNECTION {
                            backoff.reset();
                        }
                        None
                    }
                }
            }
            Some(Err(e)) => Some(e),
        };
        if let Some(e) = &error {
            let exit = Exit::for_connect_error(e);
            if chat.reconnect.is_none() || exit == Exit::Usage || e.is_permanent() {
                fail(e);
                return exit;
            }
        }
        let Some(Reconnect { max_retries }) = chat.reconnect else {
            return Exit::ConnectFailed;
        };
        if max_retries.is_some_and(|max| retries >= max) {
            let last = error.map_or(String::new(), |e| format!(": {e}"));
            fail(format_args!(
                "giving up after {retries} reconnect attempt(s){last}"
            ));
            return Exit::ConnectFailed;
        }
        if let Some(e) = &error {
            note(format_args!("connection failed: {e}"));
        }
        retries += 1;
        let delay = backoff.next_delay();
        let of = max_retries.map_or(String::new(), |max| format!(" of {max}"));
        note(format_args!(
            "reconnecting to {} in {:.1}s (attempt {retries}{of})",
            chat.connect.url,
            delay.as_secs_f64()
        ));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = state.interrupt.cancelled() => {
                fail("interrupted");
                return Exit::ConnectFailed;
            }
        }
    }
}

/// Warnings about the certificate policy, before connecting.
fn warn_about_policy(opts: &ConnectOptions) {
    let tls_set = opts.tls.trust != ServerTrust::SystemRoots || opts.tls.identity.is_some();
    if opts.url.starts_with("ws://") && tls_set {
        note("warning: certificate options have no effect on a ws:// URL (no TLS)");
    }
    if opts.tls.trust == ServerTrust::Fingerprint(Expect::Anything) {
        note(
            "WARNING: --verify-none: the server certificate is NOT verified; anyone on the \
             network path can read and change this connection. Use --ca, --pin or --accept-all.",
        );
    }
}

/// Reads the certificate, key and known-hosts files once before connecting,
/// so that a bad file is a usage error even when the server is unreachable.
fn check_files(opts: &ConnectOptions) -> Result<(), ConnectError> {
    if !opts.url.starts_with("wss://") {
        return Ok(());
    }
    if matches!(opts.tls.trust, ServerTrust::Ca(_)) || opts.tls.identity.is_some() {
        crate::tls::client_config(&opts.tls, Default::default())?;
    }
    if let ServerTrust::Fingerprint(Expect::FirstUse { .. }) = opts.tls.trust {
        connect::known_fingerprint(&opts.known_hosts, "")?;
    }
    Ok(())
}

/// One connection attempt with a deadline; `None` when interrupted.
async fn connect(
    opts: &ConnectOptions,
    interrupt: &CancellationToken,
) -> Option<Result<(ClientStream, ConnectInfo), ConnectError>> {
    tokio::select! {
        result = tokio::time::timeout(CONNECT_TIMEOUT, connect::connect(opts)) => Some(match result {
            Ok(result) => result,
            Err(_) => Err(ConnectError::Handshake(format!(
                "no answer from {} within {}s",
                opts.url,
                CONNECT_TIMEOUT.as_secs()
            ))),
        }),
        () = interrupt.cancelled() => {
            fail("interrupted");
            None
        }
    }
}

/// The lines printed once connected: trust on first use, like ssh, then
/// `connected`.
fn announce(chat: &Chat, info: &ConnectInfo) {
    if info.newly_trusted
        && let Some(fingerprint) = &info.server_fingerprint
    {
        let file = chat.connect.known_hosts.display();
        match &info.replaced_fingerprint {
            Some(old) => note(format_args!(
                "warning: the certificate of {} changed; accepted the new one (--accept-new)\n  was {old}\n  now {fingerprint}\n  stored in {file}",
                info.addr
            )),
            None => note(format_args!(
                "trusting the certificate of {} on first use\n  fingerprint {fingerprint}\n  stored in {file}",
                info.addr
            )),
        }
    }
    let hint = match chat.task {
        Task::Lines { interactive: true } => " (/help lists the commands)",
        _ => "",
    };
    note(format_args!(
        "connected to {} as {}{hint}",
        chat.connect.url, chat.connect.name
    ));
}

/// Runs the task on one connection.
async fn session(ws: &mut ClientStream, chat: &Chat, state: &mut State) -> End {
    match &chat.task {
        Task::Send { text, to } => send_once(ws, chat, state, text, to.as_deref()).await,
        Task::Receive { frames } => receive(ws, chat, state, *frames).await,
        Task::Lines { .. } => lines(ws, chat, state).await,
    }
}

/// What a received frame means for the loop.
enum Seen {
    /// An ordinary frame (already printed when printing was asked).
    Frame(Message),
    /// The connection ended.
    Ended(End),
}

/// Reads the next data frame, answering pings; close frames and errors end
/// the connection with a `disconnected` line.
async fn next_frame(ws: &mut ClientStream) -> Seen {
    loop {
        match ws.next().await {
            Some(Ok(frame @ (Message::Text(_) | Message::Binary(_)))) => return Seen::Frame(frame),
            Some(Ok(Message::Ping(_))) => {
                // tungstenite queued the pong; send it now.
                if let Err(e) = ws.flush().await {
                    note(format_args!("disconnected: connection lost ({e})"));
                    return Seen::Ended(End::Lost { permanent: false });
                }
            }
            Some(Ok(Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame
                    .map(|f| (CloseCode::from(u16::from(f.code)), f.reason.to_string()))
                    .unwrap_or((CloseCode::NoStatus, String::new()));
                let reason = if reason.is_empty() {
                    code.meaning().to_owned()
                } else {
                    clean(&reason)
                };
                note(format_args!(
                    "disconnected: the gateway closed the connection ({} {reason})",
                    code.code()
                ));
                // Reading on sends tungstenite's close reply and ends the stream.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
                // A newer session with our name replaced us, or policy refused
                // us: coming back would only repeat it.
                let permanent = code.is_permanent();
                return Seen::Ended(End::Lost { permanent });
            }
            Some(Err(e)) => {
                note(format_args!("disconnected: connection lost ({e})"));
                return Seen::Ended(End::Lost { permanent: false });
            }
            None => {
                note("disconnected: connection lost (closed without a close frame)");
                return Seen::Ended(End::Lost { permanent: false });
            }
        }
    }
}

/// Sends a text frame; a failure is a lost connection.
async fn send_text(ws: &mut ClientStream, text: String) -> Result<(), End> {
    ws.send(Message::Text(Utf8Bytes::from(text)))
        .await
        .map_err(|e| {
            note(format_args!("disconnected: connection lost ({e})"));
            End::Lost { permanent: false }
        })
}

/// Closes with 1000 and waits (bounded) for the gateway's close reply.
async fn close_normally(ws: &mut ClientStream) {
    let frame = CloseFrame {
        code: CloseCode::Normal.code().into(),
        reason: Utf8Bytes::from_static(""),
    };
    let closed = tokio::time::timeout(CLOSE_TIMEOUT, async {
        ws.close(Some(frame)).await?;
        // Frames the gateway sent before seeing our close are dropped here.
        // Its close reply completes the handshake: what the transport does
        // after it (a TLS peer may skip close_notify) does not matter.
        while let Some(frame) = ws.next().await {
            if let Message::Close(_) = frame? {
                break;
            }
        }
        Ok::<_, tokio_tungstenite::tungstenite::Error>(())
    })
    .await;
    match closed {
        Ok(Ok(())) => note("disconnected: 1000 normal closure"),
        Ok(Err(e)) => note(format_args!(
            "disconnected: 1000 (close not completed: {e})"
        )),
        Err(_) => note(format_args!(
            "disconnected: 1000 (no close reply within {}s)",
            CLOSE_TIMEOUT.as_secs()
        )),
    }
}

/// `--send`: join the room if needed, send, confirm with the barrier, close.
async fn send_once(
    ws: &mut ClientStream,
    chat: &Chat,
    state: &State,
    text: &str,
    to: Option<&str>,
) -> End {
    let mut frames = Vec::new();
    if let Some(room) = to.filter(|to| to.starts_with('#')) {
        // A room reaches its members only: join it for the message.
        frames.push(request("join", Some(room)));
    }
    frames.push(send_frame(&chat.connect.name, text, to));
    frames.push(sync_request());
    for frame in frames {
        if let Err(end) = send_text(ws, frame).await {
            return end;
        }
    }
    let mut errors = Vec::new();
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        let seen = tokio::select! {
            seen = next_frame(ws) => seen,
            () = tokio::time::sleep_until(deadline) => {
                fail(format_args!("the gateway did not confirm the message within {}s", REPLY_TIMEOUT.as_secs()));
                close_normally(ws).await;
                return End::Finished(Exit::Lost);
            }
            () = state.interrupt.cancelled() => {
                close_normally(ws).await;
                return End::Finished(Exit::Ok);
            }
        };
        let frame = match seen {
            Seen::Frame(frame) => frame,
            Seen::Ended(end) => return end,
        };
        if is_sync_reply(&frame) {
            break;
        }
        if let Some(error) = error_notice(&frame) {
            errors.push(error);
            if !chat.json {
                continue;
            }
        }
        print_frame(&frame, chat.json);
    }
    close_normally(ws).await;
    if errors.is_empty() {
        End::Finished(Exit::Ok)
    } else {
        for error in errors {
            fail(format_args!("the gateway refused the message: {error}"));
        }
        End::Finished(Exit::SendFailed)
    }
}

/// `--json --wait N`: print frames until N were received, then close.
async fn receive(ws: &mut ClientStream, chat: &Chat, state: &mut State, frames: u64) -> End {
    while state.received < frames {
        let seen = tokio::select! {
            seen = next_frame(ws) => seen,
            () = state.interrupt.cancelled() => break,
        };
        match seen {
            Seen::Frame(frame) => {
                state.received += 1;
                if !print_frame(&frame, chat.json) {
                    break;
                }
            }
            Seen::Ended(end) => return end,
        }
    }
    close_normally(ws).await;
    End::Finished(Exit::Ok)
}

/// Line mode (interactive or piped): each line is a command; at EOF or
/// `/quit`, confirm with the barrier (so errors for the last lines are
/// shown), then close.
async fn lines(ws: &mut ClientStream, chat: &Chat, state: &mut State) -> End {
    let mut finishing: Option<Instant> = None;
    if state.lines.is_none() {
        // Input ended before a reconnect: only the closing is left to do.
        if let Err(end) = send_text(ws, sync_request()).await {
            return end;
        }
        finishing = Some(Instant::now() + REPLY_TIMEOUT);
    }
    loop {
        let reading = finishing.is_none() && state.lines.is_some();
        tokio::select! {
            seen = next_frame(ws) => match seen {
                Seen::Frame(frame) => {
                    if finishing.is_some() && is_sync_reply(&frame) {
                        break;
                    }
                    if !print_frame(&frame, chat.json) {
                        break;
                    }
                }
                Seen::Ended(end) => return end,
            },
            line = recv_line(&mut state.lines), if reading => {
                let command = match line {
                    Some(line) => parse_line(&line, &chat.connect.name),
                    None => {
                        state.lines = None;
                        Command::Quit
                    }
                };
                match command {
                    Command::Frame(frame) => {
                        if let Err(end) = send_text(ws, frame).await {
                            return end;
                        }
                    }
                    Command::Quit => {
                        if let Err(end) = send_text(ws, sync_request()).await {
                            return end;
                        }
                        finishing = Some(Instant::now() + REPLY_TIMEOUT);
                    }
                    Command::Help => note(HELP),
                    Command::Invalid(why) => note(why),
                    Command::Nothing => {}
                }
            }
            () = sleep_until_some(finishing) => {
                fail(format_args!("the gateway did not answer within {}s", REPLY_TIMEOUT.as_secs()));
                break;
            }
            () = state.interrupt.cancelled() => break,
        }
    }
    close_normally(ws).await;
    End::Finished(Exit::Ok)
}

/// The next input line; `None` at EOF.
async fn recv_line(lines: &mut Option<mpsc::Receiver<String>>) -> Option<String> {
    match lines {
        Some(rx) => rx.recv().await,
        None => None,
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        let codes: Vec<u8> = [
            Exit::Ok,
            Exit::Usage,
            Exit::ConnectFailed,
            Exit::SendFailed,
            Exit::Lost,
        ]
        .iter()
        .map(|e| e.code())
        .collect();
        assert_eq!(codes, [0, 1, 2, 3, 4]);
        let refused = ConnectError::Refused {
            status: 409,
            body: "name already connected: a".into(),
        };
        assert_eq!(Exit::for_connect_error(&refused), Exit::ConnectFailed);
        let url = ConnectError::Url {
            url: "http://x".into(),
            reason: "scheme".into(),
        };
        assert_eq!(Exit::for_connect_error(&url), Exit::Usage);
    }
}
