//! JWT verifiers and tokens for the benchmarks, from the dev keys in `certs/`.
//!
//! RS256 uses `jwt-private.pem`/`jwt-public.pem` (the gateway's default), ES256 the
//! `jwt-es256-*` pair. Tokens carry the Ballerina sample's claims, so they pass every
//! check the gateway's default `[auth]` makes.

use std::path::PathBuf;

use gateway::auth::Verifier;
use gateway::config::AuthConfig;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

/// The workspace's `certs/` folder.
pub fn certs_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../certs"))
}

/// The key pair files (private, public) for `alg`: RS256 or ES256.
fn key_files(alg: Algorithm) -> Result<(PathBuf, PathBuf), String> {
    let (private, public) = match alg {
        Algorithm::RS256 => ("jwt-private.pem", "jwt-public.pem"),
        Algorithm::ES256 => ("jwt-es256-private.pem", "jwt-es256-public.pem"),
        other => return Err(format!("no dev key for {other:?}")),
    };
    Ok((certs_dir().join(private), certs_dir().join(public)))
}

/// A verifier as the gateway builds it from its default `[auth]`, accepting only `alg`.
pub fn verifier(alg: Algorithm) -> Result<Verifier, String> {
    let (_, public) = key_files(alg)?;
    let auth = AuthConfig {
        algorithms: vec![format!("{alg:?}")],
        public_key: public,
        ..AuthConfig::default()
    };
    Verifier::from_config(&auth).map_err(|(key, problem)| format!("[auth].{key}: {problem}"))
}

/// The sample client's claims (the load generator's), with a fixed `jti`.
pub fn sample_claims(jti: &str) -> Value {
    let mut claims = loadgen::token::sample_claims();
    claims["jti"] = Value::from(jti);
    claims
}

/// Signs `claims` with `alg` (RS256 or ES256) under the dev private key.
pub fn mint(alg: Algorithm, claims: &Value) -> Result<String, String> {
    let (private, _) = key_files(alg)?;
    let pem = std::fs::read(&private).map_err(|e| format!("reading {}: {e}", private.display()))?;
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        _ => EncodingKey::from_rsa_pem(&pem),
    }
    .map_err(|e| format!("{}: {e}", private.display()))?;
    jsonwebtoken::encode(&Header::new(alg), claims, &key).map_err(|e| format!("signing: {e}"))
}

/// `token`'s header and claims under `donor`'s signature: well formed, signed by the
/// right key, but not over these bytes — the signature check must reject it.
pub fn with_foreign_signature(token: &str, donor: &str) -> Result<String, String> {
    let body = token.rsplit_once('.').ok_or("not a JWT")?.0;
    let signature = donor.rsplit_once('.').ok_or("not a JWT")?.1;
    Ok(format!("{body}.{signature}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway::auth::AuthError;

    #[test]
    fn minted_tokens_verify_and_spliced_signatures_do_not() -> Result<(), String> {
        for alg in [Algorithm::RS256, Algorithm::ES256] {
            let v = verifier(alg)?;
            let good = mint(alg, &sample_claims("a"))?;
            let other = mint(alg, &sample_claims("b"))?;
            assert!(v.verify(&good).is_ok(), "{alg:?} token verifies");
            let bad = with_foreign_signature(&good, &other)?;
            assert_eq!(
                v.verify(&bad).err(),
                Some(AuthError::BadSignature),
                "{alg:?}"
            );
        }
        Ok(())
    }
}
