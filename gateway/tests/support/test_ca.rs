//! A CA of a test's own (rcgen): certificates for names, key kinds and serial numbers the
//! dev certificates do not have, and revocation lists, written as PEM files the gateway's
//! config can name.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertificateRevocationListParams,
    CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, RevokedCertParams,
    SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::process::temp_dir;

/// The CA and the folder its files go to.
pub struct TestCa {
    pub issuer: CertifiedIssuer<'static, KeyPair>,
    pub dir: PathBuf,
}

/// A certificate the CA signed: its DER, and its PEM files.
pub struct Issued {
    pub der: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl Issued {
    /// The pair as a `[tls] certs` entry.
    pub fn toml(&self) -> String {
        format!(
            "{{ cert = {:?}, key = {:?} }}",
            self.cert_file, self.key_file
        )
    }

    /// The chain and key for a rustls client certificate.
    pub fn client_auth(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (vec![self.der.clone()], self.key.clone_key())
    }
}

impl TestCa {
    pub fn new() -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ok(Self {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate()?)?,
            dir: temp_dir("test-ca")?,
        })
    }

    /// The CA's certificate as a PEM file (for `client_ca`).
    pub fn ca_file(&self) -> Result<PathBuf> {
        let path = self.dir.join("ca.crt");
        std::fs::write(&path, self.issuer.pem())?;
        Ok(path)
    }

    /// A server certificate for `names` with a new key of `alg`, as `<file>.crt`/`.key`.
    pub fn issue(
        &self,
        file: &str,
        names: &[&str],
        alg: &'static rcgen::SignatureAlgorithm,
    ) -> Result<Issued> {
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        self.sign(file, params, alg)
    }

    /// [`TestCa::issue`] of a certificate that expired at the start of 2020 (ECDSA P-256).
    pub fn issue_expired(&self, file: &str, names: &[&str]) -> Result<Issued> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.not_before = date_time_ymd(2019, 1, 1);
        params.not_after = date_time_ymd(2020, 1, 1);
        self.sign(file, params, &rcgen::PKCS_ECDSA_P256_SHA256)
    }

    /// A client certificate (clientAuth) with serial number `serial`, ECDSA P-256.
    pub fn issue_client(&self, file: &str, serial: u64) -> Result<Issued> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(file, params, &rcgen::PKCS_ECDSA_P256_SHA256)
    }

    fn sign(
        &self,
        file: &str,
        params: CertificateParams,
        alg: &'static rcgen::SignatureAlgorithm,
    ) -> Result<Issued> {
        let key = KeyPair::generate_for(alg)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let (cert_file, key_file) = (
            self.dir.join(format!("{file}.crt")),
            self.dir.join(format!("{file}.key")),
        );
        std::fs::write(&cert_file, cert.pem())?;
        std::fs::write(&key_file, key.serialize_pem())?;
        Ok(Issued {
            der: cert.der().clone(),
            key: PrivateKeyDer::try_from(key.serialize_der()).map_err(anyhow::Error::msg)?,
            cert_file,
            key_file,
        })
    }

    /// A revocation list of the CA revoking the certificates of `serials`, as `<file>.crl`.
    pub fn crl(&self, file: &str, serials: &[u64]) -> Result<PathBuf> {
        let params = CertificateRevocationListParams {
            this_update: date_time_ymd(2025, 1, 1),
            next_update: date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: date_time_ymd(2025, 6, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer)?;
        let path = self.dir.join(format!("{file}.crl"));
        std::fs::write(&path, crl.pem()?)?;
        Ok(path)
    }
}

impl TestCa {
    /// [`TestCa::issue`] (ECDSA P-256) of a certificate whose authorityInfoAccess names
    /// the OCSP responder at `responder`; its `cert_file` holds the CA's certificate after
    /// the leaf, as a chain from an ACME client does.
    pub fn issue_with_responder(
        &self,
        file: &str,
        names: &[&str],
        responder: &str,
    ) -> Result<Issued> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        // AuthorityInfoAccessSyntax: one AccessDescription, id-ad-ocsp, a URI.
        let url = responder.as_bytes();
        ensure!(
            url.len() < 100,
            "a responder URL this long needs long-form DER lengths"
        );
        let mut description = vec![0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01];
        description.push(0x86);
        description.push(url.len() as u8);
        description.extend_from_slice(url);
        let mut access = vec![0x30, description.len() as u8];
        access.extend(description);
        let mut syntax = vec![0x30, access.len() as u8];
        syntax.extend(access);
        params
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 5, 5, 7, 1, 1],
                syntax,
            ));
        let issued = self.sign(file, params, &rcgen::PKCS_ECDSA_P256_SHA256)?;
        let chain = format!(
            "{}{}",
            std::fs::read_to_string(&issued.cert_file)?,
            self.issuer.pem()
        );
        std::fs::write(&issued.cert_file, chain)?;
        Ok(issued)
    }

    /// [`TestCa::issue`] (ECDSA P-256) of a certificate that demands a stapled OCSP
    /// response (the TLS feature extension listing `status_request`).
    pub fn issue_must_staple(&self, file: &str, names: &[&str]) -> Result<Issued> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 5, 5, 7, 1, 24],
                vec![0x30, 0x03, 0x02, 0x01, 0x05],
            ));
        self.sign(file, params, &rcgen::PKCS_ECDSA_P256_SHA256)
    }

    /// A certificate for an OCSP responder the CA delegates to: with the OCSPSigning
    /// extended key usage if `for_ocsp`, else for servers only.
    pub fn issue_responder(&self, file: &str, for_ocsp: bool) -> Result<Issued> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.extended_key_usages = vec![if for_ocsp {
            ExtendedKeyUsagePurpose::OcspSigning
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        self.sign(file, params, &rcgen::PKCS_ECDSA_P256_SHA256)
    }

    /// The CA's private key as a PEM file (for `openssl ocsp`).
    pub fn key_file(&self) -> Result<PathBuf> {
        let path = self.dir.join("ca.key");
        std::fs::write(&path, self.issuer.key().serialize_pem())?;
        Ok(path)
    }
}

/// What an OCSP response says of a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OcspStatus {
    Good,
    Revoked,
}

/// An OCSP response by `openssl ocsp` (the CA of `ca_cert`/`ca_key` answering for
/// itself, as a responder does) on the leaf in `cert`, with `status`, valid for a day,
/// written to `out` (DER) and returned.
pub fn openssl_ocsp(
    ca_cert: &Path,
    ca_key: &Path,
    cert: &Path,
    status: OcspStatus,
    out: &Path,
) -> Result<Vec<u8>> {
    let serial = openssl(&["x509", "-in", path_str(cert)?, "-noout", "-serial"])?;
    let serial = serial
        .trim()
        .strip_prefix("serial=")
        .context("no serial from openssl x509")?;
    let line = match status {
        OcspStatus::Good => format!("V\t491231235959Z\t\t{serial}\tunknown\t/CN=test\n"),
        OcspStatus::Revoked => {
            format!("R\t491231235959Z\t250601000000Z\t{serial}\tunknown\t/CN=test\n")
        }
    };
    let index = out.with_extension("index");
    std::fs::write(&index, line)?;
    openssl(&[
        "ocsp",
        "-index",
        path_str(&index)?,
        "-rsigner",
        path_str(ca_cert)?,
        "-rkey",
        path_str(ca_key)?,
        "-CA",
        path_str(ca_cert)?,
        "-issuer",
        path_str(ca_cert)?,
        "-cert",
        path_str(cert)?,
        "-no_nonce",
        "-ndays",
        "1",
        "-respout",
        path_str(out)?,
    ])?;
    Ok(std::fs::read(out)?)
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str().context("a path that is not UTF-8")
}

/// Runs `openssl` with `args`; its stdout.
fn openssl(args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .context("running openssl (apt-get install openssl)")?;
    ensure!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
