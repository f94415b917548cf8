//! Just enough DER reading to answer one question about a certificate: is it a CA?
//!
//! rustls accepts any parsable certificate as a trust anchor. A leaf certificate given where
//! the chain CA belongs would then make every handshake fail with "unknown issuer"; we would
//! rather refuse it at start-up with a message that says what is wrong. This reader only ever
//! *adds* a refusal: when it cannot parse something it answers `None` and leaves the decision
//! to rustls/webpki, which do the real verification.

/// OID 2.5.29.19 (id-ce-basicConstraints), content octets.
const BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];

const SEQUENCE: u8 = 0x30;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
/// `[3] EXPLICIT` — the extensions field of TBSCertificate.
const EXTENSIONS: u8 = 0xa3;

/// Splits one TLV off the front of `input`: `(tag, contents, rest)`.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // high-tag-number form: never used in X.509
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None; // indefinite length (not DER) or absurd size
        }
        let (len_bytes, rest) = rest.split_at(n);
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

fn expect(input: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
    let (tag, contents, rest) = tlv(input)?;
    (tag == want).then_some((contents, rest))
}

/// `Some(true)` if the certificate's basicConstraints say `cA: TRUE`, `Some(false)` if it
/// parsed and they do not (absent extension, absent or false `cA`), `None` if the DER could
/// not be followed.
pub(crate) fn basic_constraints_ca(cert: &[u8]) -> Option<bool> {
    let (certificate, _) = expect(cert, SEQUENCE)?;
    let (mut tbs, _) = expect(certificate, SEQUENCE)?;
    while !tbs.is_empty() {
        let (tag, contents, rest) = tlv(tbs)?;
        tbs = rest;
        if tag != EXTENSIONS {
            continue;
        }
        let (mut extensions, _) = expect(contents, SEQUENCE)?;
        while !extensions.is_empty() {
            let (extension, rest) = expect(extensions, SEQUENCE)?;
            extensions = rest;
            let (oid, mut fields) = expect(extension, OID)?;
            if oid != BASIC_CONSTRAINTS {
                continue;
            }
            // Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }
            if let Some((_, rest)) = expect(fields, BOOLEAN) {
                fields = rest;
            }
            let (value, _) = expect(fields, OCTET_STRING)?;
            // BasicConstraints ::= SEQUENCE { cA BOOLEAN DEFAULT FALSE, pathLenConstraint INTEGER OPTIONAL }
            let (constraints, _) = expect(value, SEQUENCE)?;
            return Some(match expect(constraints, BOOLEAN) {
                Some((flag, _)) => flag.iter().any(|&b| b != 0),
                None => false,
            });
        }
        return Some(false);
    }
    Some(false) // no extensions at all (an X.509 v1 certificate): not a CA by RFC 5280
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_unknown_not_rejected() {
        assert_eq!(basic_constraints_ca(b""), None);
        assert_eq!(basic_constraints_ca(&[0x30, 0x85, 1, 2, 3, 4, 5]), None);
        assert_eq!(basic_constraints_ca(&[0x30, 0x05, 0x30]), None);
    }

    #[test]
    fn hand_built_extensions() {
        // Certificate { TBS { [3] { SEQUENCE OF { Extension } } } } with nothing else around:
        // enough for the walker, which skips fields it does not need.
        fn cert_with_ext(ext: &[u8]) -> Vec<u8> {
            let exts = wrap(SEQUENCE, ext);
            let tagged = wrap(EXTENSIONS, &exts);
            let tbs = wrap(SEQUENCE, &[&[0x02, 0x01, 0x01][..], &tagged].concat());
            wrap(SEQUENCE, &tbs)
        }
        fn wrap(tag: u8, body: &[u8]) -> Vec<u8> {
            let mut v = vec![tag, u8::try_from(body.len()).unwrap()];
            v.extend_from_slice(body);
            v
        }
        let bc = |value: &[u8], critical: bool| {
            let mut e = wrap(OID, BASIC_CONSTRAINTS);
            if critical {
                e.extend_from_slice(&[BOOLEAN, 1, 0xff]);
            }
            e.extend(wrap(OCTET_STRING, &wrap(SEQUENCE, value)));
            wrap(SEQUENCE, &e)
        };
        let ca = cert_with_ext(&bc(&[BOOLEAN, 1, 0xff, 0x02, 0x01, 0x00], true));
        assert_eq!(basic_constraints_ca(&ca), Some(true));
        let leaf = cert_with_ext(&bc(&[], true));
        assert_eq!(basic_constraints_ca(&leaf), Some(false));
        let leaf_explicit_false = cert_with_ext(&bc(&[BOOLEAN, 1, 0x00], false));
        assert_eq!(basic_constraints_ca(&leaf_explicit_false), Some(false));
        let other_ext = {
            let mut e = wrap(OID, &[0x55, 0x1d, 0x0f]);
            e.extend(wrap(OCTET_STRING, &[0x03, 0x02, 0x07, 0x80]));
            cert_with_ext(&wrap(SEQUENCE, &e))
        };
        assert_eq!(basic_constraints_ca(&other_ext), Some(false));
    }
}
