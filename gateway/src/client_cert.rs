//! Client certificates (mutual TLS): how they are checked (`[tls] client_ca`,
//! `client_cert`, `client_crl`), and what a backend is told of the one a client
//! authenticated with (`client_cert_header`): the elements of Envoy's
//! `x-forwarded-client-cert` that name the certificate, so backends written for Envoy read
//! it as they are.

use std::fmt::Write as _;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::config::{ClientCertMode, TlsConfig};

/// The verifier of client certificates `[tls]` asks for: `None` without `client_ca`.
/// Errors name the key (`client_ca` or `client_crl`) and the problem.
pub fn verifier(
    tls: &TlsConfig,
    provider: Arc<CryptoProvider>,
) -> Result<Option<Arc<dyn ClientCertVerifier>>, (String, String)> {
    let Some(ca) = &tls.client_ca else {
        return Ok(None);
    };
    let roots = crate::tls::trust_roots(ca).map_err(|e| ("client_ca".to_owned(), e))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let verifier = match tls.client_cert {
        ClientCertMode::Required => verifier,
        ClientCertMode::Optional => verifier.allow_unauthenticated(),
    };
    let verifier = match &tls.client_crl {
        None => verifier,
        Some(path) => {
            verifier.with_crls(revocation_lists(path).map_err(|e| ("client_crl".to_owned(), e))?)
        }
    };
    let built = verifier.build().map_err(|e| match e {
        VerifierBuilderError::InvalidCrl(_) => (
            "client_crl".to_owned(),
            format!("{}: {e}", tls.client_crl.as_deref().unwrap_or(ca).display()),
        ),
        e => ("client_ca".to_owned(), format!("{}: {e}", ca.display())),
    })?;
    Ok(Some(built))
}

/// Whether a TLS handshake failed on the client's certificate: none where one is required,
/// or one that is not trusted, revoked, expired or not for client use.
pub fn refused(e: &std::io::Error) -> bool {
    matches!(
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_))
    )
}

/// The certificate revocation lists in the PEM file at `path`: at least one.
fn revocation_lists(
    path: &std::path::Path,
) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let shown = path.display();
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{shown}: {}", crate::tls::pem_problem(&e, path, "X509 CRL")))?;
    if crls.is_empty() {
        return Err(format!("{shown}: no X509 CRL in PEM"));
    }
    Ok(crls)
}

/// `Hash=<SHA-256 of the DER, hex>;Subject="<DN>";URI=<SAN URI>;DNS=<SAN DNS name>`, one
/// `URI`/`DNS` element per name (a SPIFFE ID is a URI name). Values holding `,`, `;`, `=`
/// or `"` are quoted, with `"` and `\` escaped, as Envoy writes them; `Subject` is always
/// quoted. Characters a header value cannot hold become `?`. A certificate that does not
/// parse (rustls verified its chain, so only an odd extension could) is named by its hash.
pub fn describe(leaf: &CertificateDer<'_>) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf);
    let mut out = String::with_capacity(160);
    out.push_str("Hash=");
    for b in digest.as_ref() {
        let _ = write!(out, "{b:02x}");
    }
    let Ok((_, cert)) = X509Certificate::from_der(leaf) else {
        return out;
    };
    out.push_str(";Subject=");
    quote(&mut out, &cert.subject().to_string());
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        let names = &san.value.general_names;
        for (element, name) in names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(uri) => Some(("URI", *uri)),
                _ => None,
            })
            .chain(names.iter().filter_map(|n| match n {
                GeneralName::DNSName(dns) => Some(("DNS", *dns)),
                _ => None,
            }))
        {
            let _ = write!(out, ";{element}=");
            if name.contains([',', ';', '=', '"']) {
                quote(&mut out, name);
            } else {
                push_clean(&mut out, name);
            }
        }
    }
    out
}

fn quote(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        push_clean_char(out, c);
    }
    out.push('"');
}

fn push_clean(out: &mut String, value: &str) {
    value.chars().for_each(|c| push_clean_char(out, c));
}

/// `c`, or `?` for a control character (no header value may hold one).
fn push_clean_char(out: &mut String, c: char) {
    out.push(if c.is_control() { '?' } else { c });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dev_client_certificate_is_named_by_hash_and_subject(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let pem = crate::tls::dev_certs().join("client.crt");
        let der = CertificateDer::from_pem_file(pem)?;
        let described = describe(&der);
        let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
        let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            described,
            format!("Hash={hex};Subject=\"CN=wsgate dev gateway client\"")
        );
        Ok(())
    }

    #[test]
    fn names_follow_the_subject_uris_first_and_odd_characters_are_quoted_or_replaced(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let der = CertificateDer::from_pem_file(crate::tls::dev_certs().join("server.crt"))?;
        let described = describe(&der);
        assert!(
            described.ends_with(";Subject=\"CN=localhost\";DNS=localhost"),
            "{described}"
        );
        let mut out = String::new();
        quote(&mut out, "a\"b\\c\nd");
        assert_eq!(out, "\"a\\\"b\\\\c?d\"");
        Ok(())
    }
}
