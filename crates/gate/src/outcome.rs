//! What the gate hands back: a login that passed, an enrolment, and the enrolment's
//! options. Shared by the gate (gate.rs) and the ceremonies it runs (ceremony.rs), so
//! that neither imports the other's types.

use crate::GateLevel;

/// A login that passed the gate; for logs and the audit line.
#[derive(Debug, Clone)]
pub struct Passed {
    /// The level that was enforced.
    pub level: GateLevel,
    /// Which device answered.
    pub device: String,
    /// At assertion level: a short label of the credential that signed.
    pub credential: Option<String>,
    /// At assertion level: the verified signCount.
    pub sign_count: Option<u32>,
    /// At assertion level: the signed authenticator data has UV set (the key verified
    /// the user: its PIN, or built-in UV).
    pub user_verified: bool,
}

/// Options for [`crate::Gate::enroll`].
#[derive(Debug, Clone, Default)]
pub struct EnrolOptions {
    /// Require user verification (PIN or biometric on the key) at every login too.
    pub require_uv: bool,
    /// Require the key's PIN at every login (`+pin`).
    pub require_pin: bool,
    /// The key's PIN, for a key that has one and wants it (or when asked to use it).
    pub pin: Option<crate::Pin>,
}

/// A credential that [`crate::Gate::enroll`] wrote to the enrolment file.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// Short label of the new credential id.
    pub credential: String,
    /// `es256` or `eddsa`.
    pub kind: &'static str,
    /// The key's AAGUID (model identifier), hex.
    pub aaguid: String,
    /// Which device made it.
    pub device: String,
    /// With attested enrolment: what the attestation proved.
    pub attested: Option<crate::attestation::Attested>,
}
