//! OCSP stapling (`[tls] ocsp`, `certs[N].ocsp`): a response from a certificate's CA
//! saying the certificate is not revoked, sent in the TLS handshake, so that clients need
//! not ask the CA themselves (slower, and it tells the CA who visits) and clients that
//! insist on one (OCSP must-staple) accept the certificate. As nginx's
//! `ssl_stapling_file` and HAProxy's `.ocsp` files, the response is fetched by the
//! operator (`openssl ocsp`, an ACME client) and read at start-up and every reload; or,
//! with `[tls] ocsp_fetch`, fetched by the gateway from the responder the certificate names
//! ([`crate::ocsp_fetch`]), as nginx's `ssl_stapling on` and HAProxy's `ocsp-update on`.
//!
//! A response is checked when read: a successful basic response, about this very
//! certificate (serial number, issuer name and, with the issuer in the chain, issuer
//! key), saying "good", and not issued in the future. A file's signature is the client's
//! to verify, against the CA it trusts; a fetched response, which came over plain HTTP,
//! must be signed by the issuer or a responder the issuer named ([`check_signed`]). Past
//! its nextUpdate a response is no longer stapled: clients refuse a stale one, while
//! without one most ask the CA or go on.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use der::oid::db::rfc5912::{ID_SHA_1, ID_SHA_256, ID_SHA_384, ID_SHA_512};
use der::oid::{AssociatedOid, ObjectIdentifier};
use der::{Decode, Encode};
use rustls::pki_types::CertificateDer;
use x509_ocsp::{BasicOcspResponse, CertId, CertStatus, OcspResponse, OcspResponseStatus};
use x509_parser::prelude::{FromDer, X509Certificate};

/// A staple whose nextUpdate is nearer than this is warned of (start-up, reload):
/// responders issue new ones days before, so a file this old was not refreshed.
pub const SOON: Duration = Duration::from_secs(24 * 3600);

/// How far a response's thisUpdate may be ahead of this machine's clock: the responder's
/// and this machine's clocks differ a little.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// A checked OCSP response for one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staple {
    /// The response as sent in handshakes (DER).
    pub der: Vec<u8>,
    /// When it stops being valid (its nextUpdate); `None`: the responder gave none, it
    /// stays valid.
    pub next_update: Option<SystemTime>,
}

impl Staple {
    /// Whether clients would still accept it at `now`.
    pub fn fresh_at(&self, now: SystemTime) -> bool {
        self.next_update.is_none_or(|until| now < until)
    }

    /// Its nextUpdate in seconds since the Unix epoch, if it has one.
    pub fn next_update_unix(&self) -> Option<i64> {
        let until = self.next_update?.duration_since(UNIX_EPOCH).ok()?;
        i64::try_from(until.as_secs()).ok()
    }
}

/// Why a response (read from a file or fetched) cannot be stapled to a certificate.
#[derive(Debug, thiserror::Error)]
pub enum StapleError {
    /// The file could not be read.
    #[error("cannot read it: {0}")]
    Read(#[from] std::io::Error),
    /// PEM instead of DER.
    #[error("it is PEM; an OCSP response file is DER (`openssl ocsp -respout` writes DER)")]
    Pem,
    /// Not an OCSP response at all.
    #[error("not an OCSP response (DER): {0}")]
    Malformed(String),
    /// The responder refused to answer (tryLater, unauthorized, …).
    #[error("the responder did not answer with a status but with {0}")]
    NotSuccessful(&'static str),
    /// A response of a type other than the basic one clients know.
    #[error("not a basic OCSP response")]
    NotBasic,
    /// The leaf certificate itself could not be read.
    #[error("cannot read the certificate it is for: {0}")]
    Certificate(String),
    /// No status in it is about this certificate.
    #[error("it is about another certificate (none of its statuses has this certificate's serial number and issuer)")]
    OtherCertificate,
    /// The CA says the certificate is revoked: clients would refuse it.
    #[error("it says the certificate was revoked ({0}): clients would refuse it")]
    Revoked(String),
    /// The responder does not know the certificate.
    #[error("it says the certificate's status is unknown to the responder")]
    Unknown,
    /// Issued after now: a wrong clock here or at the responder.
    #[error("it is not valid yet (thisUpdate {0})")]
    NotYetValid(String),
    /// Not signed by the certificate's issuer, nor by a responder it named.
    #[error("its signature is not the issuer's nor an OCSP responder's the issuer certified")]
    Signature,
}

/// Reads the OCSP response at `path` and checks it is a current "good" status of the
/// leaf of `chain` (see [`check`]).
pub fn read(
    path: &Path,
    chain: &[CertificateDer<'_>],
    now: SystemTime,
) -> Result<Staple, StapleError> {
    check(std::fs::read(path)?, chain, now)
}

/// Checks that `der` is a successful basic OCSP response with a "good" status of the leaf
/// of `chain` (matched by serial number and issuer name hash, and issuer key hash when
/// the chain holds the issuer), issued no later than `now` (give or take
/// [`CLOCK_SKEW`]). One past its nextUpdate is no error: it is stapled only while fresh.
pub fn check(
    der: Vec<u8>,
    chain: &[CertificateDer<'_>],
    now: SystemTime,
) -> Result<Staple, StapleError> {
    Ok(parse_checked(der, chain, now)?.0)
}

/// [`check`], and that the response is signed by `issuer` (the CA of the leaf of `chain`)
/// or by a delegated responder whose certificate, in the response, `issuer` signed for
/// OCSP signing (RFC 6960 4.2.2.2).
pub fn check_signed(
    der: Vec<u8>,
    chain: &[CertificateDer<'_>],
    issuer: &CertificateDer<'_>,
    now: SystemTime,
) -> Result<Staple, StapleError> {
    let (staple, basic) = parse_checked(der, chain, now)?;
    let issuer = webpki::EndEntityCert::try_from(issuer)
        .map_err(|e| StapleError::Certificate(e.to_string()))?;
    let tbs = basic
        .tbs_response_data
        .to_der()
        .map_err(|e| StapleError::Malformed(e.to_string()))?;
    let signature = basic.signature.as_bytes().ok_or(StapleError::Signature)?;
    if signed_by(&issuer, &basic.signature_algorithm, &tbs, signature) {
        return Ok(staple);
    }
    for responder in basic.certs.iter().flatten() {
        if is_delegated_responder(&issuer, responder) {
            let Ok(der) = responder.to_der() else {
                continue;
            };
            let der = CertificateDer::from(der);
            let Ok(responder) = webpki::EndEntityCert::try_from(&der) else {
                continue;
            };
            if signed_by(&responder, &basic.signature_algorithm, &tbs, signature) {
                return Ok(staple);
            }
        }
    }
    Err(StapleError::Signature)
}

/// Whether `responder` is certified by `issuer` for OCSP signing: signed by it, with the
/// OCSPSigning extended key usage.
fn is_delegated_responder(
    issuer: &webpki::EndEntityCert<'_>,
    responder: &x509_cert::Certificate,
) -> bool {
    let Ok(der) = responder.to_der() else {
        return false;
    };
    let for_ocsp = X509Certificate::from_der(&der).is_ok_and(|(_, cert)| {
        cert.extended_key_usage()
            .is_ok_and(|eku| eku.is_some_and(|eku| eku.value.ocsp_signing))
    });
    let Ok(tbs) = responder.tbs_certificate.to_der() else {
        return false;
    };
    for_ocsp
        && responder.signature.as_bytes().is_some_and(|signature| {
            signed_by(issuer, &responder.signature_algorithm, &tbs, signature)
        })
}

/// Whether `signature` of `message` by the key of `signer` verifies with an algorithm of
/// rustls's provider that `algorithm` names.
fn signed_by(
    signer: &webpki::EndEntityCert<'_>,
    algorithm: &spki::AlgorithmIdentifierOwned,
    message: &[u8],
    signature: &[u8],
) -> bool {
    // The provider's algorithms name themselves by the AlgorithmIdentifier's contents.
    let Ok(full) = algorithm.to_der() else {
        return false;
    };
    let Some(contents) = der_contents(&full) else {
        return false;
    };
    rustls::crypto::aws_lc_rs::default_provider()
        .signature_verification_algorithms
        .all
        .iter()
        .filter(|alg| alg.signature_alg_id().as_ref() == contents)
        .any(|alg| signer.verify_signature(*alg, message, signature).is_ok())
}

/// The contents of the DER element `der` (past its tag and length).
fn der_contents(der: &[u8]) -> Option<&[u8]> {
    let mut reader = der::SliceReader::new(der).ok()?;
    let header = der::Header::decode(&mut reader).ok()?;
    let len = usize::try_from(header.length).ok()?;
    der.get(der.len().checked_sub(len)?..)
}

/// Whether the certificate `leaf` demands a stapled response (OCSP must-staple: the TLS
/// feature extension of RFC 7633 listing `status_request`): clients that honour it, such
/// as Firefox, refuse a handshake that comes without one.
pub fn must_staple(leaf: &CertificateDer<'_>) -> bool {
    // id-pe-tlsfeature.
    const TLS_FEATURE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.1.24");
    const STATUS_REQUEST: u16 = 5;
    let Ok((_, cert)) = X509Certificate::from_der(leaf) else {
        return false;
    };
    cert.extensions().iter().any(|ext| {
        ext.oid.as_bytes() == TLS_FEATURE.as_bytes()
            && <Vec<u16> as Decode>::from_der(ext.value)
                .is_ok_and(|features| features.contains(&STATUS_REQUEST))
    })
}

/// The OCSP responder the certificate `leaf` names (its authorityInfoAccess), if an
/// `http://` one: OCSP is asked over plain HTTP.
pub fn responder_url(leaf: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    let (_, cert) = X509Certificate::from_der(leaf).ok()?;
    let url = cert
        .extensions()
        .iter()
        .filter_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityInfoAccess(aia) => Some(aia),
            _ => None,
        })
        .flat_map(|aia| aia.iter())
        .filter(|desc| {
            desc.access_method == x509_parser::oid_registry::OID_PKIX_ACCESS_DESCRIPTOR_OCSP
        })
        .find_map(|desc| match desc.access_location {
            GeneralName::URI(uri) if uri.starts_with("http://") => Some(uri.to_owned()),
            _ => None,
        });
    url
}

/// The URL that asks `responder` for the status of `leaf`, issued by `issuer`: an OCSP
/// request (SHA-1 CertID, no nonce, as RFC 5019 has it, so responders and their caches
/// answer it) in the path, base64 (RFC 6960 appendix A.1: a GET).
pub fn request_url(
    responder: &str,
    leaf: &CertificateDer<'_>,
    issuer: &CertificateDer<'_>,
) -> Result<String, String> {
    use base64::Engine as _;
    use x509_ocsp::{OcspRequest, Request, TbsRequest};
    let (_, leaf) = X509Certificate::from_der(leaf).map_err(|e| format!("the certificate: {e}"))?;
    let (_, issuer) =
        X509Certificate::from_der(issuer).map_err(|e| format!("its issuer's certificate: {e}"))?;
    let sha1 = |data: &[u8]| digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, data);
    let encoding = |e: der::Error| format!("cannot encode the request: {e}");
    let cert_id = CertId {
        hash_algorithm: spki::AlgorithmIdentifierOwned {
            oid: ID_SHA_1,
            parameters: None,
        },
        issuer_name_hash: der::asn1::OctetString::new(sha1(leaf.issuer().as_raw()).as_ref())
            .map_err(encoding)?,
        issuer_key_hash: der::asn1::OctetString::new(
            sha1(&issuer.public_key().subject_public_key.data).as_ref(),
        )
        .map_err(encoding)?,
        serial_number: x509_cert::serial_number::SerialNumber::new(leaf.raw_serial())
            .map_err(encoding)?,
    };
    let request = OcspRequest {
        tbs_request: TbsRequest {
            version: x509_ocsp::Version::V1,
            requestor_name: None,
            request_list: vec![Request {
                req_cert: cert_id,
                single_request_extensions: None,
            }],
            request_extensions: None,
        },
        optional_signature: None,
    };
    let der = request.to_der().map_err(encoding)?;
    let encoded = base64::engine::general_purpose::STANDARD
        .encode(der)
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    let slash = if responder.ends_with('/') { "" } else { "/" };
    Ok(format!("{responder}{slash}{encoded}"))
}

/// [`check`]'s work, with the parsed response for [`check_signed`].
fn parse_checked(
    der: Vec<u8>,
    chain: &[CertificateDer<'_>],
    now: SystemTime,
) -> Result<(Staple, BasicOcspResponse), StapleError> {
    if der.starts_with(b"-----BEGIN") {
        return Err(StapleError::Pem);
    }
    let response =
        OcspResponse::from_der(&der).map_err(|e| StapleError::Malformed(e.to_string()))?;
    if response.response_status != OcspResponseStatus::Successful {
        return Err(StapleError::NotSuccessful(status_name(
            response.response_status,
        )));
    }
    let bytes = response.response_bytes.ok_or(StapleError::NotBasic)?;
    if bytes.response_type != BasicOcspResponse::OID {
        return Err(StapleError::NotBasic);
    }
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes())
        .map_err(|e| StapleError::Malformed(e.to_string()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| StapleError::Certificate("no certificate".into()))?;
    let (_, leaf) =
        X509Certificate::from_der(leaf).map_err(|e| StapleError::Certificate(e.to_string()))?;
    let issuer = chain
        .get(1)
        .and_then(|c| X509Certificate::from_der(c).ok())
        .map(|(_, c)| c);
    let single = basic
        .tbs_response_data
        .responses
        .iter()
        .find(|r| is_about(&r.cert_id, &leaf, issuer.as_ref()))
        .ok_or(StapleError::OtherCertificate)?;
    match &single.cert_status {
        CertStatus::Good(_) => {}
        CertStatus::Revoked(info) => {
            return Err(StapleError::Revoked(format!(
                "at {}",
                rfc3339(to_system_time(&info.revocation_time.0))
            )))
        }
        CertStatus::Unknown(_) => return Err(StapleError::Unknown),
    }
    let this_update = to_system_time(&single.this_update.0);
    if this_update > now + CLOCK_SKEW {
        return Err(StapleError::NotYetValid(rfc3339(this_update)));
    }
    let next_update = single.next_update.as_ref().map(|t| to_system_time(&t.0));
    Ok((Staple { der, next_update }, basic))
}

/// Whether `id` names `leaf`: its serial number, the hash of its issuer's name and, when
/// `issuer` is known, the hash of the issuer's public key.
fn is_about(id: &CertId, leaf: &X509Certificate<'_>, issuer: Option<&X509Certificate<'_>>) -> bool {
    if id.serial_number.as_bytes() != leaf.raw_serial() {
        return false;
    }
    let Some(alg) = hash_algorithm(&id.hash_algorithm.oid) else {
        return false;
    };
    let name_hash = digest::digest(alg, leaf.issuer().as_raw());
    if name_hash.as_ref() != id.issuer_name_hash.as_bytes() {
        return false;
    }
    issuer.is_none_or(|issuer| {
        let key_hash = digest::digest(alg, &issuer.public_key().subject_public_key.data);
        key_hash.as_ref() == id.issuer_key_hash.as_bytes()
    })
}

/// The digest a CertID's hash algorithm names, of those responders use.
fn hash_algorithm(oid: &ObjectIdentifier) -> Option<&'static digest::Algorithm> {
    match *oid {
        ID_SHA_1 => Some(&digest::SHA1_FOR_LEGACY_USE_ONLY),
        ID_SHA_256 => Some(&digest::SHA256),
        ID_SHA_384 => Some(&digest::SHA384),
        ID_SHA_512 => Some(&digest::SHA512),
        _ => None,
    }
}

fn status_name(status: OcspResponseStatus) -> &'static str {
    match status {
        OcspResponseStatus::Successful => "successful",
        OcspResponseStatus::MalformedRequest => "malformedRequest",
        OcspResponseStatus::InternalError => "internalError",
        OcspResponseStatus::TryLater => "tryLater",
        OcspResponseStatus::SigRequired => "sigRequired",
        OcspResponseStatus::Unauthorized => "unauthorized",
    }
}

fn to_system_time(t: &der::asn1::GeneralizedTime) -> SystemTime {
    UNIX_EPOCH + t.to_unix_duration()
}

/// `t` as `2026-12-08T10:00:00Z`, for messages.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::asn1::{GeneralizedTime, Null, OctetString};
    use der::Encode;
    use rustls::pki_types::pem::PemObject;
    use x509_ocsp::{OcspGeneralizedTime, ResponderId, ResponseData, RevokedInfo, SingleResponse};

    type TestResult<T> = Result<T, Box<dyn std::error::Error>>;

    const DAY: Duration = Duration::from_secs(86_400);

    fn dev_cert(name: &str) -> TestResult<CertificateDer<'static>> {
        Ok(CertificateDer::from_pem_file(
            crate::tls::dev_certs().join(name),
        )?)
    }

    type Trio = (
        CertificateDer<'static>,
        CertificateDer<'static>,
        CertificateDer<'static>,
    );

    /// The dev server certificate, the dev CA's and the dev client certificate.
    fn dev_trio() -> TestResult<Trio> {
        Ok((
            dev_cert("server.crt")?,
            dev_cert("ca.crt")?,
            dev_cert("client.crt")?,
        ))
    }

    fn time(t: SystemTime) -> TestResult<OcspGeneralizedTime> {
        Ok(OcspGeneralizedTime(GeneralizedTime::from_unix_duration(
            t.duration_since(UNIX_EPOCH)?,
        )?))
    }

    /// A response on `leaf` (issued by `issuer`) with `status` and the times given, signed
    /// with the dev CA's key (ECDSA P-256, SHA-256), hashed with SHA-256.
    fn response(
        leaf: &CertificateDer<'_>,
        issuer: &CertificateDer<'_>,
        status: CertStatus,
        this_update: SystemTime,
        next_update: Option<SystemTime>,
    ) -> TestResult<Vec<u8>> {
        let (_, leaf) = X509Certificate::from_der(leaf)?;
        let (_, issuer) = X509Certificate::from_der(issuer)?;
        let sha256 = |data: &[u8]| digest::digest(&digest::SHA256, data).as_ref().to_vec();
        let cert_id = CertId {
            hash_algorithm: spki::AlgorithmIdentifierOwned {
                oid: ID_SHA_256,
                parameters: None,
            },
            issuer_name_hash: OctetString::new(sha256(leaf.issuer().as_raw()))?,
            issuer_key_hash: OctetString::new(sha256(
                &issuer.public_key().subject_public_key.data,
            ))?,
            serial_number: x509_cert::serial_number::SerialNumber::new(leaf.raw_serial())?,
        };
        let tbs_response_data = ResponseData {
            version: x509_ocsp::Version::V1,
            responder_id: ResponderId::ByKey(OctetString::new([7u8; 20])?),
            produced_at: time(this_update)?,
            responses: vec![SingleResponse {
                cert_id,
                cert_status: status,
                this_update: time(this_update)?,
                next_update: next_update.map(time).transpose()?,
                single_extensions: None,
            }],
            response_extensions: None,
        };
        let ca_key = std::fs::read_to_string(crate::tls::dev_certs().join("ca.key"))?;
        let ca_key = rcgen::KeyPair::from_pem(&ca_key)?;
        let signature = rcgen::SigningKey::sign(&ca_key, &tbs_response_data.to_der()?)?;
        let basic = BasicOcspResponse {
            tbs_response_data,
            signature_algorithm: spki::AlgorithmIdentifierOwned {
                oid: der::oid::db::rfc5912::ECDSA_WITH_SHA_256,
                parameters: None,
            },
            signature: der::asn1::BitString::from_bytes(&signature)?,
            certs: None,
        };
        Ok(OcspResponse::successful(basic)?.to_der()?)
    }

    #[test]
    fn a_good_response_on_the_certificate_is_taken_with_its_next_update() -> TestResult<()> {
        let (leaf, ca) = (dev_cert("server.crt")?, dev_cert("ca.crt")?);
        let now = SystemTime::now();
        let der = response(&leaf, &ca, CertStatus::good(), now, Some(now + DAY))?;
        // The chain as most files have it (the leaf alone), and with its issuer.
        for chain in [vec![leaf.clone()], vec![leaf.clone(), ca.clone()]] {
            let staple = check(der.clone(), &chain, now)?;
            assert_eq!(staple.der, der);
            assert!(staple.fresh_at(now + DAY - Duration::from_secs(1)));
            assert!(!staple.fresh_at(now + DAY));
        }
        // A response past its nextUpdate is read (and then not stapled).
        let staple = check(der, &[leaf], now + 2 * DAY)?;
        assert!(!staple.fresh_at(now + 2 * DAY));
        Ok(())
    }

    #[test]
    fn a_fetched_response_must_be_signed_by_the_issuer() -> TestResult<()> {
        let (leaf, ca, client) = dev_trio()?;
        let now = SystemTime::now();
        let der = response(&leaf, &ca, CertStatus::good(), now, Some(now + DAY))?;
        let chain = std::slice::from_ref(&leaf);
        check_signed(der.clone(), chain, &ca, now)?;
        // Signed by the dev CA, not by the client certificate's key.
        let err = check_signed(der.clone(), chain, &client, now).err();
        assert!(matches!(err, Some(StapleError::Signature)), "{err:?}");
        // One bit of the signed data changed.
        let mut tampered = der.clone();
        let at = tampered
            .windows(8)
            .position(|w| w == [7u8; 8])
            .ok_or("no responder id")?;
        tampered[at] = 8;
        assert!(check(tampered.clone(), chain, now).is_ok());
        let err = check_signed(tampered, chain, &ca, now).err();
        assert!(matches!(err, Some(StapleError::Signature)), "{err:?}");
        Ok(())
    }

    #[test]
    fn the_responder_is_read_from_the_certificate_and_asked_with_a_get() -> TestResult<()> {
        // The dev certificates name no responder.
        assert_eq!(responder_url(&dev_cert("server.crt")?), None);
        let (leaf, ca) = (dev_cert("server.crt")?, dev_cert("ca.crt")?);
        let url = request_url("http://ocsp.example.test/", &leaf, &ca)?;
        let encoded = url
            .strip_prefix("http://ocsp.example.test/")
            .ok_or("not below the responder")?;
        assert!(!encoded.contains(['/', '+', '=']), "{encoded}");
        use base64::Engine as _;
        let der = base64::engine::general_purpose::STANDARD.decode(
            encoded
                .replace("%2B", "+")
                .replace("%2F", "/")
                .replace("%3D", "="),
        )?;
        let request = x509_ocsp::OcspRequest::from_der(&der)?;
        let asked = &request.tbs_request.request_list[0].req_cert;
        let (_, parsed) = X509Certificate::from_der(&leaf)?;
        let (_, issuer) = X509Certificate::from_der(&ca)?;
        assert_eq!(asked.hash_algorithm.oid, ID_SHA_1);
        assert!(is_about(asked, &parsed, Some(&issuer)));
        assert_eq!(
            request_url("http://ocsp.example.test", &leaf, &ca)?,
            url,
            "a slash is put between"
        );
        Ok(())
    }

    #[test]
    fn a_must_staple_certificate_is_told_apart() -> TestResult<()> {
        let issue = |features: Option<Vec<u8>>| -> TestResult<CertificateDer<'static>> {
            let mut params = rcgen::CertificateParams::new(vec!["a.example.test".to_owned()])?;
            if let Some(content) = features {
                params
                    .custom_extensions
                    .push(rcgen::CustomExtension::from_oid_content(
                        &[1, 3, 6, 1, 5, 5, 7, 1, 24],
                        content,
                    ));
            }
            let key = rcgen::KeyPair::generate()?;
            Ok(params.self_signed(&key)?.der().clone())
        };
        // SEQUENCE { INTEGER 5 }: status_request.
        assert!(must_staple(&issue(Some(vec![
            0x30, 0x03, 0x02, 0x01, 0x05
        ]))?));
        // Another feature (status_request_v2), none, no extension.
        assert!(!must_staple(&issue(Some(vec![
            0x30, 0x03, 0x02, 0x01, 0x11
        ]))?));
        assert!(!must_staple(&issue(Some(vec![0x30, 0x00]))?));
        assert!(!must_staple(&issue(None)?));
        assert!(!must_staple(&dev_cert("server.crt")?));
        Ok(())
    }

    #[test]
    fn a_response_without_next_update_stays_fresh() -> TestResult<()> {
        let (leaf, ca) = (dev_cert("server.crt")?, dev_cert("ca.crt")?);
        let now = SystemTime::now();
        let staple = check(
            response(&leaf, &ca, CertStatus::good(), now, None)?,
            &[leaf],
            now,
        )?;
        assert!(staple.fresh_at(now + 3650 * DAY));
        assert_eq!(staple.next_update_unix(), None);
        Ok(())
    }

    #[test]
    fn other_certificates_revoked_unknown_and_future_responses_are_refused() -> TestResult<()> {
        let (leaf, ca, client) = dev_trio()?;
        let now = SystemTime::now();
        let good = response(&leaf, &ca, CertStatus::good(), now, Some(now + DAY))?;

        // The dev client certificate has the same issuer, not the same serial number.
        let err = check(good.clone(), std::slice::from_ref(&client), now).err();
        assert!(
            matches!(err, Some(StapleError::OtherCertificate)),
            "{err:?}"
        );
        // An issuer in the chain whose key is not the one the response names.
        let err = check(good.clone(), &[leaf.clone(), client.clone()], now).err();
        assert!(
            matches!(err, Some(StapleError::OtherCertificate)),
            "{err:?}"
        );

        let revoked = CertStatus::revoked(RevokedInfo {
            revocation_time: time(UNIX_EPOCH + 20_000 * DAY)?,
            revocation_reason: None,
        });
        let err = check(
            response(&leaf, &ca, revoked, now, None)?,
            std::slice::from_ref(&leaf),
            now,
        )
        .err();
        assert!(
            matches!(&err, Some(StapleError::Revoked(at)) if at == "at 2024-10-04T00:00:00Z"),
            "{err:?}"
        );
        let unknown = CertStatus::Unknown(Null);
        let err = check(
            response(&leaf, &ca, unknown, now, None)?,
            std::slice::from_ref(&leaf),
            now,
        )
        .err();
        assert!(matches!(err, Some(StapleError::Unknown)), "{err:?}");

        // Made an hour ahead of this clock: not valid yet; five minutes are let pass.
        let err = check(
            good.clone(),
            std::slice::from_ref(&leaf),
            now - Duration::from_secs(3600),
        )
        .err();
        assert!(matches!(err, Some(StapleError::NotYetValid(_))), "{err:?}");
        check(
            good,
            std::slice::from_ref(&leaf),
            now - Duration::from_secs(240),
        )?;

        // A responder's refusal is no status.
        let later = OcspResponse::try_later().to_der()?;
        let err = check(later, std::slice::from_ref(&leaf), now).err();
        assert!(
            matches!(err, Some(StapleError::NotSuccessful("tryLater"))),
            "{err:?}"
        );
        let err = check(leaf.to_vec(), std::slice::from_ref(&leaf), now).err();
        assert!(matches!(err, Some(StapleError::Malformed(_))), "{err:?}");
        let err = check(b"-----BEGIN OCSP".to_vec(), &[leaf], now).err();
        assert!(matches!(err, Some(StapleError::Pem)), "{err:?}");
        Ok(())
    }
}
