//! The gateway's own certificates, and which one a handshake gets: the one whose names
//! hold the server name the client asked for (SNI), of a kind of key the client can
//! verify; else the default (`[tls] cert`). One gateway can so serve several host names,
//! or one name with both an ECDSA and an RSA certificate, as nginx and HAProxy can. A
//! certificate with an OCSP response ([`crate::ocsp`]), read from a file or fetched
//! ([`crate::ocsp_fetch`]), gets it stapled while it is fresh.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use tracing::warn;

use crate::config::TlsConfig;
use crate::ocsp::Staple;
use crate::tls::chain_and_key;

/// Every signature scheme rustls knows a server key to sign handshakes with.
const SCHEMES: [SignatureScheme; 12] = [
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ECDSA_NISTP521_SHA512,
    SignatureScheme::ED25519,
    SignatureScheme::ED448,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA512,
    SignatureScheme::RSA_PKCS1_SHA256,
    SignatureScheme::RSA_PKCS1_SHA384,
    SignatureScheme::RSA_PKCS1_SHA512,
    SignatureScheme::RSA_PKCS1_SHA1,
];

/// A certificate as loaded, with where its OCSP response comes from, if anywhere.
#[derive(Debug)]
pub struct Loaded {
    /// The chain and its key.
    pub key: CertifiedKey,
    /// The response to staple, and the config key that named it (`tls.ocsp`,
    /// `tls.certs[N].ocsp`) for the log.
    pub staple: Option<(Staple, String)>,
    /// Or the fetch that brings its responses.
    pub fetch: Option<Arc<crate::ocsp_fetch::Target>>,
}

/// The OCSP response a certificate's handshakes get: put in force when read or fetched,
/// left out once past its nextUpdate.
#[derive(Debug)]
pub struct StapleSlot {
    current: ArcSwapOption<Stapled>,
    /// What named the response, for the log: `tls.ocsp`, or the certificate's key
    /// (`tls.cert`, `tls.certs[N].cert`) for a fetched one.
    named_by: String,
    /// Whether the lapse of the response in force was logged.
    lapsed: AtomicBool,
}

/// The certificate with its OCSP response stapled, and until when to staple it.
#[derive(Debug)]
struct Stapled {
    key: Arc<CertifiedKey>,
    until: Option<SystemTime>,
}

impl StapleSlot {
    /// An empty slot; `named_by` names the response in the log.
    pub fn new(named_by: String) -> Self {
        Self {
            current: ArcSwapOption::empty(),
            named_by,
            lapsed: AtomicBool::new(false),
        }
    }

    /// Staples `staple` to the handshakes of `key` from now on.
    pub fn put(&self, key: &CertifiedKey, staple: Staple) {
        self.current.store(Some(Arc::new(Stapled {
            key: Arc::new(CertifiedKey {
                ocsp: Some(staple.der),
                ..key.clone()
            }),
            until: staple.next_update,
        })));
        self.lapsed.store(false, Ordering::Relaxed);
    }

    /// The nextUpdate of the response in force, if one is and has one.
    pub fn next_update(&self) -> Option<SystemTime> {
        self.current.load().as_ref().and_then(|s| s.until)
    }

    /// What names the response in the log.
    pub fn named_by(&self) -> &str {
        &self.named_by
    }

    /// The certificate with the response stapled, if it is fresh at `now`. The first
    /// handshake after it lapsed logs so.
    fn served_at(&self, now: SystemTime) -> Option<Arc<CertifiedKey>> {
        let current = self.current.load();
        let stapled = current.as_ref()?;
        if stapled.until.is_none_or(|until| now < until) {
            return Some(stapled.key.clone());
        }
        if !self.lapsed.swap(true, Ordering::Relaxed) {
            warn!(
                key = %self.named_by,
                "OCSP response has passed its nextUpdate: handshakes go without it until a fresh one is in force (a file: fetch one and reload; ocsp_fetch: see why the fetches fail)"
            );
        }
        None
    }
}

/// One certificate with what choosing it takes.
#[derive(Debug)]
struct Candidate {
    /// The certificate without a staple.
    key: Arc<CertifiedKey>,
    /// Its OCSP response, if it has one.
    staple: Option<Arc<StapleSlot>>,
    /// The fetch that fills `staple`, kept going while this config is in force.
    _fetch: Option<Arc<crate::ocsp_fetch::Target>>,
    /// The DNS names of its subjectAltName, lower case; `*.example.com` holds one label.
    names: Vec<String>,
    /// The schemes its key signs with.
    schemes: Vec<SignatureScheme>,
}

impl Candidate {
    fn new(loaded: Loaded) -> Result<Self, String> {
        let Loaded { key, staple, fetch } = loaded;
        let leaf = key
            .end_entity_cert()
            .map_err(|e| format!("no certificate: {e}"))?;
        let parsed = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| format!("cannot read the certificate: {e}"))?;
        let names = parsed
            .valid_dns_names()
            .map(str::to_ascii_lowercase)
            .collect();
        let schemes = SCHEMES
            .into_iter()
            .filter(|s| key.key.choose_scheme(&[*s]).is_some())
            .collect();
        let slot = match (&fetch, staple) {
            (Some(fetch), _) => Some(fetch.slot.clone()),
            (None, Some((staple, named_by))) => {
                let slot = StapleSlot::new(named_by);
                slot.put(&key, staple);
                Some(Arc::new(slot))
            }
            (None, None) => None,
        };
        Ok(Self {
            key: Arc::new(key),
            staple: slot,
            _fetch: fetch,
            names,
            schemes,
        })
    }

    /// The certificate as a handshake at `now` gets it: with its OCSP response while that
    /// is fresh.
    fn served_at(&self, now: SystemTime) -> Arc<CertifiedKey> {
        self.staple
            .as_ref()
            .and_then(|slot| slot.served_at(now))
            .unwrap_or_else(|| self.key.clone())
    }

    /// Whether the client can verify a signature of this key.
    fn fits(&self, offered: &[SignatureScheme]) -> bool {
        offered.iter().any(|s| self.schemes.contains(s))
    }

    fn holds(&self, name: &str) -> bool {
        self.names.iter().any(|n| name_matches(n, name))
    }
}

/// Whether a certificate name (`host.example.com`, or `*.example.com` for one label more)
/// covers `name`.
fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(parent) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(parent)),
        None => pattern.eq_ignore_ascii_case(name),
    }
}

/// The certificates of `[tls]`: `cert` (the default) first, then `certs` in their order.
#[derive(Debug)]
pub struct ServerCerts {
    candidates: Vec<Candidate>,
}

/// Why a certificate cannot be one of the gateway's: its index (0 for the default) and
/// the problem.
pub type CertProblem = (usize, String);

impl ServerCerts {
    /// The default certificate and the others. Every other one must name at least one DNS
    /// host, or no client's server name could ever pick it.
    pub fn new(default: Loaded, more: Vec<Loaded>) -> Result<Self, CertProblem> {
        let mut candidates = vec![Candidate::new(default).map_err(|e| (0, e))?];
        for (i, loaded) in more.into_iter().enumerate() {
            let candidate = Candidate::new(loaded).map_err(|e| (i + 1, e))?;
            if candidate.names.is_empty() {
                return Err((
                    i + 1,
                    "the certificate names no DNS host (subjectAltName), so no client's server name could pick it".into(),
                ));
            }
            candidates.push(candidate);
        }
        Ok(Self { candidates })
    }

    /// The certificates `[tls]` names (`cert`/`key`/`ocsp`, then `certs`), loaded and
    /// checked: each key matches its certificate and, with `cipher_suites`, can be used
    /// by one of `provider`'s suites; each OCSP response is a current "good" one of its
    /// certificate ([`crate::ocsp::check`]; one past its nextUpdate is logged and left
    /// out). With `ocsp_fetch`, the others get the fetch of their responder's answers
    /// ([`crate::ocsp_fetch::target_for`]). Errors name the key (`cert`, `key`, `ocsp`, `certs[N].cert`, `certs[N].key`,
    /// `certs[N].ocsp` or `cipher_suites`) and the problem.
    pub fn load(tls: &TlsConfig, provider: &CryptoProvider) -> Result<Self, (String, String)> {
        let pair_key = |i: usize, which: &str| match i {
            0 => which.to_owned(),
            i => format!("certs[{}].{which}", i - 1),
        };
        let pairs = std::iter::once((tls.cert.as_path(), tls.key.as_path(), tls.ocsp.as_deref()))
            .chain(
                tls.certs
                    .iter()
                    .map(|p| (p.cert.as_path(), p.key.as_path(), p.ocsp.as_deref())),
            );
        let now = SystemTime::now();
        let mut keys = Vec::with_capacity(1 + tls.certs.len());
        for (i, (cert, key, ocsp)) in pairs.enumerate() {
            let (chain, key_der) =
                chain_and_key(cert, key).map_err(|(which, e)| (pair_key(i, which), e))?;
            let certified = CertifiedKey::from_der(chain, key_der, provider).map_err(|e| {
                (
                    pair_key(i, "key"),
                    format!("{} does not match the certificate: {e}", key.display()),
                )
            })?;
            // TLS 1.2 suites are tied to a kind of key: listing only those of another kind
            // would fail every handshake that gets this certificate.
            let alg = certified.key.algorithm();
            if !tls.cipher_suites.is_empty()
                && !provider
                    .cipher_suites
                    .iter()
                    .any(|s| s.usable_for_signature_algorithm(alg))
            {
                return Err((
                                "cipher_suites".into(),
                                format!(
                                        "none of them can be used with the {alg:?} key {}: add a TLS 1.3 suite or one for that key",
                                        key.display()
                                ),
                        ));
            }
            let staple = match ocsp {
                None => None,
                Some(file) => {
                    let named_by = format!("tls.{}", pair_key(i, "ocsp"));
                    let staple = crate::ocsp::read(file, &certified.cert, now)
                        .map_err(|e| (pair_key(i, "ocsp"), format!("{}: {e}", file.display())))?;
                    if staple.fresh_at(now) {
                        Some((staple, named_by))
                    } else {
                        let next_update = staple.next_update.map(crate::ocsp::rfc3339);
                        warn!(key = %named_by, file = %file.display(), next_update = next_update.as_deref().unwrap_or("-"),
                            "OCSP response has passed its nextUpdate: the certificate goes without it; fetch a fresh one and reload");
                        None
                    }
                }
            };
            let leaf = certified.cert.first();
            if ocsp.is_none() && !tls.ocsp_fetch && leaf.is_some_and(crate::ocsp::must_staple) {
                warn!(key = %format!("tls.{}", pair_key(i, "cert")), file = %cert.display(),
                    "the certificate demands a stapled OCSP response (must-staple) and none is configured: clients that honour it (Firefox) refuse the handshake; set ocsp or ocsp_fetch");
            }
            let fetch = match (ocsp, tls.ocsp_fetch) {
                (None, true) => crate::ocsp_fetch::target_for(
                    &certified,
                    format!("tls.{}", pair_key(i, "cert")),
                    tls.ocsp_refresh,
                )
                .map_err(|e| (pair_key(i, "cert"), format!("{}: {e}", cert.display())))?,
                _ => None,
            };
            keys.push(Loaded {
                key: certified,
                staple,
                fetch,
            });
        }
        let default = keys.remove(0);
        Self::new(default, keys).map_err(|(i, e)| (pair_key(i, "cert"), e))
    }

    /// The certificate for a client that asked for `name` (if it sent one) and verifies
    /// signatures of the `offered` schemes: the first that holds the name and fits; else
    /// the default if it fits; else the first that fits (an RSA-only client without a
    /// name); else the default, whose handshake then fails as it would with it alone.
    fn pick(&self, name: Option<&str>, offered: &[SignatureScheme]) -> &Candidate {
        let default = &self.candidates[0];
        if self.candidates.len() == 1 {
            return default;
        }
        let by_name = name.and_then(|name| {
            self.candidates
                .iter()
                .find(|c| c.holds(name) && c.fits(offered))
        });
        by_name
            .or_else(|| default.fits(offered).then_some(default))
            .or_else(|| self.candidates.iter().find(|c| c.fits(offered)))
            .unwrap_or(default)
    }
}

impl ResolvesServerCert for ServerCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = self.pick(hello.server_name(), hello.signature_schemes());
        Some(match chosen.staple {
            None => chosen.key.clone(),
            Some(_) => chosen.served_at(SystemTime::now()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_covers_exactly_one_label() {
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(name_matches("*.example.com", "A.Example.COM"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", ".example.com"));
        assert!(name_matches("ws.example.com", "WS.example.com"));
        assert!(!name_matches("ws.example.com", "ws.example.co"));
        assert!(!name_matches("ws.example.com", "x.ws.example.com"));
    }

    type TestResult<T> = Result<T, Box<dyn std::error::Error>>;

    fn candidate(names: &[&str], schemes: &[SignatureScheme], tag: &[u8]) -> TestResult<Candidate> {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let dir = crate::tls::dev_certs();
        let (chain, key) =
            crate::tls::chain_and_key(&dir.join("server.crt"), &dir.join("server.key"))
                .map_err(|(_, e)| e)?;
        let mut key = CertifiedKey::from_der(chain, key, &provider)?;
        // Told apart by their OCSP field, which `pick` never looks at.
        key.ocsp = Some(tag.to_vec());
        Ok(Candidate {
            key: Arc::new(key),
            staple: None,
            _fetch: None,
            names: names.iter().map(|n| n.to_string()).collect(),
            schemes: schemes.to_vec(),
        })
    }

    const EC: SignatureScheme = SignatureScheme::ECDSA_NISTP256_SHA256;
    const RSA: SignatureScheme = SignatureScheme::RSA_PSS_SHA256;

    fn picked(certs: &ServerCerts, name: Option<&str>, offered: &[SignatureScheme]) -> Vec<u8> {
        certs
            .pick(name, offered)
            .key
            .ocsp
            .clone()
            .unwrap_or_default()
    }

    #[test]
    fn the_name_then_the_key_kind_then_the_default_decide() -> TestResult<()> {
        let certs = ServerCerts {
            candidates: vec![
                candidate(&["localhost"], &[EC], b"default")?,
                candidate(&["a.example.test"], &[EC], b"a")?,
                candidate(&["*.b.example.test"], &[EC], b"b-ec")?,
                candidate(&["*.b.example.test", "localhost"], &[RSA], b"b-rsa")?,
            ],
        };
        assert_eq!(picked(&certs, Some("a.example.test"), &[EC, RSA]), b"a");
        assert_eq!(
            picked(&certs, Some("x.b.example.test"), &[RSA, EC]),
            b"b-ec"
        );
        assert_eq!(picked(&certs, Some("x.b.example.test"), &[RSA]), b"b-rsa");
        assert_eq!(picked(&certs, Some("unknown.test"), &[EC]), b"default");
        assert_eq!(picked(&certs, None, &[EC]), b"default");
        // An RSA-only client: the RSA certificate of its name, or the first RSA one.
        assert_eq!(picked(&certs, Some("localhost"), &[RSA]), b"b-rsa");
        assert_eq!(picked(&certs, None, &[RSA]), b"b-rsa");
        // Nothing fits: the default, as with one certificate.
        assert_eq!(
            picked(&certs, Some("a.example.test"), &[SignatureScheme::ED25519]),
            b"default"
        );
        Ok(())
    }

    #[test]
    fn a_staple_goes_with_its_certificate_until_its_next_update() -> TestResult<()> {
        let plain = candidate(&["localhost"], &[EC], b"")?;
        let now = SystemTime::now();
        let until = now + std::time::Duration::from_secs(3600);
        let staple = Staple {
            der: b"response".to_vec(),
            next_update: Some(until),
        };
        let c = Candidate::new(Loaded {
            key: CertifiedKey::clone(&plain.key),
            staple: Some((staple, "tls.ocsp".into())),
            fetch: None,
        })?;
        let ocsp_at = |t: SystemTime| c.served_at(t).ocsp.clone().unwrap_or_default();
        let lapsed = || {
            c.staple
                .as_ref()
                .is_some_and(|s| s.lapsed.load(Ordering::Relaxed))
        };
        assert_eq!(ocsp_at(now), b"response");
        assert!(!lapsed());
        assert_eq!(ocsp_at(until), b"");
        assert!(lapsed());
        assert_eq!(ocsp_at(until + std::time::Duration::from_secs(1)), b"");
        // The certificate is the same either way.
        assert_eq!(c.served_at(now).cert, c.served_at(until).cert);
        Ok(())
    }

    #[test]
    fn the_dev_certificate_names_localhost_and_signs_with_ecdsa() -> TestResult<()> {
        let c = candidate(&[], &[], b"")?;
        let c = Candidate::new(Loaded {
            key: CertifiedKey::clone(&c.key),
            staple: None,
            fetch: None,
        })?;
        assert_eq!(c.names, ["localhost"]);
        assert!(c.fits(&[EC]) && !c.fits(&[RSA]));
        Ok(())
    }
}
