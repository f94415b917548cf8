#![forbid(unsafe_code)]
//! The fuzz targets, as plain functions over bytes so that libFuzzer
//! (`fuzz_targets/*.rs`, through cargo-fuzz or `scripts/fuzz.sh`) and the stable
//! smoke test (`tests/smoke.rs`) run exactly the same code.
//!
//! Each target feeds untrusted bytes to a parser we own and then checks what the
//! parser promised: never a panic, and on success an answer that is consistent with
//! the input (round trips, invariants); on refusal the documented status and code.
//! A violated property panics, which libFuzzer reports as a crash.

use chromecard_gate::credentials::{Enrolments, MAX_CREDENTIALS_PER_USER};
use chromecard_gate::verify::{
    self, parse_auth_data, verify_assertion, verify_new_credential, Expected, KeyKind, PublicKey,
    FLAG_AT, FLAG_ED,
};
use chromecard_request::{
    bearer_token, parse_login, require_json, set_session_cookie, take_credential, CredentialSource,
    CSRF_HEADER,
};
use chromecard_session::TokenHash;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::json;

/// A fuzz target: takes any bytes, panics only when a property is violated.
pub type Target = fn(&[u8]);

/// Every target, by name, for the smoke test and the script.
pub const TARGETS: &[(&str, Target)] = &[
    ("credential", credential),
    ("login", login),
    ("token", token),
    ("auth_data", auth_data),
    ("cose_key", cose_key),
    ("enrolment", enrolment),
    ("ctaphid", ctaphid),
    ("ctap2_answer", ctap2_answer),
    ("resource_path", resource_path),
];

// ---------------------------------------------------------------------------
// Credential headers (Authorization, Cookie, the CSRF check) and Content-Type
// ---------------------------------------------------------------------------

/// Input: the first line is the method; every further line is `name: value`, appended
/// to a `HeaderMap` when both are valid for the `http` crate (as hyper would have
/// refused the rest). Lines split on `\n`; a trailing `\r` stays in the value bytes, so
/// hyper-invalid values are simply skipped.
pub fn headers_from(data: &[u8]) -> (Method, HeaderMap) {
    let mut lines = data.split(|&b| b == b'\n');
    let method = lines
        .next()
        .and_then(|m| Method::from_bytes(m).ok())
        .unwrap_or(Method::POST);
    let mut map = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        else {
            continue;
        };
        map.append(name, value);
    }
    (method, map)
}

fn is_b64token(t: &str) -> bool {
    let body = t.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// The one Origin the credential target's policy accepts.
const OUR_ORIGIN_TEXT: &str = "https://127.0.0.1:8771";
const OUR_ORIGIN: fn(&str) -> bool = |origin| origin == OUR_ORIGIN_TEXT;

/// `bearer_token`, `take_credential` (Bearer, cookie, CSRF) and `require_json`.
pub fn credential(data: &[u8]) {
    let (method, headers) = headers_from(data);
    let auth_values: Vec<&HeaderValue> = headers.get_all(header::AUTHORIZATION).iter().collect();

    let bearer = bearer_token(&headers);
    match &bearer {
        Ok(token) => {
            assert_eq!(
                auth_values.len(),
                1,
                "a token from several Authorization headers"
            );
            let value = auth_values[0]
                .to_str()
                .expect("accepted a non-ASCII header");
            assert!(
                value.len() > 7 && value[..7].eq_ignore_ascii_case("bearer "),
                "accepted {value:?} without the Bearer scheme"
            );
            assert!(
                value.ends_with(token),
                "token {token:?} is not the end of {value:?}"
            );
            assert!(
                is_b64token(token),
                "token {token:?} is not an RFC 6750 b64token"
            );
            // Syntax check of the session layer: never panics, Ok only for 43 base64url.
            let _ = TokenHash::parse_presented(token);
            // A token that passes as Bearer also round-trips through the cookie.
            let cookie = set_session_cookie(token, false).expect("cookie for a b64token");
            let cookie = cookie.to_str().expect("ASCII cookie");
            let pair = cookie.split(';').next().expect("name=value");
            let mut jar = HeaderMap::new();
            jar.insert(
                header::COOKIE,
                HeaderValue::from_str(pair).expect("cookie header"),
            );
            let back =
                take_credential(&jar, &Method::GET, &OUR_ORIGIN).expect("own cookie refused");
            assert_eq!(back.token, *token);
            assert_eq!(back.source, CredentialSource::Cookie);
        }
        Err(e) => {
            assert_eq!(e.status, 401, "bearer_token refused with {}", e.status);
            assert!(
                matches!(e.code, "missing_token" | "malformed_authorization"),
                "unexpected code {}",
                e.code
            );
            assert!(!e.message.is_empty());
            assert_eq!(e.code == "missing_token", auth_values.is_empty());
        }
    }

    let taken = take_credential(&headers, &method, &OUR_ORIGIN);
    if !auth_values.is_empty() {
        // An Authorization header always decides, whatever cookies came with it.
        match (&taken, &bearer) {
            (Ok(c), Ok(t)) => {
                assert_eq!(c.token, *t);
                assert_eq!(c.source, CredentialSource::Bearer);
            }
            (Err(a), Err(b)) => assert_eq!(a.code, b.code),
            _ => panic!("take_credential and bearer_token disagree"),
        }
    } else {
        match &taken {
            Ok(c) => {
                assert_eq!(c.source, CredentialSource::Cookie);
                // Read as bytes: another cookie in the same header may hold UTF-8.
                let in_a_cookie = headers.get_all(header::COOKIE).iter().any(|v| {
                    c.token.is_empty()
                        || v.as_bytes()
                            .windows(c.token.len())
                            .any(|w| w == c.token.as_bytes())
                });
                assert!(
                    in_a_cookie,
                    "cookie token {:?} not in any Cookie header",
                    c.token
                );
                if !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS) {
                    assert!(
                        headers.contains_key(CSRF_HEADER),
                        "a state-changing cookie request passed without the CSRF header"
                    );
                    assert!(
                        headers
                            .get_all(header::ORIGIN)
                            .iter()
                            .all(|origin| origin == OUR_ORIGIN_TEXT),
                        "a state-changing cookie request passed with a foreign Origin"
                    );
                }
            }
            Err(e) => {
                assert!(
                    matches!(
                        (e.status.as_u16(), e.code),
                        (401, "missing_token" | "malformed_cookie") | (403, "csrf_check_failed")
                    ),
                    "unexpected refusal {} {}",
                    e.status,
                    e.code
                );
                assert!(!e.message.is_empty());
            }
        }
    }

    if require_json(&headers).is_ok() {
        assert!(headers.contains_key(header::CONTENT_TYPE));
    }
}

// ---------------------------------------------------------------------------
// Login body
// ---------------------------------------------------------------------------

/// `parse_login`: refusals are 400 with a documented code; an accepted body names a
/// valid user and re-encodes to a body that parses to the same request.
pub fn login(data: &[u8]) {
    match parse_login(data) {
        Ok(req) => {
            assert!(
                chromecard_hop::validate_username(&req.username).is_ok(),
                "accepted invalid username {:?}",
                req.username
            );
            if let Some(scope) = &req.scope {
                assert!(
                    (1..=16).contains(&scope.len()),
                    "scope of {} entries",
                    scope.len()
                );
                assert!(scope.iter().all(|s| !s.is_empty()), "empty scope entry");
                let mut distinct = scope.clone();
                distinct.sort();
                distinct.dedup();
                assert_eq!(distinct.len(), scope.len(), "repeated scope entry");
            }
            let mut body = json!({ "username": req.username, "cookie": req.cookie });
            if let Some(scope) = &req.scope {
                body["scope"] = json!(scope);
            }
            if let Some(pin) = &req.pin {
                let pin = std::str::from_utf8(pin.expose()).expect("an accepted PIN is UTF-8");
                assert!(
                    (4..=63).contains(&pin.len()),
                    "accepted a PIN of {} bytes",
                    pin.len()
                );
                assert!(pin.chars().count() >= 4 && !pin.contains('\0'));
                body["pin"] = json!(pin);
            }
            let again = parse_login(body.to_string().as_bytes()).expect("re-encoded login refused");
            assert_eq!(
                (&again.username, &again.scope, again.cookie),
                (&req.username, &req.scope, req.cookie),
                "login does not round-trip"
            );
            assert_eq!(
                again.pin.as_ref().map(|p| p.expose().to_vec()),
                req.pin.as_ref().map(|p| p.expose().to_vec()),
                "the PIN does not round-trip"
            );
        }
        Err(e) => {
            assert_eq!(e.status, 400);
            assert!(
                matches!(
                    e.code,
                    "invalid_json"
                        | "invalid_body"
                        | "missing_username"
                        | "invalid_username"
                        | "invalid_scope"
                        | "invalid_pin"
                ),
                "unexpected code {}",
                e.code
            );
            assert!(!e.message.is_empty());
        }
    }
}

// ---------------------------------------------------------------------------
// Token syntax
// ---------------------------------------------------------------------------

/// `TokenHash::parse_presented`: Ok exactly for 43 characters of base64url, and then
/// the hash of the text.
pub fn token(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let well_formed = text.len() == 43
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    match TokenHash::parse_presented(&text) {
        Ok(h) => {
            assert!(well_formed, "accepted {text:?}");
            assert!(h.ct_eq(&TokenHash::of(&text)));
            let id = h.public_id();
            assert_eq!(id.len(), 16);
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        Err(_) => assert!(!well_formed, "refused {text:?}"),
    }
}

// ---------------------------------------------------------------------------
// Authenticator data, COSE keys, enrolment file (crates/gate)
// ---------------------------------------------------------------------------

/// The P-256 generator and the Ed25519 base point: valid keys to verify against.
fn fixed_keys() -> [PublicKey; 2] {
    let mut g = [0u8; 65];
    g[0] = 0x04;
    g[1..33].copy_from_slice(&hex32(
        "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296",
    ));
    g[33..].copy_from_slice(&hex32(
        "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5",
    ));
    let b = hex32("5866666666666666666666666666666666666666666666666666666666666666");
    [
        PublicKey::from_raw(KeyKind::Es256, &g).expect("P-256 generator"),
        PublicKey::from_raw(KeyKind::EdDsa, &b).expect("Ed25519 base point"),
    ]
}

fn hex32(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex");
    }
    out
}

/// `parse_auth_data`, then the assertion and new-credential checks on the same bytes.
pub fn auth_data(data: &[u8]) {
    match parse_auth_data(data) {
        Ok(ad) => {
            assert!(data.len() >= 37);
            assert_eq!(ad.rp_id_hash[..], data[..32]);
            assert_eq!(ad.flags, data[32]);
            assert_eq!(
                ad.sign_count,
                u32::from_be_bytes([data[33], data[34], data[35], data[36]])
            );
            assert_eq!(ad.attested.is_some(), data[32] & FLAG_AT != 0);
            assert_eq!(ad.extensions.is_some(), data[32] & FLAG_ED != 0);
            if let Some(att) = &ad.attested {
                assert!((1..=verify::MAX_CREDENTIAL_ID_LEN).contains(&att.credential_id.len()));
                let cose = att.public_key.to_cose();
                assert_eq!(PublicKey::from_cose(&cose).as_ref(), Ok(&att.public_key));
            }
            if let Some(ext) = ad.extensions {
                assert!(data.ends_with(ext), "extensions are not the tail");
            }
        }
        Err(_) => {
            if data.len() < 37 {
                return;
            }
        }
    }
    // The signature and policy checks on the same bytes, with the expected rp hash
    // taken from the input so that the signature check is reached. A random signature
    // must never verify.
    let rp: [u8; 32] = data
        .get(..32)
        .and_then(|s| s.try_into().ok())
        .unwrap_or([0; 32]);
    let cdh = [7u8; 32];
    let expected = Expected {
        rp_id_hash: &rp,
        client_data_hash: &cdh,
        require_uv: data.len() % 2 == 0,
    };
    let sig = &data[data.len().saturating_sub(72)..];
    for key in fixed_keys() {
        let _ = verify_assertion(&key, data, sig, &expected);
    }
    let _ = verify_new_credential(data, &rp, data.len() % 3 == 0);
}

/// `PublicKey::from_cose_prefix` / `from_cose` / `from_raw`: accepted keys round-trip.
pub fn cose_key(data: &[u8]) {
    if let Ok((key, used)) = PublicKey::from_cose_prefix(data) {
        assert!(used <= data.len() && used > 0);
        let exact = PublicKey::from_cose(&data[..used]).expect("prefix not a key on its own");
        assert_eq!(exact, key);
        assert_eq!(PublicKey::from_cose(data).is_ok(), used == data.len());
        // Strict parsing (each label once, shortest encodings, no extra labels): the
        // accepted encoding is as long as the canonical one (label order may differ).
        assert_eq!(
            key.to_cose().len(),
            used,
            "a non-shortest COSE key was accepted"
        );
        let raw = key.to_raw();
        assert_eq!(PublicKey::from_raw(key.kind(), &raw).as_ref(), Ok(&key));
    }
    for kind in [KeyKind::Es256, KeyKind::EdDsa] {
        if let Ok(k) = PublicKey::from_raw(kind, data) {
            // The one other accepted form: pamu2fcfg's ES256 key, x || y without the tag.
            let canonical = match (kind, data.len()) {
                (KeyKind::Es256, 64) => [&[0x04][..], data].concat(),
                _ => data.to_vec(),
            };
            assert_eq!(
                k.to_raw(),
                canonical,
                "from_raw accepted a non-canonical form"
            );
            assert_eq!(PublicKey::from_cose(&k.to_cose()).as_ref(), Ok(&k));
        }
    }
}

/// `Enrolments::parse`: an accepted file renders to text that parses to the same
/// enrolments (the same credentials, the same lines refused); every accepted user is a
/// name login accepts, with 1 to `MAX_CREDENTIALS_PER_USER` credentials whose keys
/// re-parse from their stored form; a refused line names its line number in the input.
pub fn enrolment(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(e) = Enrolments::parse(&text, "fuzz") {
        let lines = text.lines().count();
        for (user, creds) in e.iter() {
            assert!(
                chromecard_hop::validate_username(user).is_ok(),
                "user {user:?}"
            );
            assert!((1..=MAX_CREDENTIALS_PER_USER).contains(&creds.len()));
            for c in creds {
                let raw = c.public_key.to_raw();
                assert_eq!(
                    PublicKey::from_raw(c.public_key.kind(), &raw).as_ref(),
                    Ok(&c.public_key),
                    "an enrolled key does not re-parse"
                );
            }
        }
        for r in e.refused() {
            assert!((1..=lines).contains(&r.line), "refused line {}", r.line);
            assert!(!r.reason.is_empty());
        }
        let rendered = e.render();
        let again = Enrolments::parse(&rendered, "rendered").expect("rendered file refused");
        assert_eq!(again, e, "the enrolment file does not round-trip");
        assert_eq!(again.render(), rendered, "rendering is not stable");
    }
}

// ---------------------------------------------------------------------------
// The key's side of the wire: CTAPHID reports and CTAP2 answers from a device
// ---------------------------------------------------------------------------

/// Input: the first byte picks the request (CBOR or PING), the rest is cut into
/// 64-byte reports that a device sends back, after a valid CTAPHID_INIT answer
/// that gives channel 0x00000009. The client's loop must end with an answer of at
/// most [`chromecard_ctaphid::MAX_MESSAGE`] bytes or an error, never panic or spin.
pub fn ctaphid(data: &[u8]) {
    use chromecard_ctaphid::host::{Channel, HostError, Limits, Port};
    use chromecard_ctaphid::{cmd, fragment, BROADCAST_CID, MAX_MESSAGE, PACKET_SIZE};
    use std::collections::VecDeque;
    use std::time::{Duration, Instant};

    struct Replay(VecDeque<[u8; PACKET_SIZE]>);
    impl Port for Replay {
        fn send(&mut self, _: &[u8; PACKET_SIZE]) -> Result<(), HostError> {
            Ok(())
        }
        fn recv(&mut self, _: Duration) -> Result<Option<[u8; PACKET_SIZE]>, HostError> {
            // The end of the input is a device that went away.
            self.0
                .pop_front()
                .map(Some)
                .ok_or_else(|| HostError::Io("end of input".into()))
        }
    }

    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let command = if pick & 1 == 0 { cmd::CBOR } else { cmd::PING };
    let nonce = [0u8; 8];
    let mut init = nonce.to_vec();
    init.extend_from_slice(&[0, 0, 0, 9, 2, 0, 1, 0, 4]);
    let mut reports: VecDeque<[u8; PACKET_SIZE]> =
        fragment(BROADCAST_CID, cmd::INIT, &init).unwrap().into();
    for chunk in rest.chunks(PACKET_SIZE) {
        let mut r = [0u8; PACKET_SIZE];
        r[..chunk.len()].copy_from_slice(chunk);
        reports.push_back(r);
    }
    let far = Instant::now() + Duration::from_secs(3600);
    let mut channel = Channel::open(Replay(reports), nonce, far).expect("a valid INIT answer");
    let limits = Limits {
        deadline: far,
        cancel_grace: Duration::from_secs(1),
        poll: Duration::from_millis(1),
    };
    if let Ok(answer) = channel.transact(command, &[4], &limits, &|| false, &mut |_| {}) {
        assert!(answer.payload.len() <= MAX_MESSAGE);
        assert!(!answer.framed_as_msg || command == cmd::CBOR);
    }
}

/// Input: a CTAP2 answer (status byte and CBOR) as a device might send it. Each
/// reader accepts it or refuses it with a refusal code, never a panic; what it
/// accepts is what the bytes said.
pub fn ctap2_answer(data: &[u8]) {
    use chromecard_gate::ctap2;
    let ok = data.first() == Some(&0);
    if let Ok(a) = ctap2::parse_get_assertion(data, "fuzz") {
        assert!(ok);
        assert!(data.len() > a.auth_data.len() + a.signature.len());
    }
    if let Ok(ad) = ctap2::parse_make_credential(data, "fuzz") {
        assert!(ok && data.len() > ad.len());
    }
    if let Ok(versions) = ctap2::parse_get_info(data, "fuzz") {
        assert!(ok && !versions.is_empty());
    }
    if let Ok(info) = ctap2::parse_info(data, "fuzz") {
        assert!(ok && !info.versions.is_empty());
    }
    // clientPIN answers, and the key agreement key in them (a point that must be on P-256).
    if let Ok(m) = ctap2::parse_client_pin(data, "fuzz") {
        assert!(ok);
        if let Some(v) = ctap2::answer_field(&m, 1) {
            if let Ok(key) = chromecard_gate::pin_protocol::CoseKey::from_value(v) {
                assert_eq!(
                    chromecard_gate::pin_protocol::CoseKey::from_value(&key.to_value()),
                    Ok(key)
                );
            }
        }
    }
    if !ok {
        if let Some(&status) = data.first() {
            let code = ctap2::status_error(status, "fuzz", "op").code();
            assert!(!code.is_empty());
        }
    }
}

// ---------------------------------------------------------------------------
// The resource path k_proxy forwards
// ---------------------------------------------------------------------------

/// Input: a request target. Whatever `checked_resource_path` lets through is exactly the
/// target given (nothing normalised) and has no dot segment, no empty segment, no
/// backslash and no encoded separator (`%2e`, `%2f`, `%5c`, either case): k_server sees
/// the path k_proxy checked.
pub fn resource_path(data: &[u8]) {
    use chromecard_request::{checked_resource_path, resource_name, resource_path_is_clean};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let clean = resource_path_is_clean(text);
    if clean {
        for segment in text.split('/').skip(1) {
            assert!(
                segment != "." && segment != ".." && !segment.is_empty(),
                "{text:?}"
            );
        }
        assert!(!text.contains('\\'), "{text:?}");
        let lower = text.to_ascii_lowercase();
        for encoded in ["%2e", "%2f", "%5c"] {
            assert!(!lower.contains(encoded), "{text:?}");
        }
    }
    let _ = resource_name(text);
    let Ok(uri) = text.parse::<http::Uri>() else {
        return;
    };
    if let Ok(forwarded) = checked_resource_path(&uri) {
        assert!(resource_path_is_clean(uri.path()), "{text:?}");
        assert!(
            forwarded.starts_with(uri.path()),
            "{forwarded:?} from {text:?}"
        );
        let expected = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
        assert_eq!(forwarded, expected);
    }
}
