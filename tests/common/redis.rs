//! A real `redis-server` (Debian package `redis-server`) per test, on a Unix
//! socket in a temporary directory: started, stopped and restarted on the
//! same socket by the test. Without the program the tests that need it say
//! they are skipped; with `CI=true` they fail (`.ci/run` installs it).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Longest wait for Redis to start or stop.
const REDIS_WAIT: Duration = Duration::from_secs(20);

/// The `redis-server` binary, or `None` (skip) outside CI when missing.
pub fn redis_binary() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|dir| dir.join("redis-server"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "redis-server is not installed; CI needs it (.ci/run installs it: apt-get install redis-server)"
        );
        eprintln!("skipped: redis-server is not installed (Debian: apt-get install redis-server)");
    }
    found
}

/// A running (or stopped) Redis owned by one test.
pub struct Redis {
    binary: PathBuf,
    dir: tempfile::TempDir,
    /// Its TCP port, when it listens on one.
    pub port: Option<u16>,
    /// Extra `redis-server` arguments (TLS, a password).
    args: Vec<String>,
    child: Option<Child>,
}

impl Redis {
    /// A Redis on a Unix socket only, or `None` when there is no redis-server.
    pub async fn start() -> Option<Redis> {
        Redis::start_with(None).await
    }

    /// A Redis on a Unix socket and on loopback TCP `port` (for tools that
    /// speak TCP, such as redis-benchmark).
    pub async fn start_with(port: Option<u16>) -> Option<Redis> {
        Redis::start_args(port, Vec::new()).await
    }

    /// A Redis with extra `redis-server` arguments.
    pub async fn start_args(port: Option<u16>, args: Vec<String>) -> Option<Redis> {
        let binary = redis_binary()?;
        let mut redis = Redis {
            binary,
            dir: tempfile::tempdir().expect("temp dir for Redis"),
            port,
            args,
            child: None,
        };
        redis.run().await;
        Some(redis)
    }

    /// A Redis that speaks TLS (only) on loopback `port` with this
    /// certificate, and plain on its Unix socket (for the test's own use).
    pub async fn start_tls(port: u16, cert: &Path, key: &Path) -> Option<Redis> {
        let args = vec![
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            cert.display().to_string(),
            "--tls-key-file".into(),
            key.display().to_string(),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        Redis::start_args(None, args).await
    }

    /// The socket path.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// The URL the gateway's `[cluster] redis` takes.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    async fn run(&mut self) {
        let socket = self.socket();
        let port = self.port.unwrap_or(0).to_string();
        let mut child = Command::new(&self.binary)
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--unixsocket",
                &socket.display().to_string(),
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--loglevel",
                "notice",
                "--dir",
                &self.dir.path().display().to_string(),
            ])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = Vec::new();
        tokio::time::timeout(REDIS_WAIT, async {
            loop {
                match lines.next_line().await {
                    Ok(Some(line))
                        if line
                            .to_ascii_lowercase()
                            .contains("ready to accept connections") =>
                    {
                        break;
                    }
                    Ok(Some(line)) => seen.push(line),
                    _ => panic!(
                        "redis-server exited before it was ready:\n{}",
                        seen.join("\n")
                    ),
                }
            }
        })
        .await
        .expect("redis-server ready in time");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child = Some(child);
    }

    /// Stops Redis (SIGKILL: connections drop as in a crash) and waits.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(REDIS_WAIT, child.wait()).await;
        }
        let _ = std::fs::remove_file(self.socket());
    }

    /// Starts it again on the same socket (and port), empty.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.run().await;
    }

    /// A connection for the test's own commands.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url()).expect("redis URL");
        client
            .get_multiplexed_async_connection()
            .await
            .expect("test connection to Redis")
    }

    /// Closes every PUB/SUB connection (`CLIENT KILL TYPE pubsub`); how many.
    pub async fn kill_pubsub_clients(&self) -> i64 {
        let mut conn = self.connection().await;
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut conn)
            .await
            .expect("CLIENT KILL")
    }

    /// Closes every connection whose last command was `command` (as
    /// `CLIENT LIST` shows it, e.g. `publish`: the nodes' publishers, not
    /// their other connections); how many.
    pub async fn kill_clients_last_running(&self, command: &str) -> usize {
        let mut conn = self.connection().await;
        let clients: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut conn)
            .await
            .expect("CLIENT LIST");
        let field = |line: &str, key: &str| {
            line.split(' ')
                .find_map(|f| f.strip_prefix(key))
                .map(str::to_owned)
        };
        let mut killed = 0;
        for line in clients.lines() {
            if field(line, "cmd=").as_deref() != Some(command) {
                continue;
            }
            let id = field(line, "id=").expect("CLIENT LIST has ids");
            let n: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(&id)
                .query_async(&mut conn)
                .await
                .expect("CLIENT KILL ID");
            killed += usize::try_from(n).unwrap_or(0);
        }
        killed
    }

    /// Subscribers of `channel` (`PUBSUB NUMSUB`).
    pub async fn subscribers(&self, channel: &str) -> i64 {
        let mut conn = self.connection().await;
        let (_, n): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut conn)
            .await
            .expect("PUBSUB NUMSUB");
        n
    }

    /// The temporary directory (for other files of the test).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
