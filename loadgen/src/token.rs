//! Mints the demo client's JWT: RS256 with the Ballerina sample's claims.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

/// The `kid` header of the sample's token (the gateway does not select keys by it).
pub const SAMPLE_KID: &str = "NTAxZmMxNDMyZDg3MTU1ZGM0MzEzODJhZWI4NDNlZDU1OGFkNjFiMQ";

/// How long a minted sample token stays valid.
pub const SAMPLE_LIFETIME_SECS: u64 = 3600;

/// The claims of the sample's client token, issued now and valid for an hour.
///
/// `sub: ballerina`, `iss: wso2`, `aud: [ballerina, ballerina.org, ballerina.io]`, a fresh
/// `jti`, `scp: admin`, `iat` now and `exp` one hour later.
pub fn sample_claims() -> serde_json::Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    json!({
        "sub": "ballerina",
        "iss": "wso2",
        "aud": ["ballerina", "ballerina.org", "ballerina.io"],
        "jti": uuid::Uuid::new_v4().to_string(),
        "scp": "admin",
        "iat": now,
        "exp": now + SAMPLE_LIFETIME_SECS,
    })
}

/// Signs `claims` with RS256 under the RSA private key in `key_pem` (PKCS#1 or PKCS#8 PEM).
///
/// The header carries [`SAMPLE_KID`] as `kid`, as the sample's token does.
pub fn mint(claims: &serde_json::Value, key_pem: &[u8]) -> anyhow::Result<String> {
    let key = EncodingKey::from_rsa_pem(key_pem).context("not an RSA private key in PEM form")?;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(SAMPLE_KID.to_owned());
    jsonwebtoken::encode(&header, claims, &key).context("signing the token")
}

/// A token with [`sample_claims`], signed by `key_pem`.
pub fn mint_sample(key_pem: &[u8]) -> anyhow::Result<String> {
    mint(&sample_claims(), key_pem)
}

/// Where a client's bearer token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// Send no `Authorization` header.
    None,
    /// Send this token as is.
    Given(String),
    /// Mint a sample token with the RSA private key in this PEM file.
    Mint(std::path::PathBuf),
}

impl TokenSource {
    /// The token to send, if any (minting reads the key file).
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        match self {
            TokenSource::None => Ok(None),
            TokenSource::Given(t) => Ok(Some(t.clone())),
            TokenSource::Mint(path) => mint_sample(&signing_key(path)?)
                .with_context(|| format!("minting a token with {}", path.display()))
                .map(Some),
        }
    }

    /// `n` sample tokens whose subjects are `loadgen-0` to `loadgen-<n-1>`; only a
    /// minting source can make them.
    pub fn tokens_for_subjects(&self, n: u32) -> anyhow::Result<Vec<String>> {
        let TokenSource::Mint(path) = self else {
            anyhow::bail!("needs loadgen to mint its tokens (not --token or --no-token)");
        };
        let pem = signing_key(path)?;
        (0..n)
            .map(|i| {
                let mut claims = sample_claims();
                claims["sub"] = serde_json::Value::from(format!("loadgen-{i}"));
                mint(&claims, &pem)
                    .with_context(|| format!("minting a token with {}", path.display()))
            })
            .collect()
    }
}

/// The PEM of the RSA private key at `path`, read for minting tokens.
fn signing_key(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("reading the JWT signing key {}", path.display()))?;
    // jsonwebtoken takes any PEM block as an encoding key (a public key, a certificate)
    // and fails only at signing, with a bare "signature error": say what the file holds
    // instead.
    if let Some(what) = not_a_private_key(&pem) {
        anyhow::bail!(
            "{} holds {what}: --jwt-key needs the RSA private key",
            path.display()
        );
    }
    Ok(pem)
}

/// What the first PEM block in `pem` holds, when it is not a private key: "a public key"
/// (`PUBLIC KEY`, `RSA PUBLIC KEY`, the half of the pair that cannot sign) or its label
/// ("a CERTIFICATE"). `None` for a private key, and for what is not PEM at all (the key
/// parser names that).
fn not_a_private_key(pem: &[u8]) -> Option<String> {
    const BEGIN: &str = "-----BEGIN ";
    let text = std::str::from_utf8(pem).ok()?;
    let rest = &text[text.find(BEGIN)? + BEGIN.len()..];
    let (label, _) = rest.split_once("-----")?;
    let label = label.trim();
    if label.ends_with("PRIVATE KEY") {
        None
    } else if label.ends_with("PUBLIC KEY") {
        Some("a public key".to_owned())
    } else {
        Some(format!("a {label}, not a key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    fn certs() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../certs")
    }

    #[test]
    fn sample_token_verifies_with_the_public_key() -> anyhow::Result<()> {
        let token = mint_sample(&std::fs::read(certs().join("jwt-private.pem"))?)?;
        let key = DecodingKey::from_rsa_pem(&std::fs::read(certs().join("jwt-public.pem"))?)?;
        let mut v = Validation::new(Algorithm::RS256);
        v.set_issuer(&["wso2"]);
        v.set_audience(&["ballerina"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &v)?;
        assert_eq!(data.claims["sub"], "ballerina");
        assert_eq!(data.claims["scp"], "admin");
        assert_eq!(data.header.kid.as_deref(), Some(SAMPLE_KID));
        let exp = data.claims["exp"].as_u64().unwrap_or(0);
        let iat = data.claims["iat"].as_u64().unwrap_or(0);
        assert_eq!(exp - iat, SAMPLE_LIFETIME_SECS);
        Ok(())
    }

    #[test]
    fn only_a_private_key_is_taken_for_signing() -> anyhow::Result<()> {
        let public = Some("a public key".to_owned());
        for (file, holds) in [
            ("jwt-public.pem", public.clone()),
            ("jwt-es256-public.pem", public.clone()),
            ("jwt-private.pem", None),
            ("server.crt", Some("a CERTIFICATE, not a key".to_owned())),
        ] {
            assert_eq!(
                not_a_private_key(&std::fs::read(certs().join(file))?),
                holds,
                "{file}"
            );
        }
        assert_eq!(
            not_a_private_key(b"-----BEGIN RSA PUBLIC KEY-----\nAAAA\n"),
            public
        );
        assert_eq!(
            not_a_private_key(b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n"),
            None
        );
        assert_eq!(not_a_private_key(b"not a key"), None);
        assert_eq!(not_a_private_key(&[0xff, 0xfe, 0x30]), None);
        Ok(())
    }

    #[test]
    fn a_non_rsa_key_is_an_error_not_a_panic() {
        assert!(mint_sample(b"not a key").is_err());
    }
}
