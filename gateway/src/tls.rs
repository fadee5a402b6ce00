//! TLS: the rustls server config built from `[tls]`, offering only HTTP/1.1.

use std::sync::{Arc, Mutex, PoisonError};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{NoServerSessionStorage, ProducesTickets};
use rustls::{ServerConfig, SupportedCipherSuite};

use crate::config::TlsConfig;
use crate::server_certs::ServerCerts;

/// Most session tickets `[tls] session_tickets` may ask for per handshake.
pub const MAX_SESSION_TICKETS: usize = 8;

/// Builds the server config. Errors name the offending key (`cert`, `key`,
/// `certs[N].cert`, `certs[N].key`, `client_ca`, `client_crl`, `cipher_suites` or
/// `session_tickets`) and problem.
///
/// `tls.cipher_suites` (names as in [`suite_names`]) restricts and orders the cipher
/// suites, and the gateway's order then wins over the client's; empty leaves every suite
/// on and the client choosing, which is what browsers' own order (AES-128-GCM first) is
/// best served by. `tls.session_tickets` tickets go out after each handshake, sealed
/// with the process's ticket keys ([`ticketer`]). `tls.certs` are served by the name a
/// client asks for ([`ServerCerts`]), `tls.cert` to the others. With `tls.client_ca`,
/// clients are asked for a certificate ([`crate::client_cert::verifier`]).
pub fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, (String, String)> {
    if tls.session_tickets > MAX_SESSION_TICKETS {
        return Err((
            "session_tickets".into(),
            format!(
                "{} is more than {MAX_SESSION_TICKETS} (0 turns resumption off)",
                tls.session_tickets
            ),
        ));
    }
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if !tls.cipher_suites.is_empty() {
        provider.cipher_suites = chosen_suites(&provider.cipher_suites, &tls.cipher_suites)
            .map_err(|e| ("cipher_suites".into(), e))?;
    }
    let certs = ServerCerts::load(tls, &provider)?;
    let provider = Arc::new(provider);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ("cipher_suites".into(), e.to_string()))?;
    let builder = match crate::client_cert::verifier(tls, provider)? {
        None => builder.with_no_client_auth(),
        Some(verifier) => builder.with_client_cert_verifier(verifier),
    };
    let mut config = builder.with_cert_resolver(Arc::new(certs));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // TLS 1.3 records are sealed and opened by `records` once the handshake is done.
    config.enable_secret_extraction = true;
    config.ignore_client_order = !tls.cipher_suites.is_empty();
    config.send_tls13_tickets = tls.session_tickets;
    config.max_tls13_tickets = tls.session_tickets;
    if tls.session_tickets == 0 {
        // No TLS 1.2 session-ID cache either: no resumption of any kind.
        config.session_storage = Arc::new(NoServerSessionStorage {});
    } else {
        config.ticketer = ticketer(client_trust(tls)).map_err(|e| ("session_tickets".into(), e))?;
    }
    Ok(Arc::new(config))
}

/// The certificate chain (leaf first) and private key in the PEM files `cert` and `key`.
/// Errors name the key (`cert` or `key`) and the problem.
pub fn chain_and_key(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), (&'static str, String)> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| {
            (
                "cert",
                format!(
                    "{}: {}",
                    cert.display(),
                    pem_problem(&e, cert, "certificate")
                ),
            )
        })?;
    if certs.is_empty() {
        return Err(("cert", format!("{}: no certificate in PEM", cert.display())));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        (
            "key",
            format!("{}: {}", key.display(), pem_problem(&e, key, "private key")),
        )
    })?;
    Ok((certs, key_der))
}

/// The process's session ticket keys (AES-256 + HMAC-SHA256, rotated every 6 hours,
/// tickets valid 12 hours): a reload keeps the tickets clients hold valid, unless it
/// changed which client certificates are trusted (`trust`, see [`client_trust`]). A
/// resumed session skips the certificate check, so a ticket issued under a CA or a
/// revocation list no longer in force would let a client revoked since resume with the
/// certificate it carries: new keys then make every client show its certificate again.
/// Each process of a `reuse_port` group has its own, so a ticket resumes only with the
/// process that issued it; elsewhere the client makes a full handshake.
fn ticketer(trust: u64) -> Result<Arc<dyn ProducesTickets>, String> {
    static TICKETER: Mutex<Option<(u64, Arc<dyn ProducesTickets>)>> = Mutex::new(None);
    let mut kept = TICKETER.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((for_trust, ticketer)) = kept.as_ref() {
        if *for_trust == trust {
            return Ok(ticketer.clone());
        }
    }
    let made = rustls::crypto::aws_lc_rs::Ticketer::new()
        .map_err(|e| format!("cannot make ticket keys: {e}"))?;
    *kept = Some((trust, made.clone()));
    Ok(made)
}

/// What decides which client certificates are trusted, as a hash: the `client_ca` and
/// `client_crl` files' contents and the `client_cert` mode (0 without `client_ca`).
/// Files that cannot be read hash as empty: the verifier built from them reports that.
fn client_trust(tls: &TlsConfig) -> u64 {
    let Some(ca) = &tls.client_ca else {
        return 0;
    };
    let mut input = std::fs::read(ca).unwrap_or_default();
    input.push(0);
    if let Some(crl) = &tls.client_crl {
        input.extend(std::fs::read(crl).unwrap_or_default());
    }
    input.push(tls.client_cert as u8);
    xxhash_rust::xxh3::xxh3_64(&input)
}

/// The names a suite may be given by in the config: rustls's (`TLS13_AES_128_GCM_SHA256`,
/// `TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256`) and, for TLS 1.3, the RFC's and OpenSSL's
/// (`TLS_AES_128_GCM_SHA256`).
pub fn suite_names(suite: &SupportedCipherSuite) -> Vec<String> {
    let Some(name) = suite.suite().as_str() else {
        return Vec::new();
    };
    let mut names = vec![name.to_owned()];
    if let Some(rest) = name.strip_prefix("TLS13_") {
        names.push(format!("TLS_{rest}"));
    }
    names
}

/// The suites of `all` that `names` name, in the order named.
fn chosen_suites(
    all: &[SupportedCipherSuite],
    names: &[String],
) -> Result<Vec<SupportedCipherSuite>, String> {
    let mut chosen: Vec<SupportedCipherSuite> = Vec::with_capacity(names.len());
    for name in names {
        let suite = all
            .iter()
            .find(|s| suite_names(s).iter().any(|n| n.eq_ignore_ascii_case(name)))
            .ok_or_else(|| {
                let known: Vec<String> = all.iter().filter_map(|s| suite_names(s).pop()).collect();
                format!(
                    "unknown cipher suite {name:?} (known: {})",
                    known.join(", ")
                )
            })?;
        if chosen.iter().any(|c| c.suite() == suite.suite()) {
            return Err(format!("cipher suite {name:?} is listed twice"));
        }
        chosen.push(*suite);
    }
    Ok(chosen)
}

/// What is wrong with the PEM file at `path`, which should hold a `wanted`, in words
/// (the parser's own names the end line it looked for as a list of bytes).
pub(crate) fn pem_problem(
    e: &rustls::pki_types::pem::Error,
    path: &std::path::Path,
    wanted: &str,
) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        // What the parser quotes is shown only when it is a PEM label: in a file whose
        // lines were joined (`echo $KEY`) it runs on into the key itself.
        Error::MissingSectionEnd { end_marker } => match pem_label(end_marker) {
            Some(label) => format!(
                "no \"-----END {label}-----\" line after its BEGIN line: the file is cut short?"
            ),
            None => "no END line after its BEGIN line, or the lines were joined: each \
                     -----BEGIN/END ...----- marker must be alone on its line"
                .into(),
        },
        Error::IllegalSectionStart { .. } => "a malformed BEGIN line: -----BEGIN <LABEL>----- \
                                              must be alone on its line"
            .into(),
        Error::Base64Decode(_) | Error::NoItemsFound => {
            let text = std::fs::read(path).unwrap_or_default();
            let holds = |marker: &str| text.windows(marker.len()).any(|w| w == marker.as_bytes());
            // PKCS#8 (`ENCRYPTED PRIVATE KEY`), or OpenSSL's traditional form, whose
            // `Proc-Type: 4,ENCRYPTED` header reads as bad base64.
            if holds("ENCRYPTED PRIVATE KEY") || holds("Proc-Type: 4,ENCRYPTED") {
                "an encrypted private key, which the gateway cannot decrypt: give it decrypted \
                 (openssl pkey -in KEY -out PLAIN.pem), readable by the gateway only"
                    .into()
            } else if holds("BEGIN CERTIFICATE") {
                format!("a certificate, not a {wanted}")
            } else if matches!(e, Error::Base64Decode(_)) {
                "a PEM section that is not valid base64".into()
            } else {
                format!("no {wanted} in PEM")
            }
        }
        other => other.to_string(),
    }
}

/// `marker` when it is a PEM label (`PRIVATE KEY`, `CERTIFICATE`, ...): a few words of
/// capitals, never key material.
fn pem_label(marker: &[u8]) -> Option<&str> {
    let label = std::str::from_utf8(marker).ok()?;
    (label.len() <= 40 && label.bytes().all(|b| b.is_ascii_uppercase() || b == b' '))
        .then_some(label)
}

/// The certificates of the PEM file at `path` as trust roots (a CA bundle).
pub fn trust_roots(path: &std::path::Path) -> Result<rustls::RootCertStore, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("CA file {shown}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("CA file {shown}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("CA file {shown}: no usable certificate"));
    }
    Ok(roots)
}

/// The builder of the gateway's own TLS clients (key set fetches, `wss://` backends):
/// aws-lc, TLS 1.3 and 1.2, trusting `roots`. Finish it with the client certificate (or
/// none), then [`offer_http1`].
pub fn client_builder(
    roots: rustls::RootCertStore,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots))
}

/// Finishes a TLS client config with the certificate chain and key in the PEM files `cert`
/// and `key`, shown to servers that ask for one (mutual TLS). Errors name the key (`cert`
/// or `key`) and the problem.
pub fn with_client_cert(
    builder: rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<rustls::ClientConfig, (&'static str, String)> {
    let (chain, key_der) = chain_and_key(cert, key)?;
    builder.with_client_auth_cert(chain, key_der).map_err(|e| {
        (
            "key",
            format!("{} does not match the certificate: {e}", key.display()),
        )
    })
}

/// Offers ALPN `http/1.1` only, what every HTTP exchange of the gateway's clients is.
pub fn offer_http1(config: &mut rustls::ClientConfig) {
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
}

/// The CAs of `ca` as trust roots, or without it the system's; `no_roots` is the
/// problem when the system has none.
pub fn roots_or_system(
    ca: Option<&std::path::Path>,
    no_roots: &str,
) -> Result<rustls::RootCertStore, String> {
    if let Some(path) = ca {
        return trust_roots(path);
    }
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(no_roots.to_owned());
    }
    Ok(roots)
}

/// The repository's dev certificates folder, for tests.
#[cfg(test)]
pub(crate) fn dev_certs() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../certs")
}

/// `[tls]` with the repository's dev certificate and the defaults otherwise, for tests.
#[cfg(test)]
pub(crate) fn dev_tls() -> TlsConfig {
    let dir = dev_certs();
    TlsConfig {
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
        ..TlsConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::aws_lc_rs::{cipher_suite, default_provider};
    use rustls::{CipherSuite, ClientConfig, ClientConnection, RootCertStore, ServerConnection};

    #[test]
    fn the_client_trust_changes_with_the_files_contents_and_the_mode() {
        let dir = std::env::temp_dir().join(format!("wsgate-client-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (ca, crl) = (dir.join("ca.pem"), dir.join("crl.pem"));
        std::fs::write(&ca, "ca one").expect("write");
        std::fs::write(&crl, "list one").expect("write");
        let mut tls = TlsConfig {
            client_ca: Some(ca.clone()),
            client_crl: Some(crl.clone()),
            ..TlsConfig::default()
        };
        let first = client_trust(&tls);
        assert_eq!(client_trust(&tls), first, "the same files, the same trust");
        std::fs::write(&crl, "list two").expect("write");
        let revoked_more = client_trust(&tls);
        assert_ne!(revoked_more, first);
        std::fs::write(&ca, "ca two").expect("write");
        assert_ne!(client_trust(&tls), revoked_more);
        let before = client_trust(&tls);
        tls.client_cert = crate::config::ClientCertMode::Optional;
        assert_ne!(client_trust(&tls), before);
        tls.client_ca = None;
        assert_eq!(
            client_trust(&tls),
            0,
            "no client certificates, nothing to follow"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    const AES128: SupportedCipherSuite = cipher_suite::TLS13_AES_128_GCM_SHA256;
    const AES256: SupportedCipherSuite = cipher_suite::TLS13_AES_256_GCM_SHA384;

    fn server(suites: &[&str]) -> Result<Arc<ServerConfig>, (String, String)> {
        server_config(&TlsConfig {
            cipher_suites: suites.iter().map(|s| (*s).to_owned()).collect(),
            ..dev_tls()
        })
    }

    /// The suite a handshake with `server` settles on, the client offering `offer` in that
    /// order; the handshake runs in memory.
    fn negotiate(
        server: Arc<ServerConfig>,
        offer: &[SupportedCipherSuite],
    ) -> Result<CipherSuite, Box<dyn std::error::Error>> {
        let mut provider = default_provider();
        provider.cipher_suites = offer.to_vec();
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(dev_certs().join("ca.crt"))? {
            roots.add(ca?)?;
        }
        let client_config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut client = ClientConnection::new(Arc::new(client_config), "localhost".try_into()?)?;
        let mut server = ServerConnection::new(server)?;
        for _ in 0..10 {
            let mut wire = Vec::new();
            client.write_tls(&mut wire)?;
            server.read_tls(&mut &wire[..])?;
            server.process_new_packets()?;
            wire.clear();
            server.write_tls(&mut wire)?;
            client.read_tls(&mut &wire[..])?;
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
        }
        let suite = server
            .negotiated_cipher_suite()
            .ok_or("the handshake did not finish")?;
        Ok(suite.suite())
    }

    #[test]
    fn by_default_the_clients_order_decides() -> Result<(), Box<dyn std::error::Error>> {
        let config = server(&[]).map_err(|(k, e)| format!("{k}: {e}"))?;
        assert_eq!(
            negotiate(config.clone(), &[AES128, AES256])?,
            AES128.suite()
        );
        assert_eq!(negotiate(config, &[AES256, AES128])?, AES256.suite());
        Ok(())
    }

    #[test]
    fn configured_suites_are_the_only_ones_and_their_order_wins(
    ) -> Result<(), Box<dyn std::error::Error>> {
        // Both spellings: the RFC's (OpenSSL's) and rustls's.
        let config = server(&["TLS_AES_256_GCM_SHA384", "tls13_aes_128_gcm_sha256"])
            .map_err(|(k, e)| format!("{k}: {e}"))?;
        assert_eq!(
            negotiate(config, &[AES128, AES256])?,
            AES256.suite(),
            "the gateway's order, not the client's"
        );
        let only_chacha =
            server(&["TLS_CHACHA20_POLY1305_SHA256"]).map_err(|(k, e)| format!("{k}: {e}"))?;
        assert!(
            negotiate(only_chacha, &[AES128, AES256]).is_err(),
            "a client with none of the configured suites is refused"
        );
        Ok(())
    }

    #[test]
    fn unknown_or_repeated_suites_are_config_errors() {
        let err = server(&["TLS_AES_128_GCM_SHA256", "TLS_RSA_WITH_RC4_128_MD5"]).err();
        let Some((key, problem)) = err else {
            panic!("an unknown suite was accepted");
        };
        assert_eq!(key, "cipher_suites");
        assert!(
            problem.contains("TLS_RSA_WITH_RC4_128_MD5")
                && problem.contains("TLS_AES_128_GCM_SHA256"),
            "names the bad entry and lists the known ones: {problem}"
        );
        let err = server(&["TLS_AES_128_GCM_SHA256", "TLS13_AES_128_GCM_SHA256"]).err();
        assert!(
            err.is_some_and(|(key, p)| key == "cipher_suites" && p.contains("twice")),
            "one suite named twice"
        );
    }
}
