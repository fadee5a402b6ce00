//! Authentication: the bearer token, checked as a JWT against pinned algorithms and a key.
//!
//! Only asymmetric algorithms of the configured key's family are accepted, so neither
//! `alg: none` nor an HS256 token "signed" with the public key can pass. `exp`, `iss` and
//! `aud` are required; `nbf` is checked when present; the clock leeway is small and set.

use std::collections::HashSet;
use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
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
    key: DecodingKey,
    validation: Validation,
    scope_claim: String,
    required_scopes: Vec<String>,
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
    /// Builds a verifier from `[auth]`, reading the public key file.
    ///
    /// Errors name the offending key (`public_key` or `algorithms`) and the problem.
    pub fn from_config(auth: &AuthConfig) -> Result<Self, (&'static str, String)> {
        let algorithms: Vec<Algorithm> = auth
            .algorithms
            .iter()
            .map(|a| parse_algorithm(a))
            .collect::<Result<_, _>>()
            .map_err(|e| ("algorithms", e))?;
        let rsa = algorithms.iter().any(|a| is_rsa(*a));
        if rsa && algorithms.iter().any(|a| !is_rsa(*a)) {
            return Err((
                "algorithms",
                "RSA and EC algorithms cannot share one public_key".into(),
            ));
        }
        let pem = read(&auth.public_key).map_err(|e| ("public_key", e))?;
        let key = if rsa {
            DecodingKey::from_rsa_pem(&pem)
        } else {
            DecodingKey::from_ec_pem(&pem)
        }
        .map_err(|e| {
            let kind = if rsa { "an RSA" } else { "an EC" };
            (
                "public_key",
                format!(
                    "{}: not {kind} public key in PEM: {e}",
                    auth.public_key.display()
                ),
            )
        })?;

        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.leeway = auth.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&auth.issuer]);
        validation.set_audience(&[&auth.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        Ok(Self {
            key,
            validation,
            scope_claim: auth.scope_claim.clone(),
            required_scopes: auth.required_scopes.clone(),
        })
    }

    /// Verifies a bare token; returns its claims.
    pub fn verify(&self, token: &str) -> Result<Map<String, Value>, AuthError> {
        use jsonwebtoken::errors::ErrorKind as K;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| match e.kind() {
            K::InvalidSignature => AuthError::BadSignature,
            K::ExpiredSignature => AuthError::Expired,
            K::ImmatureSignature => AuthError::NotYetValid,
            K::InvalidIssuer => AuthError::WrongIssuer,
            K::InvalidAudience => AuthError::WrongAudience,
            K::MissingRequiredClaim(c) | K::InvalidClaimFormat(c) => AuthError::BadClaim(c.clone()),
            _ => AuthError::Malformed,
        })?;
        let claims = data.claims;
        let granted = scopes(claims.get(&self.scope_claim));
        if let Some(missing) = self
            .required_scopes
            .iter()
            .find(|s| !granted.contains(s.as_str()))
        {
            return Err(AuthError::MissingScope(missing.clone()));
        }
        Ok(claims)
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
            let clean = !value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0);
            clean.then(|| (header.clone(), value))
        })
        .collect()
}

/// Scopes from a claim that is a space-separated string or an array of strings.
fn scopes(claim: Option<&Value>) -> HashSet<&str> {
    match claim {
        Some(Value::String(s)) => s.split_ascii_whitespace().collect(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => HashSet::new(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scopes_accept_string_and_array() {
        let s = json!("read admin");
        assert!(scopes(Some(&s)).contains("admin"));
        let a = json!(["admin", "x"]);
        assert!(scopes(Some(&a)).contains("admin"));
        assert!(scopes(Some(&json!(5))).is_empty());
    }

    #[test]
    fn symmetric_and_none_algorithms_are_refused_in_config() {
        assert!(parse_algorithm("HS256").is_err());
        assert!(parse_algorithm("none").is_err());
        assert!(parse_algorithm("RS256").is_ok());
    }
}
