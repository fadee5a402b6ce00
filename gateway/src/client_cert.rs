//! What a backend is told of the certificate a client authenticated with (`[tls]
//! client_cert_header`): the elements of Envoy's `x-forwarded-client-cert` that name the
//! certificate, so backends written for Envoy read it as they are.

use std::fmt::Write as _;

use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

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
    use rustls::pki_types::pem::PemObject;

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
