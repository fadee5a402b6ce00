//! `[tls]` settings as a client sees them, through the gateway binary over real sockets:
//! `session_tickets` (0: no resumption, neither TLS 1.3 tickets nor TLS 1.2 session IDs;
//! N: N tickets after each handshake) and `cipher_suites` (only those, in the gateway's
//! order; without it, the client's order decides). Each client is a rustls client of its
//! own, set up for what it checks, that upgrades and echoes a frame through a probe backend.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{bail, ensure, Result};
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Resumption};
use rustls::crypto::aws_lc_rs::{cipher_suite as cs, default_provider};
use rustls::pki_types::ServerName;
use rustls::{CipherSuite, ClientConfig, HandshakeKind, ProtocolVersion, SupportedCipherSuite};
use support::probe::Probe;
use support::process::GatewayProc;
use support::tls_client::{probe_gateway, tls_session, Negotiated};
use support::*;

/// A session store that counts the TLS 1.3 tickets the client was sent, and once
/// `frozen` keeps no more of them (so that what it holds is one handshake's tickets).
#[derive(Debug)]
struct CountingStore {
    inner: ClientSessionMemoryCache,
    tickets: AtomicUsize,
    frozen: AtomicBool,
}

impl ClientSessionStore for CountingStore {
    fn set_kx_hint(&self, name: ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(name, group)
    }
    fn kx_hint(&self, name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(name)
    }
    fn set_tls12_session(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(name, value)
    }
    fn tls12_session(
        &self,
        name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.inner.remove_tls12_session(name)
    }
    fn insert_tls13_ticket(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.tickets.fetch_add(1, Ordering::SeqCst);
        if !self.frozen.load(Ordering::SeqCst) {
            self.inner.insert_tls13_ticket(name, value)
        }
    }
    fn take_tls13_ticket(
        &self,
        name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(name)
    }
}

/// A client offering `suites` in that order, of `version` only, trusting the dev CA and
/// keeping its sessions in `store`.
fn client(
    suites: &[SupportedCipherSuite],
    version: &'static rustls::SupportedProtocolVersion,
    store: Arc<CountingStore>,
) -> Result<Arc<ClientConfig>> {
    let mut provider = default_provider();
    provider.cipher_suites = suites.to_vec();
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(certs().join("ca.crt"))?;
    for ca in rustls_pemfile_certs(&pem)? {
        roots.add(ca)?;
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[version])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = Resumption::store(store);
    Ok(Arc::new(config))
}

fn rustls_pemfile_certs(pem: &[u8]) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    Ok(rustls::pki_types::CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>()?)
}

fn store() -> Arc<CountingStore> {
    Arc::new(CountingStore {
        inner: ClientSessionMemoryCache::new(32),
        tickets: AtomicUsize::new(0),
        frozen: AtomicBool::new(false),
    })
}

/// Connects with `config` as `localhost`, upgrades to the probe and echoes a frame.
async fn session(gw: &GatewayProc, config: Arc<ClientConfig>) -> Result<Negotiated> {
    tls_session(gw.addr, config, "localhost").await
}

/// A gateway with `tls_toml` in `[tls]`, in front of an echoing probe.
async fn gateway(tls_toml: &str) -> Result<(GatewayProc, Probe)> {
    probe_gateway(tls_toml).await
}

const TLS13: &rustls::SupportedProtocolVersion = &rustls::version::TLS13;
const TLS12: &rustls::SupportedProtocolVersion = &rustls::version::TLS12;
const ECDSA12: [SupportedCipherSuite; 2] = [
    cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
];

#[tokio::test]
async fn with_session_tickets_0_no_handshake_resumes() -> Result<()> {
    let (gw, _probe) = gateway("session_tickets = 0").await?;
    let tickets = store();
    let tls13 = client(&[cs::TLS13_AES_128_GCM_SHA256], TLS13, tickets.clone())?;
    for n in 0..2 {
        let got = session(&gw, tls13.clone()).await?;
        ensure!(
            got.kind == Some(HandshakeKind::Full),
            "TLS 1.3 connection {n}: {got:?}"
        );
    }
    ensure!(
        tickets.tickets.load(Ordering::SeqCst) == 0,
        "{} tickets sent",
        tickets.tickets.load(Ordering::SeqCst)
    );
    // TLS 1.2: no session ID is kept either.
    let tls12 = client(&ECDSA12, TLS12, store())?;
    for n in 0..2 {
        let got = session(&gw, tls12.clone()).await?;
        ensure!(
            got.version == Some(ProtocolVersion::TLSv1_2) && got.kind == Some(HandshakeKind::Full),
            "TLS 1.2 connection {n}: {got:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn session_tickets_n_sends_n_tickets_each_of_which_resumes() -> Result<()> {
    let (gw, _probe) = gateway("session_tickets = 5").await?;
    let tickets = store();
    let tls13 = client(&[cs::TLS13_AES_128_GCM_SHA256], TLS13, tickets.clone())?;
    let first = session(&gw, tls13.clone()).await?;
    ensure!(first.kind == Some(HandshakeKind::Full), "first: {first:?}");
    let sent = tickets.tickets.load(Ordering::SeqCst);
    ensure!(sent == 5, "{sent} tickets after the first handshake, not 5");
    // Each of them resumes one connection (the tickets those connections are sent are
    // not kept), and then there is none left.
    tickets.frozen.store(true, Ordering::SeqCst);
    for n in 0..5 {
        let got = session(&gw, tls13.clone()).await?;
        ensure!(
            got.kind == Some(HandshakeKind::Resumed),
            "connection {n} after the first: {got:?}"
        );
    }
    let sixth = session(&gw, tls13).await?;
    ensure!(sixth.kind == Some(HandshakeKind::Full), "sixth: {sixth:?}");
    // TLS 1.2 resumes too.
    let tls12 = client(&ECDSA12, TLS12, store())?;
    let kinds = [
        session(&gw, tls12.clone()).await?.kind,
        session(&gw, tls12).await?.kind,
    ];
    ensure!(
        kinds == [Some(HandshakeKind::Full), Some(HandshakeKind::Resumed)],
        "TLS 1.2: {kinds:?}"
    );
    Ok(())
}

#[tokio::test]
async fn cipher_suites_are_the_only_ones_and_the_gateways_order_wins() -> Result<()> {
    let (gw, _probe) = gateway(
        "cipher_suites = [\"TLS_CHACHA20_POLY1305_SHA256\", \"TLS_AES_256_GCM_SHA384\", \
         \"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\"]",
    )
    .await?;
    let cases: [(&[SupportedCipherSuite], _, Option<CipherSuite>); 5] = [
        // The client's order is not the one that counts.
        (
            &[
                cs::TLS13_AES_128_GCM_SHA256,
                cs::TLS13_AES_256_GCM_SHA384,
                cs::TLS13_CHACHA20_POLY1305_SHA256,
            ],
            TLS13,
            Some(CipherSuite::TLS13_CHACHA20_POLY1305_SHA256),
        ),
        (
            &[cs::TLS13_AES_128_GCM_SHA256, cs::TLS13_AES_256_GCM_SHA384],
            TLS13,
            Some(CipherSuite::TLS13_AES_256_GCM_SHA384),
        ),
        // A TLS 1.2 suite listed is one too.
        (
            &ECDSA12,
            TLS12,
            Some(CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
        ),
        // Suites not listed are not offered.
        (&[cs::TLS13_AES_128_GCM_SHA256], TLS13, None),
        (
            &[cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256],
            TLS12,
            None,
        ),
    ];
    for (offer, version, expected) in cases {
        let config = client(offer, version, store())?;
        let got = session(&gw, config).await;
        match (expected, got) {
            (Some(suite), Ok(got)) => ensure!(
                got.suite == Some(suite),
                "offered {offer:?}: got {got:?}, expected {suite:?}"
            ),
            (None, Err(_)) => {}
            (Some(suite), Err(e)) => bail!("offered {offer:?}: {e:#}, expected {suite:?}"),
            (None, Ok(got)) => bail!("offered {offer:?}: got {got:?}, expected a refusal"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn without_cipher_suites_the_clients_order_decides() -> Result<()> {
    let (gw, _probe) = gateway("").await?;
    for offer in [
        [cs::TLS13_AES_256_GCM_SHA384, cs::TLS13_AES_128_GCM_SHA256],
        [
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS13_AES_128_GCM_SHA256,
        ],
        [
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
        ],
    ] {
        let got = session(&gw, client(&offer, TLS13, store())?).await?;
        ensure!(
            got.suite == Some(offer[0].suite()),
            "offered {offer:?}: {got:?}"
        );
    }
    Ok(())
}
