//! Upgrade-request checks and credential parsing, as one client request reaches them:
//! `checks::check`, `credentials::extract` and the origin check (browser sources off, and
//! all on: query, subprotocol, cookie, an origin list with a wildcard entry),
//! `credentials::bearer`, and `auth::Verifier::verify` on whatever token was found
//! (with the repo's RSA key, and with its ES256 key).
//!
//! Input: an HTTP/1.1 request head as a client sends it (what hyper would refuse with a
//! 400 before the gateway sees it is skipped, except by `bearer`).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use gateway::auth::Verifier;
use gateway::config::{AuthConfig, BrowserConfig};
use gateway::{checks, credentials};
use libfuzzer_sys::fuzz_target;
use wsgate_fuzz::{http_request, REPO};

fn verifiers() -> &'static [Verifier; 2] {
    static V: OnceLock<[Verifier; 2]> = OnceLock::new();
    V.get_or_init(|| {
        let rsa = AuthConfig {
            public_key: PathBuf::from(REPO).join("certs/jwt-public.pem"),
            ..Default::default()
        };
        let ec = AuthConfig {
            public_key: PathBuf::from(REPO).join("certs/jwt-es256-public.pem"),
            algorithms: vec!["ES256".into()],
            ..Default::default()
        };
        let build = |c: &AuthConfig| match Verifier::from_config(c) {
            Ok(v) => v,
            Err((key, e)) => panic!("fuzz setup: [auth].{key}: {e}"),
        };
        [build(&rsa), build(&ec)]
    })
}

fn browsers() -> &'static [BrowserConfig; 2] {
    static B: OnceLock<[BrowserConfig; 2]> = OnceLock::new();
    B.get_or_init(|| {
        [
            BrowserConfig::default(),
            BrowserConfig {
                id_query: Some("id".into()),
                token_query: Some("access_token".into()),
                token_protocol_prefix: Some("bearer.".into()),
                allowed_origins: vec![
                    "https://app.example.com".into(),
                    "https://*.example.com:8443".into(),
                ],
                token_cookie: Some("wsgate_token".into()),
            },
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = credentials::bearer(data) {
        assert!(!token.is_empty() && token == token.trim());
    }
    let Some(req) = http_request(data) else {
        return;
    };
    if let Ok(up) = checks::check(&req, "/gateway") {
        assert_eq!(up.key.len(), 24);
        assert_eq!(req.uri().path(), "/gateway");
    }
    for value in req.headers().values() {
        let _ = credentials::bearer(value.as_bytes());
    }
    for browser in browsers() {
        let origin = req
            .headers()
            .get(hyper::header::ORIGIN)
            .map(|v| v.as_bytes());
        let allowed = browser.origin_allowed(origin);
        if browser.allowed_origins.is_empty() || origin.is_none() {
            assert!(allowed, "no origin list, or no Origin header: let through");
        }
        let Ok(c) = credentials::extract(&req, browser) else {
            continue;
        };
        assert!(!c.backend_id.is_empty());
        if let Some(entry) = c.token_protocol {
            let prefix = browser.token_protocol_prefix.as_deref().unwrap_or_default();
            assert!(entry.starts_with(prefix) && entry.len() > prefix.len());
            // The token entry is never offered to the backend.
            if let Some(rest) = &c.backend_protocols {
                assert!(
                    !rest.split(',').any(|p| p.trim() == entry),
                    "token subprotocol entry forwarded to the backend"
                );
            }
        }
        if let Ok(token) = &c.token {
            for v in verifiers() {
                // Nothing the fuzzer can write is signed by the repo's keys, except seeds.
                let _ = v.verify(token);
            }
        }
    }
});
