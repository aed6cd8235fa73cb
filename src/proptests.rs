//! Property tests of everything that parses what a peer (or a config
//! author) sends: frame classification and `src` splicing, names from
//! `?name=` and `Origin`, the PROXY header, the forwarding headers, and the
//! config loader. Random inputs, a bounded number of cases per property, run
//! by `cargo test` like every other unit test.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use proptest::prelude::*;
use tokio::io::AsyncReadExt;

use crate::config::{Config, ConfigError};
use crate::identity::{self, ClientName};
use crate::protocol::{self, Forward, Request};
use crate::proxy::{self, ForwardedHeader, ForwardedHeaders, TrustedProxies};

/// Cases per property: enough to find the shapes that break a parser,
/// few enough for a debug build in CI. Failures are not persisted to files.
fn cases() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Text with the characters parsers trip on: quotes, backslashes,
/// controls, non-ASCII, invisible formatting characters.
fn tricky_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::char::range('a', 'z'),
            1 => prop::sample::select(vec![
                '"', '\\', '{', '}', '[', ']', ':', ',', ' ', '\t', '\n', '\u{0}', '\u{7f}',
                '\u{85}', '@', '#', '?', '&', '=', '+', '%', 'é', '我', '\u{200b}', '\u{202e}',
                '\u{feff}', '😀',
            ]),
        ],
        0..24,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

/// Any JSON value, nested a little.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        (-1e9f64..1e9).prop_map(serde_json::Value::from),
        tricky_text().prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::vec(("[a-z]{1,4}", inner), 0..4)
                .prop_map(|members| serde_json::Value::Object(members.into_iter().collect())),
        ]
    })
}

/// Whitespace JSON allows between tokens.
fn ws() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "", " ", "\n", " \t "])
}

/// A JSON object as a client might write it: the routing fields and others
/// in any order, with whitespace between tokens, keys possibly repeated.
fn client_object() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec!["dst", "dst", "src", "msg", "type", "room", "id", "x"]);
    let dst = prop_oneof![
        "[a-z]{1,6}".prop_map(serde_json::Value::from),
        "#[a-z]{1,6}".prop_map(serde_json::Value::from),
        json_value(),
    ];
    let member = (key, dst, json_value(), ws(), ws(), ws(), ws()).prop_map(
        |(key, dst, other, a, b, c, d)| {
            let value = if key == "dst" { dst } else { other };
            format!("{a}\"{key}\"{b}:{c}{value}{d}")
        },
    );
    (ws(), prop::collection::vec(member, 1..6))
        .prop_map(|(lead, members)| format!("{lead}{{{}}}", members.join(",")))
}

/// A name that passes the rules.
fn valid_name() -> impl Strategy<Value = String> {
    tricky_text().prop_filter("a valid name", |n| ClientName::new(n).is_ok())
}

/// Counts the top-level `src` keys of a JSON object, duplicates included
/// (a map type would keep only one of them).
fn src_keys(text: &str) -> Result<(usize, Option<serde_json::Value>), serde_json::Error> {
    struct Count(usize, Option<serde_json::Value>);
    impl<'de> serde::Deserialize<'de> for Count {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visitor;
            impl<'de> serde::de::Visitor<'de> for Visitor {
                type Value = Count;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Count, A::Error> {
                    let mut count = Count(0, None);
                    while let Some(key) = map.next_key::<String>()? {
                        let value: serde_json::Value = map.next_value()?;
                        if key == "src" {
                            count.0 += 1;
                            count.1 = Some(value);
                        }
                    }
                    Ok(count)
                }
            }
            d.deserialize_map(Visitor)
        }
    }
    serde_json::from_str::<Count>(text).map(|c| (c.0, c.1))
}

/// The object without its `src` member.
fn without_src(text: &str) -> serde_json::Map<String, serde_json::Value> {
    let mut object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).unwrap_or_default();
    object.remove("src");
    object
}

proptest! {
    #![proptest_config(cases())]

    /// Whatever a text frame holds, classifying it does not panic; a
    /// private or room message is forwarded as valid JSON with exactly one
    /// `src`, the sender's name, and every other member as it was.
    #[test]
    fn forwarded_frames_have_one_src_the_senders(
        text in prop_oneof![client_object(), tricky_text()],
        name in valid_name(),
    ) {
        let envelope = match protocol::classify(&text) {
            Request::Private(e) | Request::Room(e) => e,
            _ => return Ok(()),
        };
        let out = match envelope.forward(&name) {
            Forward::Unchanged => text.clone(),
            Forward::Rewritten(out) => out,
        };
        let (count, src) = src_keys(&out).map_err(|e| TestCaseError::fail(format!("{out:?}: {e}")))?;
        prop_assert_eq!(count, 1, "{:?}", out);
        prop_assert_eq!(src, Some(serde_json::Value::from(name.as_str())));
        prop_assert_eq!(without_src(&out), without_src(&text));
    }

    /// Names from `?name=` and `Origin`: never a panic, never a name that
    /// breaks a rule (reserved, room-like, control or invisible
    /// characters, whitespace at an end, too long).
    #[test]
    fn claimed_names_always_pass_the_rules(
        query in prop::option::of(prop_oneof![
            tricky_text().prop_map(|t| format!("name={t}")),
            tricky_text(),
            "name=(%[0-9A-Fa-f]{2}|[a-z+]){0,12}",
        ]),
        origin in prop::option::of(prop::collection::vec(any::<u8>(), 0..40)),
    ) {
        if let Ok(claim) = identity::claim(query.as_deref(), origin.as_deref()) {
            let name = claim.name.as_str();
            prop_assert!(!name.is_empty() && name.len() <= identity::MAX_NAME_LEN);
            prop_assert!(!name.starts_with('@') && !name.starts_with('#'), "{:?}", name);
            prop_assert!(!name.chars().any(char::is_control), "{:?}", name);
            prop_assert!(!name.chars().any(wssgate_wire::name::is_format_character), "{:?}", name);
            prop_assert!(name.trim() == name, "{:?}", name);
        }
    }

    /// A valid name sent percent-encoded in `?name=` arrives unchanged.
    #[test]
    fn a_percent_encoded_name_round_trips(name in valid_name()) {
        let encoded = percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC);
        let claim = identity::claim(Some(&format!("x=1&name={encoded}")), Some(b"other"));
        prop_assert_eq!(claim.map(|c| c.name.as_str().to_owned()), Ok(name));
    }

    /// Any bytes where a PROXY header should be: an answer, never a panic
    /// (and, the input being finite, never a hang).
    #[test]
    fn proxy_header_parser_takes_any_bytes(
        prefix in prop::sample::select(vec![
            &b""[..], b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", b"PROXY UNKNOWN",
            b"\r\n\r\n\0\r\nQUIT\n", b"\r\n\r\n\0\r\nQUIT\n\x21\x11",
        ]),
        rest in prop::collection::vec(any::<u8>(), 0..120),
    ) {
        let input = [prefix, &rest[..]].concat();
        let runtime = tokio::runtime::Builder::new_current_thread().build()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let _ = runtime.block_on(proxy::read_header(&input[..]));
    }

    /// A well-formed v1 header gives its source address, and the bytes after
    /// it are read back untouched.
    #[test]
    fn proxy_v1_header_gives_the_source_and_keeps_what_follows(
        src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(),
        sport in any::<u16>(), dport in any::<u16>(),
        after in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let (s, d) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));
        let mut input = format!("PROXY TCP4 {s} {d} {sport} {dport}\r\n").into_bytes();
        input.extend_from_slice(&after);
        let runtime = tokio::runtime::Builder::new_current_thread().build()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (addr, mut stream) = runtime.block_on(proxy::read_header(&input[..]))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(addr, Some(SocketAddr::new(IpAddr::V4(s), sport)));
        let mut rest = Vec::new();
        runtime.block_on(stream.read_to_end(&mut rest)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(rest, after);
    }

    /// Forwarding headers of any shape: never a panic; a peer that is not a
    /// trusted proxy is always the client, whatever the headers say.
    #[test]
    fn forwarding_headers_never_override_an_untrusted_peer(
        forwarded in prop::collection::vec(tricky_text(), 0..3),
        xff in prop::collection::vec(prop_oneof![tricky_text(), "[0-9.,: ]{0,30}"], 0..3),
        real_ip in prop::option::of(tricky_text()),
        peer_last in any::<u8>(),
        which in prop::sample::select(vec![
            ForwardedHeader::Auto, ForwardedHeader::Forwarded,
            ForwardedHeader::XForwardedFor, ForwardedHeader::XRealIp,
        ]),
    ) {
        let headers = ForwardedHeaders { forwarded, x_forwarded_for: xff, x_real_ip: real_ip };
        let trusted = TrustedProxies::try_from(vec!["127.0.0.0/8".to_owned()])
            .map_err(TestCaseError::fail)?;
        let untrusted = SocketAddr::from(([10, 0, 0, peer_last], 4000));
        prop_assert_eq!(proxy::client_addr(untrusted, &headers, &trusted, which), untrusted);
        let _ = proxy::client_addr(SocketAddr::from(([127, 0, 0, 1], 4000)), &headers, &trusted, which);
    }

    /// Any text as a config file: loaded or refused with the file and a
    /// line within it, never a panic.
    #[test]
    fn config_loader_takes_any_text(
        lines in prop::collection::vec(prop_oneof![
            prop::sample::select(vec![
                "[[listener]]", "[admin]", "[limits]", "[routing]", "[tls]", "[runtime]", "[log]",
                "name = \"ws\"", "bind = \"127.0.0.1:0\"", "mode = \"secure\"", "path = \"/x\"",
                "max_connections = 0", "idle_timeout = \"1s\"", "ping_interval = \"5s\"",
                "token = \"                \"", "presence = true", "on_duplicate = \"nope\"",
                "trusted_proxies = [\"10.0.0.0/8\", \"x\"]", "busy_poll = \"1ms\"",
            ]).prop_map(str::to_owned),
            tricky_text(),
        ], 0..12),
    ) {
        let text = lines.join("\n");
        match Config::parse(&text, Path::new("fuzz.toml")) {
            Ok(_) => {}
            Err(ConfigError::Invalid { path, line, reason }) => {
                prop_assert_eq!(path, Path::new("fuzz.toml"));
                let in_file = text.split('\n').count();
                prop_assert!(line <= in_file, "line {} of {}: {}", line, in_file, reason);
                prop_assert!(!reason.is_empty());
            }
            Err(e) => prop_assert!(false, "unexpected error kind: {}", e),
        }
    }
}
