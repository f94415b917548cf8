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
                if v < 24 {
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

    /// Skips one complete item of any (accepted) kind.
    pub fn skip(&mut self, depth: usize) -> Result<(), Malformed> {
        if depth > MAX_DEPTH {
            return Err(Malformed);
        }
        let h = self.head()?;
        match h.major {
            0 | 1 => Ok(()),
            2 | 3 => self.take(h.arg).map(|_| ()),
            4 => {
                for _ in 0..h.arg {
                    self.skip(depth + 1)?;
                }
                Ok(())
            }
            5 => {
                for _ in 0..h.arg {
                    self.skip(depth + 1)?;
                    self.skip(depth + 1)?;
                }
                Ok(())
            }
            // Tags: skip the tagged item.
            6 => self.skip(depth + 1),
            // Simple values (false, true, null, undefined, 0..=23, and the
            // one-byte form 32..=255).
            7 => Ok(()),
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
