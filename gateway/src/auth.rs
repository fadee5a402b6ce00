//! Authentication: the bearer token, checked as a JWT against pinned algorithms and a key.
//!
//! Only asymmetric algorithms of the configured key's family are accepted, so neither
//! `alg: none` nor an HS256 token "signed" with the public key can pass. `exp`, `iss` and
//! `aud` are required; `nbf` is checked when present; the clock leeway is small and set.
//!
//! The key is one PEM public key, or a JSON Web Key Set whose keys are picked by the
//! token's `kid`, so that keys can be rotated without refusing anyone: from a file, or
//! from the identity provider's URL (see [`crate::jwks_fetch`]).

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::Path;

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::config::AuthConfig;

/// Why a token was not accepted. The text is safe to show the client: it never holds
/// the token itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token")]
    Missing,
    /// A header that is not `Bearer <token>`.
    #[error("authorization header is not a bearer token")]
    NotBearer,
    /// The token is not a well-formed JWT, or its algorithm is not accepted.
    #[error("malformed token or unaccepted algorithm")]
    Malformed,
    /// The signature does not verify with the configured key.
    #[error("invalid token signature")]
    BadSignature,
    /// The token's `kid` names no key of the configured key set.
    #[error("token signed with an unknown key")]
    UnknownKey,
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("wrong token issuer")]
    WrongIssuer,
    /// `aud` does not include the configured audience.
    #[error("wrong token audience")]
    WrongAudience,
    /// A required claim is absent or of the wrong type.
    #[error("token claim {0} missing or invalid")]
    BadClaim(String),
    /// A valid token without a required scope (403, not 401).
    #[error("token lacks required scope {0}")]
    MissingScope(String),
}

/// Checks tokens; built once from config, shared by every connection.
pub struct Verifier {
    /// The settings it was built from (a key set refresh builds the next one from them).
    auth: AuthConfig,
    /// The keys, each with its `kid` when it came from a key set.
    keys: Vec<(Option<String>, DecodingKey)>,
    /// From a key set: a token's `kid` picks its key.
    by_kid: bool,
    /// The checks for a token signed with an RSA algorithm, if `[auth] algorithms` has
    /// one, and for one signed with an EC algorithm: the library holds a key to the
    /// algorithms of its own family.
    rsa: Option<Validation>,
    ec: Option<Validation>,
}

/// Parses an algorithm name accepted in `[auth].algorithms`.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    let alg = match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        other => {
            return Err(format!(
                "unsupported algorithm {other:?}: use RS256/384/512, PS256/384/512, ES256 or ES384 \
                 (never none or HS*)"
            ))
        }
    };
    Ok(alg)
}

/// `[auth] algorithms`: RSA ones and EC ones mix only with a key set (one `public_key` is
/// of one family; see [`rsa_family`]).
fn algorithms(auth: &AuthConfig) -> Result<Vec<Algorithm>, (&'static str, String)> {
    let algorithms: Vec<Algorithm> = auth
        .algorithms
        .iter()
        .map(|a| parse_algorithm(a))
        .collect::<Result<_, _>>()
        .map_err(|e| ("algorithms", e))?;
    let Some(first) = algorithms.first() else {
        return Err(("algorithms", "at least one algorithm is required".into()));
    };
    let rsa = is_rsa(*first);
    let key_set = auth.jwks.is_some() || auth.jwks_url.is_some();
    if !key_set && algorithms.iter().any(|a| is_rsa(*a) != rsa) {
        return Err((
            "algorithms",
            "RSA and EC algorithms cannot share one public_key: give a key set (jwks or jwks_url) \
             holding keys of both"
                .into(),
        ));
    }
    Ok(algorithms)
}

/// Whether `algorithms` of one `public_key` (checked by [`algorithms`]: all of one
/// family) are RSA ones, else EC.
fn rsa_family(algorithms: &[Algorithm]) -> bool {
    algorithms.first().is_some_and(|a| is_rsa(*a))
}

/// The RSA key sizes, in bits, the verifier takes (aws-lc's bounds).
const RSA_KEY_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;

fn is_rsa(alg: Algorithm) -> bool {
    matches!(
        alg,
        Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512
    )
}

impl Verifier {
    /// Builds a verifier from `[auth]`: reads the public key or key set file, or fetches
    /// the key set at `jwks_url` (waiting for it).
    ///
    /// Errors name the offending key (`public_key`, `jwks`, `jwks_url` or `algorithms`)
    /// and the problem.
    pub fn from_config(auth: &AuthConfig) -> Result<Self, (&'static str, String)> {
        let algorithms = algorithms(auth)?;
        let (keys, source) = match (&auth.jwks, &auth.jwks_url) {
            (Some(path), _) => {
                let shown = path.display().to_string();
                let text = read(path).map_err(|e| ("jwks", e))?;
                (
                    key_set(&text, &shown, &algorithms).map_err(|e| ("jwks", e))?,
                    shown,
                )
            }
            (None, Some(url)) => {
                let body = crate::jwks_fetch::fetch_blocking(url, auth.jwks_ca.as_deref())
                    .map_err(|e| ("jwks_url", format!("{url}: {e}")))?;
                (
                    key_set(&body, url, &algorithms).map_err(|e| ("jwks_url", e))?,
                    url.clone(),
                )
            }
            (None, None) => {
                let key = pem_key(&auth.public_key, &algorithms)?;
                return Ok(Self::with_keys(auth, algorithms, vec![(None, key)], false));
            }
        };
        let verifier = Self::with_keys(auth, algorithms, keys, true);
        // Which keys are in force, so that a rotation's reload can be checked.
        tracing::info!(jwks = %source, kids = ?verifier.kids(), "JWT key set loaded");
        Ok(verifier)
    }

    /// A verifier for the same `[auth]` settings with the key set in `body`, freshly
    /// fetched from `jwks_url`.
    pub fn with_key_set(auth: &AuthConfig, body: &[u8]) -> Result<Self, (&'static str, String)> {
        let algorithms = algorithms(auth)?;
        let source = auth.jwks_url.as_deref().unwrap_or("key set");
        let keys = key_set(body, source, &algorithms).map_err(|e| ("jwks_url", e))?;
        Ok(Self::with_keys(auth, algorithms, keys, true))
    }

    fn with_keys(
        auth: &AuthConfig,
        algorithms: Vec<Algorithm>,
        keys: Vec<(Option<String>, DecodingKey)>,
        by_kid: bool,
    ) -> Self {
        let validation = |rsa: bool| {
            let algorithms: Vec<Algorithm> = algorithms
                .iter()
                .copied()
                .filter(|a| is_rsa(*a) == rsa)
                .collect();
            if algorithms.is_empty() {
                return None;
            }
            let mut validation = Validation {
                algorithms,
                leeway: auth.leeway_secs,
                validate_exp: true,
                validate_nbf: true,
                ..Validation::default()
            };
            validation.set_issuer(&[&auth.issuer]);
            validation.set_audience(&[&auth.audience]);
            validation.set_required_spec_claims(&["exp", "iss", "aud"]);
            Some(validation)
        };
        Self {
            auth: auth.clone(),
            keys,
            by_kid,
            rsa: validation(true),
            ec: validation(false),
        }
    }

    /// The `[auth]` settings this verifier was built from.
    pub fn auth(&self) -> &AuthConfig {
        &self.auth
    }

    /// The `kid`s of the keys in force (empty strings for keys without one).
    pub fn kids(&self) -> Vec<&str> {
        self.keys
            .iter()
            .map(|(k, _)| k.as_deref().unwrap_or(""))
            .collect()
    }

    /// Verifies a bare token; returns its claims.
    pub fn verify(&self, token: &str) -> Result<Map<String, Value>, AuthError> {
        use jsonwebtoken::errors::ErrorKind as K;
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        // The checks and keys of the token's algorithm family; none for an algorithm not
        // accepted (HS*, none, one of a family `[auth] algorithms` does not name).
        let family = header.alg.family();
        let validation = match family {
            AlgorithmFamily::Rsa => self.rsa.as_ref(),
            AlgorithmFamily::Ec => self.ec.as_ref(),
            _ => None,
        }
        .ok_or(AuthError::Malformed)?;
        let decode = |key: &DecodingKey| {
            jsonwebtoken::decode::<Map<String, Value>>(token, key, validation).map_err(|e| match e
                .kind()
            {
                K::InvalidSignature => AuthError::BadSignature,
                K::ExpiredSignature => AuthError::Expired,
                K::ImmatureSignature => AuthError::NotYetValid,
                K::InvalidIssuer => AuthError::WrongIssuer,
                K::InvalidAudience => AuthError::WrongAudience,
                K::MissingRequiredClaim(c) | K::InvalidClaimFormat(c) => {
                    AuthError::BadClaim(c.clone())
                }
                _ => AuthError::Malformed,
            })
        };
        let kid = if self.by_kid { header.kid } else { None };
        let claims = match kid {
            // The key it names, and no other; when the set has no such key, its keys without
            // a `kid` (RFC 7517 makes `kid` optional; Envoy tries them too). A token none of
            // them verifies names a key the set lacks: `UnknownKey`, which a `jwks_url`
            // answers by fetching the set again.
            Some(kid) => match self.keys.iter().find(|(k, _)| k.as_deref() == Some(&*kid)) {
                Some((_, key)) => decode(key)?.claims,
                None => {
                    self.first_verified(family, |k| k.is_none(), decode)
                        .map_err(|e| match e {
                            AuthError::BadSignature => AuthError::UnknownKey,
                            other => other,
                        })?
                        .claims
                }
            },
            // No `kid` (or one key): each key of its family in turn.
            None => self.first_verified(family, |_| true, decode)?.claims,
        };
        // jsonwebtoken also takes an array `iss` holding the issuer; RFC 7519 section 4.1.1
        // makes it one string.
        if !claims.get("iss").is_some_and(Value::is_string) {
            return Err(AuthError::WrongIssuer);
        }
        self.check_scopes(&claims, &self.auth.required_scopes)?;
        Ok(claims)
    }

    /// Tries the keys of `family` whose `kid` passes `which`, in order, until one's
    /// signature verifies (or the token fails on something other than its signature).
    /// `BadSignature` when none verifies it, or there is none to try.
    fn first_verified<T>(
        &self,
        family: AlgorithmFamily,
        which: impl Fn(&Option<String>) -> bool,
        decode: impl Fn(&DecodingKey) -> Result<T, AuthError>,
    ) -> Result<T, AuthError> {
        let mut result = Err(AuthError::BadSignature);
        let keys = self
            .keys
            .iter()
            .filter(|(kid, k)| k.family() == family && which(kid));
        for (_, key) in keys {
            result = decode(key);
            if !matches!(result, Err(AuthError::BadSignature)) {
                break;
            }
        }
        result
    }

    /// Checks that verified `claims` hold every scope of `required` (a backend's own,
    /// beyond `[auth] required_scopes`) in the scope claim.
    pub fn check_scopes(
        &self,
        claims: &Map<String, Value>,
        required: &[String],
    ) -> Result<(), AuthError> {
        let granted = scopes(claims.get(&self.auth.scope_claim));
        match required.iter().find(|s| !granted.contains(s.as_str())) {
            Some(missing) => Err(AuthError::MissingScope(missing.clone())),
            None => Ok(()),
        }
    }
}

/// When a verified token stops being accepted: the end of second `exp` + `leeway`. The
/// upgrade check compares whole seconds (a token is still good while the clock reads that
/// second, and a fractional `exp` is rounded), so a session never ends before the instant
/// its upgrade would have been refused. `None` when `exp` is not a number of seconds (the
/// verifier refuses such a token, so this does not happen for verified claims).
pub fn expires_at(claims: &Map<String, Value>, leeway: u64) -> Option<std::time::SystemTime> {
    let exp = claims.get("exp")?;
    let secs = exp.as_u64().or_else(|| {
        exp.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f.round() as u64)
    })?;
    let end = secs.checked_add(leeway)?.checked_add(1)?;
    std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(end))
}

/// What a verified claim names (a user, a tenant, a room): a string as it is, a number as
/// its decimal text; other kinds name nothing. What `[auth] subject_claim` and a pool's
/// `hash_key = "claim:NAME"` read.
pub fn claim_name<'c>(claims: &'c Map<String, Value>, claim: &str) -> Option<Cow<'c, str>> {
    match claims.get(claim)? {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        _ => None,
    }
}

/// The identity headers `[auth.forward_claims]` asks for, from verified `claims`: strings
/// as they are, arrays of strings joined with spaces, other values as JSON. Values that
/// cannot be header text are left out.
pub fn claim_headers(
    forward: &std::collections::BTreeMap<String, String>,
    claims: &Map<String, Value>,
) -> Vec<(String, String)> {
    forward
        .iter()
        .filter_map(|(header, claim)| {
            let value = match claims.get(claim)? {
                Value::String(s) => s.clone(),
                Value::Array(items) => items
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| v.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
                other => other.to_string(),
            };
            value
                .bytes()
                .all(field_value_byte)
                .then(|| (header.clone(), value))
        })
        .collect()
}

/// A byte a header value may hold (RFC 9110 section 5.5): visible ASCII, space, tab, and
/// the octets of non-ASCII text; no other control character.
fn field_value_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

/// Scopes from a claim that is a space-separated string or an array of strings.
fn scopes(claim: Option<&Value>) -> HashSet<&str> {
    match claim {
        Some(Value::String(s)) => s.split_ascii_whitespace().collect(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => HashSet::new(),
    }
}

/// The one key of `public_key`: RSA or EC as the algorithms say, and one they can
/// verify with (a key they cannot use would refuse every token as badly signed).
fn pem_key(path: &Path, algorithms: &[Algorithm]) -> Result<DecodingKey, (&'static str, String)> {
    let rsa = rsa_family(algorithms);
    let pem = read(path).map_err(|e| ("public_key", e))?;
    // jsonwebtoken takes a private key here too, and then no signature ever verifies.
    if pem.windows(11).any(|w| w == b"PRIVATE KEY") {
        return Err((
            "public_key",
            format!(
                "{}: a private key; give its public half (openssl pkey -in KEY -pubout)",
                path.display()
            ),
        ));
    }
    if rsa {
        DecodingKey::from_rsa_pem(&pem)
    } else {
        DecodingKey::from_ec_pem(&pem)
    }
    .map_err(|e| {
        let kind = if rsa { "an RSA" } else { "an EC" };
        (
            "public_key",
            format!("{}: not {kind} public key in PEM: {e}", path.display()),
        )
    })
    .and_then(|key| {
        // Only a SubjectPublicKeyInfo ("PUBLIC KEY") is looked into; a PKCS#1 RSA key
        // ("RSA PUBLIC KEY") is taken as it is.
        use rustls::pki_types::pem::PemObject;
        match rustls::pki_types::SubjectPublicKeyInfoDer::from_pem_slice(&pem) {
            Ok(spki) => unfit_spki(spki.as_ref(), algorithms).map_or(Ok(key), |why| {
                Err(("public_key", format!("{}: {why}", path.display())))
            }),
            Err(_) => Ok(key),
        }
    })
}

/// Why the algorithms cannot verify with the key in `spki` (DER), if they cannot: an RSA
/// key outside the 2,048 to 8,192 bits the verifier takes, an EC key on a curve none of
/// them uses.
fn unfit_spki(spki: &[u8], algorithms: &[Algorithm]) -> Option<String> {
    if rsa_family(algorithms) {
        return aws_lc_rs::rsa::PublicEncryptingKey::from_der(spki)
            .err()
            .map(|e| {
                format!(
                    "RSA key refused ({e}): RS and PS algorithms verify with keys of {} to {} bits",
                    RSA_KEY_BITS.start(),
                    RSA_KEY_BITS.end()
                )
            });
    }
    let curve = CURVES
        .iter()
        .find(|(_, oid, _)| spki.windows(oid.len()).any(|w| w == *oid))?;
    unfit_curve(curve.0, algorithms)
}

/// EC curves: name, the DER of its object identifier, the algorithm that uses it.
const CURVES: &[(&str, &[u8], Option<Algorithm>)] = &[
    (
        "P-256",
        &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
        Some(Algorithm::ES256),
    ),
    (
        "P-384",
        &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
        Some(Algorithm::ES384),
    ),
    ("P-521", &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23], None),
];

/// Why none of `algorithms` verifies with a key on `curve`, if none does.
fn unfit_curve(curve: &str, algorithms: &[Algorithm]) -> Option<String> {
    let usable = CURVES
        .iter()
        .find(|(name, _, _)| *name == curve)
        .and_then(|(_, _, alg)| *alg)
        .is_some_and(|alg| algorithms.contains(&alg));
    (!usable).then(|| {
        let names: Vec<String> = algorithms.iter().map(|a| format!("{a:?}")).collect();
        format!(
            "an EC key on {curve}, which none of the algorithms ({}) verifies with",
            names.join(", ")
        )
    })
}

/// The signing keys of the JSON Web Key Set `text` (from `source`, named in errors) that
/// the algorithms can use (RSA, EC, or both when they name both families), with their
/// `kid`s. Keys for encryption (`"use": "enc"`), of a family the algorithms do not name
/// or of another kind (symmetric `oct` keys above all: never an HMAC secret) are left
/// out; a set with none left, or two keys with one `kid`, is refused.
fn key_set(
    text: &[u8],
    source: &str,
    algorithms: &[Algorithm],
) -> Result<Vec<(Option<String>, DecodingKey)>, String> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
    let rsa = algorithms.iter().any(|a| is_rsa(*a));
    let ec = algorithms.iter().any(|a| !is_rsa(*a));
    let set: JwkSet = serde_json::from_slice(text)
        .map_err(|e| format!("{source}: not a JSON Web Key Set: {e}"))?;
    let mut keys: Vec<(Option<String>, DecodingKey)> = Vec::new();
    for jwk in &set.keys {
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => rsa,
            AlgorithmParameters::EllipticCurve(_) => ec,
            _ => false,
        };
        let signing = matches!(
            jwk.common.public_key_use,
            None | Some(PublicKeyUse::Signature)
        );
        if !family || !signing {
            continue;
        }
        let kid = jwk.common.key_id.clone();
        // A key the algorithms cannot verify with is left out, as one of the other family
        // is: a provider may still publish an old key beside the one it signs with.
        let unfit = match &jwk.algorithm {
            AlgorithmParameters::RSA(p) => {
                use base64::Engine;
                let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p.n.trim_end_matches('='))
                    .unwrap_or_default();
                let leading = n.iter().take_while(|b| **b == 0).count();
                let bits = n.get(leading).map_or(0, |first| {
                    (n.len() - leading - 1) * 8 + (8 - first.leading_zeros() as usize)
                });
                (!RSA_KEY_BITS.contains(&bits)).then(|| {
                    format!(
                        "an RSA key of {bits} bits (the verifier takes {} to {})",
                        RSA_KEY_BITS.start(),
                        RSA_KEY_BITS.end()
                    )
                })
            }
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => unfit_curve("P-256", algorithms),
                EllipticCurve::P384 => unfit_curve("P-384", algorithms),
                EllipticCurve::P521 => unfit_curve("P-521", algorithms),
                _ => unfit_curve("another curve", algorithms),
            },
            _ => None,
        };
        if let Some(why) = unfit {
            tracing::warn!(source, kid = kid.as_deref().unwrap_or(""), problem = %why, "key set: a key left out");
            continue;
        }
        if kid.is_some() && keys.iter().any(|(k, _)| *k == kid) {
            return Err(format!(
                "{source}: two keys with kid {:?}",
                kid.unwrap_or_default()
            ));
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| {
            format!(
                "{source}: key {:?} unusable: {e}",
                kid.clone().unwrap_or_default()
            )
        })?;
        keys.push((kid, key));
    }
    if keys.is_empty() {
        let family = match (rsa, ec) {
            (true, true) => "RSA or EC",
            (true, false) => "RSA",
            _ => "EC",
        };
        return Err(format!(
            "{source}: no {family} signing key (the algorithms need one)"
        ));
    }
    Ok(keys)
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_the_algorithms_cannot_verify_with_are_left_out_of_a_key_set() {
        use base64::Engine;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let rsa = |bits: usize| {
            let mut n = vec![0xc5u8; bits / 8];
            n[bits / 8 - 1] |= 1;
            json!({ "kty": "RSA", "kid": format!("rsa{bits}"), "n": b64(&n), "e": "AQAB" })
        };
        let p256 = json!({ "kty": "EC", "kid": "p256", "crv": "P-256", "x": b64(&[1; 32]), "y": b64(&[2; 32]) });
        let set = |keys: Vec<Value>| json!({ "keys": keys }).to_string();
        let kids = |text: String, algorithms: &[Algorithm]| {
            key_set(text.as_bytes(), "test", algorithms).map(|keys| {
                keys.into_iter()
                    .filter_map(|(kid, _)| kid)
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(
            kids(
                set(vec![rsa(1024), rsa(2048), rsa(9216)]),
                &[Algorithm::RS256]
            ),
            Ok(vec!["rsa2048".to_owned()])
        );
        let refused = kids(set(vec![p256]), &[Algorithm::ES384]);
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("no EC signing key")),
            "{refused:?}"
        );
    }

    #[test]
    fn scopes_accept_string_and_array() {
        let s = json!("read admin");
        assert!(scopes(Some(&s)).contains("admin"));
        let a = json!(["admin", "x"]);
        assert!(scopes(Some(&a)).contains("admin"));
        assert!(scopes(Some(&json!(5))).is_empty());
    }

    #[test]
    fn claim_values_that_are_not_header_text_are_left_out() {
        let forward: std::collections::BTreeMap<String, String> = [
            ("X-Name", "name"),
            ("X-Mail", "email"),
            ("X-Team", "team"),
            ("X-Note", "note"),
        ]
        .into_iter()
        .map(|(h, c)| (h.to_owned(), c.to_owned()))
        .collect();
        let claims = json!({
            "name": "Jos\u{e9}\tG.",
            "email": "ali\u{1}ce@example.com",
            "team": "a\u{7f}b",
            "note": "two\r\nlines",
        });
        let headers = claim_headers(&forward, claims.as_object().unwrap_or(&Map::new()));
        assert_eq!(
            headers,
            vec![("X-Name".to_owned(), "Jos\u{e9}\tG.".to_owned())],
            "control characters other than tab are not header text; non-ASCII is"
        );
    }

    #[test]
    fn symmetric_and_none_algorithms_are_refused_in_config() {
        assert!(parse_algorithm("HS256").is_err());
        assert!(parse_algorithm("none").is_err());
        assert!(parse_algorithm("RS256").is_ok());
    }

    #[test]
    fn expiry_is_the_end_of_the_last_second_the_upgrade_check_accepts() {
        let at = |exp: Value, leeway| {
            let claims = json!({ "exp": exp });
            expires_at(claims.as_object().unwrap_or(&Map::new()), leeway)
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
        };
        // The upgrade check takes a token while the clock's second is at most exp + leeway.
        assert_eq!(at(json!(1_700_000_000u64), 5), Some(1_700_000_006));
        // A fractional exp is rounded, as the upgrade check rounds it.
        assert_eq!(at(json!(1_700_000_000.7), 0), Some(1_700_000_002));
        assert_eq!(at(json!(1_700_000_000.4), 0), Some(1_700_000_001));
        assert_eq!(at(json!("1700000000"), 5), None, "not a number");
        assert_eq!(at(json!(-1), 0), None);
        assert_eq!(at(json!(u64::MAX), 1), None, "overflow");
    }
}
