//! Attested enrolment: known-answer tests with recorded statements from python-fido2's
//! test suite, and chains, blobs and keys these tests make (rcgen).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::EncodePrivateKey as _;
use rcgen::{BasicConstraints, CertificateParams, CustomExtension, DnType, IsCa, Issuer, KeyPair};

use super::*;
use crate::verify::{parse_auth_data, rp_id_hash, verify_new_credential, PublicKey};
use crate::{
    Authenticator, CancelSignal, CredentialStore, EnrolOptions, Gate, GateError, GateSettings,
    LevelConfig, MadeCredential, MakeCredentialRequest, SoftAttestation, SoftAttestationFormat,
    SoftAuthenticator, SoftBehavior,
};

/// The software authenticator's AAGUID ("chromecard-soft!").
const SOFT_AAGUID: [u8; 16] = *b"chromecard-soft!";
const CHALLENGE: [u8; 32] = [9; 32];

/// 2026-06-01T00:00:00Z: inside the validity of every certificate these tests make.
fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_272_000)
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

// ---------------------------------------------------------------------------
// Certificates the tests make
// ---------------------------------------------------------------------------

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    der: Vec<u8>,
}

impl Ca {
    fn root(cn: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2040, 1, 1);
        let der = params.self_signed(&key).unwrap().der().to_vec();
        Self { params, key, der }
    }

    fn intermediate(&self, cn: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2039, 1, 1);
        let der = params
            .signed_by(&key, &self.issuer())
            .unwrap()
            .der()
            .to_vec();
        Self { params, key, der }
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }

    fn as_root(&self) -> Root {
        Root::from_der(self.der.clone()).unwrap()
    }
}

/// How the attestation (leaf) certificate is made.
struct LeafSpec {
    aaguid: Option<[u8; 16]>,
    ou: &'static str,
    ca: bool,
    not_after: (i32, u8, u8),
}

impl Default for LeafSpec {
    fn default() -> Self {
        Self {
            aaguid: Some(SOFT_AAGUID),
            ou: "Authenticator Attestation",
            ca: false,
            not_after: (2035, 1, 1),
        }
    }
}

/// A leaf key and certificate issued by `ca`.
fn leaf(ca: &Ca, spec: &LeafSpec) -> (p256::ecdsa::SigningKey, Vec<u8>) {
    let sk = p256::ecdsa::SigningKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let pkcs8 = sk.to_pkcs8_der().unwrap();
    let kp = KeyPair::try_from(pkcs8.as_bytes()).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CountryName, "SE");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Chromecard Test Keys");
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, spec.ou);
    params
        .distinguished_name
        .push(DnType::CommonName, "Chromecard Test Attestation");
    params.is_ca = if spec.ca {
        IsCa::Ca(BasicConstraints::Unconstrained)
    } else {
        IsCa::ExplicitNoCa
    };
    params.not_before = rcgen::date_time_ymd(2021, 1, 1);
    let (y, m, d) = spec.not_after;
    params.not_after = rcgen::date_time_ymd(y, m, d);
    if let Some(a) = spec.aaguid {
        let mut content = vec![0x04, 0x10];
        content.extend_from_slice(&a);
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 4, 1, 45724, 1, 1, 4],
                content,
            ));
    }
    let der = params.signed_by(&kp, &ca.issuer()).unwrap().der().to_vec();
    (sk, der)
}

/// Root -> intermediate -> leaf; the identity's chain is leaf, intermediate.
struct Pki {
    root: Ca,
    identity: SoftAttestation,
}

fn pki_with(spec: &LeafSpec, format: SoftAttestationFormat) -> Pki {
    let root = Ca::root("Chromecard Test Attestation Root");
    let inter = root.intermediate("Chromecard Test Attestation CA 1");
    let (sk, leaf_der) = leaf(&inter, spec);
    let identity = SoftAttestation::new(sk, vec![leaf_der, inter.der.clone()], format).unwrap();
    Pki { root, identity }
}

fn pki() -> Pki {
    pki_with(&LeafSpec::default(), SoftAttestationFormat::Packed)
}

// ---------------------------------------------------------------------------
// Making and checking credentials with the software authenticator
// ---------------------------------------------------------------------------

fn make(auth: &SoftAuthenticator) -> MadeCredential {
    auth.make_credential(
        &MakeCredentialRequest {
            rp_id: "chromecard".into(),
            challenge: CHALLENGE,
            user_id: vec![1; 16],
            user_name: "alice".into(),
            require_uv: false,
            require_pin: false,
            pin: None,
            exclude: Vec::new(),
        },
        &CancelSignal::new(),
    )
    .unwrap()
}

fn check(made: &MadeCredential, policy: &Policy) -> Result<Attested, AttestationError> {
    let rp = rp_id_hash("chromecard");
    let new = verify_new_credential(&made.auth_data, &rp, false).unwrap();
    verify_new(policy, made, &CHALLENGE, &rp, &new)
}

fn attested_by(identity: &SoftAttestation) -> MadeCredential {
    make(&SoftAuthenticator::new(SoftBehavior::Present).with_attestation(identity.clone()))
}

fn policy(roots: Vec<Root>) -> Policy {
    Policy::new(roots).at(now())
}

fn set_sig(made: &mut MadeCredential, mut f: impl FnMut(&mut Vec<u8>)) {
    let ciborium::Value::Map(m) = &mut made.attestation.att_stmt else {
        panic!("a map")
    };
    for (k, v) in m.iter_mut() {
        if matches!(k, ciborium::Value::Text(t) if t == "sig") {
            if let ciborium::Value::Bytes(b) = v {
                f(b);
            }
        }
    }
}

#[test]
fn a_genuine_packed_chain_passes() {
    let p = pki();
    let made = attested_by(&p.identity);
    assert_eq!(made.attestation.fmt, "packed");
    let a = check(&made, &policy(vec![p.root.as_root()])).unwrap();
    assert_eq!(a.fmt, "packed");
    assert_eq!(a.aaguid, hex(&SOFT_AAGUID));
    assert_eq!(a.root_subject, "CN=Chromecard Test Attestation Root");
}

#[test]
fn a_genuine_fido_u2f_statement_passes() {
    // fido-u2f carries exactly the attestation certificate, issued here by the root.
    let root = Ca::root("Chromecard Test U2F Root");
    let (sk, leaf_der) = leaf(&root, &LeafSpec::default());
    let id = SoftAttestation::new(sk, vec![leaf_der], SoftAttestationFormat::FidoU2f).unwrap();
    let made = attested_by(&id);
    assert_eq!(made.attestation.fmt, "fido-u2f");
    let a = check(&made, &policy(vec![root.as_root()])).unwrap();
    assert_eq!(a.fmt, "fido-u2f");
    assert_eq!(a.root_subject, "CN=Chromecard Test U2F Root");
    // An intermediate in a fido-u2f x5c is not the format.
    let p = pki_with(&LeafSpec::default(), SoftAttestationFormat::FidoU2f);
    assert!(matches!(
        check(&attested_by(&p.identity), &policy(vec![p.root.as_root()])),
        Err(AttestationError::Malformed(_))
    ));
}

#[test]
fn a_foreign_root_is_refused() {
    let p = pki();
    let other = Ca::root("Somebody Else's Root");
    let e = check(&attested_by(&p.identity), &policy(vec![other.as_root()])).unwrap_err();
    assert!(matches!(e, AttestationError::UntrustedRoot(_)), "{e}");
    assert_eq!(e.code(), "attestation_untrusted_root");
    assert!(e.to_string().contains("Somebody Else's Root"), "{e}");
}

#[test]
fn an_expired_certificate_is_refused() {
    let p = pki_with(
        &LeafSpec {
            not_after: (2022, 1, 1),
            ..LeafSpec::default()
        },
        SoftAttestationFormat::Packed,
    );
    let e = check(&attested_by(&p.identity), &policy(vec![p.root.as_root()])).unwrap_err();
    assert!(matches!(e, AttestationError::Expired(_)), "{e}");
    assert_eq!(e.code(), "attestation_expired");
    // The same chain at a time inside its validity passes: only the date refused it.
    let then = SystemTime::UNIX_EPOCH + Duration::from_secs(1_640_000_000); // 2021-12-20
    assert!(check(
        &attested_by(&p.identity),
        &Policy::new(vec![p.root.as_root()]).at(then)
    )
    .is_ok());
    // And before the leaf's start it is not valid yet.
    let before = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000); // 2020-09-13
    let e = check(
        &attested_by(&p.identity),
        &Policy::new(vec![p.root.as_root()]).at(before),
    )
    .unwrap_err();
    assert!(matches!(e, AttestationError::NotYetValid(_)), "{e}");
}

#[test]
fn a_wrong_aaguid_extension_is_refused() {
    let p = pki_with(
        &LeafSpec {
            aaguid: Some(*b"another-model!!!"),
            ..LeafSpec::default()
        },
        SoftAttestationFormat::Packed,
    );
    let e = check(&attested_by(&p.identity), &policy(vec![p.root.as_root()])).unwrap_err();
    assert_eq!(
        e,
        AttestationError::AaguidMismatch {
            cert: hex(b"another-model!!!"),
            auth_data: hex(&SOFT_AAGUID),
        }
    );
    assert_eq!(e.code(), "attestation_aaguid_mismatch");
    // Without the extension the certificate is acceptable (it is optional).
    let p = pki_with(
        &LeafSpec {
            aaguid: None,
            ..LeafSpec::default()
        },
        SoftAttestationFormat::Packed,
    );
    assert!(check(&attested_by(&p.identity), &policy(vec![p.root.as_root()])).is_ok());
}

#[test]
fn packed_certificate_requirements_are_enforced() {
    for (spec, needle) in [
        (
            LeafSpec {
                ou: "Marketing",
                ..LeafSpec::default()
            },
            "OU",
        ),
        (
            LeafSpec {
                ca: true,
                ..LeafSpec::default()
            },
            "CA=false",
        ),
    ] {
        let p = pki_with(&spec, SoftAttestationFormat::Packed);
        let e = check(&attested_by(&p.identity), &policy(vec![p.root.as_root()])).unwrap_err();
        assert!(matches!(e, AttestationError::BadCertificate(_)), "{e}");
        assert!(e.to_string().contains(needle), "{e}");
    }
}

#[test]
fn none_is_refused() {
    let p = pki();
    let mut made = attested_by(&p.identity);
    made.attestation = Statement::none();
    let e = check(&made, &policy(vec![p.root.as_root()])).unwrap_err();
    assert_eq!(e, AttestationError::NoneRefused);
    assert_eq!(e.code(), "attestation_none");
}

#[test]
fn self_attestation_is_refused() {
    let p = pki();
    // The software key without an identity signs with the credential's own key.
    let made = make(&SoftAuthenticator::new(SoftBehavior::Present));
    let e = check(&made, &policy(vec![p.root.as_root()])).unwrap_err();
    assert_eq!(e, AttestationError::SelfAttestation);
    assert_eq!(e.code(), "attestation_self");
}

#[test]
fn a_tampered_signature_is_refused() {
    for format in [
        SoftAttestationFormat::Packed,
        SoftAttestationFormat::FidoU2f,
    ] {
        let root = Ca::root("Root");
        let (sk, leaf_der) = leaf(&root, &LeafSpec::default());
        let id = SoftAttestation::new(sk, vec![leaf_der], format).unwrap();
        let good = attested_by(&id);
        assert!(
            check(&good, &policy(vec![root.as_root()])).is_ok(),
            "{format}"
        );
        let mut bad = good.clone();
        set_sig(&mut bad, |s| {
            let n = s.len() - 3;
            s[n] ^= 0x01;
        });
        let e = check(&bad, &policy(vec![root.as_root()])).unwrap_err();
        assert_eq!(e, AttestationError::BadSignature, "{format}");
        assert_eq!(e.code(), "attestation_bad_signature");
        // The authenticator data changed after signing: the same refusal.
        let mut moved = good.clone();
        let last = moved.auth_data.len() - 1;
        moved.auth_data[last] ^= 0x01;
        let rp = rp_id_hash("chromecard");
        if let Ok(new) = verify_new_credential(&moved.auth_data, &rp, false) {
            assert_eq!(
                verify_new(&policy(vec![root.as_root()]), &moved, &CHALLENGE, &rp, &new)
                    .unwrap_err(),
                AttestationError::BadSignature
            );
        }
    }
}

#[test]
fn unknown_formats_and_malformed_statements_are_refused() {
    let p = pki();
    let mut made = attested_by(&p.identity);
    made.attestation.fmt = "tpm".into();
    assert_eq!(
        check(&made, &policy(vec![p.root.as_root()])).unwrap_err(),
        AttestationError::UnsupportedFormat("tpm".into())
    );
    let mut made = attested_by(&p.identity);
    made.attestation.att_stmt = ciborium::Value::Text("x".into());
    assert!(matches!(
        check(&made, &policy(vec![p.root.as_root()])),
        Err(AttestationError::Malformed(_))
    ));
}

// ---------------------------------------------------------------------------
// Known answers: python-fido2's tests/test_attestation.py (Yubico AB, BSD-2-Clause),
// statements recorded from YubiKeys, with their clientDataHash.
// ---------------------------------------------------------------------------

/// Yubico U2F Root CA Serial 457200631 (published by Yubico; valid 2014-08-01 to 2050-09-04).
const YUBICO_U2F_ROOT_B64: &str = "MIIDHjCCAgagAwIBAgIEG0BT9zANBgkqhkiG9w0BAQsFADAuMSwwKgYDVQQDEyNZdWJpY28gVTJGIFJvb3QgQ0EgU2VyaWFsIDQ1NzIwMDYzMTAgFw0xNDA4MDEwMDAwMDBaGA8yMDUwMDkwNDAwMDAwMFowLjEsMCoGA1UEAxMjWXViaWNvIFUyRiBSb290IENBIFNlcmlhbCA0NTcyMDA2MzEwggEiMA0GCSqGSIb3DQEBAQUAA4IBDwAwggEKAoIBAQC/jwYuhBVlqaiYWEMsrWFisgJ+PtM91eSrpI4TK7U53mwCIawSDHy8vUmk5N2KAj9abvT9NP5SMS1hQi3usxoYGonXQgfO6ZXyUA9a+KAkqdFnBnlyugSeCOep8EdZFfsaRFtMjkwz5Gcz2Py4vIYvCdMHPtwaz0bVuzneueIEz6TnQjE63Rdt2zbwnebwTG5ZybeWSwbzy+BJ34ZHcUhPAY89yJQXuE0IzMZFcEBbPNRbWECRKgjq//qT9nmDOFVlSRCt2wiqPSzluwn+v+suQEBsUjTGMEd25tKXXTkNW21wIWbxeSyUoTXwLvGS6xlwQSgNpk2qXYwf8iXg7VWZAgMBAAGjQjBAMB0GA1UdDgQWBBQgIvz0bNGJhjgpToksyKpP9xv9oDAPBgNVHRMECDAGAQH/AgEAMA4GA1UdDwEB/wQEAwIBBjANBgkqhkiG9w0BAQsFAAOCAQEAjvjuOMDSa+JXFCLyBKsycXtBVZsJ4Ue3LbaEsPY4MYN/hIQ5ZM5p7EjfcnMG4CtYkNsfNHc0AhBLdq45rnT87q/6O3vUEtNMafbhU6kthX7Y+9XFN9NpmYxr+ekVY5xOxi8h9JDIgoMP4VB1uS0aunL1IGqrNooL9mmFnL2kLVVee6/VR6C5+KSTCMCWppMuJIZII2v9o4dkoZ8Y7QRjQlLfYzd3qGtKbw7xaF1UsG/5xUb/Btwb2X2g4InpiB/yt/3CpQXpiWX/K4mBvUKiGn05ZsqeY1gx4g0xLBqcU9psmyPzK+Vsgw2jeRQ5JlKDyqE0hebfC1tvFu0CCrJFcw==";

/// test_fido_u2f_attestation: a YubiKey's fido-u2f registration.
const U2F_SIG: &str = "30450220324779C68F3380288A1197B6095F7A6EB9B1B1C127F66AE12A99FE8532EC23B9022100E39516AC4D61EE64044D50B415A6A4D4D84BA6D895CB5AB7A1AA7D081DE341FA";
const U2F_CERT: &str = "3082024A30820132A0030201020204046C8822300D06092A864886F70D01010B0500302E312C302A0603550403132359756269636F2055324620526F6F742043412053657269616C203435373230303633313020170D3134303830313030303030305A180F32303530303930343030303030305A302C312A302806035504030C2159756269636F205532462045452053657269616C203234393138323332343737303059301306072A8648CE3D020106082A8648CE3D030107034200043CCAB92CCB97287EE8E639437E21FCD6B6F165B2D5A3F3DB131D31C16B742BB476D8D1E99080EB546C9BBDF556E6210FD42785899E78CC589EBE310F6CDB9FF4A33B3039302206092B0601040182C40A020415312E332E362E312E342E312E34313438322E312E323013060B2B0601040182E51C020101040403020430300D06092A864886F70D01010B050003820101009F9B052248BC4CF42CC5991FCAABAC9B651BBE5BDCDC8EF0AD2C1C1FFB36D18715D42E78B249224F92C7E6E7A05C49F0E7E4C881BF2E94F45E4A21833D7456851D0F6C145A29540C874F3092C934B43D222B8962C0F410CEF1DB75892AF116B44A96F5D35ADEA3822FC7146F6004385BCB69B65C99E7EB6919786703C0D8CD41E8F75CCA44AA8AB725AD8E799FF3A8696A6F1B2656E631B1E40183C08FDA53FA4A8F85A05693944AE179A1339D002D15CABD810090EC722EF5DEF9965A371D415D624B68A2707CAD97BCDD1785AF97E258F33DF56A031AA0356D8E8D5EBCADC74E071636C6B110ACE5CC9B90DFEACAE640FF1BB0F1FE5DB4EFF7A95F060733F5";
const U2F_AUTH_DATA: &str = "1194228DA8FDBDEEFD261BD7B6595CFD70A50D70C6407BCF013DE96D4EFB17DE41000000000000000000000000000000000000000000403EBD89BF77EC509755EE9C2635EFAAAC7B2B9C5CEF1736C3717DA48534C8C6B654D7FF945F50B5CC4E78055BDD396B64F78DA2C5F96200CCD415CD08FE420038A5010203262001215820E87625896EE4E46DC032766E8087962F36DF9DFE8B567F3763015B1990A60E1422582027DE612D66418BDA1950581EBC5C8C1DAD710CB14C22F8C97045F4612FB20C91";
const U2F_CDH: &str = "687134968222EC17202E42505F8ED2B16AE22F16BB05B88C25DB9E602645F141";

/// test_packed_attestation: a YubiKey (preview firmware) packed statement; its issuer,
/// "Yubico Preview FIDO Attestation", is not public, so the chain cannot be completed.
const PACKED_SIG: &str = "304502200D15DAF337D727AB4719B4027114A2AC43CD565D394CED62C3D9D1D90825F0B3022100989615E7394C87F4AD91F8FDAE86F7A3326DF332B3633DB088AAC76BFFB9A46B";
const PACKED_CERT: &str = "308202B73082019FA00302010202041D31330D300D06092A864886F70D01010B0500302A3128302606035504030C1F59756269636F2050726576696577204649444F204174746573746174696F6E301E170D3138303332383036333932345A170D3139303332383036333932345A306E310B300906035504061302534531123010060355040A0C0959756269636F20414231223020060355040B0C1941757468656E74696361746F72204174746573746174696F6E3127302506035504030C1E59756269636F205532462045452053657269616C203438393736333539373059301306072A8648CE3D020106082A8648CE3D030107034200047D71E8367CAFD0EA6CF0D61E4C6A416BA5BB6D8FAD52DB2389AD07969F0F463BFDDDDDC29D39D3199163EE49575A3336C04B3309D607F6160C81E023373E0197A36C306A302206092B0601040182C40A020415312E332E362E312E342E312E34313438322E312E323013060B2B0601040182E51C0201010404030204303021060B2B0601040182E51C01010404120410F8A011F38C0A4D15800617111F9EDC7D300C0603551D130101FF04023000300D06092A864886F70D01010B050003820101009B904CEADBE1F1985486FEAD02BAEAA77E5AB4E6E52B7E6A2666A4DC06E241578169193B63DADEC5B2B78605A128B2E03F7FE2A98EAEB4219F52220995F400CE15D630CF0598BA662D7162459F1AD1FC623067376D4E4091BE65AC1A33D8561B9996C0529EC1816D1710786384D5E8783AA1F7474CB99FE8F5A63A79FF454380361C299D67CB5CC7C79F0D8C09F8849B0500F6D625408C77CBBC26DDEE11CB581BEB7947137AD4F05AAF38BD98DA10042DDCAC277604A395A5B3EAA88A5C8BB27AB59C8127D59D6BBBA5F11506BF7B75FDA7561A0837C46F025FD54DCF1014FC8D17C859507AC57D4B1DEA99485DF0BA8F34D00103C3EEF2EF3BBFEC7A6613DE";
const PACKED_AUTH_DATA: &str = "0021F5FC0B85CD22E60623BCD7D1CA48948909249B4776EB515154E57B66AE124100000003F8A011F38C0A4D15800617111F9EDC7D004060A386206A3AACECBDBB22D601853D955FDC5D11ADFBD1AA6A950D966B348C7663D40173714A9F987DF6461BEADFB9CD6419FFDFE4D4CF2EEC1AA605A4F59BDAA50102032620012158200EDB27580389494D74D2373B8F8C2E8B76FA135946D4F30D0E187E120B423349225820E03400D189E85A55DE9AB0F538ED60736EB750F5F0306A80060FE1B13010560D";
const PACKED_CDH: &str = "985B6187D042FB1258892ED637CEC88617DDF5F6632351A545617AA2B75261BF";

fn yubico_root() -> Root {
    Root::from_der(STANDARD.decode(YUBICO_U2F_ROOT_B64).unwrap()).unwrap()
}

fn statement(fmt: &str, sig: &[u8], cert: &[u8], alg: Option<i64>) -> Statement {
    let t = |s: &str| ciborium::Value::Text(s.into());
    let mut m = Vec::new();
    if let Some(a) = alg {
        m.push((t("alg"), ciborium::Value::Integer(a.into())));
    }
    m.push((t("sig"), ciborium::Value::Bytes(sig.to_vec())));
    m.push((
        t("x5c"),
        ciborium::Value::Array(vec![ciborium::Value::Bytes(cert.to_vec())]),
    ));
    Statement {
        fmt: fmt.into(),
        att_stmt: ciborium::Value::Map(m),
    }
}

/// Verifies a recorded statement against its recorded authenticator data.
fn verify_recorded(
    st: &Statement,
    auth_data: &[u8],
    cdh: &[u8],
    p: &Policy,
) -> Result<Attested, AttestationError> {
    let ad = parse_auth_data(auth_data).unwrap();
    let att = ad.attested.clone().unwrap();
    let PublicKey::Es256(vk) = &att.public_key else {
        panic!("es256")
    };
    let mut point = [0u8; 65];
    point.copy_from_slice(vk.to_encoded_point(false).as_bytes());
    let cdh: [u8; 32] = cdh.try_into().unwrap();
    verify(
        st,
        &NewKey {
            auth_data,
            client_data_hash: &cdh,
            rp_id_hash: &ad.rp_id_hash,
            aaguid: &att.aaguid,
            credential_id: att.credential_id,
            es256_point: Some(point),
        },
        p,
    )
}

#[test]
fn known_answer_fido_u2f_yubikey_chains_to_the_yubico_root() {
    let (ad, cdh) = (unhex(U2F_AUTH_DATA), unhex(U2F_CDH));
    let st = statement("fido-u2f", &unhex(U2F_SIG), &unhex(U2F_CERT), None);
    let a = verify_recorded(&st, &ad, &cdh, &policy(vec![yubico_root()])).unwrap();
    assert_eq!(a.fmt, "fido-u2f");
    assert_eq!(a.root_subject, "CN=Yubico U2F Root CA Serial 457200631");
    assert_eq!(a.aaguid, "00".repeat(16));
    // python-fido2's own tamper: the signature replaced by "a"s.
    let bad = statement(
        "fido-u2f",
        &vec![b'a'; unhex(U2F_SIG).len()],
        &unhex(U2F_CERT),
        None,
    );
    assert_eq!(
        verify_recorded(&bad, &ad, &cdh, &policy(vec![yubico_root()])).unwrap_err(),
        AttestationError::BadSignature
    );
    // Another clientDataHash (a replayed registration) does not verify.
    assert_eq!(
        verify_recorded(&st, &ad, &[0u8; 32], &policy(vec![yubico_root()])).unwrap_err(),
        AttestationError::BadSignature
    );
    // A root of our own is not Yubico's.
    assert!(matches!(
        verify_recorded(
            &st,
            &ad,
            &cdh,
            &policy(vec![Ca::root("Not Yubico").as_root()])
        ),
        Err(AttestationError::UntrustedRoot(_))
    ));
}

#[test]
fn known_answer_packed_yubikey_statement_and_certificate() {
    let (ad, cdh) = (unhex(PACKED_AUTH_DATA), unhex(PACKED_CDH));
    let st = statement("packed", &unhex(PACKED_SIG), &unhex(PACKED_CERT), Some(-7));
    // 2018-09-01: inside the certificate's year of validity.
    let then = SystemTime::UNIX_EPOCH + Duration::from_secs(1_535_760_000);
    // Signature, version 3, CA=false, C/O/OU/CN and the AAGUID extension
    // (f8a011f3-8c0a-4d15-8006-17111f9edc7d, equal to the authenticator data's) all pass;
    // only the chain is left, and its (unpublished) issuer is not given.
    let e =
        verify_recorded(&st, &ad, &cdh, &Policy::new(vec![yubico_root()]).at(then)).unwrap_err();
    assert!(matches!(e, AttestationError::UntrustedRoot(_)), "{e}");
    let bad = statement(
        "packed",
        &vec![b'a'; unhex(PACKED_SIG).len()],
        &unhex(PACKED_CERT),
        Some(-7),
    );
    assert_eq!(
        verify_recorded(&bad, &ad, &cdh, &Policy::new(vec![yubico_root()]).at(then)).unwrap_err(),
        AttestationError::BadSignature
    );
    // The same certificate claiming another model (AAGUID) is refused by the extension.
    let mut other = ad.clone();
    other[37] ^= 0xff;
    let e = verify_recorded(
        &st,
        &other,
        &cdh,
        &Policy::new(vec![yubico_root()]).at(then),
    )
    .unwrap_err();
    assert!(matches!(e, AttestationError::AaguidMismatch { .. }), "{e}");
}

// ---------------------------------------------------------------------------
// The Metadata Service blob
// ---------------------------------------------------------------------------

struct Mds {
    root: Ca,
    signer_key: p256::ecdsa::SigningKey,
    signer_der: Vec<u8>,
}

fn mds() -> Mds {
    let root = Ca::root("Chromecard Test MDS Root");
    let spec = LeafSpec {
        aaguid: None,
        ..LeafSpec::default()
    };
    let (signer_key, signer_der) = leaf(&root, &spec);
    Mds {
        root,
        signer_key,
        signer_der,
    }
}

fn aaguid_dashed(a: &[u8; 16]) -> String {
    let h = hex(a);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

impl Mds {
    fn sign(&self, payload: &serde_json::Value) -> String {
        let header = serde_json::json!({
            "alg": "ES256", "typ": "JWT", "x5c": [STANDARD.encode(&self.signer_der)]
        });
        let h = URL_SAFE_NO_PAD.encode(header.to_string());
        let p = URL_SAFE_NO_PAD.encode(payload.to_string());
        let sig: p256::ecdsa::Signature = self.signer_key.sign(format!("{h}.{p}").as_bytes());
        format!("{h}.{p}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }
}

fn payload(entry: serde_json::Value, next_update: &str) -> serde_json::Value {
    serde_json::json!({
        "legalHeader": "test", "no": 7, "nextUpdate": next_update, "entries": [entry]
    })
}

fn entry_for_aaguid(root: &Ca, statuses: &[(&str, &str)]) -> serde_json::Value {
    serde_json::json!({
        "aaguid": aaguid_dashed(&SOFT_AAGUID),
        "metadataStatement": {
            "description": "chromecard test key",
            "attestationRootCertificates": [STANDARD.encode(&root.der)]
        },
        "statusReports": statuses.iter()
            .map(|(s, d)| serde_json::json!({"status": s, "effectiveDate": d}))
            .collect::<Vec<_>>(),
    })
}

#[test]
fn a_blob_we_sign_supplies_the_roots() {
    let m = mds();
    let p = pki();
    let jwt = m.sign(&payload(
        entry_for_aaguid(&p.root, &[("FIDO_CERTIFIED", "2021-01-01")]),
        "2026-07-01",
    ));
    let md = Metadata::from_jwt(&jwt, &[m.root.as_root()], now()).unwrap();
    assert_eq!(md.no, 7);
    // No --attestation-roots at all: the blob's entry for the AAGUID supplies the root.
    let a = check(
        &attested_by(&p.identity),
        &Policy::new(Vec::new()).with_metadata(md).at(now()),
    )
    .unwrap();
    assert_eq!(a.root_subject, "CN=Chromecard Test Attestation Root");
}

#[test]
fn a_revoked_or_compromised_key_is_refused() {
    let m = mds();
    let p = pki();
    for (reports, refused) in [
        (
            vec![("FIDO_CERTIFIED", "2021-01-01"), ("REVOKED", "2025-01-01")],
            Some("REVOKED"),
        ),
        (
            vec![
                ("FIDO_CERTIFIED", "2021-01-01"),
                ("ATTESTATION_KEY_COMPROMISE", "2024-01-01"),
            ],
            Some("ATTESTATION_KEY_COMPROMISE"),
        ),
        // A later certification after an update is the latest status: accepted.
        (
            vec![
                ("USER_VERIFICATION_BYPASS", "2022-01-01"),
                ("FIDO_CERTIFIED", "2023-01-01"),
            ],
            None,
        ),
    ] {
        let jwt = m.sign(&payload(entry_for_aaguid(&p.root, &reports), "2026-07-01"));
        let md = Metadata::from_jwt(&jwt, &[m.root.as_root()], now()).unwrap();
        let r = check(
            &attested_by(&p.identity),
            &Policy::new(Vec::new()).with_metadata(md).at(now()),
        );
        match refused {
            Some(status) => {
                let e = r.unwrap_err();
                assert_eq!(
                    e,
                    AttestationError::Revoked {
                        status: status.into()
                    }
                );
                assert_eq!(e.code(), "attestation_revoked");
            }
            None => assert!(r.is_ok(), "{reports:?}"),
        }
    }
}

#[test]
fn a_fido_u2f_key_is_found_by_its_key_identifier() {
    let m = mds();
    let root = Ca::root("U2F Root");
    let (sk, leaf_der) = leaf(&root, &LeafSpec::default());
    let id =
        SoftAttestation::new(sk, vec![leaf_der.clone()], SoftAttestationFormat::FidoU2f).unwrap();
    let key_id = chain::LeafInfo::parse(&leaf_der).unwrap().key_identifier;
    for (status, ok) in [("FIDO_CERTIFIED", true), ("REVOKED", false)] {
        let entry = serde_json::json!({
            "attestationCertificateKeyIdentifiers": [key_id.to_uppercase()],
            "metadataStatement": {"attestationRootCertificates": [STANDARD.encode(&root.der)]},
            "statusReports": [{"status": status, "effectiveDate": "2022-02-02"}],
        });
        let md = Metadata::from_jwt(
            &m.sign(&payload(entry, "2026-07-01")),
            &[m.root.as_root()],
            now(),
        )
        .unwrap();
        let r = check(
            &attested_by(&id),
            &Policy::new(Vec::new()).with_metadata(md).at(now()),
        );
        assert_eq!(r.is_ok(), ok, "{status}: {r:?}");
    }
}

/// A root that the blob lists for two models: a revoked one, and the sound one whose AAGUID
/// the key claims. A certificate without the AAGUID extension cannot say which it is.
#[test]
fn a_certificate_without_aaguid_under_a_root_of_several_models_is_refused() {
    let m = mds();
    let blob = |root: &Ca| {
        let mut revoked = entry_for_aaguid(root, &[("REVOKED", "2025-01-01")]);
        revoked["aaguid"] = aaguid_dashed(&[0x5a; 16]).into();
        let sound = entry_for_aaguid(root, &[("FIDO_CERTIFIED", "2021-01-01")]);
        let mut body = payload(sound, "2026-07-01");
        body["entries"].as_array_mut().unwrap().push(revoked);
        Metadata::from_jwt(&m.sign(&body), &[m.root.as_root()], now()).unwrap()
    };
    let without = pki_with(
        &LeafSpec {
            aaguid: None,
            ..LeafSpec::default()
        },
        SoftAttestationFormat::Packed,
    );
    let e = check(
        &attested_by(&without.identity),
        &Policy::new(Vec::new())
            .with_metadata(blob(&without.root))
            .at(now()),
    )
    .unwrap_err();
    assert_eq!(
        e,
        AttestationError::AaguidUnbound {
            root: "CN=Chromecard Test Attestation Root".into(),
            models: 2
        }
    );
    assert_eq!(e.code(), "attestation_aaguid_unbound");
    // So it is, too, when the operator trusts the root directly as well.
    let e = check(
        &attested_by(&without.identity),
        &Policy::new(vec![without.root.as_root()])
            .with_metadata(blob(&without.root))
            .at(now()),
    )
    .unwrap_err();
    assert_eq!(e.code(), "attestation_aaguid_unbound");
    // With the extension the certificate names its model: accepted under the same blob.
    let with = pki();
    check(
        &attested_by(&with.identity),
        &Policy::new(Vec::new())
            .with_metadata(blob(&with.root))
            .at(now()),
    )
    .unwrap();
    // Without it, a root of one model, or no blob at all, leaves nothing to confuse.
    let one_model = Metadata::from_jwt(
        &m.sign(&payload(
            entry_for_aaguid(&without.root, &[("FIDO_CERTIFIED", "2021-01-01")]),
            "2026-07-01",
        )),
        &[m.root.as_root()],
        now(),
    )
    .unwrap();
    check(
        &attested_by(&without.identity),
        &Policy::new(Vec::new()).with_metadata(one_model).at(now()),
    )
    .unwrap();
    check(
        &attested_by(&without.identity),
        &policy(vec![without.root.as_root()]),
    )
    .unwrap();
}

/// The same, when the revoked model anchors at the vendor's intermediate and the sound one
/// at its root: one chain, two models.
#[test]
fn a_certificate_without_aaguid_under_an_intermediate_of_another_model_is_refused() {
    let m = mds();
    let root = Ca::root("Chromecard Test Vendor Root");
    let inter = root.intermediate("Chromecard Test Vendor CA 1");
    let (sk, leaf_der) = leaf(
        &inter,
        &LeafSpec {
            aaguid: None,
            ..LeafSpec::default()
        },
    );
    let identity = SoftAttestation::new(
        sk,
        vec![leaf_der, inter.der.clone()],
        SoftAttestationFormat::Packed,
    )
    .unwrap();
    let sound = entry_for_aaguid(&root, &[("FIDO_CERTIFIED", "2021-01-01")]);
    let mut revoked = entry_for_aaguid(&inter, &[("REVOKED", "2025-01-01")]);
    revoked["aaguid"] = aaguid_dashed(&[0x5a; 16]).into();
    let mut body = payload(sound, "2026-07-01");
    body["entries"].as_array_mut().unwrap().push(revoked);
    let md = Metadata::from_jwt(&m.sign(&body), &[m.root.as_root()], now()).unwrap();
    let e = check(
        &attested_by(&identity),
        &Policy::new(Vec::new()).with_metadata(md).at(now()),
    )
    .unwrap_err();
    assert_eq!(
        e,
        AttestationError::AaguidUnbound {
            root: "CN=Chromecard Test Vendor Root".into(),
            models: 2
        }
    );
}

#[test]
fn a_blob_from_another_signer_is_refused() {
    let m = mds();
    let p = pki();
    let jwt = m.sign(&payload(entry_for_aaguid(&p.root, &[]), "2026-07-01"));
    let other = Ca::root("Not the MDS Root");
    let e = Metadata::from_jwt(&jwt, &[other.as_root()], now()).unwrap_err();
    assert!(matches!(e, AttestationError::MdsSigner(_)), "{e}");
    assert_eq!(e.code(), "mds_bad_signer");
    // The right chain, but the payload changed after signing.
    let mut parts: Vec<String> = jwt.split('.').map(str::to_string).collect();
    parts[1] = URL_SAFE_NO_PAD.encode(
        payload(
            entry_for_aaguid(&p.root, &[("REVOKED", "2025-01-01")]),
            "2026-07-01",
        )
        .to_string(),
    );
    let e = Metadata::from_jwt(&parts.join("."), &[m.root.as_root()], now()).unwrap_err();
    assert!(matches!(e, AttestationError::MdsSigner(_)), "{e}");
    assert!(e.to_string().contains("does not verify"), "{e}");
    // Another algorithm in the header (alg confusion) is refused before any check passes.
    let header = serde_json::json!({
        "alg": "HS256", "x5c": [STANDARD.encode(&m.signer_der)]
    });
    parts[0] = URL_SAFE_NO_PAD.encode(header.to_string());
    let e = Metadata::from_jwt(&parts.join("."), &[m.root.as_root()], now()).unwrap_err();
    assert!(e.to_string().contains("\"HS256\" is not accepted"), "{e}");
}

#[test]
fn a_blob_past_its_next_update_is_refused() {
    let m = mds();
    let p = pki();
    let jwt = m.sign(&payload(entry_for_aaguid(&p.root, &[]), "2026-05-31"));
    let e = Metadata::from_jwt(&jwt, &[m.root.as_root()], now()).unwrap_err();
    assert_eq!(
        e,
        AttestationError::MdsStale {
            next_update: "2026-05-31".into()
        }
    );
    assert!(e.to_string().contains("download a fresh blob"));
    // On its nextUpdate day it is still current.
    let jwt = m.sign(&payload(entry_for_aaguid(&p.root, &[]), "2026-06-01"));
    assert!(Metadata::from_jwt(&jwt, &[m.root.as_root()], now()).is_ok());
}

// ---------------------------------------------------------------------------
// The gate: enrolment writes the side file; --require-attested at login
// ---------------------------------------------------------------------------

struct Setup {
    _dir: tempfile::TempDir,
    key_file: std::path::PathBuf,
    store: Arc<CredentialStore>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    Setup {
        key_file: dir.path().join("soft.key"),
        store: Arc::new(CredentialStore::new(dir.path().join("credentials"))),
        _dir: dir,
    }
}

fn gate(s: &Setup, identity: Option<&SoftAttestation>, require_attested: bool) -> Gate {
    let mut auth = SoftAuthenticator::with_key_file(SoftBehavior::Present, &s.key_file).unwrap();
    if let Some(id) = identity {
        auth = auth.with_attestation(id.clone());
    }
    Gate::with_level(
        Arc::new(auth),
        GateSettings {
            op_timeout: Duration::from_secs(5),
            device_wait: Duration::from_secs(5),
        },
        LevelConfig::Assertion {
            rp_id: "chromecard".into(),
            store: s.store.clone(),
        },
    )
    .require_attested(require_attested)
}

#[tokio::test]
async fn attested_enrolment_is_recorded_and_required_at_login() {
    let s = setup();
    let p = pki();
    // The chain's own dates are checked against the clock here: 2021..2035 covers it.
    let pol = Arc::new(Policy::new(vec![p.root.as_root()]));
    let e = gate(&s, Some(&p.identity), false)
        .enroll_attested("alice", EnrolOptions::default(), Some(pol.clone()))
        .await
        .unwrap();
    let records = AttestationRecords::beside(s.store.path());
    let all = records.load().unwrap();
    assert_eq!(all.len(), 1);
    let rec = all.values().next().unwrap();
    assert_eq!(rec.fmt, "packed");
    assert_eq!(rec.aaguid, hex(&SOFT_AAGUID));
    assert_eq!(rec.root_subject, "CN=Chromecard Test Attestation Root");
    // The enrolment file keeps pam-u2f's format: nothing of attestation in it.
    let text = std::fs::read_to_string(s.store.path()).unwrap();
    assert!(
        !text.contains("packed") && !text.contains("Attestation Root"),
        "{text}"
    );
    assert!(!e.credential.is_empty());
    // Logins pass with --require-attested.
    gate(&s, None, true).check("alice").await.unwrap();

    // bob enrolled without attestation: refused with --require-attested, after a touch.
    gate(&s, None, false)
        .enroll("bob", EnrolOptions::default())
        .await
        .unwrap();
    gate(&s, None, false).check("bob").await.unwrap();
    let err = gate(&s, None, true).check("bob").await.unwrap_err();
    assert!(matches!(err, GateError::NotAttested), "{err}");
    assert_eq!(err.code(), "not_attested");
    assert!(err.client_message().contains("--require-attested"));

    // A refused attestation enrols nothing.
    let err = gate(&s, None, false)
        .enroll_attested("carol", EnrolOptions::default(), Some(pol))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "attestation_self");
    assert!(s.store.load().unwrap().credentials_of("carol").is_empty());

    // An unreadable side file fails closed (503 credential_store_error), for alice too.
    std::fs::write(records.path(), "garbage\n").unwrap();
    let err = gate(&s, None, true).check("alice").await.unwrap_err();
    assert_eq!(err.code(), "credential_store_error");
    assert!(err.is_server_fault());
}

#[test]
fn a_make_credential_answer_carries_its_statement() {
    use ciborium::Value;
    let answer = |st: Option<Value>| {
        let mut m = vec![
            (Value::Integer(1.into()), Value::Text("packed".into())),
            (Value::Integer(2.into()), Value::Bytes(vec![1, 2, 3])),
        ];
        if let Some(st) = st {
            m.push((Value::Integer(3.into()), st));
        }
        let mut out = vec![0u8];
        ciborium::ser::into_writer(&Value::Map(m), &mut out).unwrap();
        out
    };
    let stmt = Value::Map(vec![(
        Value::Text("alg".into()),
        Value::Integer((-7).into()),
    )]);
    let (ad, st) =
        crate::ctap2::parse_make_credential_full(&answer(Some(stmt.clone())), "k").unwrap();
    assert_eq!(ad, [1, 2, 3]);
    assert_eq!(st.fmt, "packed");
    assert_eq!(st.att_stmt, stmt);
    // No attStmt at all reads as an empty one (and is then self attestation or none).
    let (_, st) = crate::ctap2::parse_make_credential_full(&answer(None), "k").unwrap();
    assert_eq!(st.att_stmt, Value::Map(Vec::new()));
    // An attStmt that is not a map is a device error.
    let e = crate::ctap2::parse_make_credential_full(&answer(Some(Value::Text("x".into()))), "k")
        .unwrap_err();
    assert_eq!(e.code(), "device_error");
}

#[test]
fn records_round_trip_and_retain_keeps_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let records = AttestationRecords::beside(&dir.path().join("credentials"));
    assert_eq!(
        records.path(),
        dir.path().join("credentials.attestation").as_path()
    );
    assert!(records.load().unwrap().is_empty());
    let rec = |s: &str| AttestationRecord {
        aaguid: hex(&SOFT_AAGUID),
        fmt: "packed".into(),
        root_subject: format!("CN={s}, O=Colons: and\nnewlines"),
        key_sha256: Some("ab".repeat(32)),
    };
    records.add("alice", b"id-a", rec("A")).unwrap();
    records.add("bob", b"id-b", rec("B")).unwrap();
    // A subject's control characters cannot break the line format; colons are kept.
    assert_eq!(
        records.get("alice", b"id-a").unwrap().unwrap().root_subject,
        "CN=A, O=Colons: and newlines"
    );
    assert_eq!(records.retain(|u, _| u != "alice").unwrap(), 1);
    assert!(records.get("alice", b"id-a").unwrap().is_none());
    assert!(records.get("bob", b"id-b").unwrap().is_some());
    assert_eq!(records.retain(|_, _| true).unwrap(), 0);
    // Others may not write it: refused, fail closed.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(records.path(), std::fs::Permissions::from_mode(0o666)).unwrap();
    assert!(records.load().is_err());
}

/// A record vouches for the key that was attested, not for whatever key later comes
/// under the same credential id (which a device chooses, and can read from an allow
/// list); a record of the first format, without a key, vouches for none.
#[test]
fn an_attestation_record_covers_only_the_key_it_was_made_for() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("credentials");
    let store = crate::CredentialStore::new(&path);
    let key = |seed: u8| {
        PublicKey::Es256(
            *p256::ecdsa::SigningKey::from_slice(&[seed; 32])
                .unwrap()
                .verifying_key(),
        )
    };
    let cred = |id: &[u8], public_key: PublicKey| crate::Credential {
        id: id.to_vec(),
        public_key,
        require_uv: false,
        require_pin: false,
    };
    let attested = Attested {
        aaguid: hex(&SOFT_AAGUID),
        fmt: "packed".into(),
        root_subject: "CN=root".into(),
    };
    let records = AttestationRecords::beside(&path);
    records
        .add("alice", b"id-a", AttestationRecord::new(&attested, &key(1)))
        .unwrap();
    // The key it was made for; the same id with another key (a stale record, an
    // enrolment of a device that chose that id).
    let usable = only_attested(&store, "alice", &[cred(b"id-a", key(1))]).unwrap();
    assert_eq!(usable.len(), 1);
    assert!(only_attested(&store, "alice", &[cred(b"id-a", key(2))])
        .unwrap()
        .is_empty());
    // Written and read back, the key's hash is kept.
    assert_eq!(
        records.get("alice", b"id-a").unwrap().unwrap().key_sha256,
        Some(key_fingerprint(&key(1)))
    );
    // A line of the first format parses, but covers no key.
    std::fs::write(
        records.path(),
        format!(
            "bob:{}:{}:packed:CN=old: root\n",
            STANDARD.encode(b"id-b"),
            hex(&SOFT_AAGUID)
        ),
    )
    .unwrap();
    let old = records.get("bob", b"id-b").unwrap().unwrap();
    assert_eq!(
        (old.key_sha256, old.root_subject.as_str()),
        (None, "CN=old: root")
    );
    assert!(only_attested(&store, "bob", &[cred(b"id-b", key(1))])
        .unwrap()
        .is_empty());
}
