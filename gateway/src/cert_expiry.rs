//! When the gateway's own certificates expire: a gauge per certificate for alerts
//! (`wsgate_tls_certificate_expiry_timestamp_seconds`), and a warning at start and at
//! every reload for one that expires within [`SOON`] or has expired, so a renewal that did
//! not happen is seen before clients or backends refuse the gateway. The same for the OCSP
//! responses stapled to them (`wsgate_tls_ocsp_next_update_timestamp_seconds`, a warning
//! within [`crate::ocsp::SOON`] of their nextUpdate).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tracing::warn;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::Config;

/// A certificate expiring within this long is warned of.
pub const SOON: Duration = Duration::from_secs(14 * 24 * 3600);

/// One of the gateway's certificates and when it stops being valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertExpiry {
    /// The config key that names it: `tls.cert`, `tls.certs[N].cert`, `backend_tls.cert`.
    pub key: String,
    /// Its file.
    pub file: PathBuf,
    /// Its leaf's notAfter, in seconds since the Unix epoch.
    pub not_after: i64,
}

/// The leaf certificates `config` names (the server's, by SNI, and the one shown to
/// backends) with their expiry. A file that cannot be read or parsed is left out: loading
/// the config checked them already, so only a file changed since could be.
pub fn of_config(config: &Config) -> Vec<CertExpiry> {
    let tls = &config.tls;
    let named = std::iter::once(("tls.cert".to_owned(), tls.cert.as_path()))
        .chain(
            tls.certs
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("tls.certs[{i}].cert"), p.cert.as_path())),
        )
        .chain(
            config
                .backend_tls
                .cert
                .as_deref()
                .map(|p| ("backend_tls.cert".to_owned(), p)),
        );
    named
        .filter_map(|(key, file)| {
            Some(CertExpiry {
                not_after: not_after(file)?,
                file: file.to_owned(),
                key,
            })
        })
        .collect()
}

/// The OCSP responses `config` staples (`tls.ocsp`, `tls.certs[N].ocsp`), with their
/// nextUpdate as `not_after`, as of `now`. Left out: those without a nextUpdate (they do
/// not lapse) and files that cannot be read or are not a current "good" response (loading
/// the config refused those, so only a file changed since could be).
pub fn staples_of_config(config: &Config, now: SystemTime) -> Vec<CertExpiry> {
    let tls = &config.tls;
    let named = std::iter::once((
        "tls.ocsp".to_owned(),
        tls.cert.as_path(),
        tls.ocsp.as_deref(),
    ))
    .chain(tls.certs.iter().enumerate().map(|(i, p)| {
        (
            format!("tls.certs[{i}].ocsp"),
            p.cert.as_path(),
            p.ocsp.as_deref(),
        )
    }));
    named
        .filter_map(|(key, cert, ocsp)| {
            let ocsp = ocsp?;
            let chain = CertificateDer::pem_file_iter(cert)
                .ok()?
                .collect::<Result<Vec<_>, _>>()
                .ok()?;
            let staple = crate::ocsp::read(ocsp, &chain, now).ok()?;
            Some(CertExpiry {
                not_after: staple.next_update_unix()?,
                file: ocsp.to_owned(),
                key,
            })
        })
        .collect()
}

/// Logs a warning for each OCSP response of `staples` whose nextUpdate is within
/// [`crate::ocsp::SOON`] of `now` (one already past it was logged when loaded).
pub fn warn_if_stale_soon(staples: &[CertExpiry], now: SystemTime) {
    let now = unix(now);
    for staple in staples {
        let left = staple.not_after.saturating_sub(now);
        if left > 0 && left < crate::ocsp::SOON.as_secs() as i64 {
            warn!(key = %staple.key, file = %staple.file.display(), expires_in_minutes = left / 60,
                "OCSP response lapses soon (its nextUpdate): fetch a fresh one and reload");
        }
    }
}

/// `t` in whole seconds since the Unix epoch (0 before it), as the gauges show times.
pub fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The notAfter of the first certificate in the PEM file at `path`.
pub fn not_after(path: &Path) -> Option<i64> {
    let der = CertificateDer::from_pem_file(path).ok()?;
    let (_, cert) = X509Certificate::from_der(&der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Logs a warning for each certificate of `certs` that has expired or expires within
/// [`SOON`] of `now`.
pub fn warn_if_soon(certs: &[CertExpiry], now: SystemTime) {
    let now = unix(now);
    for cert in certs {
        let left = cert.not_after.saturating_sub(now);
        let file = cert.file.display();
        if left <= 0 {
            warn!(key = %cert.key, %file, expired_days_ago = -left / 86_400, "certificate has expired: peers will refuse it");
        } else if left < SOON.as_secs() as i64 {
            warn!(key = %cert.key, %file, expires_in_hours = left / 3600, "certificate expires soon: renew it and reload");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dev_certificates_are_read_with_their_keys() -> Result<(), Box<dyn std::error::Error>> {
        let dir = crate::tls::dev_certs();
        let text = format!(
            "[tls]\ncert = {:?}\nkey = {:?}\ncerts = [{{ cert = {:?}, key = {:?} }}]\n\
             [backend_tls]\ncert = {:?}\nkey = {:?}\n[backends]\nA = \"ws://localhost:1/\"\n",
            dir.join("server.crt"),
            dir.join("server.key"),
            dir.join("server.crt"),
            dir.join("server.key"),
            dir.join("client.crt"),
            dir.join("client.key"),
        );
        let config = Config::from_toml_str(&text, &dir)?;
        let certs = of_config(&config);
        let keys: Vec<&str> = certs.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["tls.cert", "tls.certs[0].cert", "backend_tls.cert"]);
        // generate.sh makes them valid for ten years.
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
        assert!(certs.iter().all(|c| c.not_after > now), "{certs:?}");
        assert_eq!(not_after(&dir.join("jwt-public.pem")), None);
        Ok(())
    }
}
