//! The client of the operator API, behind `wssgate admin`: list clients,
//! send to one, broadcast, follow events. Uses reqwest (plain HTTP only: the
//! admin listener is meant for loopback or a private network).

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::StatusCode;

pub use crate::admin::ClientRow;
use crate::admin::{Closed, Delivered};

/// The rows as `wssgate admin clients` prints them: columns aligned by
/// display width (a CJK character takes two columns), a header, and the
/// count; a NODE column when the rows come from a cluster. Control
/// characters in a name are shown escaped so that a name cannot move the
/// terminal's cursor.
pub fn clients_table(rows: &[ClientRow]) -> String {
    use std::fmt::Write as _;
    /// Columns of NAME, REMOTE, LISTENER, TLS and NODE (a wider value
    /// pushes the rest of its line right by one space).
    const WIDTHS: [usize; 5] = [24, 22, 10, 6, 16];
    fn line(out: &mut String, cells: &[&str], last: &str) {
        for (cell, width) in cells.iter().zip(WIDTHS) {
            let cell = visible(cell);
            let used = unicode_width::UnicodeWidthStr::width(&*cell);
            out.push_str(&cell);
            out.push_str(&" ".repeat(width.saturating_sub(used).max(1)));
        }
        out.push_str(last);
        out.push('\n');
    }
    let clustered = rows.iter().any(|r| r.node.is_some());
    let mut header = vec!["NAME", "REMOTE", "LISTENER", "TLS"];
    if clustered {
        header.push("NODE");
    }
    let mut out = String::new();
    line(&mut out, &header, "CONNECTED");
    for r in rows {
        let tls = if r.tls { "true" } else { "false" };
        let mut cells = vec![r.name.as_str(), &r.remote, &r.listener, tls];
        if clustered {
            cells.push(r.node.as_deref().unwrap_or("-"));
        }
        line(&mut out, &cells, &r.connected_at);
    }
    let _ = write!(out, "{} connected", rows.len());
    out
}

/// `s` with its control characters escaped (`\n` becomes `\\n`).
fn visible(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().collect()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// Why an operator request failed.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The gateway could not be reached or answered garbage.
    #[error("cannot reach the admin API at {url}: {source}")]
    Http {
        /// The URL.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The token is missing or wrong.
    #[error("the admin API refused the request (401): pass --token or set WSSGATE_ADMIN_TOKEN")]
    Unauthorized,
    /// `send` to a name that is not connected.
    #[error("recipient not connected: {0}")]
    NotConnected(String),
    /// Any other unexpected answer.
    #[error("the admin API answered {status}: {body}")]
    Status {
        /// HTTP status.
        status: StatusCode,
        /// Body text.
        body: String,
    },
    /// The answer was not the JSON expected.
    #[error("unexpected answer from the admin API: {0}")]
    Decode(#[from] serde_json::Error),
}

/// A connection to one gateway's admin API.
pub struct Operator {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Operator {
    /// Talks to the admin API at `base` (e.g. `http://127.0.0.1:9090`).
    pub fn new(base: &str, token: Option<String>) -> Operator {
        Operator {
            base: base.trim_end_matches('/').to_owned(),
            token,
            // The admin API is local or on a private network: never send
            // the bearer token through an HTTP(S)_PROXY from the environment.
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .unwrap_or_else(|_| reqwest::Client::new()),
        }
    }

    /// `GET /clients`.
    pub async fn clients(&self) -> Result<Vec<ClientRow>, OperatorError> {
        let body = self.request(reqwest::Method::GET, "/clients", None).await?;
        Ok(serde_json::from_str(&body)?)
    }

    /// `POST /send/{name}`: how many sessions got it.
    pub async fn send(&self, name: &str, text: &str) -> Result<usize, OperatorError> {
        let path = format!("/send/{}", utf8_percent_encode(name, NON_ALPHANUMERIC));
        match self
            .request(reqwest::Method::POST, &path, Some(text.to_owned()))
            .await
        {
            Err(OperatorError::Status { status, .. }) if status == StatusCode::NOT_FOUND => {
                Err(OperatorError::NotConnected(name.to_owned()))
            }
            other => Ok(serde_json::from_str::<Delivered>(&other?)?.reached()),
        }
    }

    /// `DELETE /clients/{name}?reason=`: how many sessions were told to
    /// close (4001, `kicked: REASON`).
    pub async fn kick(&self, name: &str, reason: Option<&str>) -> Result<usize, OperatorError> {
        let mut path = format!("/clients/{}", utf8_percent_encode(name, NON_ALPHANUMERIC));
        if let Some(reason) = reason {
            path.push_str("?reason=");
            path.extend(utf8_percent_encode(reason, NON_ALPHANUMERIC));
        }
        match self.request(reqwest::Method::DELETE, &path, None).await {
            Err(OperatorError::Status { status, .. }) if status == StatusCode::NOT_FOUND => {
                Err(OperatorError::NotConnected(name.to_owned()))
            }
            other => Ok(serde_json::from_str::<Closed>(&other?)?.closed),
        }
    }

    /// `POST /broadcast`: how many sessions got it.
    pub async fn broadcast(&self, text: &str) -> Result<usize, OperatorError> {
        let body = self
            .request(reqwest::Method::POST, "/broadcast", Some(text.to_owned()))
            .await?;
        Ok(serde_json::from_str::<Delivered>(&body)?.reached())
    }

    /// `GET /events`: calls `on_event` with each event's JSON until the stream ends.
    pub async fn events(&self, mut on_event: impl FnMut(&str)) -> Result<(), OperatorError> {
        let mut response = self
            .send_request(reqwest::Method::GET, "/events", None)
            .await?;
        let url = self.url("/events");
        let mut pending = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|source| OperatorError::Http {
                url: url.clone(),
                source,
            })?
        {
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                if let Some(data) = line.trim_end().strip_prefix("data:") {
                    on_event(data.trim_start());
                }
            }
        }
        Ok(())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send_request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> Result<reqwest::Response, OperatorError> {
        let url = self.url(path);
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request
            .send()
            .await
            .map_err(|source| OperatorError::Http { url, source })?;
        match response.status() {
            s if s.is_success() => Ok(response),
            StatusCode::UNAUTHORIZED => Err(OperatorError::Unauthorized),
            status => Err(OperatorError::Status {
                status,
                body: response.text().await.unwrap_or_default().trim().to_owned(),
            }),
        }
    }

    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> Result<String, OperatorError> {
        let url = self.url(path);
        self.send_request(method, path, body)
            .await?
            .text()
            .await
            .map_err(|source| OperatorError::Http { url, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str) -> ClientRow {
        ClientRow {
            name: name.into(),
            remote: "127.0.0.1:40000".into(),
            listener: "ws".into(),
            tls: false,
            connected_at: "2026-11-26T12:00:00Z".into(),
            provisional: false,
            node: None,
        }
    }

    #[test]
    fn a_cluster_adds_the_node_column() {
        let mut b = row("bob");
        b.node = Some("n2".into());
        let table = clients_table(&[row("alice"), b]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].contains("NODE"), "{table}");
        assert!(lines[1].contains(" - "), "{table}");
        assert!(lines[2].contains(" n2 "), "{table}");
        assert!(!clients_table(&[row("alice")]).contains("NODE"));
    }

    #[test]
    fn columns_line_up_by_display_width() {
        let table = clients_table(&[row("alice"), row("C1我是客户端"), row("bad\nname")]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        // REMOTE starts at display column 24 on every line, whatever the name.
        for line in &lines[1..4] {
            let before = &line[..line.find("127.0.0.1").expect("remote shown")];
            assert_eq!(unicode_width::UnicodeWidthStr::width(before), 24, "{table}");
        }
        assert!(
            lines[3].starts_with("bad\\nname "),
            "control characters escaped: {table}"
        );
        assert_eq!(lines[4], "3 connected");
    }
}
