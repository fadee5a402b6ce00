//! Token verification past the signature: the input is a JWT's claims segment (raw bytes,
//! usually JSON), which the harness signs with the repo's ES256 key so that
//! `Verifier::verify` reaches claim decoding and validation (`exp`, `nbf`, `iss`, `aud`,
//! scopes). Whatever it accepts must really satisfy the config.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use base64::Engine as _;
use gateway::auth::Verifier;
use gateway::config::AuthConfig;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use wsgate_fuzz::REPO;

struct Keys {
    verifier: Verifier,
    signer: EncodingKey,
    config: AuthConfig,
}

fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| {
        let config = AuthConfig {
            public_key: PathBuf::from(REPO).join("certs/jwt-es256-public.pem"),
            algorithms: vec!["ES256".into()],
            ..Default::default()
        };
        let verifier = match Verifier::from_config(&config) {
            Ok(v) => v,
            Err((key, e)) => panic!("fuzz setup: [auth].{key}: {e}"),
        };
        let pem = std::fs::read(PathBuf::from(REPO).join("certs/jwt-es256-private.pem"))
            .expect("fuzz setup: certs/jwt-es256-private.pem");
        let signer = EncodingKey::from_ec_pem(&pem).expect("fuzz setup: ES256 private key");
        Keys {
            verifier,
            signer,
            config,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let k = keys();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let message = format!(
        "{}.{}",
        b64.encode(br#"{"alg":"ES256","typ":"JWT"}"#),
        b64.encode(data)
    );
    let Ok(signature) = jsonwebtoken::crypto::sign(message.as_bytes(), &k.signer, Algorithm::ES256)
    else {
        return;
    };
    let token = format!("{message}.{signature}");
    let Ok(claims) = k.verifier.verify(&token) else {
        return;
    };
    // Accepted: the claims must meet the config.
    let now = jsonwebtoken::get_current_timestamp() as f64;
    let leeway = k.config.leeway_secs as f64;
    assert_eq!(
        claims.get("iss").and_then(Value::as_str),
        Some(k.config.issuer.as_str())
    );
    let aud_ok = match claims.get("aud") {
        Some(Value::String(s)) => *s == k.config.audience,
        Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(&k.config.audience)),
        _ => false,
    };
    assert!(
        aud_ok,
        "accepted without the audience: {:?}",
        claims.get("aud")
    );
    let exp = claims.get("exp").and_then(Value::as_f64);
    assert!(
        exp.is_some_and(|e| e + leeway >= now),
        "accepted with exp {:?}",
        claims.get("exp")
    );
    if let Some(nbf) = claims.get("nbf").and_then(Value::as_f64) {
        assert!(nbf - leeway <= now + 1.0, "accepted before nbf {nbf}");
    }
    let scopes: Vec<&str> = match claims.get(&k.config.scope_claim) {
        Some(Value::String(s)) => s.split_ascii_whitespace().collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    for need in &k.config.required_scopes {
        assert!(
            scopes.contains(&need.as_str()),
            "accepted without scope {need}"
        );
    }
});
