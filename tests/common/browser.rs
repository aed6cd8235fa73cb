//! Headless Chromium (Debian's `chromium`), driven from the tests over the
//! DevTools protocol: a WebSocket of JSON commands, spoken here with the
//! same tokio-tungstenite the other tests use, so no driver process and no
//! browser-automation crate sit between a test and the browser.
//!
//! Each [`Browser`] is its own process with a fresh profile and its own
//! `HOME` (where Chromium reads the user's NSS certificate database, so a
//! test can trust the development CA the way a user would). Every wait is a
//! condition evaluated in the page until it holds; the time limit only turns
//! a hang into a failure.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Longest wait for a page condition or a command.
pub const BROWSER_WAIT: Duration = Duration::from_secs(20);
/// The fixed window size (screenshots for the README are taken at it).
pub const WIDTH: u32 = 1280;
/// See [`WIDTH`].
pub const HEIGHT: u32 = 800;

type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;
type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>;

/// The Chromium binary, or `None` outside CI when it is not installed (the
/// test then says it is skipped). With `CI=true` a missing browser fails.
pub fn chromium_binary() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| {
            std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .map(move |dir| dir.join(name))
        })
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "chromium is not installed; CI needs it (.ci/run installs it: apt-get install chromium)"
        );
        eprintln!("skipped: chromium is not installed (Debian: apt-get install chromium)");
    }
    found
}

/// A running headless Chromium.
pub struct Browser {
    child: Child,
    sink: Arc<tokio::sync::Mutex<Sink>>,
    waiting: Waiting,
    next_id: Arc<AtomicU64>,
    /// Profile and HOME; removed when the browser is dropped.
    _dir: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium with an empty profile and `HOME` in a new temporary
    /// directory; `prepare_home` may put files there first (an NSS database).
    pub async fn launch(binary: &Path, prepare_home: impl FnOnce(&Path)) -> Browser {
        let dir = tempfile::tempdir().expect("temp dir for the browser");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).expect("browser HOME");
        prepare_home(&home);
        let mut child = Command::new(binary)
            .args([
                "--headless=new",
                // Tests run as root in CI, where Chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-sync",
                "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1",
                &format!("--window-size={WIDTH},{HEIGHT}"),
                &format!("--user-data-dir={}", dir.path().join("profile").display()),
                "about:blank",
            ])
            .env("HOME", &home)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = BufReader::new(stderr).lines();
        let url = tokio::time::timeout(BROWSER_WAIT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return url.trim().to_owned();
                }
            }
            panic!("chromium exited before it listened for DevTools");
        })
        .await
        .expect("chromium announces its DevTools address");
        // Keep reading its log so that a full pipe never blocks it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("DevTools WebSocket");
        let (sink, mut stream) = ws.split();
        let waiting: Waiting = Arc::default();
        let replies = waiting.clone();
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let Ok(reply) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                // Events (no id) are not used: pages are watched by polling
                // conditions in them.
                let Some(id) = reply["id"].as_u64() else {
                    continue;
                };
                let result = match reply.get("error") {
                    Some(error) => Err(error.to_string()),
                    None => Ok(reply["result"].clone()),
                };
                if let Some(tx) = replies.lock().ok().and_then(|mut w| w.remove(&id)) {
                    let _ = tx.send(result);
                }
            }
        });
        Browser {
            child,
            sink: Arc::new(tokio::sync::Mutex::new(sink)),
            waiting,
            next_id: Arc::new(AtomicU64::new(1)),
            _dir: dir,
        }
    }

    /// Sends one command (to the browser, or to a page's `session`) and
    /// awaits its result.
    async fn command(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().expect("waiting map").insert(id, tx);
        let mut request = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            request["sessionId"] = json!(session);
        }
        self.sink
            .lock()
            .await
            .send(Message::text(request.to_string()))
            .await
            .map_err(|e| format!("DevTools connection: {e}"))?;
        // Longer than a page condition may take (`wait_for`), so that a
        // condition that never held fails with its own message.
        tokio::time::timeout(BROWSER_WAIT + Duration::from_secs(10), rx)
            .await
            .map_err(|_| format!("{method}: no answer from the browser"))?
            .map_err(|_| format!("{method}: the browser went away"))?
    }

    /// Opens a new tab at `url` (the window size fixed at
    /// [`WIDTH`]x[`HEIGHT`]) and waits until it has loaded.
    pub async fn open(&self, url: &str) -> Page<'_> {
        let target = self
            .command(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await
            .expect("new tab");
        let target_id = target["targetId"].as_str().expect("targetId").to_owned();
        let attached = self
            .command(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await
            .expect("attach to the tab");
        let page = Page {
            browser: self,
            session: attached["sessionId"]
                .as_str()
                .expect("sessionId")
                .to_owned(),
        };
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        // Before any page script: record Content-Security-Policy
        // violations, so a test can assert there were none.
        page.call(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({"source": "window.__csp = []; document.addEventListener('securitypolicyviolation', e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"}),
        )
        .await;
        page.goto(url).await;
        page
    }

    /// Closes the browser and waits for it to exit.
    pub async fn close(mut self) {
        let _ = self.command(None, "Browser.close", json!({})).await;
        let _ = tokio::time::timeout(BROWSER_WAIT, self.child.wait()).await;
    }
}

/// One tab.
pub struct Page<'b> {
    browser: &'b Browser,
    session: String,
}

impl Page<'_> {
    async fn call(&self, method: &str, params: Value) -> Value {
        self.browser
            .command(Some(&self.session), method, params)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// Navigates to `url` and waits for the load to finish; panics with the
    /// browser's reason when it fails (a certificate error, say).
    pub async fn goto(&self, url: &str) {
        let nav = self.call("Page.navigate", json!({"url": url})).await;
        if let Some(error) = nav["errorText"].as_str().filter(|e| !e.is_empty()) {
            panic!("loading {url} failed: {error}");
        }
        self.wait_for(
            "document.readyState === 'complete'",
            &format!("{url} loaded"),
        )
        .await;
    }

    /// Navigates and returns the browser's error (e.g.
    /// `net::ERR_CERT_AUTHORITY_INVALID`), or `None` when the page loaded.
    pub async fn try_goto(&self, url: &str) -> Option<String> {
        let nav = self.call("Page.navigate", json!({"url": url})).await;
        nav["errorText"]
            .as_str()
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
    }

    /// Evaluates `expression` (awaiting a promise) and returns its value.
    pub async fn eval(&self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression}: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Waits until `condition` (a JavaScript expression) is truthy in the
    /// page, checking it at every animation frame, and returns its value.
    pub async fn wait_for(&self, condition: &str, what: &str) -> Value {
        let limit = BROWSER_WAIT.as_millis();
        let script = format!(
            "new Promise(resolve => {{
                const deadline = performance.now() + {limit};
                const check = () => {{
                    let value;
                    try {{ value = ({condition}); }} catch (e) {{ value = undefined; }}
                    if (value) resolve(value);
                    else if (performance.now() > deadline) resolve(null);
                    else setTimeout(check, 15);
                }};
                check();
            }})"
        );
        let value = self.eval(&script).await;
        if value.is_null() {
            let log = self.text("#log, #events").await;
            panic!("timed out waiting for {what} ({condition}); the page's log:\n{log}");
        }
        value
    }

    /// Waits for an element matching `selector` whose text contains `text`,
    /// and returns its text.
    pub async fn wait_for_text(&self, selector: &str, text: &str) -> String {
        let condition = format!(
            "[...document.querySelectorAll({sel})].map(e => e.textContent).find(t => t.includes({text}))",
            sel = json!(selector),
            text = json!(text),
        );
        let found = self
            .wait_for(&condition, &format!("{selector} with {text:?}"))
            .await;
        found.as_str().unwrap_or_default().to_owned()
    }

    /// The text of the first element matching `selector` ("" if none).
    pub async fn text(&self, selector: &str) -> String {
        let value = self
            .eval(&format!(
                "(document.querySelector({}) || {{textContent: ''}}).textContent",
                json!(selector)
            ))
            .await;
        value.as_str().unwrap_or_default().to_owned()
    }

    /// Clicks the middle of the first element matching `selector` with the
    /// mouse, as a user would (so a hidden or covered element fails).
    pub async fn click(&self, selector: &str) {
        let center = self
            .wait_for(
                &format!(
                    "(() => {{ const e = document.querySelector({sel});
                       if (!e || e.disabled || e.offsetParent === null) return null;
                       e.scrollIntoView({{block: 'center'}});
                       const r = e.getBoundingClientRect();
                       return {{x: r.x + r.width / 2, y: r.y + r.height / 2}}; }})()",
                    sel = json!(selector)
                ),
                &format!("{selector} to be clickable"),
            )
            .await;
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": center["x"], "y": center["y"], "button": "left", "clickCount": 1}),
            )
            .await;
        }
    }

    /// Types `text` into the field matching `selector`, replacing what it
    /// held, through the keyboard's text input.
    pub async fn fill(&self, selector: &str, text: &str) {
        self.wait_for(
            &format!(
                "(() => {{ const e = document.querySelector({sel});
                   if (!e || e.disabled || e.offsetParent === null) return false;
                   e.focus(); e.select(); return true; }})()",
                sel = json!(selector)
            ),
            &format!("{selector} to take input"),
        )
        .await;
        // Replaces the selection (or clears the field for an empty text).
        self.call("Input.insertText", json!({"text": text})).await;
        if text.is_empty() {
            self.press("Backspace", 8).await;
        }
    }

    /// Presses and releases a key in the focused element.
    pub async fn press(&self, key: &str, code: u32) {
        let text = if key == "Enter" { "\r" } else { "" };
        self.call(
            "Input.dispatchKeyEvent",
            json!({"type": "keyDown", "key": key, "code": key, "windowsVirtualKeyCode": code, "text": text}),
        )
        .await;
        self.call(
            "Input.dispatchKeyEvent",
            json!({"type": "keyUp", "key": key, "code": key, "windowsVirtualKeyCode": code}),
        )
        .await;
    }

    /// Types `text` into `selector` and presses Enter.
    pub async fn enter(&self, selector: &str, text: &str) {
        self.fill(selector, text).await;
        self.press("Enter", 13).await;
    }

    /// Content-Security-Policy violations the page reported.
    pub async fn csp_violations(&self) -> Vec<String> {
        serde_json::from_value(self.eval("window.__csp || []").await).unwrap_or_default()
    }

    /// Takes a PNG screenshot of the viewport into `path`.
    pub async fn screenshot(&self, path: &Path) {
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let data = shot["data"].as_str().expect("screenshot data");
        let png = data_encoding::BASE64
            .decode(data.as_bytes())
            .expect("screenshot is base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot directory");
        }
        std::fs::write(path, png).expect("screenshot written");
    }
}
