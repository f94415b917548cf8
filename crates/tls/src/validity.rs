//! Certificate validity at start-up (and on reload): log each certificate's subject and
//! expiry, warn when one expires soon, and refuse one that has expired or is not valid yet,
//! so an operator learns of it from the start-up log, not from a failed handshake at night.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{load_certs, TlsError};

/// A certificate expiring within this many days is warned about at start-up.
pub const EXPIRY_WARNING_DAYS: u64 = 14;

/// One certificate's identity and remaining validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateStatus {
    pub path: PathBuf,
    pub index: usize,
    pub subject: String,
    pub not_after: SystemTime,
    /// Whole days left (0 on the last day).
    pub days_left: u64,
}

/// Checks every certificate in `path` against `now`: `Err` if one has expired or is not
/// valid yet; otherwise each one's status, logged at info (and at warn within
/// [`EXPIRY_WARNING_DAYS`] of expiry). `label` names the flag it came from.
pub fn check_certificate_file(
    label: &str,
    path: &Path,
    now: SystemTime,
) -> Result<Vec<CertificateStatus>, TlsError> {
    let mut statuses = Vec::new();
    for (i, der) in load_certs(path)?.iter().enumerate() {
        let index = i + 1;
        let x509_error = |detail: String| TlsError::X509 {
            path: path.to_owned(),
            index,
            detail,
        };
        let (_, cert) =
            X509Certificate::from_der(der.as_ref()).map_err(|e| x509_error(e.to_string()))?;
        let subject = cert.subject().to_string();
        let validity = cert.validity();
        let not_before = unix_time(validity.not_before.timestamp());
        let not_after = unix_time(validity.not_after.timestamp());
        if now < not_before {
            return Err(TlsError::NotYetValid {
                path: path.to_owned(),
                index,
                subject,
                not_before: validity.not_before.to_string(),
            });
        }
        let Ok(left) = not_after.duration_since(now) else {
            return Err(TlsError::Expired {
                path: path.to_owned(),
                index,
                subject,
                not_after: validity.not_after.to_string(),
            });
        };
        let days_left = left.as_secs() / 86_400;
        if days_left < EXPIRY_WARNING_DAYS {
            tracing::warn!(certificate = label, path = %path.display(), %subject, not_after = %validity.not_after, days_left, "certificate expires soon; renew it (tls/make-certs.sh --force)");
        } else {
            tracing::info!(certificate = label, path = %path.display(), %subject, not_after = %validity.not_after, days_left, "certificate");
        }
        statuses.push(CertificateStatus {
            path: path.to_owned(),
            index,
            subject,
            not_after,
            days_left,
        });
    }
    Ok(statuses)
}

fn unix_time(seconds: i64) -> SystemTime {
    match u64::try_from(seconds) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => UNIX_EPOCH,
    }
}
