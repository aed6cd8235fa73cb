//! The shipped deployment files with a real nginx (Debian's `nginx` and
//! `libnginx-mod-stream`): the nginx configs under `config/` are read, their
//! well-known values (port 443, certificate paths, upstream addresses)
//! replaced by loopback ports and temp files, and nginx runs them in a temp
//! prefix; the gateway runs `config/gateway-behind-nginx.toml` the same way.
//! If a shipped file changes so that a value is no longer found, the test
//! fails and says which.
//!
//! - TLS termination: clients speak wss to nginx, which proxies /chat to the
//!   ws listener; private messages route, and `/clients` shows the address
//!   nginx saw, not nginx's connection, and not what a client forged.
//! - The chat page through that nginx, in headless Chromium that trusts the
//!   dev CA in its NSS database (`certutil`, Debian's `libnss3-tools`): two
//!   pages talk privately, and `allowed_origins` refuses another origin.
//! - TLS passthrough: nginx `stream` with `proxy_protocol on` in front of the
//!   wss listener; the handshake completes end to end with the dev CA and
//!   `/clients` shows the client's own socket address from the PROXY header.
//!
//! Without nginx (or Chromium, or certutil) these tests print that they are
//! skipped; with `CI=true` they fail instead (`.ci/run` installs them).

#[path = "common/browser.rs"]
mod browser;
mod common;
#[path = "common/proxied.rs"]
mod proxied;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use browser::{Browser, Page, chromium_binary};
use common::*;
use proxied::*;
use serde_json::json;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStderr, Command};
use tokio_tungstenite::tungstenite;
use wssgate_client::connect::{ClientStream, ConnectError, ConnectOptions, connect};
use wssgate_client::tls::{ClientTls, ServerTrust};

/// Where the shipped files are.
fn shipped(name: &str) -> (PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (path, text)
}

/// `text` with each `from` replaced by its `to`; every `from` must occur
/// exactly once, so that a changed shipped file fails here, not silently.
fn substitute(file: &Path, text: &str, pairs: &[(&str, String)]) -> String {
    let mut out = text.to_owned();
    for (from, to) in pairs {
        let count = out.matches(from).count();
        assert_eq!(
            count,
            1,
            "{} should contain `{from}` exactly once (found {count}): tests/nginx.rs derives its \
             test config from that file; update both together",
            file.display()
        );
        out = out.replace(from, to);
    }
    out
}

/// The client's own address: not nginx's 127.0.0.1.
const CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

// ------------------------------------------------------------------ nginx

/// The nginx binary, or `None` (skip) when it is not installed; panics in CI.
fn nginx_binary() -> Option<PathBuf> {
    let found = std::iter::once(PathBuf::from("/usr/sbin/nginx"))
        .chain(
            std::env::var_os("PATH")
                .iter()
                .flat_map(std::env::split_paths)
                .map(|dir| dir.join("nginx")),
        )
        .find(|p| p.is_file());
    if found.is_none() {
        skip("nginx is not installed (Debian: apt-get install nginx libnginx-mod-stream)");
    }
    found
}

/// Skips a test outside CI; fails it in CI.
fn skip(why: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{why}; CI needs it (.ci/run installs it)"
    );
    eprintln!("skipping: {why}");
}

/// The `load_module` line the stream module needs: empty when it is built
/// in, `None` (skip) when it is missing. Debian builds it as a dynamic
/// module, packaged as libnginx-mod-stream.
fn stream_module(nginx: &Path) -> Option<String> {
    let out = std::process::Command::new(nginx)
        .arg("-V")
        .output()
        .expect("nginx -V runs");
    let version = String::from_utf8_lossy(&out.stderr).into_owned();
    let flags: Vec<&str> = version.split_whitespace().collect();
    if flags.contains(&"--with-stream") {
        return Some(String::new());
    }
    if flags.contains(&"--with-stream=dynamic") {
        let dir = flags
            .iter()
            .find_map(|f| f.strip_prefix("--modules-path="))
            .unwrap_or("/usr/lib/nginx/modules");
        let module = Path::new(dir).join("ngx_stream_module.so");
        if module.is_file() {
            return Some(format!("load_module {};\n", module.display()));
        }
        skip(&format!(
            "{} is missing (Debian: apt-get install libnginx-mod-stream)",
            module.display()
        ));
        return None;
    }
    skip("this nginx has no stream module");
    None
}

/// A running nginx in single-process mode; killed on drop.
struct Nginx {
    /// Where it listens.
    addr: SocketAddr,
    _child: Child,
}

/// The notice nginx logs last at start-up (`ngx_os_status`), after its
/// listening sockets are open: from then on connections are accepted.
const READY: &str = "getrlimit(RLIMIT_NOFILE)";

/// nginx could not listen on the port it was given: another process took
/// it after it was chosen.
struct PortTaken;

impl Nginx {
    /// Starts nginx in `dir` with the config `conf(port)` on a free
    /// loopback port, and waits for its start-up notice. A port taken
    /// between choosing and binding it is retried with another.
    async fn start(binary: &Path, dir: &Path, conf: impl Fn(u16) -> String) -> Nginx {
        for _attempt in 0..5 {
            let port = free_port();
            match Nginx::start_on(binary, dir, port, &conf(port)).await {
                Ok(nginx) => return nginx,
                Err(PortTaken) => eprintln!("nginx: port {port} was taken; trying another"),
            }
        }
        panic!("nginx found no free port in 5 attempts");
    }

    /// Starts nginx in `dir` with the config `conf`, which listens on
    /// `port` (chosen by the caller, e.g. because another config names it),
    /// and waits for its start-up notice; `PortTaken` when that port is in
    /// use, so that the caller can choose another.
    async fn start_on(
        binary: &Path,
        dir: &Path,
        port: u16,
        conf: &str,
    ) -> Result<Nginx, PortTaken> {
        let file = dir.join("nginx.conf");
        std::fs::write(&file, conf).unwrap();
        let mut child = Command::new(binary)
            .arg("-e")
            .arg("stderr")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&file)
            .args(["-g", "daemon off; master_process off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("nginx starts");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let mut seen = Vec::new();
        let ready = loop {
            let line = tokio::time::timeout(WAIT, stderr.next_line())
                .await
                .unwrap_or_else(|_| panic!("nginx start-up notice in time; so far: {seen:#?}"))
                .expect("read nginx stderr");
            match line {
                Some(line) if line.contains(READY) => break true,
                Some(line) => seen.push(line),
                None => break false,
            }
        };
        if ready {
            tokio::spawn(echo(stderr));
            return Ok(Nginx {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                _child: child,
            });
        }
        let status = child.wait().await.expect("nginx exit status");
        if seen.iter().any(|l| l.contains("Address already in use")) {
            return Err(PortTaken);
        }
        panic!(
            "nginx exited ({status}) before it was ready:\n{}",
            seen.join("\n")
        );
    }
}

/// Shows nginx's later log lines with the test's output.
async fn echo(mut lines: tokio::io::Lines<BufReader<ChildStderr>>) {
    while let Ok(Some(line)) = lines.next_line().await {
        eprintln!("nginx: {line}");
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Main-context lines of every generated nginx config: everything under
/// the temp prefix, the log on stderr (where `Nginx::start` reads it).
fn main_context(dir: &Path, load_module: &str) -> String {
    let d = dir.display();
    format!(
        "{load_module}pid {d}/nginx.pid;\nerror_log stderr notice;\nevents {{ worker_connections 256; }}\n\n"
    )
}

/// The whole nginx config of `config/nginx-tls-termination.conf` (its text
/// `site`, read from `file`) on `127.0.0.1:port`, with the dev certificate
/// of `dir/certs` and the gateway's ws listener at `ws_addr` upstream.
fn termination_conf(file: &Path, site: &str, dir: &Path, port: u16, ws_addr: SocketAddr) -> String {
    let site = substitute(
        file,
        site,
        &[
            ("listen 443 ssl;", format!("listen 127.0.0.1:{port} ssl;")),
            ("listen [::]:443 ssl;", String::new()),
            (
                "access_log /var/log/nginx/access.log wssgate_no_query;",
                "access_log off;".to_owned(),
            ),
            (
                "/etc/letsencrypt/live/chat.example.com/fullchain.pem",
                dir.join("certs/server.pem").display().to_string(),
            ),
            (
                "/etc/letsencrypt/live/chat.example.com/privkey.pem",
                dir.join("certs/server-key.pem").display().to_string(),
            ),
            ("server 127.0.0.1:8080;", format!("server {ws_addr};")),
        ],
    );
    let t = dir.display();
    format!(
        "{}http {{\n    access_log off;\n    client_body_temp_path {t}/client_body;\n    \
         proxy_temp_path {t}/proxy;\n    fastcgi_temp_path {t}/fastcgi;\n    \
         uwsgi_temp_path {t}/uwsgi;\n    scgi_temp_path {t}/scgi;\n\n{site}\n}}\n",
        main_context(dir, "")
    )
}

// ---------------------------------------------------------------- gateway

/// The shipped `allowed_origins` of the ws listener: commented out, since
/// that listener also serves clients that name themselves in `Origin`.
const SHIPPED_ORIGINS: &str = "# allowed_origins = [\"https://chat.example.com\"]";

/// The gateway of `config/gateway-behind-nginx.toml`, on port 0, with its
/// `dev_certs` made in `dir/certs` (the dev CA is `dir/certs/ca.pem`); with
/// `origin`, the ws listener's `allowed_origins` is switched on with that
/// origin (a listener only browsers use, as the file's comment says).
async fn gateway(dir: &Path, origin: Option<&str>) -> Gateway {
    let (file, text) = shipped("gateway-behind-nginx.toml");
    let certs = dir.join("certs");
    let origins = match origin {
        Some(origin) => format!("allowed_origins = [{origin:?}]"),
        None => SHIPPED_ORIGINS.to_owned(),
    };
    let text = substitute(
        &file,
        &text,
        &[
            (SHIPPED_ORIGINS, origins),
            ("bind = \"127.0.0.1:8080\"", "bind = \"127.0.0.1:0\"".into()),
            ("bind = \"127.0.0.1:8443\"", "bind = \"127.0.0.1:0\"".into()),
            ("bind = \"127.0.0.1:9090\"", "bind = \"127.0.0.1:0\"".into()),
            (
                "cert = \"certs/server.pem\"",
                format!("cert = {:?}", certs.join("server.pem")),
            ),
            (
                "key = \"certs/server-key.pem\"",
                format!("key = {:?}", certs.join("server-key.pem")),
            ),
        ],
    );
    let gw = start_config(&text).await;
    assert!(certs.join("ca.pem").is_file(), "dev_certs made a CA");
    gw
}

fn listener(gw: &Gateway, name: &str) -> SocketAddr {
    gw.listeners
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("listener {name:?} in the shipped config"))
        .1
}

/// A client through the library (name in `Origin`, as the Qt example and
/// `wssgate-client` do), trusting only the dev CA.
async fn library_client(url: String, name: &str, ca: &Path, dir: &Path) -> ClientStream {
    library_connect(url, name, ca, dir)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// [`library_client`]'s attempt, refusals included.
async fn library_connect(
    url: String,
    name: &str,
    ca: &Path,
    dir: &Path,
) -> Result<ClientStream, ConnectError> {
    let opts = ConnectOptions {
        url,
        name: name.to_owned(),
        tls: ClientTls {
            trust: ServerTrust::Ca(ca.to_owned()),
            identity: None,
        },
        known_hosts: dir.join("known_hosts"),
        token: None,
    };
    let (ws, _) = tokio::time::timeout(WAIT, connect(&opts))
        .await
        .expect("connect in time")?;
    Ok(ws)
}

/// A WebSocket upgrade of `url` over TLS to nginx at `addr` (trusting only
/// the dev CA `ca`), from 127.0.0.1, with extra request headers.
async fn wss_via(
    addr: SocketAddr,
    url: &str,
    ca: &Path,
    headers: &[(&str, &str)],
) -> Result<ClientStream, tungstenite::Error> {
    let tcp = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect to nginx in time")
        .expect("connect to nginx");
    upgrade(tls_over(tcp, ca).await, url, headers).await
}

// ------------------------------------------------------------------ tests

#[tokio::test]
async fn nginx_terminates_tls_and_the_gateway_sees_the_client_address() {
    let Some(binary) = nginx_binary() else { return };
    let dir = TempDir::new().unwrap();
    let gw = gateway(dir.path(), None).await;
    let ws_addr = listener(&gw, "ws");
    let ca = dir.path().join("certs").join("ca.pem");

    let (file, site) = shipped("nginx-tls-termination.conf");
    let nginx = Nginx::start(&binary, dir.path(), |port| {
        termination_conf(&file, &site, dir.path(), port, ws_addr)
    })
    .await;
    let base = format!("wss://localhost:{}", nginx.addr.port());

    // Two clients named by ?name= that send no Origin, wss to nginx, ws
    // from nginx to the gateway.
    let mut alice = wss_via(nginx.addr, &format!("{base}/chat?name=alice"), &ca, &[])
        .await
        .expect("alice through nginx");
    let mut bob = wss_via(nginx.addr, &format!("{base}/chat/room?name=bob"), &ca, &[])
        .await
        .expect("bob through nginx");
    deliver_to(&mut alice, "alice", &mut bob, "bob").await;
    deliver_to(&mut bob, "bob", &mut alice, "alice").await;

    // A client from 127.0.0.2 that forges every forwarding header.
    let tcp = tcp_from(CLIENT_IP, nginx.addr).await;
    let tls = tls_over(tcp, &ca).await;
    let mut carol = upgrade(
        tls,
        &format!("{base}/chat?name=carol"),
        &[
            ("X-Forwarded-For", "203.0.113.66"),
            ("X-Real-IP", "203.0.113.67"),
            ("Forwarded", "for=203.0.113.68"),
        ],
    )
    .await
    .expect("carol through nginx");
    assert_eq!(list_names(&mut carol).await, ["alice", "bob", "carol"]);

    // The gateway saw what nginx saw: 127.0.0.1 for alice and bob
    // and 127.0.0.2 for carol (X-Forwarded-For carries no port, hence 0),
    // not nginx's own connection (127.0.0.1 with a real port), and none of
    // carol's forged addresses.
    let seen = clients(&gw).await;
    let row = |remote: &str| (remote.to_owned(), "ws".to_owned(), false);
    assert_eq!(seen["alice"], row("127.0.0.1:0"), "{seen:?}");
    assert_eq!(seen["bob"], row("127.0.0.1:0"), "{seen:?}");
    assert_eq!(seen["carol"], row("127.0.0.2:0"), "{seen:?}");
    deliver_to(&mut carol, "carol", &mut alice, "alice").await;

    // Without allowed_origins a name in Origin still names a client here.
    let dave = library_client(format!("{base}/chat"), "dave", &ca, dir.path()).await;
    drop(dave);

    // Plain HTTPS through nginx gets the gateway's own answers: the chat
    // page's redirect for /chat (the page itself: the browser test below),
    // 426 elsewhere under /chat.
    let https =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let tls = tls_over(TcpStream::connect(nginx.addr).await.unwrap(), &ca).await;
    assert_eq!(http_over(tls, &https("/chat")).await, (308, String::new()));
    let tls = tls_over(TcpStream::connect(nginx.addr).await.unwrap(), &ca).await;
    assert_eq!(
        http_over(tls, &https("/chat/room")).await,
        (
            426,
            "this is a WebSocket endpoint: connect with a WebSocket client\n".to_owned()
        )
    );
    let tls = tls_over(TcpStream::connect(nginx.addr).await.unwrap(), &ca).await;
    assert_eq!(
        http_over(tls, &https("/healthz")).await,
        (200, "ok\n".to_owned())
    );
}

#[tokio::test]
async fn nginx_passes_tls_through_with_a_proxy_protocol_header() {
    let Some(binary) = nginx_binary() else { return };
    let Some(load_module) = stream_module(&binary) else {
        return;
    };
    let dir = TempDir::new().unwrap();
    let gw = gateway(dir.path(), None).await;
    let wss_addr = listener(&gw, "wss");
    let ca = dir.path().join("certs").join("ca.pem");

    let (file, stream) = shipped("nginx-stream-passthrough.conf");
    let d = dir.path().to_owned();
    let nginx = Nginx::start(&binary, &d, |port| {
        let stream = substitute(
            &file,
            &stream,
            &[
                ("listen 443;", format!("listen 127.0.0.1:{port};")),
                ("listen [::]:443;", String::new()),
                ("server 127.0.0.1:8443;", format!("server {wss_addr};")),
            ],
        );
        format!("{}{stream}", main_context(&d, &load_module))
    })
    .await;
    let url = format!("wss://localhost:{}/", nginx.addr.port());

    // dave: from 127.0.0.2, TLS end to end with the gateway (nginx sees only
    // bytes), with a forged X-Forwarded-For that nobody may believe.
    let tcp = tcp_from(CLIENT_IP, nginx.addr).await;
    let dave_addr = tcp.local_addr().unwrap();
    let tls = tls_over(tcp, &ca).await;
    let mut dave = upgrade(
        tls,
        &format!("{url}?name=dave"),
        &[("X-Forwarded-For", "203.0.113.99")],
    )
    .await
    .expect("dave through nginx stream");
    // erin: the library's client with the dev CA, from 127.0.0.1.
    let mut erin = library_client(url.clone(), "erin", &ca, dir.path()).await;
    deliver_to(&mut dave, "dave", &mut erin, "erin").await;
    deliver_to(&mut erin, "erin", &mut dave, "dave").await;

    // The PROXY header carried dave's socket address, port included; nginx's
    // own connection to the gateway comes from 127.0.0.1 with another port.
    let seen = clients(&gw).await;
    assert_eq!(
        seen["dave"],
        (dave_addr.to_string(), "wss".to_owned(), true),
        "{seen:?}"
    );
    let (erin_remote, erin_listener, erin_tls) = &seen["erin"];
    let erin_remote: SocketAddr = erin_remote.parse().unwrap();
    assert_eq!(erin_remote.ip(), IpAddr::from([127, 0, 0, 1]));
    assert_ne!(erin_remote.port(), 0, "a PROXY header has the port");
    assert_eq!((erin_listener.as_str(), *erin_tls), ("wss", true));

    // Straight to the gateway, bypassing nginx: no PROXY header, no session.
    let refused = tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        wssgate_client::tls::client_config(
            &ClientTls {
                trust: ServerTrust::Ca(ca.clone()),
                identity: None,
            },
            Default::default(),
        )
        .unwrap(),
    ))
    .connect(
        "localhost".try_into().unwrap(),
        TcpStream::connect(wss_addr).await.unwrap(),
    );
    assert!(
        tokio::time::timeout(WAIT, refused)
            .await
            .expect("refused in time")
            .is_err()
    );
    assert_eq!(clients(&gw).await.len(), 2);
}

// ------------------------------------------------------------ chat page

/// The NSS tool that puts a CA into a user's certificate database, or
/// `None` (skip) when it is missing; panics in CI.
fn certutil() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|dir| dir.join("certutil"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        skip("certutil is not installed (Debian: apt-get install libnss3-tools)");
    }
    found
}

/// Trusts `ca` in the NSS database under `home`, as a user does with
/// `certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n NAME -i ca.pem`.
fn trust_in_nss(certutil: &Path, home: &Path, ca: &Path) {
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).expect("nssdb directory");
    let db = format!("sql:{}", db.display());
    let ca = ca.to_str().expect("utf-8 path");
    for args in [
        &["-N", "-d", &db, "--empty-password"][..],
        &[
            "-A",
            "-d",
            &db,
            "-t",
            "C,,",
            "-n",
            "wssgate development CA",
            "-i",
            ca,
        ],
    ] {
        let status = std::process::Command::new(certutil)
            .args(args)
            .status()
            .expect("certutil runs");
        assert!(status.success(), "certutil {args:?}");
    }
}

/// Types `name` into the chat page, connects, and waits for the page to
/// say it is connected.
async fn join_chat(page: &Page<'_>, name: &str) {
    page.fill("#name", name).await;
    page.click("#connect").await;
    page.wait_for(
        "document.querySelector('#status').dataset.state === 'open'",
        &format!("{name} connected"),
    )
    .await;
    let status = page.text("#status").await;
    assert!(status.contains(&format!("connected as {name}")), "{status}");
}

/// The selector of private messages from `from` in a chat page's log.
fn private_from(from: &str) -> String {
    format!("#log li[data-kind=private][data-from={}]", json!(from))
}

#[tokio::test]
async fn the_chat_page_through_nginx_talks_privately_and_only_its_origin_is_allowed() {
    let Some(binary) = nginx_binary() else { return };
    let Some(chromium) = chromium_binary() else {
        return;
    };
    let Some(certutil) = certutil() else { return };
    let dir = TempDir::new().unwrap();
    let (file, site) = shipped("nginx-tls-termination.conf");

    // The page's origin is nginx's, port included, and the gateway must
    // list it before it starts: nginx's port is chosen first (and chosen
    // again, with a new gateway, if something takes it meanwhile).
    let mut started = None;
    for _attempt in 0..5 {
        let port = free_port();
        let origin = format!("https://localhost:{port}");
        let gw = gateway(dir.path(), Some(&origin)).await;
        let conf = termination_conf(&file, &site, dir.path(), port, listener(&gw, "ws"));
        match Nginx::start_on(&binary, dir.path(), port, &conf).await {
            Ok(nginx) => {
                started = Some((gw, nginx, origin));
                break;
            }
            Err(PortTaken) => {
                eprintln!("nginx: port {port} was taken; trying another");
                gw.stop().await;
            }
        }
    }
    let (gw, nginx, origin) = started.expect("nginx found a free port in 5 attempts");
    let ca = dir.path().join("certs").join("ca.pem");

    // The browser trusts the dev CA as a user would: in its NSS database.
    let browser = Browser::launch(&chromium, |home| trust_in_nss(&certutil, home, &ca)).await;
    let page_url = format!("{origin}/chat/");
    let ann = browser.open(&format!("{origin}/chat")).await;
    assert_eq!(
        ann.eval("location.href").await,
        page_url.as_str(),
        "redirected"
    );
    assert_eq!(ann.eval("location.origin").await, origin.as_str());
    let ben = browser.open(&format!("{origin}/chat")).await;
    assert_eq!(
        ben.eval("location.href").await,
        page_url.as_str(),
        "redirected"
    );
    join_chat(&ann, "ann").await;
    join_chat(&ben, "ben").await;

    ann.enter("#input", "@ben hello ben, via nginx").await;
    ben.wait_for_text(&private_from("ann"), "hello ben, via nginx")
        .await;
    ben.enter("#input", "@ann hello ann").await;
    ann.wait_for_text(&private_from("ben"), "hello ann").await;

    // Both pages came through nginx: the address it saw (127.0.0.1, from
    // X-Forwarded-For, hence port 0) on the ws listener, nginx's plain side.
    let seen = clients(&gw).await;
    let row = ("127.0.0.1:0".to_owned(), "ws".to_owned(), false);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen["ann"], row, "{seen:?}");
    assert_eq!(seen["ben"], row, "{seen:?}");

    // allowed_origins is in force: another site's page is refused, through
    // nginx (which passes Origin on), and the page's own origin admitted.
    let url = |name: &str| format!("wss://localhost:{}/chat/?name={name}", nginx.addr.port());
    let evil = wss_via(
        nginx.addr,
        &url("mallory"),
        &ca,
        &[("Origin", "https://evil.example")],
    )
    .await;
    assert_eq!(
        refusal(evil),
        (403, "origin not allowed: https://evil.example\n".to_owned())
    );
    let mut cleo = wss_via(
        nginx.addr,
        &url("cleo"),
        &ca,
        &[("Origin", origin.as_str())],
    )
    .await
    .expect("the page's own origin is allowed");
    assert_eq!(list_names(&mut cleo).await, ["ann", "ben", "cleo"]);

    for (page, name) in [(&ann, "ann"), (&ben, "ben")] {
        let violations = page.csp_violations().await;
        assert!(
            violations.is_empty(),
            "{name}: CSP violations {violations:?}"
        );
    }
    browser.close().await;
    gw.stop().await;
}

// ----------------------------------------------------------- systemd unit

#[test]
fn the_systemd_unit_runs_unprivileged_with_the_shipped_paths() {
    let (file, unit) = shipped("wssgate.service");
    let values = |key: &str| -> Vec<&str> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .collect()
    };
    let one = |key: &str| -> &str {
        match values(key)[..] {
            [v] => v,
            ref other => panic!("{}: {key}= {other:?}", file.display()),
        }
    };
    assert_eq!(
        one("ExecStart"),
        "/usr/local/bin/wssgate serve --config /etc/wssgate/gateway.toml"
    );
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one("User"), "wssgate");
    assert_eq!(one("AmbientCapabilities"), "CAP_NET_BIND_SERVICE");
    assert_eq!(one("CapabilityBoundingSet"), "CAP_NET_BIND_SERVICE");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("ProtectSystem"), "strict");
    // Relative paths in the config (certs/...) land in the state directory,
    // the one place ProtectSystem=strict leaves writable.
    assert_eq!(one("StateDirectory"), "wssgate");
    assert_eq!(one("WorkingDirectory"), "/var/lib/wssgate");

    // systemd's own check, where systemd is installed.
    let Ok(version) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("systemd-analyze not installed: only the keys were checked");
        return;
    };
    assert!(version.status.success());
    let dir = TempDir::new().unwrap();
    let copy = dir.path().join("wssgate.service");
    let bin = env!("CARGO_BIN_EXE_wssgate");
    std::fs::write(&copy, unit.replace("/usr/local/bin/wssgate", bin)).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze verify runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("wssgate.service"),
        "systemd-analyze verify: {stderr}"
    );
}
