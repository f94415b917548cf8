//! Allow lists as long as the key takes them (CTAP 2.1 section 6.4: getInfo's
//! maxCredentialCountInList, maxCredentialIdLength, and maxMsgSize for the whole request,
//! 1024 bytes when the key does not say). A key answers a longer list with
//! CTAP2_ERR_LIMIT_EXCEEDED or a length error (or worse), and a user may have more
//! credentials than that. So, as browsers and libfido2 do, the list goes to the key in chunks it
//! takes, each asked without a touch (`up: false`) until one holds a credential; the
//! touch is then asked for that credential alone. Ids longer than the key takes
//! cannot be its own and are left out.

use chromecard_ctaphid::MAX_MESSAGE;

use crate::ctap2::{self, Info};
use crate::pin_client::Transact;
use crate::GateError;

/// Credential ids, in the order they go to the key.
pub(crate) type Ids = Vec<Vec<u8>>;

/// maxMsgSize when a key does not state it (CTAP 2.1 section 6.4).
const DEFAULT_MAX_MSG_SIZE: usize = 1024;

/// What one allow list may hold on a key (`None`: no limit said).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ListLimits {
    /// maxCredentialCountInList.
    pub count: Option<usize>,
    /// maxCredentialIdLength.
    pub id_len: Option<usize>,
    /// maxMsgSize (or its default), within what one CTAPHID message carries.
    pub msg_size: usize,
}

impl ListLimits {
    /// The limits a getInfo answer gives.
    pub fn of(info: &Info) -> Self {
        Self {
            count: info.max_creds_in_list,
            id_len: info.max_cred_id_len,
            msg_size: info
                .max_msg_size
                .unwrap_or(DEFAULT_MAX_MSG_SIZE)
                .min(MAX_MESSAGE),
        }
    }

    /// Whether `allow` goes to the key as it is, in one request; `request_len` is the
    /// length of that request with a given list.
    pub fn fits(&self, allow: &[Vec<u8>], request_len: impl Fn(&[Vec<u8>]) -> usize) -> bool {
        self.count.is_none_or(|n| allow.len() <= n)
            && self
                .id_len
                .is_none_or(|n| allow.iter().all(|id| id.len() <= n))
            && request_len(allow) <= self.msg_size
    }

    /// `allow` in chunks the key takes, each request (as `request_len` measures it) no
    /// longer than maxMsgSize: ids it cannot take left out, in their order. Empty when
    /// no id is left (never an empty chunk: an empty allow list would ask for the key's
    /// resident credentials instead).
    pub fn chunks(&self, allow: &[Vec<u8>], request_len: impl Fn(&[Vec<u8>]) -> usize) -> Vec<Ids> {
        let count = self.count.unwrap_or(usize::MAX).max(1);
        let mut chunks: Vec<Ids> = Vec::new();
        let mut current: Ids = Vec::new();
        for id in allow {
            if self.id_len.is_some_and(|n| id.len() > n)
                || request_len(std::slice::from_ref(id)) > self.msg_size
            {
                continue; // no request with it fits: it cannot be this key's
            }
            current.push(id.clone());
            if current.len() > count || request_len(&current) > self.msg_size {
                let next = current.pop().into_iter().collect();
                chunks.push(std::mem::replace(&mut current, next));
            }
        }
        if !current.is_empty() {
            chunks.push(current);
        }
        chunks
    }
}

/// How long a getAssertion for `rp_id` with a given allow list is, at its longest (the
/// touched request, with a PIN/UV parameter): what must fit in the key's maxMsgSize.
pub(crate) fn assertion_len(rp_id: &str) -> impl Fn(&[Vec<u8>]) -> usize + '_ {
    move |ids| ctap2::get_assertion(rp_id, &[0; 32], ids, true, true, Some((&[0; 32], 2))).len()
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
        ListLimits {
            count,
            id_len,
            msg_size: MAX_MESSAGE,
        }
    }

    /// [`assertion_len`] for this module's relying party.
    fn request_len(ids: &[Vec<u8>]) -> usize {
        assertion_len(RP)(ids)
    }

    #[test]
    fn chunks_keep_to_the_count_and_leave_out_ids_too_long() {
        let ids: Vec<Vec<u8>> = (1..=5u8).map(|n| vec![n; usize::from(n)]).collect();
        let none = limits(None, None);
        assert!(none.fits(&ids, request_len));
        assert_eq!(none.chunks(&ids, request_len), vec![ids.clone()]);
        let two = limits(Some(2), None);
        assert!(!two.fits(&ids, request_len));
        assert_eq!(
            two.chunks(&ids, request_len),
            vec![ids[0..2].to_vec(), ids[2..4].to_vec(), ids[4..].to_vec()]
        );
        let short = limits(Some(8), Some(3));
        assert!(!short.fits(&ids, request_len));
        assert_eq!(short.chunks(&ids, request_len), vec![ids[0..3].to_vec()]);
        assert!(limits(Some(8), Some(1))
            .chunks(&ids[1..], request_len)
            .is_empty());
        assert!(limits(Some(5), Some(5)).fits(&ids, request_len));
    }

    /// A key that states no count (CTAP 2.0 keys often do not) still takes only so many
    /// bytes: 24 ids of 300 bytes make a request of about 7.7 KB, past even what one
    /// CTAPHID message carries, and far past the 1024 a key that says nothing promises.
    #[test]
    fn chunks_keep_each_request_within_the_message_size() {
        let ids: Vec<Vec<u8>> = (0..24u8).map(|n| vec![n; 300]).collect();
        let silent = ListLimits::of(&Info {
            versions: vec!["FIDO_2_0".into()],
            ..Info::default()
        });
        assert_eq!(silent.msg_size, 1024);
        assert!(request_len(&ids) > MAX_MESSAGE);
        assert!(!silent.fits(&ids, request_len));
        let chunks = silent.chunks(&ids, request_len);
        // Each id takes 323 bytes in the request (its descriptor map): two and the
        // request's other fields fit in 1024, three do not.
        assert_eq!(chunks.len(), 12);
        assert!(chunks.iter().all(|c| c.len() == 2));
        assert!(chunks.iter().all(|c| request_len(c) <= 1024));
        assert_eq!(chunks.concat(), ids, "every id, in order");
        // A key that states a size is taken at its word, up to what CTAPHID carries.
        let roomy = ListLimits::of(&Info {
            max_msg_size: Some(1 << 20),
            ..Info::default()
        });
        assert_eq!(roomy.msg_size, MAX_MESSAGE);
        assert_eq!(roomy.chunks(&ids, request_len).len(), 2);
        // An id that no request can carry is left out, as one longer than the key takes.
        let huge = vec![vec![9; 2000], vec![1; 16]];
        assert_eq!(silent.chunks(&huge, request_len), vec![vec![vec![1; 16]]]);
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
        let chunks = limits(Some(key.max), None).chunks(allow, request_len);
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
