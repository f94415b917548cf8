//! Allow lists as long as the key takes them (CTAP 2.1 section 6.4: getInfo's
//! maxCredentialCountInList and maxCredentialIdLength). A key answers a longer list
//! with CTAP2_ERR_LIMIT_EXCEEDED (or worse), and a user may have more credentials
//! than that. So, as browsers and libfido2 do, the list goes to the key in chunks it
//! takes, each asked without a touch (`up: false`) until one holds a credential; the
//! touch is then asked for that credential alone. Ids longer than the key takes
//! cannot be its own and are left out.

use crate::ctap2::{self, Info};
use crate::pin_client::Transact;
use crate::GateError;

/// Credential ids, in the order they go to the key.
pub(crate) type Ids = Vec<Vec<u8>>;

/// What one allow list may hold on a key (`None`: no limit said).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ListLimits {
    /// maxCredentialCountInList.
    pub count: Option<usize>,
    /// maxCredentialIdLength.
    pub id_len: Option<usize>,
}

impl ListLimits {
    /// The limits a getInfo answer gives.
    pub fn of(info: &Info) -> Self {
        Self {
            count: info.max_creds_in_list,
            id_len: info.max_cred_id_len,
        }
    }

    /// Whether `allow` goes to the key as it is, in one request.
    pub fn fits(&self, allow: &[Vec<u8>]) -> bool {
        self.count.is_none_or(|n| allow.len() <= n)
            && self
                .id_len
                .is_none_or(|n| allow.iter().all(|id| id.len() <= n))
    }

    /// `allow` in chunks the key takes: ids it cannot take left out, in their order.
    /// Empty when no id is left (never an empty chunk: an empty allow list would ask
    /// for the key's resident credentials instead).
    pub fn chunks(&self, allow: &[Vec<u8>]) -> Vec<Ids> {
        let kept: Ids = allow
            .iter()
            .filter(|id| self.id_len.is_none_or(|n| id.len() <= n))
            .cloned()
            .collect();
        let size = self.count.unwrap_or(kept.len()).max(1);
        kept.chunks(size).map(<[Vec<u8>]>::to_vec).collect()
    }
}

/// Asks the key, chunk by chunk and without a touch, which credential it holds: the
/// list to ask the touch with (the credential it named, or the whole chunk when it
/// named none or one not in the chunk; the answer to the touched request is verified
/// either way), or `None` when no chunk holds one. `send` carries one CTAP2 request to
/// the key (none waits for a touch) and returns its answer; a refusal other than "no
/// credentials" ends the search.
pub(crate) fn find_held(
    rp_id: &str,
    client_data_hash: &[u8; 32],
    chunks: &[Ids],
    label: &str,
    send: &mut Transact<'_>,
) -> Result<Option<Ids>, GateError> {
    for chunk in chunks {
        let probe = ctap2::get_assertion(rp_id, client_data_hash, chunk, false, false, None);
        match send(&probe, "getAssertion probe", false)
            .and_then(|a| ctap2::parse_get_assertion(&a, label))
        {
            Ok(a) => {
                let named = a.credential_id.filter(|id| chunk.contains(id));
                return Ok(Some(named.map_or_else(|| chunk.clone(), |id| vec![id])));
            }
            Err(GateError::NoCredential) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctap2::status;
    use crate::{SoftAuthenticator, SoftBehavior};
    use ciborium::Value;

    const RP: &str = "chromecard";

    fn limits(count: Option<usize>, id_len: Option<usize>) -> ListLimits {
        ListLimits { count, id_len }
    }

    #[test]
    fn chunks_keep_to_the_count_and_leave_out_ids_too_long() {
        let ids: Vec<Vec<u8>> = (1..=5u8).map(|n| vec![n; usize::from(n)]).collect();
        let none = limits(None, None);
        assert!(none.fits(&ids));
        assert_eq!(none.chunks(&ids), vec![ids.clone()]);
        let two = limits(Some(2), None);
        assert!(!two.fits(&ids));
        assert_eq!(
            two.chunks(&ids),
            vec![ids[0..2].to_vec(), ids[2..4].to_vec(), ids[4..].to_vec()]
        );
        let short = limits(Some(8), Some(3));
        assert!(!short.fits(&ids));
        assert_eq!(short.chunks(&ids), vec![ids[0..3].to_vec()]);
        assert!(limits(Some(8), Some(1)).chunks(&ids[1..]).is_empty());
        assert!(limits(Some(5), Some(5)).fits(&ids));
    }

    /// A key over the software authenticator's credentials that takes at most `max`
    /// credentials in a list, as a real key's CTAP2 getAssertion would: the answer
    /// bytes, and every list it was sent.
    struct LimitedKey {
        soft: SoftAuthenticator,
        max: usize,
        omit_id: bool,
        lists: Vec<(Vec<Vec<u8>>, bool)>,
    }

    impl LimitedKey {
        fn new(max: usize) -> Self {
            Self {
                soft: SoftAuthenticator::new(SoftBehavior::Present),
                max,
                omit_id: false,
                lists: Vec::new(),
            }
        }

        fn enrol(&self) -> Vec<u8> {
            let made = self
                .soft
                .make_credential_for_hash(RP, &[1; 32], &[], true, false)
                .unwrap();
            crate::verify::verify_new_credential(
                &made.auth_data,
                &crate::verify::rp_id_hash(RP),
                false,
            )
            .unwrap()
            .credential_id
        }

        fn answer(&mut self, request: &[u8]) -> Vec<u8> {
            assert_eq!(request[0], ctap2::command::GET_ASSERTION);
            let Ok(Value::Map(m)) = ciborium::de::from_reader::<Value, _>(&request[1..]) else {
                panic!("not a CBOR map")
            };
            let get = |k: i64| ctap2::answer_field(&m, k).cloned();
            let Some(Value::Bytes(cdh)) = get(2) else {
                panic!()
            };
            let Some(Value::Array(descriptors)) = get(3) else {
                panic!()
            };
            let allow: Vec<Vec<u8>> = descriptors
                .iter()
                .map(|d| match d {
                    Value::Map(d) => match &d[0] {
                        (_, Value::Bytes(id)) => id.clone(),
                        _ => panic!(),
                    },
                    _ => panic!(),
                })
                .collect();
            let up = get(5).is_none();
            self.lists.push((allow.clone(), up));
            if allow.len() > self.max {
                return vec![status::LIMIT_EXCEEDED];
            }
            let cdh: [u8; 32] = cdh.try_into().unwrap();
            match self
                .soft
                .get_assertion_for_hash(RP, &cdh, &allow, up, false)
            {
                Ok(a) => {
                    let mut fields = Vec::new();
                    if !self.omit_id {
                        fields.push((
                            Value::Integer(1.into()),
                            Value::Map(vec![(
                                Value::Text("id".into()),
                                Value::Bytes(a.credential_id.unwrap()),
                            )]),
                        ));
                    }
                    fields.push((Value::Integer(2.into()), Value::Bytes(a.auth_data)));
                    fields.push((Value::Integer(3.into()), Value::Bytes(a.signature)));
                    let mut out = vec![status::OK];
                    ciborium::ser::into_writer(&Value::Map(fields), &mut out).unwrap();
                    out
                }
                Err(GateError::NoCredential) => vec![status::NO_CREDENTIALS],
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Ids of another key: well-formed, not this key's.
    fn others(n: usize) -> Vec<Vec<u8>> {
        let other = LimitedKey::new(usize::MAX);
        (0..n).map(|_| other.enrol()).collect()
    }

    fn find(key: &mut LimitedKey, allow: &[Vec<u8>]) -> Result<Option<Ids>, GateError> {
        let chunks = limits(Some(key.max), None).chunks(allow);
        find_held(RP, &[3; 32], &chunks, "key", &mut |r, _, touch| {
            assert!(!touch);
            Ok(key.answer(r))
        })
    }

    #[test]
    fn the_whole_list_is_refused_by_a_key_that_takes_one_credential() {
        let mut key = LimitedKey::new(1);
        let mut allow = others(2);
        allow.push(key.enrol());
        let whole = ctap2::get_assertion(RP, &[3; 32], &allow, true, false, None);
        assert_eq!(key.answer(&whole), vec![status::LIMIT_EXCEEDED]);
    }

    #[test]
    fn the_chunk_holding_the_credential_is_found_without_a_touch() {
        let mut key = LimitedKey::new(1);
        let mine = key.enrol();
        let mut allow = others(2);
        allow.push(mine.clone());
        assert_eq!(find(&mut key, &allow).unwrap(), Some(vec![mine.clone()]));
        // One probe per chunk up to the one that holds it, none with a touch.
        let sent: Vec<_> = key.lists.iter().map(|(l, up)| (l.len(), *up)).collect();
        assert_eq!(sent, vec![(1, false); 3]);

        // Chunks of two: the credential named in the second chunk is what the touch asks for.
        let mut key = LimitedKey::new(2);
        let mine = key.enrol();
        let mut allow = others(3);
        allow.insert(2, mine.clone());
        assert_eq!(find(&mut key, &allow).unwrap(), Some(vec![mine]));
        assert_eq!(key.lists.len(), 2);
        assert!(key.lists.iter().all(|(l, up)| l.len() <= 2 && !up));
    }

    #[test]
    fn a_key_that_names_no_credential_is_asked_with_the_chunk() {
        let mut key = LimitedKey::new(2);
        key.omit_id = true;
        let mine = key.enrol();
        let allow = vec![others(1).remove(0), mine];
        assert_eq!(find(&mut key, &allow).unwrap(), Some(allow.clone()));
    }

    #[test]
    fn no_chunk_holding_a_credential_is_none_and_other_refusals_end_the_search() {
        let mut key = LimitedKey::new(1);
        assert_eq!(find(&mut key, &others(3)).unwrap(), None);
        assert_eq!(key.lists.len(), 3);
        // A key that refuses even the chunks: its refusal, not a search on.
        let mut key = LimitedKey::new(0);
        let e = find(&mut key, &others(3)).unwrap_err();
        assert_eq!(e.code(), "device_error");
        assert!(e.to_string().contains("CTAP2_ERR_LIMIT_EXCEEDED"), "{e}");
        assert_eq!(key.lists.len(), 1);
    }
}
