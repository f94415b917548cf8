//! The two ceremonies: login at assertion level, and enrolment. Each runs as one
//! blocking operation inside [`crate::Gate`]: device call, verification, and the
//! durable write, in that order, before the answer.

use sha2::{Digest, Sha256};

use crate::credentials::{credential_label, CommitError, Credential, CredentialStore};
use crate::outcome::{EnrolOptions, Enrolled, Passed};
use crate::verify::{self, client_data_hash, rp_id_hash, Expected, Rejection, Verified};
use crate::{
    AssertionResponse, Authenticator, CancelSignal, GateError, GateLevel, GetAssertionRequest,
    MakeCredentialRequest,
};

/// 32 fresh bytes from the OS CSPRNG: a new challenge for every login and enrolment.
pub(crate) fn random_challenge() -> Result<[u8; 32], GateError> {
    let mut c = [0u8; 32];
    getrandom::getrandom(&mut c).map_err(|e| GateError::Device {
        detail: format!("no randomness for a challenge: {e}"),
    })?;
    Ok(c)
}

fn storage(e: impl std::fmt::Display) -> GateError {
    GateError::Storage {
        detail: e.to_string(),
    }
}

/// Picks the credential the key used and verifies the answer against it
/// (authenticator data, rpIdHash, signature, UP, UV when the credential asks for it).
/// The credential must be one of the user's and in the allow list we sent. When the
/// key leaves the credential out (allowed with a one-entry allow list), it is that
/// one entry, and the signature decides.
pub(crate) fn verify_response<'c>(
    creds: &'c [Credential],
    request: &GetAssertionRequest,
    response: &AssertionResponse,
) -> Result<(&'c Credential, Verified), Rejection> {
    let id: &[u8] = match &response.credential_id {
        Some(id) if !id.is_empty() => id,
        _ if request.allow.len() == 1 => &request.allow[0],
        _ => return Err(Rejection::UnknownCredential),
    };
    if !request.allow.iter().any(|a| a.as_slice() == id) {
        return Err(Rejection::UnknownCredential);
    }
    let cred = creds
        .iter()
        .find(|c| c.id == id)
        .ok_or(Rejection::UnknownCredential)?;
    let rp_hash = rp_id_hash(&request.rp_id);
    let cdh = client_data_hash(&request.challenge);
    let verified = verify::verify_assertion(
        &cred.public_key,
        &response.auth_data,
        &response.signature,
        &Expected {
            rp_id_hash: &rp_hash,
            client_data_hash: &cdh,
            // `+pin` is a way of verifying the user: the UV flag must be set too.
            require_uv: cred.require_uv || cred.require_pin,
        },
    )?;
    Ok((cred, verified))
}

/// A refusal answered only after a touch, as an enrolled user's login would be: the
/// key blinks and the answer waits for the touch (or --touch-timeout) either way. So
/// which names are enrolled, attested or need a PIN is not told at machine speed; each
/// probe is one key operation that a person must answer, and k_proxy's throttle counts
/// it as a refused login.
fn refuse_after_touch(
    auth: &dyn Authenticator,
    cancel: &CancelSignal,
    refusal: GateError,
) -> Result<Passed, GateError> {
    auth.wait_for_touch_before_refusal(cancel)?;
    Err(refusal)
}

/// `username`'s credentials as the enrolment file (and, with `require_attested`, the
/// attestation records) hold them now, read again at each call: before the touch, and
/// after it. [`GateError::NotAttested`] when the user has credentials but none attested.
fn usable_credentials(
    store: &CredentialStore,
    username: &str,
    require_attested: bool,
) -> Result<Vec<Credential>, GateError> {
    let enrolments = store.load().map_err(storage)?;
    let creds = enrolments.credentials_of(username);
    if !require_attested || creds.is_empty() {
        return Ok(creds.to_vec());
    }
    let attested = crate::attestation::only_attested(store, username, creds).map_err(storage)?;
    if attested.is_empty() {
        return Err(GateError::NotAttested);
    }
    Ok(attested)
}

/// Login at assertion level: the user's credentials, a fresh challenge,
/// getAssertion, verification, the signCount rule and its durable update.
pub(crate) fn login(
    auth: &dyn Authenticator,
    rp_id: &str,
    store: &CredentialStore,
    username: &str,
    require_attested: bool,
    pin: Option<crate::Pin>,
    cancel: &CancelSignal,
) -> Result<Passed, GateError> {
    // Re-read at every login: `k_proxy enroll` may have changed it.
    let creds = match usable_credentials(store, username, require_attested) {
        Err(GateError::NotAttested) => {
            return refuse_after_touch(auth, cancel, GateError::NotAttested)
        }
        usable => usable?,
    };
    let creds = creds.as_slice();
    if creds.is_empty() {
        let not_enrolled = GateError::NotEnrolled {
            username: username.to_string(),
        };
        return refuse_after_touch(auth, cancel, not_enrolled);
    }
    let require_pin = creds.iter().any(|c| c.require_pin);
    if require_pin && pin.is_none() {
        return refuse_after_touch(auth, cancel, GateError::PinRequired);
    }
    let require_uv = creds.iter().any(|c| c.require_uv);
    let request = GetAssertionRequest {
        rp_id: rp_id.to_string(),
        challenge: random_challenge()?,
        allow: creds.iter().map(|c| c.id.clone()).collect(),
        require_uv,
        require_pin,
        // The PIN goes to the key only when the enrolment asks for user verification.
        pin: pin.filter(|_| require_uv || require_pin),
    };
    let response = match auth.get_assertion(&request, cancel) {
        // A +verification user without a PIN on a key that needs one (no built-in UV,
        // or one that insists): answered after a touch too, as above.
        Err(GateError::PinRequired) if request.pin.is_none() => {
            return refuse_after_touch(auth, cancel, GateError::PinRequired);
        }
        // The key judges a PIN without a touch; answered at once, these would tell who
        // is enrolled with a PIN (and how many tries are left) at machine speed, where
        // a name nobody enrolled is answered only after a touch.
        Err(
            refusal @ (GateError::PinInvalid { .. }
            | GateError::PinRetriesLow { .. }
            | GateError::PinBlocked
            | GateError::PinAuthBlocked
            | GateError::UvBlocked),
        ) => return refuse_after_touch(auth, cancel, refusal),
        other => other?,
    };
    if cancel.is_cancelled() {
        // The caller has given up (timeout or disconnect): change nothing.
        return Err(GateError::Cancelled);
    }
    let (cred, verified) = verify_response(creds, &request, &response).map_err(|r| {
        tracing::warn!(user = ?username, device = %response.device, reason = %r, "assertion rejected");
        GateError::Rejected(r)
    })?;
    // The touch may have taken seconds: a credential removed (or changed) meanwhile by
    // `k_proxy enroll remove` or by hand does not log in. Read the files again and find
    // the same credential, with the same key and options, for this user; under the lock
    // `enroll` and `enroll remove` change the file under, held to the commit, so that no
    // removal lands in between.
    let _no_changes = store.lock_for_change().map_err(storage)?;
    let still = match usable_credentials(store, username, require_attested) {
        Err(GateError::NotAttested) => Vec::new(),
        usable => usable?,
    };
    if !still.contains(cred) {
        tracing::warn!(user = ?username, credential = %cred.label(), "the credential was removed from the enrolment while its login waited for the touch; login refused");
        return Err(GateError::NotEnrolled {
            username: username.to_string(),
        });
    }
    match store.check_and_commit(username, &cred.id, verified.sign_count) {
        Ok(_) => Ok(Passed {
            level: GateLevel::Assertion,
            device: response.device,
            credential: Some(cred.label()),
            sign_count: Some(verified.sign_count),
            user_verified: verified.flags & crate::verify::FLAG_UV != 0,
        }),
        Err(CommitError::Rejected(r)) => {
            tracing::warn!(
                user = ?username,
                credential = %cred.label(),
                device = %response.device,
                reason = %r,
                "POSSIBLE CLONED KEY: the signature counter did not increase; login refused"
            );
            Err(GateError::Rejected(r))
        }
        Err(CommitError::Store(e)) => Err(storage(e)),
    }
}

/// Enrolment: makeCredential with a fresh challenge (excluding the user's existing
/// credentials), verification of the new credential, and the atomic rewrite of the
/// enrolment file.
pub(crate) fn enrol(
    auth: &dyn Authenticator,
    rp_id: &str,
    store: &CredentialStore,
    username: &str,
    options: EnrolOptions,
    policy: Option<&crate::attestation::Policy>,
    cancel: &CancelSignal,
) -> Result<Enrolled, GateError> {
    let before = store.load().map_err(storage)?;
    let user_id = Sha256::digest(format!("chromecard user {username}").as_bytes())[..16].to_vec();
    let request = MakeCredentialRequest {
        rp_id: rp_id.to_string(),
        challenge: random_challenge()?,
        user_id,
        user_name: username.to_string(),
        require_uv: options.require_uv,
        require_pin: options.require_pin,
        pin: options.pin,
        exclude: before
            .credentials_of(username)
            .iter()
            .map(|c| c.id.clone())
            .collect(),
    };
    let made = auth.make_credential(&request, cancel)?;
    if cancel.is_cancelled() {
        return Err(GateError::Cancelled);
    }
    let uv = options.require_uv || options.require_pin;
    let new = verify::verify_new_credential(&made.auth_data, &rp_id_hash(rp_id), uv)
        .map_err(GateError::Rejected)?;
    let attested = policy
        .map(|p| {
            crate::attestation::verify_new(p, &made, &request.challenge, &rp_id_hash(rp_id), &new)
        })
        .transpose()
        .map_err(GateError::Attestation)?;
    let cred = Credential {
        id: new.credential_id,
        public_key: new.public_key,
        require_uv: options.require_uv,
        require_pin: options.require_pin,
    };
    let enrolled = Enrolled {
        credential: credential_label(&cred.id),
        kind: cred.public_key.kind().as_str(),
        aaguid: new.aaguid.iter().map(|b| format!("{b:02x}")).collect(),
        device: made.device,
        attested: attested.clone(),
    };
    // Re-read just before writing, so an edit made while the key waited for a touch is
    // kept, and under the lock, so that one made while this writes is not lost.
    let _changing = store.lock_for_change().map_err(storage)?;
    let mut now = store.load().map_err(storage)?;
    if now.credentials_of(username).iter().any(|c| c.id == cred.id) {
        return Err(GateError::AlreadyEnrolled);
    }
    let id = cred.id.clone();
    if let Some(a) = &attested {
        // Written before the enrolment: an enrolled attested credential always has its record.
        crate::attestation::AttestationRecords::beside(store.path())
            .add(
                username,
                &id,
                crate::attestation::AttestationRecord::new(a, &cred.public_key),
            )
            .map_err(storage)?;
    }
    now.add(username, cred).map_err(storage)?;
    store.save(&now).map_err(storage)?;
    // The count at creation is the floor for the first login (WebAuthn stores it at
    // registration), so a clone made from this credential cannot start below it.
    if new.sign_count > 0 {
        store
            .check_and_commit(username, &id, new.sign_count)
            .map_err(|e| storage(format!("enrolled, but the sign count was not stored: {e}")))?;
    }
    Ok(enrolled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{FLAG_UP, FLAG_UV};
    use p256::ecdsa::signature::Signer as _;

    fn key(seed: u8) -> (p256::ecdsa::SigningKey, crate::verify::PublicKey) {
        let sk = p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap();
        let pk = crate::verify::PublicKey::Es256(*sk.verifying_key());
        (sk, pk)
    }

    fn answer(
        sk: &p256::ecdsa::SigningKey,
        req: &GetAssertionRequest,
        cred: Option<&[u8]>,
        flags: u8,
        count: u32,
    ) -> AssertionResponse {
        let mut ad = rp_id_hash(&req.rp_id).to_vec();
        ad.push(flags);
        ad.extend_from_slice(&count.to_be_bytes());
        let mut msg = ad.clone();
        msg.extend_from_slice(&client_data_hash(&req.challenge));
        let sig: p256::ecdsa::Signature = sk.sign(&msg);
        AssertionResponse {
            credential_id: cred.map(<[u8]>::to_vec),
            auth_data: ad,
            signature: sig.to_der().as_bytes().to_vec(),
            device: "test".into(),
        }
    }

    fn req(allow: &[&[u8]]) -> GetAssertionRequest {
        GetAssertionRequest {
            rp_id: "chromecard".into(),
            challenge: [7; 32],
            allow: allow.iter().map(|a| a.to_vec()).collect(),
            require_uv: false,
            require_pin: false,
            pin: None,
        }
    }

    #[test]
    fn picks_the_credential_the_key_used() {
        let (sk1, pk1) = key(1);
        let (sk2, pk2) = key(2);
        let creds = vec![
            Credential {
                id: b"one".to_vec(),
                public_key: pk1,
                require_uv: false,
                require_pin: false,
            },
            Credential {
                id: b"two".to_vec(),
                public_key: pk2,
                require_uv: true,
                require_pin: false,
            },
        ];
        let r = req(&[b"one", b"two"]);
        let (c, v) =
            verify_response(&creds, &r, &answer(&sk1, &r, Some(b"one"), FLAG_UP, 3)).unwrap();
        assert_eq!(c.id, b"one");
        assert_eq!(v.sign_count, 3);
        // Credential two asks for UV.
        assert_eq!(
            verify_response(&creds, &r, &answer(&sk2, &r, Some(b"two"), FLAG_UP, 3)).unwrap_err(),
            Rejection::UserNotVerified
        );
        assert!(verify_response(
            &creds,
            &r,
            &answer(&sk2, &r, Some(b"two"), FLAG_UP | FLAG_UV, 3)
        )
        .is_ok());
        // Signed by key 2 but claiming credential one.
        assert_eq!(
            verify_response(&creds, &r, &answer(&sk2, &r, Some(b"one"), FLAG_UP, 3)).unwrap_err(),
            Rejection::BadSignature
        );
    }

    #[test]
    fn another_users_credential_is_refused() {
        let (sk, pk) = key(1);
        let (_, bob_pk) = key(2);
        // Alice's credential, signed correctly, offered for bob's login.
        let bob = vec![Credential {
            id: b"bob".to_vec(),
            public_key: bob_pk,
            require_uv: false,
            require_pin: false,
        }];
        let r = req(&[b"bob"]);
        assert_eq!(
            verify_response(&bob, &r, &answer(&sk, &r, Some(b"alice"), FLAG_UP, 1)).unwrap_err(),
            Rejection::UnknownCredential
        );
        // An id that is the user's but was not in the allow list we sent.
        let both = vec![
            Credential {
                id: b"bob".to_vec(),
                public_key: pk.clone(),
                require_uv: false,
                require_pin: false,
            },
            Credential {
                id: b"bob2".to_vec(),
                public_key: pk,
                require_uv: false,
                require_pin: false,
            },
        ];
        assert_eq!(
            verify_response(&both, &r, &answer(&sk, &r, Some(b"bob2"), FLAG_UP, 1)).unwrap_err(),
            Rejection::UnknownCredential
        );
    }

    #[test]
    fn an_omitted_credential_id_is_the_single_allowed_one_only() {
        let (sk, pk) = key(1);
        let creds = vec![
            Credential {
                id: b"one".to_vec(),
                public_key: pk.clone(),
                require_uv: false,
                require_pin: false,
            },
            Credential {
                id: b"two".to_vec(),
                public_key: pk,
                require_uv: false,
                require_pin: false,
            },
        ];
        let one = req(&[b"one"]);
        assert!(verify_response(&creds, &one, &answer(&sk, &one, None, FLAG_UP, 1)).is_ok());
        assert!(verify_response(&creds, &one, &answer(&sk, &one, Some(b""), FLAG_UP, 1)).is_ok());
        let two = req(&[b"one", b"two"]);
        assert_eq!(
            verify_response(&creds, &two, &answer(&sk, &two, None, FLAG_UP, 1)).unwrap_err(),
            Rejection::UnknownCredential
        );
    }

    #[test]
    fn challenges_are_fresh() {
        assert_ne!(random_challenge().unwrap(), random_challenge().unwrap());
    }

    /// Several keys attached, no `--device`: the touch level refuses to guess
    /// (`multiple_keys`), but a refusal of a login must still wait for a touch.
    struct SeveralKeys;
    impl Authenticator for SeveralKeys {
        fn describe(&self) -> String {
            "two keys".into()
        }
        fn check_presence(&self, _: &CancelSignal) -> Result<crate::Presence, GateError> {
            Err(GateError::MultipleKeys { count: 2 })
        }
        fn wait_for_touch(&self, _: &CancelSignal) -> Result<crate::Presence, GateError> {
            Err(GateError::MultipleKeys { count: 2 })
        }
        fn wait_for_touch_before_refusal(
            &self,
            _: &CancelSignal,
        ) -> Result<crate::Presence, GateError> {
            Ok(crate::Presence {
                device: "the first key".into(),
            })
        }
    }

    /// A key whose touch comes only after someone removed its credential from the
    /// enrolment (`k_proxy enroll remove` while the key blinks); then it signs correctly.
    struct RemovedDuringTouch {
        sk: p256::ecdsa::SigningKey,
        id: Vec<u8>,
        store: CredentialStore,
    }
    impl Authenticator for RemovedDuringTouch {
        fn describe(&self) -> String {
            "removed during the touch".into()
        }
        fn check_presence(&self, _: &CancelSignal) -> Result<crate::Presence, GateError> {
            unreachable!("the assertion level does not ask")
        }
        fn get_assertion(
            &self,
            request: &GetAssertionRequest,
            _: &CancelSignal,
        ) -> Result<AssertionResponse, GateError> {
            let mut enrolments = self.store.load().unwrap();
            assert_eq!(enrolments.remove("alice", None), 1);
            self.store.save(&enrolments).unwrap();
            Ok(answer(&self.sk, request, Some(&self.id), FLAG_UP, 1))
        }
    }

    #[test]
    fn a_credential_removed_while_its_login_waits_for_the_touch_does_not_log_in() {
        let dir = tempfile::tempdir().unwrap();
        let store = CredentialStore::new(dir.path().join("credentials"));
        let (sk, public_key) = key(3);
        let id = b"cred-3".to_vec();
        let mut enrolments = crate::Enrolments::default();
        enrolments
            .add(
                "alice",
                Credential {
                    id: id.clone(),
                    public_key,
                    require_uv: false,
                    require_pin: false,
                },
            )
            .unwrap();
        store.save(&enrolments).unwrap();
        let key = RemovedDuringTouch {
            sk,
            id,
            store: CredentialStore::new(store.path()),
        };
        let e = login(
            &key,
            "chromecard",
            &store,
            "alice",
            false,
            None,
            &CancelSignal::new(),
        )
        .unwrap_err();
        assert!(matches!(e, GateError::NotEnrolled { .. }), "{e:?}");
    }

    #[test]
    fn a_name_nobody_enrolled_is_refused_after_the_refusal_touch_not_with_multiple_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        std::fs::write(&path, "").unwrap();
        let store = CredentialStore::new(&path);
        let e = login(
            &SeveralKeys,
            "chromecard",
            &store,
            "mallory",
            false,
            None,
            &CancelSignal::new(),
        )
        .unwrap_err();
        assert!(matches!(e, GateError::NotEnrolled { .. }), "{e:?}");
    }
}
