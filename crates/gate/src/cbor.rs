//! A minimal, strict CBOR reader: just enough for COSE public keys and the
//! extension map in authenticator data.
//!
//! Everything here reads untrusted bytes from a USB device (or a file), so:
//! no panics, no recursion beyond [`MAX_DEPTH`], no allocation driven by a
//! length field (items are borrowed slices of the input), only the shortest
//! ("CTAP2 canonical") encoding of each head is accepted, and indefinite
//! lengths, reserved additional-information values and break codes are
//! refused.

/// Deepest nesting [`skip`] follows. COSE keys are flat; extension outputs are
/// at most a map of maps.
pub(crate) const MAX_DEPTH: usize = 8;

/// The bytes are not the CBOR we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed;

/// One item head: major type and its argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub major: u8,
    pub arg: u64,
}

/// A cursor over a byte slice.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    fn byte(&mut self) -> Result<u8, Malformed> {
        let b = *self.buf.get(self.pos).ok_or(Malformed)?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], Malformed> {
        let n = usize::try_from(n).map_err(|_| Malformed)?;
        let end = self.pos.checked_add(n).ok_or(Malformed)?;
        let s = self.buf.get(self.pos..end).ok_or(Malformed)?;
        self.pos = end;
        Ok(s)
    }

    /// Reads one head, refusing non-shortest encodings and indefinite lengths.
    pub fn head(&mut self) -> Result<Head, Malformed> {
        let initial = self.byte()?;
        let major = initial >> 5;
        let info = initial & 0x1f;
        let arg = match info {
            0..=23 => u64::from(info),
            24 => {
                let v = u64::from(self.byte()?);
                // Shortest form; for simple values (major 7) the one-byte form is
                // ill-formed below 32 (RFC 8949 §3.3: `0xf8 0x18` is not well formed).
                if v < 24 || (major == 7 && v < 32) {
                    return Err(Malformed);
                }
                v
            }
            25 => {
                let b = self.take(2)?;
                let v = u64::from(u16::from_be_bytes([b[0], b[1]]));
                if v <= 0xff {
                    return Err(Malformed);
                }
                v
            }
            26 => {
                let b = self.take(4)?;
                let v = u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                if v <= 0xffff {
                    return Err(Malformed);
                }
                v
            }
            27 => {
                let b = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                let v = u64::from_be_bytes(a);
                if v <= 0xffff_ffff {
                    return Err(Malformed);
                }
                v
            }
            // 28..=30 reserved, 31 indefinite length / break.
            _ => return Err(Malformed),
        };
        // Major 7 with a 1/2/4/8-byte argument is a float; we have no use for
        // floats and refuse them rather than reason about NaN encodings.
        if major == 7 && info >= 25 {
            return Err(Malformed);
        }
        Ok(Head { major, arg })
    }

    /// An integer (major 0 or 1) as i128 (wide enough for every CBOR integer).
    pub fn int(&mut self) -> Result<i128, Malformed> {
        let h = self.head()?;
        match h.major {
            0 => Ok(i128::from(h.arg)),
            1 => Ok(-1 - i128::from(h.arg)),
            _ => Err(Malformed),
        }
    }

    /// A byte string (major 2).
    pub fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let h = self.head()?;
        if h.major != 2 {
            return Err(Malformed);
        }
        self.take(h.arg)
    }

    /// Skips one complete, well-formed item: shortest heads, definite lengths, text
    /// strings that are UTF-8, maps without duplicate keys (compared by their encoding,
    /// which is unique once heads are shortest), no tags and, of the simple values,
    /// only false, true and null. Nesting beyond [`MAX_DEPTH`] is refused.
    pub fn skip(&mut self, depth: usize) -> Result<(), Malformed> {
        if depth > MAX_DEPTH {
            return Err(Malformed);
        }
        let h = self.head()?;
        match h.major {
            0 | 1 => Ok(()),
            2 => self.take(h.arg).map(|_| ()),
            3 => {
                let text = self.take(h.arg)?;
                std::str::from_utf8(text).map(|_| ()).map_err(|_| Malformed)
            }
            4 => {
                for _ in 0..h.arg {
                    self.skip(depth + 1)?;
                }
                Ok(())
            }
            5 => {
                // Keys seen so far: bounded by the entries actually read (each at
                // least one byte of input), never by the length field.
                let mut keys = std::collections::BTreeSet::new();
                for _ in 0..h.arg {
                    let start = self.pos;
                    self.skip(depth + 1)?;
                    let key = self.buf.get(start..self.pos).ok_or(Malformed)?;
                    if !keys.insert(key) {
                        return Err(Malformed);
                    }
                    self.skip(depth + 1)?;
                }
                Ok(())
            }
            // Tags: nothing in a COSE key or a CTAP extension output is tagged.
            6 => Err(Malformed),
            // false, true, null. Not undefined, the unassigned simple values or the
            // reserved ones.
            7 if matches!(h.arg, 20..=22) => Ok(()),
            _ => Err(Malformed),
        }
    }
}

/// True if `buf` is exactly one CBOR map (of anything we accept), with no trailing bytes.
pub(crate) fn is_single_map(buf: &[u8]) -> bool {
    if buf.first().map(|b| b >> 5) != Some(5) {
        return false;
    }
    let mut r = Reader::new(buf);
    r.skip(0).is_ok() && r.position() == buf.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_and_ints() {
        assert_eq!(Reader::new(&[0x17]).int(), Ok(23));
        assert_eq!(Reader::new(&[0x18, 0x18]).int(), Ok(24));
        assert_eq!(Reader::new(&[0x26]).int(), Ok(-7));
        assert_eq!(Reader::new(&[0x20]).int(), Ok(-1));
        assert_eq!(Reader::new(&[0x19, 0x01, 0x00]).int(), Ok(256));
        assert_eq!(
            Reader::new(&[0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).int(),
            Ok(-1 - i128::from(u64::MAX))
        );
    }

    #[test]
    fn non_shortest_and_indefinite_are_refused() {
        assert_eq!(Reader::new(&[0x18, 0x17]).int(), Err(Malformed));
        assert_eq!(Reader::new(&[0x19, 0x00, 0xff]).int(), Err(Malformed));
        assert_eq!(Reader::new(&[0x1a, 0, 0, 0xff, 0xff]).int(), Err(Malformed));
        assert_eq!(
            Reader::new(&[0x1b, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]).int(),
            Err(Malformed)
        );
        assert_eq!(Reader::new(&[0x5f]).bytes(), Err(Malformed));
        assert_eq!(Reader::new(&[0x1c]).int(), Err(Malformed));
        assert_eq!(Reader::new(&[0xf9, 0, 0]).skip(0), Err(Malformed));
    }

    #[test]
    fn lengths_beyond_the_input_are_refused_without_allocating() {
        // A byte string that claims 2^63 bytes.
        let huge = [0x5b, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(Reader::new(&huge).bytes(), Err(Malformed));
        // A map that claims 2^32 entries.
        let map = [0xbb, 0, 0, 0, 1, 0, 0, 0, 0];
        assert_eq!(Reader::new(&map).skip(0), Err(Malformed));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep = vec![0x81u8; 64];
        assert_eq!(Reader::new(&deep).skip(0), Err(Malformed));
    }

    #[test]
    fn extension_maps_must_be_well_formed() {
        // {"a": 1} is fine; each variant below is one rule broken.
        assert!(is_single_map(&[0xa1, 0x61, b'a', 0x01]));
        assert!(is_single_map(&[0xa2, 0x61, b'a', 0xf5, 0x61, b'b', 0xf6]));
        let bad: &[&[u8]] = &[
            // {"a": simple(24)} in the ill-formed two-byte form, and simple(31).
            &[0xa1, 0x61, b'a', 0xf8, 0x18],
            &[0xa1, 0x61, b'a', 0xf8, 0x1f],
            // {"a": simple(32)}, undefined, and an unassigned simple value: unexpected.
            &[0xa1, 0x61, b'a', 0xf8, 0x20],
            &[0xa1, 0x61, b'a', 0xf7],
            &[0xa1, 0x61, b'a', 0xe0],
            // Duplicate keys, at the top and inside a nested map.
            &[0xa2, 0x61, b'a', 0x01, 0x61, b'a', 0x02],
            &[0xa1, 0x61, b'm', 0xa2, 0x01, 0x00, 0x01, 0x00],
            // Text that is not UTF-8, as a key and as a value.
            &[0xa1, 0x61, 0xff, 0x01],
            &[0xa1, 0x61, b'a', 0x62, 0xc3, 0x28],
            // Tags: an epoch date, a bignum.
            &[0xa1, 0x61, b'a', 0xc1, 0x01],
            &[0xa1, 0x61, b'a', 0xc2, 0x41, 0x01],
        ];
        for b in bad {
            assert!(!is_single_map(b), "{b:02x?}");
        }
        // The same key under a different major type is a different key.
        assert!(is_single_map(&[0xa2, 0x01, 0x00, 0x41, 0x01, 0x00]));
    }

    #[test]
    fn single_map() {
        // {"credProtect": 2}
        let mut m = vec![0xa1, 0x6b];
        m.extend_from_slice(b"credProtect");
        m.push(0x02);
        assert!(is_single_map(&m));
        m.push(0x00);
        assert!(!is_single_map(&m));
        assert!(!is_single_map(&[]));
        assert!(!is_single_map(&[0x80]));
    }
}
