//! Token identity (`identity = "token"`, `[auth]`): real gateways on port 0,
//! real clients sending a JWT in `Authorization: Bearer` or `?token=`; each
//! refusal checked for its status and one-line reason.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};

const SECRET: &str = "the current secret, 32 bytes long";
const PREVIOUS: &str = "the previous secret, 32 bytes too";

struct Keys {
    dir: tempfile::TempDir,
    ec_private: String,
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        std::fs::write(dir.path().join("ec.pem"), pair.public_key_pem()).unwrap();
        Keys {
            ec_private: pair.serialize_pem(),
            dir,
        }
    }

    fn config(&self, extra_auth: &str) -> String {
        format!(
            "[[listener]]\nname = \"ws\"\nbind = \"127.0.0.1:0\"\nidentity = \"token\"\n\n\
             [admin]\nbind = \"127.0.0.1:0\"\n\n[tls]\nreload_interval = \"50ms\"\n\n\
             [auth]\nhmac_secret = \"{SECRET}\"\nhmac_previous_secret = \"{PREVIOUS}\"\n\
             public_keys = [{:?}]\nalgorithms = [\"HS256\", \"ES256\"]\nleeway = \"0s\"\n{extra_auth}",
            self.dir.path().join("ec.pem").display().to_string()
        )
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs(claims: Value, secret: &str, alg: Algorithm) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn token(name: &str) -> String {
    hs(
        json!({"sub": name, "exp": now() + 600}),
        SECRET,
        Algorithm::HS256,
    )
}

/// A WebSocket client with extra request headers.
async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Result<Ws, String> {
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    for (name, value) in headers {
        request.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("handshake in time")
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn valid_tokens_are_admitted_under_their_name_and_the_rest_refused() {
    let keys = Keys::new();
    let gw = start_config(&keys.config("")).await;
    let url = gw.url("/");

    // Admitted: by header, by query, ES256, the previous secret, and a
    // claimed name that agrees.
    let bearer = |t: &str| format!("Bearer {t}");
    let mut alice = connect_with(&url, &[("Authorization", &bearer(&token("alice")))])
        .await
        .expect("alice by Authorization");
    let _bob = connect_with(&gw.url(&format!("/?token={}", token("bob"))), &[])
        .await
        .expect("bob by ?token=");
    let es = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &json!({"sub": "carol", "exp": now() + 600}),
        &EncodingKey::from_ec_pem(keys.ec_private.as_bytes()).unwrap(),
    )
    .unwrap();
    let _carol = connect_with(&url, &[("Authorization", &bearer(&es))])
        .await
        .expect("carol by ES256");
    let old = hs(
        json!({"sub": "dave", "exp": now() + 600}),
        PREVIOUS,
        Algorithm::HS256,
    );
    let _dave = connect_with(&url, &[("Authorization", &bearer(&old))])
        .await
        .expect("dave by the previous secret");
    let _erin = connect_with(
        &gw.url(&format!("/?name=erin&token={}", token("erin"))),
        &[("Origin", "erin")],
    )
    .await
    .expect("erin, claimed and token agree");
    assert_eq!(
        list(&mut alice).await,
        ["alice", "bob", "carol", "dave", "erin"]
    );
    // A browser's Origin is not a name: the page connects with its token.
    let page = connect_with(
        &gw.url(&format!("/?token={}", token("fred"))),
        &[("Origin", "https://chat.example.com")],
    )
    .await
    .expect("a browser page with a token");
    assert_eq!(
        list(&mut alice).await,
        ["alice", "bob", "carol", "dave", "erin", "fred"]
    );
    drop(page);

    // Refused, each with its status and reason.
    let request = |path: &str, auth: Option<String>, origin: Option<&str>| {
        let mut headers: Vec<(&str, Vec<u8>)> = Vec::new();
        if let Some(a) = auth {
            headers.push(("Authorization", a.into_bytes()));
        }
        if let Some(o) = origin {
            headers.push(("Origin", o.as_bytes().to_vec()));
        }
        let refs: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        upgrade_request(path, &refs)
    };
    let expired = hs(
        json!({"sub": "x", "exp": now() - 5}),
        SECRET,
        Algorithm::HS256,
    );
    let forged = hs(
        json!({"sub": "x", "exp": now() + 600}),
        "a forger's secret of 32 bytes!!",
        Algorithm::HS256,
    );
    let hs384 = hs(
        json!({"sub": "x", "exp": now() + 600}),
        SECRET,
        Algorithm::HS384,
    );
    let reserved = hs(
        json!({"sub": "@gateway", "exp": now() + 600}),
        SECRET,
        Algorithm::HS256,
    );
    let nameless = hs(json!({"exp": now() + 600}), SECRET, Algorithm::HS256);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "no token",
            request("/", None, None),
            401,
            "missing token: send Authorization: Bearer TOKEN or ?token=TOKEN",
        ),
        (
            "garbage",
            request("/", Some("Bearer not-a-jwt".into()), None),
            401,
            "malformed token: not a JWT",
        ),
        (
            "expired",
            request("/", Some(bearer(&expired)), None),
            401,
            "token expired",
        ),
        (
            "forged",
            request("/", Some(bearer(&forged)), None),
            401,
            "token signature does not verify",
        ),
        (
            "HS384 not on the list",
            request("/", Some(bearer(&hs384)), None),
            401,
            "token algorithm HS384 is not accepted here",
        ),
        (
            "?name= differs",
            request(
                &format!("/?name=bob&token={}", token("mallory")),
                None,
                None,
            ),
            403,
            "claimed name \"bob\" differs from the token's name \"mallory\"",
        ),
        (
            "Origin differs",
            request("/", Some(bearer(&token("mallory"))), Some("alice")),
            403,
            "claimed name \"alice\" differs from the token's name \"mallory\"",
        ),
        (
            "reserved name in the token",
            request("/", Some(bearer(&reserved)), None),
            403,
            "the token's name \"@gateway\" is not usable: names starting with '@' are reserved for the gateway",
        ),
        (
            "no name claim",
            request("/", Some(bearer(&nameless)), None),
            403,
            "the token has no \"sub\" claim with a name",
        ),
    ];
    let mut failures = Failures::new();
    for (case, raw, status, reason) in cases {
        let Some(got) = failures.catch(case, http_raw(gw.ws, &raw)).await else {
            continue;
        };
        failures.check_eq(case, got, (status, format!("{reason}\n")), "");
    }
    failures.assert_none();
    // Nobody else got in (fred's page may still be leaving).
    let names = list(&mut alice).await;
    let admitted = ["alice", "bob", "carol", "dave", "erin", "fred"];
    assert!(
        names.iter().all(|n| admitted.contains(&n.as_str())),
        "{names:?}"
    );
}

#[tokio::test]
async fn wssgate_client_sends_its_token() {
    let keys = Keys::new();
    let gw = start_config(&keys.config("")).await;
    let opts = |token: Option<String>| wssgate_client::ConnectOptions {
        url: gw.url("/"),
        name: "zoe".into(),
        tls: wssgate_client::tls::ClientTls {
            trust: wssgate_client::tls::ServerTrust::SystemRoots,
            identity: None,
        },
        known_hosts: std::path::PathBuf::new(),
        token,
    };
    let (mut zoe, _) = wssgate_client::connect(&opts(Some(token("zoe"))))
        .await
        .expect("admitted with its token");
    assert_eq!(list(&mut zoe).await, ["zoe"]);
    let refused = wssgate_client::connect(&opts(None))
        .await
        .err()
        .expect("refused without");
    assert!(refused.to_string().contains("401"), "{refused}");
}

#[tokio::test]
async fn public_keys_reload_when_their_file_changes() {
    let keys = Keys::new();
    let gw = start_config(&keys.config("")).await;
    let mut events = subscribe_events(gw.operator()).await;
    let next = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let es = |pair_pem: &str, name: &str| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &json!({"sub": name, "exp": now() + 600}),
            &EncodingKey::from_ec_pem(pair_pem.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let by_next =
        |name: &str| upgrade_request(&format!("/?token={}", es(&next.serialize_pem(), name)), &[]);
    assert_eq!(
        http_raw(gw.ws, &by_next("early")).await,
        (401, "token signature does not verify\n".to_owned())
    );
    // The key file now holds the next key (a rotation at the identity provider).
    std::fs::write(keys.dir.path().join("ec.pem"), next.public_key_pem()).unwrap();
    let event = await_event(&mut events, |e| e["type"] == "token_keys_reload").await;
    assert!(event.get("error").is_none(), "{event}");
    connect_with(
        &gw.url(&format!("/?token={}", es(&next.serialize_pem(), "late"))),
        &[],
    )
    .await
    .expect("signed by the new key");
    // A broken file: reported, and the keys in use stay.
    std::fs::write(keys.dir.path().join("ec.pem"), "not a key\n").unwrap();
    let event = await_event(&mut events, |e| e["type"] == "token_keys_reload").await;
    let error = event["error"].as_str().expect("the error is reported");
    assert!(
        error.contains("not a PEM RSA, EC or Ed25519 public key"),
        "{error}"
    );
    connect_with(
        &gw.url(&format!("/?token={}", es(&next.serialize_pem(), "still"))),
        &[],
    )
    .await
    .expect("the keys in use stayed");
}

#[tokio::test]
async fn token_claims_limit_rooms_and_messages_to_the_operator() {
    let keys = Keys::new();
    let gw = start_config(&keys.config("")).await;
    let limited = hs(
        json!({"sub": "lim", "exp": now() + 600, "rooms": ["#team-*", "#lobby"], "operator": false}),
        SECRET,
        Algorithm::HS256,
    );
    let mut lim = connect_with(&gw.url(&format!("/?token={limited}")), &[])
        .await
        .expect("admitted");
    send_json(&mut lim, &json!({"type": "join", "room": "#team-red"})).await;
    send_json(
        &mut lim,
        &json!({"type": "join", "room": "#secret", "id": 7}),
    )
    .await;
    assert_eq!(
        recv_json(&mut lim).await,
        json!({"src": "@gateway", "dst": "lim", "type": "error", "msg": "not allowed by your token: join #secret", "ref": 7})
    );
    send_text(&mut lim, "hello operator").await;
    assert_eq!(
        recv_json(&mut lim).await["msg"],
        "not allowed by your token: messages to the operator"
    );
    send_json(
        &mut lim,
        &json!({"type": "list", "room": "#team-red", "id": 1}),
    )
    .await;
    assert_eq!(recv_json(&mut lim).await["names"], json!(["lim"]));
    send_json(
        &mut lim,
        &json!({"type": "list", "room": "#secret", "id": 2}),
    )
    .await;
    // Nor may it see who is in a room it may not join.
    assert_eq!(
        recv_json(&mut lim).await,
        json!({"src": "@gateway", "dst": "lim", "type": "error", "msg": "not allowed by your token: list #secret", "ref": 2})
    );
    let m = metrics(&gw).await;
    assert_eq!(metric(&m, r#"wssgate_errors_total{kind="forbidden"}"#), 3.0);
}

#[tokio::test]
async fn keys_from_a_jwks_file_are_chosen_by_kid() {
    let dir = tempfile::tempdir().unwrap();
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let point = pair.public_key_raw();
    assert_eq!(
        (point.len(), point[0]),
        (65, 4),
        "an uncompressed P-256 point"
    );
    let b64 = |b: &[u8]| data_encoding::BASE64URL_NOPAD.encode(b);
    let jwks = json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig", "alg": "ES256",
        "x": b64(&point[1..33]), "y": b64(&point[33..]),
    }]});
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks.to_string()).unwrap();
    let gw = start_config(&format!(
        "[[listener]]\nname = \"ws\"\nbind = \"127.0.0.1:0\"\nidentity = \"token\"\n\n\
         [admin]\nbind = \"127.0.0.1:0\"\n\n[auth]\njwks = {:?}\nalgorithms = [\"ES256\"]\n",
        path.display().to_string()
    ))
    .await;
    let signed = |kid: &str| {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(
            &header,
            &json!({"sub": "jw", "exp": now() + 600}),
            &EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap()
    };
    connect_with(&gw.url(&format!("/?token={}", signed("k1"))), &[])
        .await
        .expect("kid k1 is in the JWKS");
    assert_eq!(
        http_raw(
            gw.ws,
            &upgrade_request(&format!("/?token={}", signed("k2")), &[])
        )
        .await,
        (
            401,
            "token key id (kid) \"k2\" is not known here\n".to_owned()
        )
    );
}

#[tokio::test]
async fn a_session_is_closed_when_its_token_expires() {
    let keys = Keys::new();
    let gw = start_config(&keys.config("")).await;
    let brief = hs(
        json!({"sub": "brief", "exp": now() + 2}),
        SECRET,
        Algorithm::HS256,
    );
    let mut brief = connect_with(
        &gw.url("/"),
        &[("Authorization", &format!("Bearer {brief}"))],
    )
    .await
    .expect("admitted while valid");
    let mut other = connect_with(
        &gw.url("/"),
        &[("Authorization", &format!("Bearer {}", token("other")))],
    )
    .await
    .expect("admitted");
    let (code, reason, _) = recv_close(&mut brief).await;
    assert_eq!((code, reason.as_str()), (1008, "token expired"));
    assert_eq!(list(&mut other).await, ["other"]);
}

#[tokio::test]
async fn audience_and_issuer_are_checked_when_configured() {
    let keys = Keys::new();
    let gw = start_config(&keys.config("audience = [\"chat\"]\nissuer = [\"idp\"]\n")).await;
    let claims = |aud: &str, iss: &str| {
        hs(
            json!({"sub": "a", "exp": now() + 600, "aud": aud, "iss": iss}),
            SECRET,
            Algorithm::HS256,
        )
    };
    let refused = |t: String| upgrade_request(&format!("/?token={t}"), &[]);
    assert_eq!(
        http_raw(gw.ws, &refused(claims("other", "idp"))).await,
        (401, "token audience (aud) not accepted\n".to_owned())
    );
    assert_eq!(
        http_raw(gw.ws, &refused(claims("chat", "elsewhere"))).await,
        (401, "token issuer (iss) not accepted\n".to_owned())
    );
    let no_aud = hs(
        json!({"sub": "a", "exp": now() + 600, "iss": "idp"}),
        SECRET,
        Algorithm::HS256,
    );
    assert_eq!(
        http_raw(gw.ws, &refused(no_aud)).await,
        (401, "token has no aud claim\n".to_owned())
    );
    connect_with(&gw.url(&format!("/?token={}", claims("chat", "idp"))), &[])
        .await
        .expect("the right audience and issuer");
}
