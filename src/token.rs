//! Client tokens for `identity = "token"` listeners: a JWT from
//! `Authorization: Bearer TOKEN` (Qt, command-line clients) or `?token=`
//! (browsers), verified with jsonwebtoken (its `rust_crypto` backend: the
//! gateway's TLS runs on ring, and a second C crypto library is not worth
//! it) against the keys of `[auth]`. The client's name is a claim
//! (`name_claim`, default `sub`) and passes the usual name rules.
//!
//! What is checked: the algorithm is on the explicit allow-list (`none` can
//! never be: it is not an algorithm jsonwebtoken knows); the signature, by
//! every key of the algorithm's family (the HMAC secret and the previous
//! one, for rotation; each public key); `exp` is required, `nbf` when
//! present, `aud` and `iss` when configured, with `leeway` for clock skew.
//! A token is never logged, published or listed: refusals say what was
//! wrong with it, never what it was.

use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use crate::config::AuthConfig;

/// Shortest HMAC secret accepted: 256 bits, as RFC 7518 asks for HS256.
pub const MIN_SECRET_LEN: usize = 32;
/// Largest `leeway`.
pub const MAX_LEEWAY: Duration = Duration::from_secs(60);

/// The keys a gateway verifies tokens with, reloadable in place: the
/// public key files are re-read on a reload request (SIGHUP) and when they
/// change on disk; a file that no longer makes a working verifier keeps the
/// keys in use. (Secrets come from the config, read once at start.)
pub struct TokenKeys {
    auth: AuthConfig,
    current: RwLock<Arc<Verifier>>,
    stamps: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl TokenKeys {
    /// The keys `[auth]` describes.
    pub fn load(auth: &AuthConfig) -> Result<TokenKeys, String> {
        let verifier = Verifier::new(auth)?;
        Ok(TokenKeys {
            stamps: Mutex::new(stamps(&key_files(auth))),
            auth: auth.clone(),
            current: RwLock::new(Arc::new(verifier)),
        })
    }

    /// The verifier in use now.
    pub fn verifier(&self) -> Arc<Verifier> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// True when a public key file changed since the last load.
    pub fn changed_on_disk(&self) -> bool {
        *self.stamps.lock().unwrap_or_else(|p| p.into_inner()) != stamps(&key_files(&self.auth))
    }

    /// Re-reads the key files; on failure the keys in use stay.
    pub fn reload(&self) -> Result<(), String> {
        *self.stamps.lock().unwrap_or_else(|p| p.into_inner()) = stamps(&key_files(&self.auth));
        let verifier = Verifier::new(&self.auth)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(verifier);
        Ok(())
    }
}

/// The key files of `[auth]`: the PEM files and the JWKS file.
fn key_files(auth: &AuthConfig) -> Vec<std::path::PathBuf> {
    auth.public_keys.iter().chain(&auth.jwks).cloned().collect()
}

fn stamps(paths: &[std::path::PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    paths
        .iter()
        .map(|p| {
            let meta = std::fs::metadata(p).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}

/// Verifies the tokens of one gateway.
pub struct Verifier {
    keys: Vec<Key>,
    /// One validation per family of accepted algorithms, built once:
    /// jsonwebtoken refuses a validation that lists algorithms of other
    /// families than the key's.
    validations: Vec<(AlgorithmFamily, Validation)>,
    name_claim: String,
    leeway: Duration,
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The name claim, as text (the name rules are the caller's).
    pub name: String,
    /// When the token expires, leeway included: the session ends then.
    pub expires: SystemTime,
    /// What the token allows, from its optional claims.
    pub permissions: Permissions,
}

/// What a token allows beyond connecting, from two optional claims:
/// `rooms`, the rooms the client may join (exact names, or prefixes
/// ending in `*` such as `"#team-*"`; absent: any room), and `operator`,
/// whether it may send to the operator (absent: it may).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Rooms that may be joined; `None`: any.
    pub rooms: Option<Vec<String>>,
    /// Messages to the operator (plain text, binary) allowed.
    pub operator: bool,
}

impl Default for Permissions {
    fn default() -> Self {
        Permissions {
            rooms: None,
            operator: true,
        }
    }
}

impl Permissions {
    /// True when nothing is restricted.
    pub fn is_unrestricted(&self) -> bool {
        self.rooms.is_none() && self.operator
    }

    /// True when `room` may be joined.
    pub fn may_join(&self, room: &str) -> bool {
        self.rooms.as_ref().is_none_or(|rules| {
            rules.iter().any(|rule| match rule.strip_suffix('*') {
                Some(prefix) => room.starts_with(prefix),
                None => rule == room,
            })
        })
    }

    fn of(claims: &Map<String, Value>) -> Result<Permissions, TokenError> {
        let malformed = |claim: &str| {
            TokenError::Unusable(format!(
                "the token's {claim:?} claim is malformed (rooms: a list of room names or prefixes ending in '*'; operator: true or false)"
            ))
        };
        let rooms = match claims.get("rooms") {
            None => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| malformed("rooms"))?,
            ),
            Some(_) => return Err(malformed("rooms")),
        };
        let operator = match claims.get("operator") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(malformed("operator")),
        };
        Ok(Permissions { rooms, operator })
    }
}

/// Why a token was refused: a 401 whose reason is this text, or, when
/// the token is valid but names no usable client, a 403.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token in the request.
    #[error("missing token: send Authorization: Bearer TOKEN or ?token=TOKEN")]
    Missing,
    /// Anything wrong with the token itself (401), in words.
    #[error("{0}")]
    Invalid(String),
    /// A valid token without a usable name, or with malformed
    /// permission claims (403).
    #[error("{0}")]
    Unusable(String),
}

impl TokenError {
    /// The HTTP status to refuse the upgrade with.
    pub fn status(&self) -> u16 {
        match self {
            TokenError::Missing | TokenError::Invalid(_) => 401,
            TokenError::Unusable(_) => 403,
        }
    }
}

/// The algorithms of `[auth] algorithms`, each with a key of its family,
/// the secrets long enough, the key files readable and the leeway small;
/// `needed` when a listener has `identity = "token"`.
pub fn check_config(auth: &AuthConfig, needed: bool) -> Result<(), String> {
    if !needed
        && auth.algorithms.is_empty()
        && auth.hmac_secret.is_none()
        && auth.public_keys.is_empty()
        && auth.jwks.is_none()
    {
        return Ok(());
    }
    Verifier::new(auth).map(|_| ())
}

impl Verifier {
    /// The verifier `[auth]` describes; errors say which setting is wrong.
    pub fn new(auth: &AuthConfig) -> Result<Verifier, String> {
        if auth.algorithms.is_empty() {
            return Err("[auth] algorithms must list the accepted algorithms, e.g. [\"HS256\"] (identity = \"token\" needs it)".into());
        }
        let algorithms = auth
            .algorithms
            .iter()
            .map(|a| {
                Algorithm::from_str(a).map_err(|_| {
                    format!("[auth] algorithms: unknown algorithm {a:?} (HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA; never none)")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut keys = Vec::new();
        for (setting, secret) in [
            ("hmac_secret", &auth.hmac_secret),
            ("hmac_previous_secret", &auth.hmac_previous_secret),
        ] {
            let Some(secret) = secret else { continue };
            if secret.len() < MIN_SECRET_LEN {
                return Err(format!(
                    "[auth] {setting} must be at least {MIN_SECRET_LEN} bytes"
                ));
            }
            let key = DecodingKey::from_secret(secret.as_bytes())
                .map_err(|e| format!("[auth] {setting}: {e}"))?;
            keys.push(Key {
                family: AlgorithmFamily::Hmac,
                key,
                kid: None,
            });
        }
        if auth.hmac_previous_secret.is_some() && auth.hmac_secret.is_none() {
            return Err("[auth] hmac_previous_secret needs hmac_secret".into());
        }
        for path in &auth.public_keys {
            let pem = std::fs::read(path)
                .map_err(|e| format!("[auth] public_keys: cannot read {}: {e}", path.display()))?;
            let (family, key) = public_key(&pem)
                .map_err(|reason| format!("[auth] public_keys: {}: {reason}", path.display()))?;
            keys.push(Key {
                family,
                key,
                kid: None,
            });
        }
        if let Some(path) = &auth.jwks {
            keys.extend(jwks_keys(path)?);
        }
        if keys.is_empty() {
            return Err("[auth] has no key: set hmac_secret, public_keys or jwks".into());
        }
        for alg in &algorithms {
            if !keys.iter().any(|k| k.family == alg.family()) {
                return Err(format!(
                    "[auth] algorithms: {alg:?} has no key of its family (HS*: hmac_secret; RS*/PS*: an RSA public key; ES*: an EC public key; EdDSA: an Ed25519 public key)"
                ));
            }
        }
        if auth.leeway.0 > MAX_LEEWAY {
            return Err(format!("[auth] leeway must be at most {MAX_LEEWAY:?}"));
        }
        if auth.name_claim.is_empty() {
            return Err("[auth] name_claim must not be empty".into());
        }
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms.clone();
        validation.leeway = auth.leeway.0.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        if auth.audience.is_empty() {
            // Not configured: not checked (a token for another audience
            // is then accepted; configure `audience` with a shared IdP).
            validation.validate_aud = false;
        } else {
            validation.set_audience(&auth.audience);
            validation.required_spec_claims.insert("aud".into());
        }
        if !auth.issuer.is_empty() {
            validation.set_issuer(&auth.issuer);
            validation.required_spec_claims.insert("iss".into());
        }
        let mut validations: Vec<(AlgorithmFamily, Validation)> = Vec::new();
        for alg in &algorithms {
            if !validations.iter().any(|(f, _)| *f == alg.family()) {
                let mut v = validation.clone();
                v.algorithms.retain(|a| a.family() == alg.family());
                validations.push((alg.family(), v));
            }
        }
        Ok(Verifier {
            keys,
            validations,
            name_claim: auth.name_claim.clone(),
            leeway: auth.leeway.0,
        })
    }

    /// Verifies `token`.
    pub fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| TokenError::Invalid("malformed token: not a JWT".into()))?;
        let Some((_, validation)) = self
            .validations
            .iter()
            .find(|(_, v)| v.algorithms.contains(&header.alg))
        else {
            return Err(TokenError::Invalid(format!(
                "token algorithm {:?} is not accepted here",
                header.alg
            )));
        };
        let mut last = ErrorKind::InvalidSignature;
        // A token naming its key (`kid`) is checked against that key of a
        // JWKS file only; keys without an id are tried in turn.
        let candidates: Vec<&Key> = self
            .keys
            .iter()
            .filter(|k| k.family == header.alg.family())
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(wanted), Some(id)) => wanted == id,
                _ => true,
            })
            .collect();
        if candidates.is_empty()
            && let Some(kid) = &header.kid
        {
            return Err(TokenError::Invalid(format!(
                "token key id (kid) {kid:?} is not known here"
            )));
        }
        let claims = candidates
            .iter()
            .find_map(|k| {
                match jsonwebtoken::decode::<Map<String, Value>>(token, &k.key, validation) {
                    Ok(data) => Some(data.claims),
                    Err(e) => {
                        // A key whose signature matched says more (expired,
                        // wrong audience) than one that did not.
                        let kind = e.into_kind();
                        if kind != ErrorKind::InvalidSignature {
                            last = kind;
                        }
                        None
                    }
                }
            })
            .ok_or_else(|| TokenError::Invalid(explain(&last)))?;
        let Some(name) = claims.get(&self.name_claim).and_then(Value::as_str) else {
            return Err(TokenError::Unusable(format!(
                "the token has no {:?} claim with a name",
                self.name_claim
            )));
        };
        Ok(Verified {
            name: name.to_owned(),
            expires: expiry(claims.get("exp"), self.leeway),
            permissions: Permissions::of(&claims)?,
        })
    }
}

/// One verification key: the family of algorithms it verifies, and its
/// `kid` when it came from a JWKS file.
struct Key {
    family: AlgorithmFamily,
    key: DecodingKey,
    kid: Option<String>,
}

/// The keys of a JWKS file (RFC 7517): RSA, EC and Ed25519 public keys,
/// each with its `kid`.
fn jwks_keys(path: &std::path::Path) -> Result<Vec<Key>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("[auth] jwks: cannot read {}: {e}", path.display()))?;
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&text)
        .map_err(|e| format!("[auth] jwks: {}: not a JWKS: {e}", path.display()))?;
    set.keys
        .iter()
        .map(|jwk| {
            use jsonwebtoken::jwk::AlgorithmParameters as P;
            let family = match &jwk.algorithm {
                P::RSA(_) => AlgorithmFamily::Rsa,
                P::EllipticCurve(_) => AlgorithmFamily::Ec,
                P::OctetKeyPair(_) => AlgorithmFamily::Ed,
                _ => {
                    return Err(format!(
                        "[auth] jwks: {}: only RSA, EC and Ed25519 public keys belong here (a secret goes in hmac_secret)",
                        path.display()
                    ));
                }
            };
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|e| format!("[auth] jwks: {}: {e}", path.display()))?;
            Ok(Key {
                family,
                key,
                kid: jwk.common.key_id.clone(),
            })
        })
        .collect()
}

/// When a session on a token with this `exp` ends: `exp` + `leeway`, as
/// jsonwebtoken reads `exp` (a NumericDate, fractional seconds allowed,
/// already checked to be present and in the future), saturating far out.
fn expiry(exp: Option<&Value>, leeway: Duration) -> SystemTime {
    let seconds = exp
        .and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_f64().map(|f| f.max(0.0).round() as u64))
        })
        .unwrap_or(0);
    // Far-future dates (beyond what SystemTime holds) end at its limit.
    const FAR: u64 = 1 << 40;
    UNIX_EPOCH + Duration::from_secs(seconds.min(FAR)) + leeway
}

/// A PEM public key and the family of algorithms it verifies.
fn public_key(pem: &[u8]) -> Result<(AlgorithmFamily, DecodingKey), String> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok((AlgorithmFamily::Rsa, key));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Ok((AlgorithmFamily::Ec, key));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Ok((AlgorithmFamily::Ed, key));
    }
    Err("not a PEM RSA, EC or Ed25519 public key".into())
}

/// A one-line reason for a token jsonwebtoken refused.
fn explain(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "token expired".into(),
        ErrorKind::ImmatureSignature => "token not valid yet (nbf)".into(),
        ErrorKind::InvalidSignature => "token signature does not verify".into(),
        ErrorKind::InvalidAudience => "token audience (aud) not accepted".into(),
        ErrorKind::InvalidIssuer => "token issuer (iss) not accepted".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("token has no {claim} claim"),
        ErrorKind::InvalidClaimFormat(claim) => format!("token claim {claim} is malformed"),
        ErrorKind::InvalidAlgorithm => "token algorithm does not match its key".into(),
        _ => "malformed token".into(),
    }
}

/// The token of an `Authorization: Bearer TOKEN` value: the scheme is
/// case-insensitive and followed by one or more spaces (RFC 9110 section
/// 11.1, 11.4); surrounding whitespace is not part of the token. Used for
/// client tokens and for the admin API's token alike.
pub(crate) fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once([' ', '\t'])?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim_start_matches([' ', '\t']))
        .filter(|token| !token.is_empty())
}

/// The token of a request: `Authorization: Bearer TOKEN` first, else the
/// `token` parameter of the query (percent-decoded).
pub fn from_request(authorization: Option<&[u8]>, query: Option<&str>) -> Option<String> {
    let bearer = authorization
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(bearer)
        .map(str::to_owned);
    bearer.or_else(|| {
        let raw = query?.split('&').find_map(|p| p.strip_prefix("token="))?;
        let decoded = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .ok()?;
        (!decoded.is_empty()).then(|| decoded.into_owned())
    })
}

/// A development token for `name`, valid for `ttl`, signed with the
/// `[auth] hmac_secret` and its first HS* algorithm (`wssgate token`).
pub fn mint(auth: &AuthConfig, name: &str, ttl: Duration) -> Result<String, String> {
    let secret = auth
        .hmac_secret
        .as_deref()
        .ok_or("[auth] hmac_secret is not set: only HMAC tokens can be minted here")?;
    let alg = auth
        .algorithms
        .iter()
        .filter_map(|a| Algorithm::from_str(a).ok())
        .find(|a| a.family() == AlgorithmFamily::Hmac)
        .ok_or("[auth] algorithms lists no HS* algorithm")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?;
    let mut claims = Map::new();
    claims.insert(auth.name_claim.clone(), name.into());
    claims.insert("iat".into(), now.as_secs().into());
    claims.insert("exp".into(), (now + ttl).as_secs().into());
    if let Some(aud) = auth.audience.first() {
        claims.insert("aud".into(), aud.as_str().into());
    }
    if let Some(iss) = auth.issuer.first() {
        claims.insert("iss".into(), iss.as_str().into());
    }
    let key = EncodingKey::from_secret(secret.as_bytes()).map_err(|e| e.to_string())?;
    jsonwebtoken::encode(&Header::new(alg), &claims, &key).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn auth(extra: &str) -> AuthConfig {
        toml::from_str(&format!(
            "hmac_secret = \"{SECRET}\"\nalgorithms = [\"HS256\"]\nleeway = \"0s\"\n{extra}"
        ))
        .unwrap()
    }

    fn sign(claims: Value, secret: &str, alg: Algorithm) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn tokens_are_checked_claim_by_claim() {
        let v = Verifier::new(&auth("audience = [\"chat\"]\n")).unwrap();
        let exp = now() + 60;
        let good = sign(
            serde_json::json!({"sub": "alice", "exp": exp, "aud": "chat"}),
            SECRET,
            Algorithm::HS256,
        );
        assert_eq!(v.verify(&good).unwrap().name, "alice");
        let cases = [
            (
                sign(
                    serde_json::json!({"sub": "a", "exp": now() - 10, "aud": "chat"}),
                    SECRET,
                    Algorithm::HS256,
                ),
                "token expired",
            ),
            (
                sign(
                    serde_json::json!({"sub": "a", "exp": exp, "nbf": now() + 100, "aud": "chat"}),
                    SECRET,
                    Algorithm::HS256,
                ),
                "token not valid yet (nbf)",
            ),
            (
                sign(
                    serde_json::json!({"sub": "a", "aud": "chat"}),
                    SECRET,
                    Algorithm::HS256,
                ),
                "token has no exp claim",
            ),
            (
                sign(
                    serde_json::json!({"sub": "a", "exp": exp, "aud": "other"}),
                    SECRET,
                    Algorithm::HS256,
                ),
                "token audience (aud) not accepted",
            ),
            (
                sign(
                    serde_json::json!({"sub": "a", "exp": exp, "aud": "chat"}),
                    "another secret, 32 bytes at least",
                    Algorithm::HS256,
                ),
                "token signature does not verify",
            ),
            (
                sign(
                    serde_json::json!({"sub": "a", "exp": exp, "aud": "chat"}),
                    SECRET,
                    Algorithm::HS384,
                ),
                "token algorithm HS384 is not accepted here",
            ),
            ("not.a.jwt".to_owned(), "malformed token: not a JWT"),
        ];
        for (token, reason) in cases {
            assert_eq!(
                v.verify(&token),
                Err(TokenError::Invalid(reason.into())),
                "{reason}"
            );
        }
        // alg "none", handcrafted: never accepted.
        let none = format!(
            "{}.{}.",
            data_encoding::BASE64URL_NOPAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
            data_encoding::BASE64URL_NOPAD
                .encode(format!(r#"{{"sub":"a","exp":{exp}}}"#).as_bytes())
        );
        assert!(matches!(v.verify(&none), Err(TokenError::Invalid(_))));
        let nameless = sign(
            serde_json::json!({"exp": exp, "aud": "chat"}),
            SECRET,
            Algorithm::HS256,
        );
        assert_eq!(v.verify(&nameless).unwrap_err().status(), 403);
    }

    #[test]
    fn permission_claims() {
        let v = Verifier::new(&auth("")).unwrap();
        let exp = now() + 60;
        let with = |extra: Value| {
            let mut claims = serde_json::json!({"sub": "a", "exp": exp});
            claims
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            v.verify(&sign(claims, SECRET, Algorithm::HS256))
        };
        let open = with(serde_json::json!({})).unwrap().permissions;
        assert!(open.is_unrestricted() && open.may_join("#any"));
        let p = with(serde_json::json!({"rooms": ["#lobby", "#team-*"], "operator": false}))
            .unwrap()
            .permissions;
        assert!(p.may_join("#lobby") && p.may_join("#team-red") && !p.may_join("#lobby2"));
        assert!(!p.operator && !p.is_unrestricted());
        for bad in [
            serde_json::json!({"rooms": "#lobby"}),
            serde_json::json!({"operator": "no"}),
        ] {
            assert_eq!(with(bad).unwrap_err().status(), 403);
        }
    }

    #[test]
    fn ed25519_and_ec_public_keys_are_told_apart_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let (ed_path, ec_path) = (dir.path().join("ed.pem"), dir.path().join("ec.pem"));
        std::fs::write(&ed_path, ed.public_key_pem()).unwrap();
        std::fs::write(&ec_path, ec.public_key_pem()).unwrap();
        let auth: AuthConfig = toml::from_str(&format!(
            "public_keys = [{:?}, {:?}]\nalgorithms = [\"EdDSA\", \"ES384\"]\n",
            ed_path.display().to_string(),
            ec_path.display().to_string()
        ))
        .unwrap();
        let v = Verifier::new(&auth).unwrap();
        let claims = serde_json::json!({"sub": "k", "exp": now() + 60});
        let by = |alg: Algorithm, key: EncodingKey| {
            jsonwebtoken::encode(&Header::new(alg), &claims, &key).unwrap()
        };
        let ed_token = by(
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).unwrap(),
        );
        let ec_token = by(
            Algorithm::ES384,
            EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap(),
        );
        assert_eq!(v.verify(&ed_token).unwrap().name, "k");
        assert_eq!(v.verify(&ec_token).unwrap().name, "k");
    }

    #[test]
    fn fractional_and_far_expiries_are_read_as_jsonwebtoken_reads_them() {
        let v = Verifier::new(&auth("")).unwrap();
        let exp = (now() + 100) as f64 + 0.5;
        let token = sign(
            serde_json::json!({"sub": "f", "exp": exp}),
            SECRET,
            Algorithm::HS256,
        );
        let left = v
            .verify(&token)
            .unwrap()
            .expires
            .duration_since(SystemTime::now())
            .unwrap();
        assert!(left > Duration::from_secs(90), "{left:?}");
        let far = sign(
            serde_json::json!({"sub": "f", "exp": u64::MAX}),
            SECRET,
            Algorithm::HS256,
        );
        if let Ok(verified) = v.verify(&far) {
            assert!(verified.expires > SystemTime::now() + Duration::from_secs(1 << 30));
        }
    }

    #[test]
    fn the_previous_secret_still_verifies() {
        let old = "the previous secret, also 32 bytes long";
        let v = Verifier::new(&auth(&format!("hmac_previous_secret = \"{old}\"\n"))).unwrap();
        let token = sign(
            serde_json::json!({"sub": "bob", "exp": now() + 60}),
            old,
            Algorithm::HS256,
        );
        assert_eq!(v.verify(&token).unwrap().name, "bob");
    }

    #[test]
    fn configs_that_cannot_work_are_refused() {
        let cases = [
            (
                "algorithms = []\nhmac_secret = \"0123456789abcdef0123456789abcdef\"",
                "must list the accepted algorithms",
            ),
            (
                "algorithms = [\"none\"]\nhmac_secret = \"0123456789abcdef0123456789abcdef\"",
                "unknown algorithm \"none\"",
            ),
            (
                "algorithms = [\"HS256\"]\nhmac_secret = \"short\"",
                "at least 32 bytes",
            ),
            (
                "algorithms = [\"RS256\"]\nhmac_secret = \"0123456789abcdef0123456789abcdef\"",
                "RS256 has no key of its family",
            ),
            ("algorithms = [\"HS256\"]", "has no key"),
            (
                "algorithms = [\"HS256\"]\nhmac_secret = \"0123456789abcdef0123456789abcdef\"\nleeway = \"5m\"",
                "leeway must be at most",
            ),
            (
                "algorithms = [\"ES256\"]\npublic_keys = [\"/nonexistent.pem\"]",
                "cannot read /nonexistent.pem",
            ),
        ];
        for (text, expected) in cases {
            let auth: AuthConfig = toml::from_str(text).unwrap();
            let error = check_config(&auth, true).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
        assert!(
            check_config(&AuthConfig::default(), false).is_ok(),
            "unused, unset"
        );
    }

    #[test]
    fn tokens_come_from_the_header_or_the_query() {
        assert_eq!(
            from_request(Some(b"Bearer  abc"), Some("token=zzz")).as_deref(),
            Some("abc")
        );
        assert_eq!(
            from_request(None, Some("name=a&token=x%2Ey")).as_deref(),
            Some("x.y")
        );
        assert_eq!(from_request(Some(b"Basic abc"), None), None);
        assert_eq!(from_request(None, Some("token=")), None);
    }

    #[test]
    fn minted_tokens_verify() {
        let auth = auth("");
        let token = mint(&auth, "carol", Duration::from_secs(3600)).unwrap();
        let verified = Verifier::new(&auth).unwrap().verify(&token).unwrap();
        assert_eq!(verified.name, "carol");
        assert!(verified.expires > SystemTime::now() + Duration::from_secs(3500));
    }
}
