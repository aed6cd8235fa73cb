//! The security modes through real TLS handshakes: every server mode and
//! client_auth against every client policy, each with its exact outcome;
//! identity from certificates; ws and wss clients of one gateway talking;
//! certificate reload; start-up errors; key formats and chains.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::json;
use tempfile::TempDir;
use wssgate::certgen::{Ca, KeyType, Leaf, Pem};
use wssgate_client::Expect;
use wssgate_client::connect::{ClientStream, ConnectError, ConnectOptions, connect};
use wssgate_client::tls::{ClientTls, ServerTrust};
use wssgate_pki::fingerprint;

/// A throwaway PKI in a temp dir: our CA, an unrelated CA, and files.
struct Pki {
    dir: TempDir,
    ca: Ca,
    other: Ca,
}

impl Pki {
    fn new() -> Pki {
        Pki {
            dir: TempDir::new().unwrap(),
            ca: Ca::generate("test CA", KeyType::EcdsaP256).unwrap(),
            other: Ca::generate("unrelated CA", KeyType::EcdsaP256).unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn write_pair(&self, stem: &str, pem: &Pem) -> (PathBuf, PathBuf) {
        (
            self.write(&format!("{stem}.pem"), &pem.cert),
            self.write(&format!("{stem}-key.pem"), &pem.key),
        )
    }

    fn ca_file(&self) -> PathBuf {
        self.write("ca.pem", &self.ca.pem.cert)
    }

    fn other_ca_file(&self) -> PathBuf {
        self.write("other-ca.pem", &self.other.pem.cert)
    }

    /// A server certificate for localhost signed by our CA.
    fn server(&self) -> (PathBuf, PathBuf, Pem) {
        let pem = self
            .ca
            .issue(&Leaf::server(&["localhost".into(), "127.0.0.1".into()]))
            .unwrap();
        let (cert, key) = self.write_pair("server", &pem);
        (cert, key, pem)
    }

    /// A client certificate named `name`, signed by `ca`.
    fn client(&self, name: &str, ca: &Ca, stem: &str) -> (PathBuf, PathBuf) {
        self.write_pair(stem, &ca.issue(&Leaf::client(name)).unwrap())
    }
}

/// TOML of one TLS listener (first, so `gw.ws` is its address) plus a ws one.
fn tls_config(mode: &str, cert: &Path, key: &Path, extra: &str) -> String {
    format!(
        "[[listener]]\nname = \"wss\"\nbind = \"127.0.0.1:0\"\nmode = \"{mode}\"\ncert = {cert:?}\nkey = {key:?}\n{extra}\n\n\
         [[listener]]\nname = \"ws\"\nbind = \"127.0.0.1:0\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n[tls]\nreload_interval = \"50ms\"\n"
    )
}

fn options(
    gw: &Gateway,
    name: &str,
    trust: ServerTrust,
    identity: Option<(PathBuf, PathBuf)>,
    known: &Path,
) -> ConnectOptions {
    ConnectOptions {
        url: format!("wss://localhost:{}/", gw.ws.port()),
        name: name.to_owned(),
        tls: ClientTls { trust, identity },
        known_hosts: known.to_owned(),
        token: None,
    }
}

async fn try_wss(opts: &ConnectOptions) -> Result<ClientStream, ConnectError> {
    let (ws, _) = tokio::time::timeout(WAIT, connect(opts))
        .await
        .expect("connect finishes in time")?;
    Ok(ws)
}

/// What a client should see.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Connected,
    /// The error text contains this.
    Fails(&'static str),
}

#[derive(Debug, Clone, Copy)]
enum ClientCert {
    None,
    Trusted,
    Untrusted,
}

#[derive(Debug, Clone, Copy)]
enum Policy {
    Ca,
    WrongCa,
    SystemRoots,
    FirstUse,
    VerifyNone,
    Pin,
    WrongPin,
}

/// One client attempt: its trust policy, its certificate, the outcome.
type Case = (Policy, ClientCert, Outcome);

#[tokio::test]
async fn matrix_of_server_modes_and_client_policies() {
    use ClientCert as C;
    use Outcome::*;
    use Policy as P;
    let servers: [(&str, &str, &[Case]); 6] = [
        (
            "secure",
            "",
            &[
                (P::Ca, C::None, Connected),
                (P::Ca, C::Trusted, Connected),
                (P::WrongCa, C::None, Fails("unknown issuer: pass --ca FILE")),
                (P::SystemRoots, C::None, Fails("unknown issuer")),
                (P::FirstUse, C::None, Connected),
                (P::VerifyNone, C::None, Connected),
                (P::Pin, C::None, Connected),
                (P::WrongPin, C::None, Fails("pin mismatch")),
            ],
        ),
        (
            "secure",
            "client_auth = \"optional\"\nclient_ca = \"CA\"",
            &[
                (P::Ca, C::None, Connected),
                (P::Ca, C::Trusted, Connected),
                (
                    P::Ca,
                    C::Untrusted,
                    Fails("does not trust our client certificate"),
                ),
                (P::WrongCa, C::Trusted, Fails("unknown issuer")),
            ],
        ),
        (
            "secure",
            "client_auth = \"required\"\nclient_ca = \"CA\"",
            &[
                (
                    P::Ca,
                    C::None,
                    Fails("requires a client certificate: pass --cert FILE --key FILE"),
                ),
                (P::Ca, C::Trusted, Connected),
                (
                    P::Ca,
                    C::Untrusted,
                    Fails("does not trust our client certificate"),
                ),
                (P::Pin, C::Trusted, Connected),
            ],
        ),
        (
            "accept-all",
            "client_auth = \"optional\"",
            &[
                (P::Ca, C::None, Connected),
                (P::Ca, C::Trusted, Connected),
                (P::Ca, C::Untrusted, Connected),
                (P::FirstUse, C::Untrusted, Connected),
            ],
        ),
        (
            "accept-all",
            "client_auth = \"required\"",
            &[
                (P::Ca, C::None, Fails("requires a client certificate")),
                (P::Ca, C::Untrusted, Connected),
            ],
        ),
        (
            "verify-none",
            "",
            &[
                (P::Ca, C::None, Connected),
                (P::Ca, C::Trusted, Connected),
                (P::WrongCa, C::None, Fails("unknown issuer")),
                (P::VerifyNone, C::None, Connected),
            ],
        ),
    ];
    let pki = Pki::new();
    let (cert, key, server_pem) = pki.server();
    let ca = pki.ca_file();
    let other_ca = pki.other_ca_file();
    let trusted = pki.client("alice-cert", &pki.ca, "client-trusted");
    let untrusted = pki.client("mallory-cert", &pki.other, "client-untrusted");
    let pin = fingerprint(&server_pem.der);
    let mut failures = Failures::new();
    for (mode, raw_extra, rows) in servers {
        let server = format!("{mode} [{}]", raw_extra.replace('\n', ", "));
        let extra = raw_extra.replace("\"CA\"", &format!("{ca:?}"));
        let started = failures
            .catch(
                format_args!("{server} (gateway start; its {} cases not run)", rows.len()),
                start_config(&tls_config(mode, &cert, &key, &extra)),
            )
            .await;
        let Some(gw) = started else { continue };
        for (i, &(policy, client_cert, expected)) in rows.iter().enumerate() {
            let known = pki.path(&format!("known-{mode}-{i}"));
            let trust = match policy {
                P::Ca => ServerTrust::Ca(ca.clone()),
                P::WrongCa => ServerTrust::Ca(other_ca.clone()),
                P::SystemRoots => ServerTrust::SystemRoots,
                P::FirstUse => ServerTrust::Fingerprint(Expect::FirstUse {
                    known: None,
                    accept_new: false,
                }),
                P::VerifyNone => ServerTrust::Fingerprint(Expect::Anything),
                P::Pin => ServerTrust::Fingerprint(Expect::Pin(pin.clone())),
                P::WrongPin => {
                    ServerTrust::Fingerprint(Expect::Pin(format!("sha256:{}", "0".repeat(64))))
                }
            };
            let identity = match client_cert {
                C::None => None,
                C::Trusted => Some(trusted.clone()),
                C::Untrusted => Some(untrusted.clone()),
            };
            let name = format!("c{i}");
            let case = format!("{server} x {policy:?} x {client_cert:?}");
            let opts = options(&gw, &name, trust, identity, &known);
            let Some(result) = failures.catch(&case, try_wss(&opts)).await else {
                continue;
            };
            match (expected, result) {
                (Connected, Ok(mut ws)) => {
                    if let Some(names) = failures.catch(&case, list(&mut ws)).await {
                        failures.check(
                            &case,
                            names.contains(&name),
                            format_args!("connected, but {name:?} is not in the list {names:?}"),
                        );
                    }
                }
                (Fails(needle), Err(e)) => {
                    let text = e.to_string();
                    failures.check(
                        &case,
                        text.contains(needle),
                        format_args!("expected {needle:?} in {text:?}"),
                    );
                    failures.check(
                        &case,
                        matches!(e, ConnectError::Tls { .. }),
                        format_args!("expected a TLS error, got {e:?}"),
                    );
                }
                (Connected, Err(e)) => {
                    failures.fail(&case, format_args!("expected a connection, got: {e}"));
                }
                (Fails(needle), Ok(_)) => {
                    failures.fail(
                        &case,
                        format_args!("expected failure {needle:?}, but it connected"),
                    );
                }
            }
        }
    }
    failures.assert_none();
}

#[tokio::test]
async fn expired_and_wrong_host_certificates_are_explained() {
    let pki = Pki::new();
    let ca = pki.ca_file();
    let mut expired = Leaf::server(&["localhost".into()]);
    expired.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(30);
    expired.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let (cert, key) = pki.write_pair("expired", &pki.ca.issue(&expired).unwrap());
    // The gateway starts with an expired certificate (it only warns).
    let gw = start_config(&tls_config("secure", &cert, &key, "")).await;
    let e = try_wss(&options(
        &gw,
        "a",
        ServerTrust::Ca(ca.clone()),
        None,
        &pki.path("k"),
    ))
    .await
    .err()
    .expect("expired certificate refused");
    assert!(e.to_string().contains("has expired"), "{e}");
    drop(gw);

    let (cert, key) = pki.write_pair(
        "elsewhere",
        &pki.ca.issue(&Leaf::server(&["gw.example".into()])).unwrap(),
    );
    let gw = start_config(&tls_config("secure", &cert, &key, "")).await;
    let e = try_wss(&options(
        &gw,
        "a",
        ServerTrust::Ca(ca),
        None,
        &pki.path("k"),
    ))
    .await
    .err()
    .expect("wrong host refused");
    assert!(e.to_string().contains("hostname mismatch"), "{e}");
}

#[tokio::test]
async fn trust_on_first_use_remembers_and_refuses_a_changed_fingerprint() {
    let pki = Pki::new();
    let (cert, key, pem) = pki.server();
    let gw = start_config(&tls_config("secure", &cert, &key, "")).await;
    let known = pki.path("known_hosts");
    let first_use = |accept_new| {
        ServerTrust::Fingerprint(Expect::FirstUse {
            known: None,
            accept_new,
        })
    };
    let opts = options(&gw, "tofu", first_use(false), None, &known);
    let (ws, info) = connect(&opts).await.unwrap();
    assert!(info.newly_trusted);
    assert_eq!(
        info.server_fingerprint.as_deref(),
        Some(fingerprint(&pem.der).as_str())
    );
    drop(ws);
    let stored = std::fs::read_to_string(&known).unwrap();
    assert_eq!(
        stored,
        format!("localhost:{} {}\n", gw.ws.port(), fingerprint(&pem.der))
    );

    // Second use: known and unchanged.
    let opts = options(&gw, "tofu2", first_use(false), None, &known);
    let (_ws, info) = connect(&opts).await.unwrap();
    assert!(!info.newly_trusted);

    // The server's certificate changes: refused, and the text names --accept-new.
    std::fs::write(
        &known,
        format!("localhost:{} sha256:{}\n", gw.ws.port(), "ab".repeat(32)),
    )
    .unwrap();
    let e = try_wss(&options(&gw, "tofu3", first_use(false), None, &known))
        .await
        .err()
        .expect("changed fingerprint refused");
    assert!(e.to_string().contains("changed since first use"), "{e}");
    assert!(e.to_string().contains("--accept-new"), "{e}");
    // With --accept-new it connects and remembers the new one.
    let (_ws, info) = connect(&options(&gw, "tofu4", first_use(true), None, &known))
        .await
        .unwrap();
    assert!(info.newly_trusted);
    assert_eq!(
        std::fs::read_to_string(&known).unwrap(),
        format!("localhost:{} {}\n", gw.ws.port(), fingerprint(&pem.der))
    );
}

#[tokio::test]
async fn identity_from_client_certificates() {
    let pki = Pki::new();
    let (cert, key, _) = pki.server();
    let ca = pki.ca_file();
    let extra =
        format!("client_auth = \"required\"\nclient_ca = {ca:?}\nidentity = \"certificate\"");
    let gw = start_config(&tls_config("secure", &cert, &key, &extra)).await;
    let alice = pki.client("alice", &pki.ca, "alice");
    let qt = pki.client("C1我是客户端", &pki.ca, "qt");

    // Same name as the certificate: admitted under it.
    let mut ws = try_wss(&options(
        &gw,
        "alice",
        ServerTrust::Ca(ca.clone()),
        Some(alice.clone()),
        &pki.path("k"),
    ))
    .await
    .unwrap();
    assert_eq!(list(&mut ws).await, ["alice"]);
    drop(ws);
    // Another claimed name: 403.
    let e = try_wss(&options(
        &gw,
        "bob",
        ServerTrust::Ca(ca.clone()),
        Some(alice),
        &pki.path("k"),
    ))
    .await
    .err()
    .expect("claimed name refused");
    match e {
        ConnectError::Refused { status, body } => {
            assert_eq!(status, 403);
            assert_eq!(
                body,
                "claimed name \"bob\" differs from the certificate's name \"alice\""
            );
        }
        other => panic!("expected 403, got {other}"),
    }
    // A Qt client's Origin for its certificate's name (C1?????) matches.
    let mut opts = options(
        &gw,
        "C1?????",
        ServerTrust::Ca(ca),
        Some(qt),
        &pki.path("k"),
    );
    opts.url = format!("wss://localhost:{}/", gw.ws.port());
    let mut ws = try_wss(&opts).await.unwrap();
    assert!(list(&mut ws).await.contains(&"C1我是客户端".to_owned()));
}

#[tokio::test]
async fn a_ws_client_and_a_wss_client_exchange_private_messages() {
    let pki = Pki::new();
    let (cert, key, _) = pki.server();
    let gw = start_config(&tls_config("secure", &cert, &key, "")).await;
    let plain_addr = gw.listeners[1].1;
    let mut plain = try_connect(&format!("ws://{plain_addr}/"), Some(b"plain"))
        .await
        .unwrap();
    let mut secure = try_wss(&options(
        &gw,
        "secure",
        ServerTrust::Ca(pki.ca_file()),
        None,
        &pki.path("k"),
    ))
    .await
    .unwrap();
    list(&mut secure).await;
    send_json(
        &mut plain,
        &json!({"src":"plain","dst":"secure","msg":"over tls?"}),
    )
    .await;
    assert_eq!(
        recv_json(&mut secure).await,
        json!({"src":"plain","dst":"secure","msg":"over tls?"})
    );
    send_text(&mut secure, r#"{"src":"secure","dst":"plain","msg":"yes"}"#).await;
    assert_eq!(recv_json(&mut plain).await["src"], "secure");
    let clients = gw.operator().clients().await.unwrap();
    let tls_of = |name: &str| {
        clients
            .iter()
            .find(|c| c.name == name)
            .map(|c| (c.listener.clone(), c.tls))
    };
    assert_eq!(tls_of("plain"), Some(("ws".into(), false)));
    assert_eq!(tls_of("secure"), Some(("wss".into(), true)));
}

#[tokio::test]
async fn certificates_reload_on_change_and_a_broken_file_keeps_the_old_one() {
    let pki = Pki::new();
    let (cert, key, old_pem) = pki.server();
    let gw = start_config(&tls_config("secure", &cert, &key, "")).await;
    let mut events = subscribe_events(gw.operator()).await;
    let pin = |pem: &Pem| ServerTrust::Fingerprint(Expect::Pin(fingerprint(&pem.der)));
    let mut old = try_wss(&options(&gw, "old", pin(&old_pem), None, &pki.path("k")))
        .await
        .unwrap();
    list(&mut old).await;

    // New certificate and key on disk: new handshakes use them.
    let new_pem = pki
        .other
        .issue(&Leaf::server(&["localhost".into()]))
        .unwrap();
    std::fs::write(&key, &new_pem.key).unwrap();
    std::fs::write(&cert, &new_pem.cert).unwrap();
    let mut event = await_event(&mut events, |e| e["type"] == "tls_reload").await;
    // The two files may be seen half-written once; the final state reloads.
    while event.get("error").is_some() {
        event = await_event(&mut events, |e| e["type"] == "tls_reload").await;
    }
    assert_eq!(event["listener"], "wss");
    let mut new = try_wss(&options(&gw, "new", pin(&new_pem), None, &pki.path("k")))
        .await
        .unwrap();
    let e = try_wss(&options(&gw, "stale", pin(&old_pem), None, &pki.path("k")))
        .await
        .err()
        .expect("old pin fails");
    assert!(e.to_string().contains("pin mismatch"), "{e}");
    // The connection opened before the reload carries on.
    assert_eq!(list(&mut old).await, ["new", "old"]);
    list(&mut new).await;

    // A broken file: reported, and the certificate in service stays.
    std::fs::write(&cert, "not a certificate\n").unwrap();
    let event = await_event(&mut events, |e| e["type"] == "tls_reload").await;
    let error = event["error"].as_str().expect("reload error reported");
    assert!(error.contains(&cert.display().to_string()), "{error}");
    assert!(error.contains("no certificate found"), "{error}");
    let mut again = try_wss(&options(&gw, "again", pin(&new_pem), None, &pki.path("k")))
        .await
        .unwrap();
    list(&mut again).await;

    // An expired certificate: refused (before, it went into service and
    // every new handshake failed), and the one in service stays.
    let mut expired = Leaf::server(&["localhost".into()]);
    expired.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(30);
    expired.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let expired = pki.other.issue(&expired).unwrap();
    std::fs::write(&key, &expired.key).unwrap();
    std::fs::write(&cert, &expired.cert).unwrap();
    let error = loop {
        let event = await_event(&mut events, |e| e["type"] == "tls_reload").await;
        let error = event["error"]
            .as_str()
            .expect("the expired certificate is refused");
        // The key may be seen before the certificate is written.
        if error.contains("expired") {
            break error.to_owned();
        }
    };
    assert!(error.contains(&cert.display().to_string()), "{error}");
    assert!(error.contains("keeping"), "{error}");
    let mut still = try_wss(&options(&gw, "still", pin(&new_pem), None, &pki.path("k")))
        .await
        .unwrap();
    list(&mut still).await;
}

#[tokio::test]
async fn start_up_errors_name_the_file() {
    let pki = Pki::new();
    let (cert, key, _) = pki.server();
    let (other_cert, _) = pki.client("x", &pki.ca, "other");
    let missing = pki.path("missing.pem");
    let empty = pki.write("empty.pem", "");
    let cases: [(&Path, &Path, String); 4] = [
        (
            &missing,
            &key,
            format!("{}: cannot read", missing.display()),
        ),
        (
            &cert,
            &other_cert,
            format!("{}: no private key found", other_cert.display()),
        ),
        (
            &empty,
            &key,
            format!("{}: no certificate found", empty.display()),
        ),
        (
            &other_cert,
            &key,
            format!(
                "{}: this private key does not match the certificate in {}",
                key.display(),
                other_cert.display()
            ),
        ),
    ];
    let file = |path: &Path| path.file_name().unwrap().to_string_lossy().into_owned();
    let mut failures = Failures::new();
    for (cert, key, expected) in cases {
        let case = format!("cert {} + key {}", file(cert), file(key));
        let text = tls_config("secure", cert, key, "");
        let config = match wssgate::Config::parse(&text, Path::new("t.toml")) {
            Ok(config) => config,
            Err(e) => {
                failures.fail(&case, format_args!("config does not parse: {e}"));
                continue;
            }
        };
        let Err(e) = wssgate::Server::bind(config).await else {
            failures.fail(
                &case,
                format_args!("start not refused (expected {expected:?})"),
            );
            continue;
        };
        let text = e.to_string();
        let prefix = "listener \"wss\": ";
        failures.check(
            &case,
            text.starts_with(prefix),
            format_args!("expected {prefix:?} first in {text:?}"),
        );
        failures.check(
            &case,
            text.contains(&expected),
            format_args!("expected {expected:?} in {text:?}"),
        );
    }
    failures.assert_none();
}

/// `openssl`, which makes the RSA (PKCS#1) and SEC1 keys rcgen cannot.
fn openssl() -> Option<()> {
    if Command::new("openssl").arg("version").output().is_ok() {
        return Some(());
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "openssl is required in CI (.ci/run installs it)"
    );
    eprintln!("skipping: openssl not installed");
    None
}

fn run_openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn key_formats_and_chains() {
    let Some(()) = openssl() else { return };
    let pki = Pki::new();
    let ca = pki.ca_file();
    // (label, key PEM as the server reads it, the same key as PKCS#8 for rcgen)
    let rsa_pkcs1 = run_openssl(&["genrsa", "-traditional", "2048"]);
    let rsa_file = pki.write("rsa-pkcs1.pem", &rsa_pkcs1);
    let rsa_pkcs8 = run_openssl(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        rsa_file.to_str().unwrap(),
    ]);
    let ec_sec1 = run_openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout"]);
    let ec_file = pki.write("ec-sec1.pem", &ec_sec1);
    let ec_pkcs8 = run_openssl(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        ec_file.to_str().unwrap(),
    ]);
    assert!(rsa_pkcs1.contains("BEGIN RSA PRIVATE KEY"));
    assert!(ec_sec1.contains("BEGIN EC PRIVATE KEY"));
    let ed = Ca::generate("ed CA", KeyType::Ed25519).unwrap();
    let ed_leaf = ed.issue(&Leaf::server(&["localhost".into()])).unwrap();
    let ed_ca = pki.write("ed-ca.pem", &ed.pem.cert);

    let leaf = Leaf::server(&["localhost".into()]);
    let cases = [
        ("RSA PKCS#1", rsa_pkcs1.clone(), Some(rsa_pkcs8), ca.clone()),
        ("ECDSA SEC1", ec_sec1.clone(), Some(ec_pkcs8), ca.clone()),
        ("Ed25519 PKCS#8", ed_leaf.key.clone(), None, ed_ca),
    ];
    let mut failures = Failures::new();
    for (label, key_pem, pkcs8, trust) in cases {
        let cert_pem = match pkcs8 {
            Some(pkcs8) => {
                let issued = rcgen::KeyPair::from_pem(&pkcs8)
                    .map_err(|e| format!("rcgen cannot read the PKCS#8 key: {e}"))
                    .and_then(|key| {
                        pki.ca
                            .issue_for_key(&leaf, &key)
                            .map_err(|e| format!("cannot issue a certificate for the key: {e}"))
                    });
                match issued {
                    Ok(pem) => pem.cert,
                    Err(e) => {
                        failures.fail(label, e);
                        continue;
                    }
                }
            }
            None => ed_leaf.cert.clone(),
        };
        let cert = pki.write(&format!("{label}.pem").replace([' ', '#'], "_"), &cert_pem);
        let key = pki.write(
            &format!("{label}-key.pem").replace([' ', '#'], "_"),
            &key_pem,
        );
        let started = failures
            .catch(label, start_config(&tls_config("secure", &cert, &key, "")))
            .await;
        let Some(gw) = started else { continue };
        let opts = options(&gw, "k", ServerTrust::Ca(trust), None, &pki.path("k"));
        let mut ws = match failures.catch(label, try_wss(&opts)).await {
            Some(Ok(ws)) => ws,
            Some(Err(e)) => {
                failures.fail(label, format_args!("expected a connection, got: {e}"));
                continue;
            }
            None => continue,
        };
        if let Some(names) = failures.catch(label, list(&mut ws)).await {
            failures.check_eq(label, names, ["k"], "list");
        }
    }
    failures.assert_none();

    // A chain: root -> intermediate -> leaf; the client trusts the root only.
    let intermediate = pki.ca.intermediate("test intermediate").unwrap();
    let leaf = intermediate
        .issue(&Leaf::server(&["localhost".into()]))
        .unwrap();
    let chain = pki.write(
        "chain.pem",
        &format!("{}{}", leaf.cert, intermediate.pem.cert),
    );
    let key = pki.write("chain-key.pem", &leaf.key);
    let gw = start_config(&tls_config("secure", &chain, &key, "")).await;
    let mut ws = try_wss(&options(
        &gw,
        "chained",
        ServerTrust::Ca(ca.clone()),
        None,
        &pki.path("k"),
    ))
    .await
    .expect("a chain with an intermediate verifies");
    list(&mut ws).await;
    // Without the intermediate in the file the client cannot build the chain.
    let alone = pki.write("leaf-alone.pem", &leaf.cert);
    let gw = start_config(&tls_config("secure", &alone, &key, "")).await;
    let e = try_wss(&options(
        &gw,
        "x",
        ServerTrust::Ca(ca),
        None,
        &pki.path("k"),
    ))
    .await
    .err()
    .expect("no chain");
    assert!(e.to_string().contains("unknown issuer"), "{e}");
}

#[tokio::test]
async fn tls12_and_tls13_both_negotiate_http11() {
    use rustls::pki_types::ServerName;
    let pki = Pki::new();
    let (cert, key, _) = pki.server();
    let gw = start_config(&tls_config("secure", &cert, &key, "")).await;
    let roots = wssgate_pki::load_roots(&pki.ca_file()).unwrap();
    let mut failures = Failures::new();
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let case = format!("{:?}", version.version);
        let builder = match rustls::ClientConfig::builder_with_provider(wssgate_pki::provider())
            .with_protocol_versions(&[version])
        {
            Ok(builder) => builder,
            Err(e) => {
                failures.fail(&case, format_args!("client config: {e}"));
                continue;
            }
        };
        let mut config = builder
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = match tokio::net::TcpStream::connect(gw.ws).await {
            Ok(tcp) => tcp,
            Err(e) => {
                failures.fail(&case, format_args!("tcp connect: {e}"));
                continue;
            }
        };
        let tls = match tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
        {
            Ok(tls) => tls,
            Err(e) => {
                failures.fail(&case, format_args!("handshake: {e}"));
                continue;
            }
        };
        let (_, session) = tls.get_ref();
        failures.check_eq(
            &case,
            session.protocol_version(),
            Some(version.version),
            "protocol version",
        );
        failures.check_eq(
            &case,
            session.alpn_protocol(),
            Some(&b"http/1.1"[..]),
            "ALPN",
        );
    }
    failures.assert_none();
}
