//! Issue 18: the enrolment file as pam-u2f writes it. pam-u2f's own test credential
//! files (`crates/gate/tests/pam-u2f/`, see its README) are the inputs where they
//! apply; each case of the issue is one test.

use super::*;
use crate::verify::{
    client_data_hash, rp_id_hash, verify_assertion, verify_new_credential, Expected, FLAG_AT,
    FLAG_UP,
};
use p256::ecdsa::signature::Signer as _;
use proptest::prelude::*;

fn pam_u2f_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pam-u2f")
}

/// Every `*.cred.in` file, by name, with `@USERNAME@` replaced by `alice`.
fn pam_u2f_files() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(pam_u2f_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".cred.in"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&p).unwrap();
            (name, text.replace("@USERNAME@", "alice"))
        })
        .collect();
    files.sort();
    files
}

fn es256_key(seed: u8) -> (p256::ecdsa::SigningKey, PublicKey) {
    let sk = p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap();
    let pk = PublicKey::Es256(*sk.verifying_key());
    (sk, pk)
}

fn good_line(user: &str, id: &[u8], seed: u8) -> String {
    format!(
        "{user}:{},{},es256,+presence",
        STANDARD.encode(id),
        STANDARD.encode(es256_key(seed).1.to_raw())
    )
}

/// What k_proxy does with one pam-u2f file's line.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Used: how many credentials, and whether they require UV and the PIN.
    Read {
        credentials: usize,
        uv: bool,
        pin: bool,
    },
    /// Refused: a phrase of the message.
    Line(&'static str),
    /// The whole file is refused (it is not an authfile).
    File(&'static str),
}

/// The expected outcome from the file's name (pamu2fcfg's options are in it).
fn expected(name: &str) -> Outcome {
    let opts = name.trim_end_matches(".cred.in");
    if opts == "ssh_credential" {
        Outcome::File("OpenSSH")
    } else if opts == "empty" {
        Outcome::Line("no credential entries")
    } else if opts.contains("-r") {
        Outcome::Line("resident-key entry")
    } else if opts == "new_limited_count" {
        // pamu2fcfg -N -V, three times (EdDSA and ES256 keys).
        Outcome::Read {
            credentials: 3,
            uv: true,
            pin: true,
        }
    } else {
        Outcome::Read {
            credentials: if opts.contains("double") || opts.contains("mixed") {
                2
            } else {
                1
            },
            uv: opts.contains("-V"),
            pin: opts.contains("-N"),
        }
    }
}

#[test]
fn every_pam_u2f_test_file_is_read_or_its_line_refused_alone() {
    let files = pam_u2f_files();
    assert_eq!(files.len(), 40, "the copied directory is complete");
    let (mut read, mut refused_line, mut refused_file) = (0, 0, 0);
    let mut reasons: BTreeMap<&'static str, usize> = BTreeMap::new();
    for (name, text) in &files {
        let want = expected(name);
        // Alone, and between two users whose lines are fine.
        let alone = Enrolments::parse(text, name);
        let framed = format!(
            "{}\n{}\n{}\n",
            good_line("bob", b"bob-1", 1),
            text,
            good_line("carol", b"carol-1", 2)
        );
        let framed = Enrolments::parse(&framed, name);
        match want {
            Outcome::File(what) => {
                for r in [alone, framed] {
                    let e = r.unwrap_err().to_string();
                    assert!(e.contains(what), "{name}: {e}");
                }
                refused_file += 1;
                *reasons.entry(what).or_default() += 1;
            }
            Outcome::Line(what) => {
                let alone = alone.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(alone.iter().count(), 0, "{name}");
                assert_eq!(alone.refused().len(), 1, "{name}");
                assert_eq!(alone.refused()[0].line, 1, "{name}");
                assert!(
                    alone.refused()[0].reason.contains(what),
                    "{name}: {}",
                    alone.refused()[0].reason
                );
                let framed = framed.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(framed.credentials_of("bob").len(), 1, "{name}");
                assert_eq!(framed.credentials_of("carol").len(), 1, "{name}");
                assert!(framed.credentials_of("alice").is_empty(), "{name}");
                assert_eq!(framed.refused().len(), 1, "{name}");
                assert_eq!(framed.refused()[0].line, 2, "{name}");
                // The refusal names no key material.
                for field in text.split([':', ',', '\n']).filter(|f| f.len() > 20) {
                    assert!(!framed.refused()[0].reason.contains(field), "{name}");
                }
                // Kept, verbatim, when the file is rewritten.
                let again = Enrolments::parse(&framed.render(), "rendered").unwrap();
                assert_eq!(again, framed, "{name}");
                assert!(again.render().contains(text.trim()), "{name}");
                refused_line += 1;
                *reasons.entry(what).or_default() += 1;
            }
            Outcome::Read {
                credentials,
                uv,
                pin,
            } => {
                let alone = alone.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(alone.refused().is_empty(), "{name}: {:?}", alone.refused());
                let creds = alone.credentials_of("alice");
                assert_eq!(creds.len(), credentials, "{name}");
                assert!(creds.iter().all(|c| c.require_uv == uv), "{name}");
                assert!(creds.iter().all(|c| c.require_pin == pin), "{name}");
                assert!(
                    name == "new_limited_count.cred.in"
                        || creds.iter().all(|c| c.public_key.kind() == KeyKind::Es256),
                    "{name}"
                );
                // The credential ids are the file's own bytes.
                let line = text.trim();
                for c in creds {
                    let id_b64 = STANDARD.encode(&c.id);
                    let websafe = WEBSAFE.encode(&c.id);
                    assert!(
                        line.contains(&id_b64) || line.contains(websafe.trim_end_matches('=')),
                        "{name}"
                    );
                }
                let framed = framed.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(framed.credentials_of("alice"), creds, "{name}");
                assert_eq!(framed.iter().count(), 3, "{name}");
                let again = Enrolments::parse(&alone.render(), "rendered").unwrap();
                assert_eq!(again, alone, "{name}");
                read += 1;
            }
        }
    }
    eprintln!(
        "pam-u2f files: {read} read, {refused_line} lines refused, {refused_file} files refused: {reasons:?}"
    );
    assert_eq!((read, refused_line, refused_file), (22, 17, 1));
    // pam-u2f's 17 `+pin` files: 9 read (+pin honoured), 8 refused for being resident;
    // its 8 other resident-key files; `empty`; and the OpenSSH file.
    assert_eq!(reasons.get("+pin"), None);
    assert_eq!(reasons.get("resident-key entry"), Some(&16));
    assert_eq!(files.iter().filter(|(_, t)| t.contains("+pin")).count(), 17);
    assert_eq!(reasons.get("no credential entries"), Some(&1));
    assert_eq!(reasons.get("OpenSSH"), Some(&1));
}

#[test]
fn a_bad_line_costs_only_that_line_and_is_reported_with_its_number() {
    let good_a = good_line("alice", b"a-1", 1);
    let good_b = good_line("bob", b"b-1", 2);
    let key_b64 = STANDARD.encode(es256_key(3).1.to_raw());
    let bad: Vec<(String, &str)> = vec![
        (
            format!("carol:{},{key_b64},rs256,+presence", STANDARD.encode(b"c")),
            "COSE type \"rs256\" is not supported",
        ),
        (
            format!("carol:{},{key_b64},eddsa,+presence", STANDARD.encode(b"c")),
            "not a valid EDDSA key",
        ),
        (
            format!("carol:{},{key_b64},es256,presence", STANDARD.encode(b"c")),
            "must be like",
        ),
        (
            format!("carol:{},{key_b64},es256,+typo", STANDARD.encode(b"c")),
            "\"typo\" is not supported",
        ),
        ("carol".to_string(), "no `:`"),
        ("carol:abc".to_string(), "1 fields"),
        ("carol:a,b,c,d,e".to_string(), "5 fields"),
        (format!("carol:!!!,{key_b64},es256,"), "not valid base64"),
        // The same credential as alice's, for another user.
        (good_line("carol", b"a-1", 1), "already listed on line 2"),
        (
            format!(
                "{}:{}",
                good_line("carol", b"c-1", 4),
                &good_line("x", b"c-1", 4)[2..]
            ),
            "listed twice on this line",
        ),
    ];
    for (line, what) in bad {
        let text = format!("# header\n{good_a}\n\n{line}\n{good_b}\n");
        let e = Enrolments::parse(&text, "f").unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(e.credentials_of("alice").len(), 1, "{line}");
        assert_eq!(e.credentials_of("bob").len(), 1, "{line}");
        assert!(e.credentials_of("carol").is_empty(), "{line}");
        assert_eq!(e.refused().len(), 1, "{line}");
        let r = &e.refused()[0];
        assert_eq!(r.line, 4, "{line}");
        assert!(r.reason.contains(what), "{line}: {}", r.reason);
        assert!(!r.reason.contains(&key_b64), "{}", r.reason);
    }
    // Only a file that is not an authfile at all is refused whole.
    let e = Enrolments::parse(&format!("{good_a}\n\0\n"), "f").unwrap_err();
    assert!(e.to_string().contains("NUL"), "{e}");
}

#[test]
fn refused_lines_are_logged_at_start_up_and_again_only_when_the_file_changes() {
    // The store reports through tracing; what it reports, and when, is its `reported`
    // state: the first load sets it, an unchanged file leaves it, an edit replaces it.
    let dir = tempfile::tempdir().unwrap();
    let store = CredentialStore::new(dir.path().join("creds"));
    let pin = pam_u2f_files()
        .into_iter()
        .find(|(n, _)| n == "new_-r-N.cred.in")
        .unwrap()
        .1;
    let text = format!(
        "{}\n{}",
        good_line("bob", b"b", 1),
        pin.replace("alice", "carol")
    );
    fsutil::write_atomic(store.path(), text.as_bytes()).unwrap();
    let reported = |s: &CredentialStore| s.reported.lock().unwrap().clone();
    assert_eq!(reported(&store), None);
    let e = store.load_existing().unwrap();
    assert_eq!(e.credentials_of("bob").len(), 1);
    let first = reported(&store).unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].0, 2);
    assert!(first[0].1.contains("resident-key"), "{}", first[0].1);
    store.load().unwrap();
    assert_eq!(reported(&store).unwrap(), first);
    // An edit (the refused line moves down): reported again, with the new number.
    let text = format!("# edited\n{text}");
    fsutil::write_atomic(store.path(), text.as_bytes()).unwrap();
    store.load().unwrap();
    assert_eq!(reported(&store).unwrap()[0].0, 3);
    // Saving after an enrolment keeps the refused line.
    let mut e = store.load().unwrap();
    e.add(
        "dave",
        Credential {
            id: b"d".to_vec(),
            public_key: es256_key(9).1,
            require_uv: false,
            require_pin: false,
        },
    )
    .unwrap();
    store.save(&e).unwrap();
    let back = store.load().unwrap();
    assert_eq!(back.credentials_of("dave").len(), 1);
    assert_eq!(back.refused().len(), 1);
    assert!(std::fs::read_to_string(store.path())
        .unwrap()
        .contains(pin.replace("alice", "carol").trim()));
}

#[test]
fn cose_type_is_read_in_any_case_as_pam_u2f_reads_it() {
    let (_, es) = es256_key(5);
    let ed = PublicKey::EdDsa(ed25519_dalek::SigningKey::from_bytes(&[6; 32]).verifying_key());
    for (kind, key) in [
        ("es256", &es),
        ("ES256", &es),
        ("Es256", &es),
        ("eddsa", &ed),
        ("EdDSA", &ed),
        ("EDDSA", &ed),
    ] {
        let line = format!(
            "alice:{},{},{kind},+presence",
            STANDARD.encode(b"id"),
            STANDARD.encode(key.to_raw())
        );
        let e = Enrolments::parse(&line, "f").unwrap();
        assert!(e.refused().is_empty(), "{kind}: {:?}", e.refused());
        assert!(e.credentials_of("alice")[0].public_key == *key, "{kind}");
        // Written back in pam-u2f's own lower-case spelling.
        assert!(e.render().contains(&format!(",{},", kind.to_lowercase())));
    }
    let line = format!(
        "alice:{},{},RS256,+presence",
        STANDARD.encode(b"id"),
        STANDARD.encode(es.to_raw())
    );
    let e = Enrolments::parse(&line, "f").unwrap();
    assert!(e.refused()[0].reason.contains("es256 and eddsa"));
}

#[test]
fn the_pre_1_1_format_is_read() {
    let old = pam_u2f_files()
        .into_iter()
        .find(|(n, _)| n == "old_credential.cred.in")
        .unwrap()
        .1;
    let e = Enrolments::parse(&old, "f").unwrap();
    let c = &e.credentials_of("alice")[0];
    // The key handle is websafe base64 without padding; the key the hex of the point.
    let (kh, pk) = old.trim()["alice:".len()..].split_once(',').unwrap();
    assert_eq!(c.id, WEBSAFE.decode(kh).unwrap());
    assert_eq!(c.id.len(), 64);
    assert_eq!(hex_decode(pk).unwrap(), c.public_key.to_raw());
    assert!(!c.require_uv);
    // Rewritten in the current format, it is the same credential.
    let again = Enrolments::parse(&e.render(), "f").unwrap();
    assert_eq!(again, e);
    assert!(again.render().contains(",es256,+presence"));
    // A broken old-format entry says which format it was read as.
    for bad in [
        format!("alice:{kh},{}", &pk[2..]),
        format!("alice:{kh},zz{}", &pk[2..]),
        format!("alice:{kh},+4{}", &pk[2..]),
        format!("alice:{kh}!,{pk}"),
    ] {
        let e = Enrolments::parse(&bad, "f").unwrap();
        assert!(
            e.refused()[0].reason.contains("pre-1.1 format"),
            "{}",
            e.refused()[0].reason
        );
    }
}

#[test]
fn up_to_24_credentials_per_user_and_a_user_on_two_lines_is_merged() {
    let entries = |user: &str, from: u8, n: u8| -> String {
        let mut line = user.to_string();
        for i in from..from + n {
            line.push(':');
            line.push_str(&good_line("x", &[b'k', i], 1)[2..]);
        }
        line
    };
    // 24 on one line: read.
    let e = Enrolments::parse(&entries("alice", 0, 24), "f").unwrap();
    assert_eq!(e.credentials_of("alice").len(), 24);
    assert!(e.refused().is_empty());
    assert_eq!(Enrolments::parse(&e.render(), "f").unwrap(), e);
    // 25 on one line: that line is refused, and says why.
    let text = format!("{}\n{}", entries("alice", 0, 25), good_line("bob", b"b", 2));
    let e = Enrolments::parse(&text, "f").unwrap();
    assert!(e.credentials_of("alice").is_empty());
    assert_eq!(e.credentials_of("bob").len(), 1);
    assert!(e.refused()[0].reason.contains("at most 24"));
    // The same user on two lines: merged, in file order, written back as one line.
    let text = format!(
        "{}\n{}\n{}",
        entries("alice", 0, 12),
        good_line("bob", b"b", 2),
        entries("alice", 12, 12)
    );
    let e = Enrolments::parse(&text, "f").unwrap();
    assert!(e.refused().is_empty(), "{:?}", e.refused());
    let ids: Vec<u8> = e.credentials_of("alice").iter().map(|c| c.id[1]).collect();
    assert_eq!(ids, (0..24).collect::<Vec<u8>>());
    let rendered = e.render();
    assert_eq!(
        rendered.lines().filter(|l| l.starts_with("alice:")).count(),
        1
    );
    assert_eq!(Enrolments::parse(&rendered, "f").unwrap(), e);
    // A second line that would pass 24 costs only itself.
    let text = format!("{}\n{}", entries("alice", 0, 20), entries("alice", 20, 5));
    let e = Enrolments::parse(&text, "f").unwrap();
    assert_eq!(e.credentials_of("alice").len(), 20);
    assert_eq!(e.refused()[0].line, 2);
    assert!(e.refused()[0].reason.contains("25 credentials"));
    assert_eq!(Enrolments::parse(&e.render(), "f").unwrap(), e);
}

#[test]
fn user_names_login_refuses_are_kept_but_unusable() {
    let text = format!(
        "{}\n{}\n{}",
        good_line("alice@example.com", b"mail", 1),
        good_line("bob", b"b", 2),
        good_line("DOMAIN\\carol", b"c", 3),
    );
    let e = Enrolments::parse(&text, "f").unwrap();
    assert_eq!(e.iter().map(|(u, _)| u).collect::<Vec<_>>(), ["bob"]);
    assert_eq!(e.refused().len(), 2);
    assert!(
        e.refused()[0]
            .reason
            .contains("\"alice@example.com\" is not one k_proxy's login accepts"),
        "{}",
        e.refused()[0].reason
    );
    assert!(e.refused()[0].reason.contains("kept in the file"));
    // Kept: a rewrite (enrolling someone else) does not drop them.
    let rendered = e.render();
    assert!(rendered.contains(&good_line("alice@example.com", b"mail", 1)));
    assert_eq!(Enrolments::parse(&rendered, "f").unwrap(), e);
    // And `enroll` cannot add such a name.
    let mut e = e;
    assert!(e
        .add(
            "alice@example.com",
            Credential {
                id: b"new".to_vec(),
                public_key: es256_key(4).1,
                require_uv: false,
                require_pin: false
            }
        )
        .is_err());
}

#[test]
fn plus_pin_lines_load_and_ask_for_the_pin() {
    let mut seen = 0;
    for (name, text) in pam_u2f_files() {
        if !text.contains("+pin") || text.contains(":*,") {
            continue;
        }
        let e = Enrolments::parse(&text, &name).unwrap();
        assert!(e.refused().is_empty(), "{name}: {:?}", e.refused());
        let creds = e.credentials_of("alice");
        assert!(!creds.is_empty(), "{name}");
        assert!(creds.iter().all(|c| c.require_pin), "{name}");
        // Written back with +pin, and read again the same.
        let rendered = e.render();
        assert!(rendered.contains("+pin"), "{name}");
        assert_eq!(Enrolments::parse(&rendered, "r").unwrap(), e, "{name}");
        seen += 1;
    }
    assert_eq!(seen, 9);
}

#[test]
fn resident_key_lines_are_refused_and_other_users_keep_working() {
    for (name, text) in pam_u2f_files() {
        if !text.contains(":*,") {
            continue;
        }
        let framed = format!("{text}\n{}", good_line("bob", b"b", 2));
        let e = Enrolments::parse(&framed, &name).unwrap();
        let reason = &e.refused()[0].reason;
        assert!(reason.contains("resident-key entry"), "{name}: {reason}");
        assert!(reason.contains("pamu2fcfg -r"), "{name}: {reason}");
        assert!(!reason.contains("base64"), "{name}: {reason}");
        assert_eq!(e.credentials_of("bob").len(), 1, "{name}");
    }
}

// ---------------------------------------------------------------------------
// Property: enrolment accepts only credentials login can verify, and round-trips
// ---------------------------------------------------------------------------

/// Small-order Ed25519 encodings (canonical ones, and two non-canonical).
const SMALL_ORDER: [&str; 6] = [
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
];

/// A candidate credential key: a real one (with its private key), a weak one, or
/// arbitrary bytes, as COSE and as the stored form.
#[derive(Debug, Clone)]
enum Candidate {
    Es256(u64),
    EdDsa(u64),
    SmallOrder(usize),
    /// A real Ed25519 key plus a point of order 8.
    MixedOrder(u64),
    /// A real ES256 key with one byte changed (in the COSE and in the stored form).
    Mangled(u64, usize, u8),
    Arbitrary(KeyKind, Vec<u8>),
}

fn candidates() -> impl Strategy<Value = Candidate> {
    prop_oneof![
        any::<u64>().prop_map(Candidate::Es256),
        any::<u64>().prop_map(Candidate::EdDsa),
        (0..SMALL_ORDER.len()).prop_map(Candidate::SmallOrder),
        any::<u64>().prop_map(Candidate::MixedOrder),
        (any::<u64>(), 0usize..77, 1u8..=255).prop_map(|(s, i, x)| Candidate::Mangled(s, i, x)),
        (
            prop_oneof![Just(KeyKind::Es256), Just(KeyKind::EdDsa)],
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 32),
                proptest::collection::vec(any::<u8>(), 64..=65)
            ]
        )
            .prop_map(|(k, b)| Candidate::Arbitrary(k, b)),
    ]
}

enum Signer {
    Es(p256::ecdsa::SigningKey),
    Ed(ed25519_dalek::SigningKey),
}

fn seed32(seed: u64) -> [u8; 32] {
    let mut s = [0x5au8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    s
}

/// The candidate's COSE key, its stored form and kind, and its private key when real.
fn materialise(c: &Candidate) -> (Vec<u8>, KeyKind, Vec<u8>, Option<Signer>) {
    let ed_cose = |raw: &[u8]| {
        let mut v = vec![0xa4, 0x01, 0x01, 0x03, 0x27, 0x20, 0x06, 0x21, 0x58, 0x20];
        v.extend_from_slice(raw);
        v
    };
    match c {
        Candidate::Es256(s) => {
            let sk = p256::ecdsa::SigningKey::from_slice(&seed32(*s)).unwrap();
            let pk = PublicKey::Es256(*sk.verifying_key());
            (
                pk.to_cose(),
                KeyKind::Es256,
                pk.to_raw(),
                Some(Signer::Es(sk)),
            )
        }
        Candidate::EdDsa(s) => {
            let sk = ed25519_dalek::SigningKey::from_bytes(&seed32(*s));
            let raw = sk.verifying_key().to_bytes().to_vec();
            (ed_cose(&raw), KeyKind::EdDsa, raw, Some(Signer::Ed(sk)))
        }
        Candidate::SmallOrder(i) => {
            let raw: Vec<u8> = (0..32)
                .map(|j| u8::from_str_radix(&SMALL_ORDER[*i][2 * j..2 * j + 2], 16).unwrap())
                .collect();
            (ed_cose(&raw), KeyKind::EdDsa, raw, None)
        }
        Candidate::MixedOrder(s) => {
            let sk = ed25519_dalek::SigningKey::from_bytes(&seed32(*s));
            let t: [u8; 32] = hex_decode(SMALL_ORDER[3]).unwrap().try_into().unwrap();
            let t = ed25519_dalek::VerifyingKey::from_bytes(&t).unwrap();
            let raw = (sk.verifying_key().to_edwards() + t.to_edwards())
                .compress()
                .to_bytes()
                .to_vec();
            (ed_cose(&raw), KeyKind::EdDsa, raw, None)
        }
        Candidate::Mangled(s, i, x) => {
            let sk = p256::ecdsa::SigningKey::from_slice(&seed32(*s)).unwrap();
            let pk = PublicKey::Es256(*sk.verifying_key());
            let (mut cose, mut raw) = (pk.to_cose(), pk.to_raw());
            let (ci, ri) = (i % cose.len(), i % raw.len());
            cose[ci] ^= x;
            raw[ri] ^= x;
            (cose, KeyKind::Es256, raw, None)
        }
        Candidate::Arbitrary(kind, bytes) => (bytes.clone(), *kind, bytes.clone(), None),
    }
}

/// An assertion for `rp` signed by `signer`, verified with `key` as login does.
fn login_verifies(key: &PublicKey, signer: &Signer) -> bool {
    let rp = rp_id_hash("chromecard");
    let cdh = client_data_hash(b"fresh challenge");
    let mut ad = rp.to_vec();
    ad.push(FLAG_UP);
    ad.extend_from_slice(&9u32.to_be_bytes());
    let mut m = ad.clone();
    m.extend_from_slice(&cdh);
    let sig = match signer {
        Signer::Es(sk) => {
            let s: p256::ecdsa::Signature = sk.sign(&m);
            s.to_der().as_bytes().to_vec()
        }
        Signer::Ed(sk) => sk.sign(&m).to_bytes().to_vec(),
    };
    verify_assertion(
        key,
        &ad,
        &sig,
        &Expected {
            rp_id_hash: &rp,
            client_data_hash: &cdh,
            require_uv: false,
        },
    )
    .is_ok()
}

/// What the verifier needs of an Ed25519 key, restated here: a canonical encoding of a
/// point of large prime order.
fn ed25519_sound(k: &ed25519_dalek::VerifyingKey) -> bool {
    let p = k.to_edwards();
    p.compress().to_bytes() == k.to_bytes() && !p.is_small_order() && p.is_torsion_free()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn enrolment_accepts_only_what_login_can_verify_and_round_trips(
        c in candidates(),
        uv in any::<bool>(),
        id in proptest::collection::vec(any::<u8>(), 1..80),
    ) {
        let (cose, kind, raw, signer) = materialise(&c);
        // The two ways in: makeCredential's authenticator data, and a file line.
        let rp = rp_id_hash("chromecard");
        let mut reg = rp.to_vec();
        reg.push(FLAG_UP | FLAG_AT);
        reg.extend_from_slice(&[0, 0, 0, 0]);
        reg.extend_from_slice(&[0u8; 16]);
        reg.extend_from_slice(&(id.len() as u16).to_be_bytes());
        reg.extend_from_slice(&id);
        reg.extend_from_slice(&cose);
        let from_device = verify_new_credential(&reg, &rp, false).ok().map(|n| n.public_key);
        let line = format!(
            "alice:{},{},{},{}\n{}",
            STANDARD.encode(&id),
            STANDARD.encode(&raw),
            kind.as_str(),
            if uv { "+presence+verification" } else { "+presence" },
            good_line("bob", b"\xff-bob", 1),
        );
        let file = Enrolments::parse(&line, "f").unwrap();
        prop_assert_eq!(file.credentials_of("bob").len(), 1);
        let from_file = file.credentials_of("alice").first().cloned();
        prop_assert_eq!(from_file.is_some(), file.refused().is_empty());

        for key in from_device.iter().chain(from_file.as_ref().map(|c| &c.public_key)) {
            // Whatever is accepted is a key login can use...
            match key {
                PublicKey::EdDsa(k) => prop_assert!(ed25519_sound(k), "{c:?}"),
                PublicKey::Es256(_) => {}
            }
            // ...and, when we hold its private key, login does verify with it.
            if let Some(s) = &signer {
                prop_assert!(login_verifies(key, s), "{c:?}");
            }
        }
        match &c {
            // Real keys are accepted both ways, as the same key.
            Candidate::Es256(_) | Candidate::EdDsa(_) => {
                prop_assert!(from_device.is_some() && from_file.is_some(), "{c:?}");
                prop_assert!(from_device.as_ref() == from_file.as_ref().map(|c| &c.public_key));
            }
            // Weak keys never are.
            Candidate::SmallOrder(_) | Candidate::MixedOrder(_) => {
                prop_assert!(from_device.is_none() && from_file.is_none(), "{c:?}");
            }
            // A changed COSE key is refused, or is a sound key (a changed coordinate
            // that is still on the curve), never the original.
            Candidate::Mangled(seed, ..) => {
                let sk = p256::ecdsa::SigningKey::from_slice(&seed32(*seed)).unwrap();
                let original = PublicKey::Es256(*sk.verifying_key());
                let signer = Signer::Es(sk);
                for k in from_device.iter().chain(from_file.as_ref().map(|c| &c.public_key)) {
                    prop_assert!(*k != original, "{c:?}");
                    prop_assert!(!login_verifies(k, &signer), "{c:?}");
                }
            }
            Candidate::Arbitrary(..) => {}
        }
        // An accepted line round-trips: render, parse, the same credential.
        if let Some(cred) = &from_file {
            prop_assert_eq!(cred.require_uv, uv);
            prop_assert_eq!(&cred.id, &id);
            let again = Enrolments::parse(&file.render(), "rendered").unwrap();
            prop_assert_eq!(&again, &file);
            prop_assert_eq!(again.credentials_of("alice").first(), Some(cred));
        }
        // And what makeCredential gave, once enrolled, is written and read back alike.
        if let Some(k) = from_device {
            let mut e = Enrolments::default();
            let cred = Credential { id: id.clone(), public_key: k, require_uv: uv, require_pin: false };
            e.add("carol", cred.clone()).unwrap();
            let again = Enrolments::parse(&e.render(), "rendered").unwrap();
            prop_assert_eq!(again.credentials_of("carol"), std::slice::from_ref(&cred));
        }
    }
}
