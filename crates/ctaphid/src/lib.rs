#![forbid(unsafe_code)]
//! CTAPHID framing, as CTAP 2.1 section 11.2.4 has it: 64-byte HID reports, a
//! message split into one initialization packet and up to 128 continuation
//! packets, each carrying the 4-byte channel id.
//!
//! This crate is the bytes and the state, not the device: [`host`] drives any
//! [`host::Port`] (k_proxy's hidapi port, or a scripted one in tests), and the
//! virtual key (`chromecard-vkey`) uses the framing on the authenticator's side.
//! Every function here reads untrusted bytes, so nothing panics on any input and
//! no allocation is sized by a length field beyond [`MAX_MESSAGE`].

pub mod host;

/// One HID report, without a report id.
pub const PACKET_SIZE: usize = 64;
/// Payload bytes in an initialization packet.
pub const INIT_DATA: usize = PACKET_SIZE - 7;
/// Payload bytes in a continuation packet.
pub const CONT_DATA: usize = PACKET_SIZE - 5;
/// The largest message: one initialization and 128 continuation packets (7609 bytes).
pub const MAX_MESSAGE: usize = INIT_DATA + 128 * CONT_DATA;
/// The broadcast channel: only CTAPHID_INIT may use it.
pub const BROADCAST_CID: u32 = 0xffff_ffff;

/// Command codes, without the initialization-packet bit (0x80).
pub mod cmd {
    /// Echo the payload.
    pub const PING: u8 = 0x01;
    /// A CTAP1/U2F APDU.
    pub const MSG: u8 = 0x03;
    /// Lock the device to one channel.
    pub const LOCK: u8 = 0x04;
    /// Allocate a channel / resynchronise one.
    pub const INIT: u8 = 0x06;
    /// Show the user where the device is.
    pub const WINK: u8 = 0x08;
    /// A CTAP2 command: one command byte and a CBOR map.
    pub const CBOR: u8 = 0x10;
    /// Cancel the pending CBOR request on this channel.
    pub const CANCEL: u8 = 0x11;
    /// The authenticator is still working (status byte).
    pub const KEEPALIVE: u8 = 0x3b;
    /// A transport error (one error byte).
    pub const ERROR: u8 = 0x3f;

    /// A name for logs.
    pub fn name(cmd: u8) -> &'static str {
        match cmd {
            PING => "PING",
            MSG => "MSG",
            LOCK => "LOCK",
            INIT => "INIT",
            WINK => "WINK",
            CBOR => "CBOR",
            CANCEL => "CANCEL",
            KEEPALIVE => "KEEPALIVE",
            ERROR => "ERROR",
            _ => "unknown",
        }
    }
}

/// CTAPHID_ERROR codes.
pub mod err {
    /// The command is not known.
    pub const INVALID_CMD: u8 = 0x01;
    /// A parameter is wrong.
    pub const INVALID_PAR: u8 = 0x02;
    /// The length field is wrong.
    pub const INVALID_LEN: u8 = 0x03;
    /// A continuation packet came out of sequence.
    pub const INVALID_SEQ: u8 = 0x04;
    /// The rest of a message did not come in time.
    pub const MSG_TIMEOUT: u8 = 0x05;
    /// The device is busy with another channel.
    pub const CHANNEL_BUSY: u8 = 0x06;
    /// The command needs a lock.
    pub const LOCK_REQUIRED: u8 = 0x0a;
    /// The channel id is not valid.
    pub const INVALID_CHANNEL: u8 = 0x0b;
    /// Anything else.
    pub const OTHER: u8 = 0x7f;
}

/// CTAPHID_KEEPALIVE status bytes.
pub mod keepalive {
    /// The authenticator is still processing.
    pub const PROCESSING: u8 = 1;
    /// The authenticator waits for a touch.
    pub const UP_NEEDED: u8 = 2;
}

/// What is wrong with a packet or a message being assembled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A report that is not 64 bytes.
    #[error("a CTAPHID packet is {PACKET_SIZE} bytes, got {0}")]
    PacketSize(usize),
    /// A message longer than CTAPHID can carry.
    #[error("a CTAPHID message is at most {MAX_MESSAGE} bytes, got {0}")]
    TooLong(usize),
    /// A continuation packet with the wrong sequence number.
    #[error("continuation packet {got} where {expected} was due")]
    InvalidSeq {
        /// The sequence number due.
        expected: u8,
        /// The one that came.
        got: u8,
    },
}

impl FrameError {
    /// The CTAPHID_ERROR code a device answers with.
    pub fn error_code(&self) -> u8 {
        match self {
            FrameError::PacketSize(_) | FrameError::TooLong(_) => err::INVALID_LEN,
            FrameError::InvalidSeq { .. } => err::INVALID_SEQ,
        }
    }
}

/// One parsed 64-byte report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// The first packet of a message.
    Init {
        /// The channel.
        cid: u32,
        /// The command, without the 0x80 bit.
        cmd: u8,
        /// The whole message's length (BCNT).
        len: u16,
        /// The packet's 57 payload bytes (only the first `len` count).
        data: &'a [u8],
    },
    /// A following packet.
    Cont {
        /// The channel.
        cid: u32,
        /// 0..=127.
        seq: u8,
        /// The packet's 59 payload bytes.
        data: &'a [u8],
    },
}

impl<'a> Packet<'a> {
    /// Parses one report. Only its size can be wrong at this level.
    pub fn parse(raw: &'a [u8]) -> Result<Self, FrameError> {
        if raw.len() != PACKET_SIZE {
            return Err(FrameError::PacketSize(raw.len()));
        }
        let cid = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
        if raw[4] & 0x80 != 0 {
            Ok(Packet::Init {
                cid,
                cmd: raw[4] & 0x7f,
                len: u16::from_be_bytes([raw[5], raw[6]]),
                data: &raw[7..],
            })
        } else {
            Ok(Packet::Cont {
                cid,
                seq: raw[4],
                data: &raw[5..],
            })
        }
    }

    /// The channel of either kind of packet.
    pub fn cid(&self) -> u32 {
        match self {
            Packet::Init { cid, .. } | Packet::Cont { cid, .. } => *cid,
        }
    }
}

/// Splits a message into 64-byte reports (zero-padded).
pub fn fragment(cid: u32, cmd: u8, payload: &[u8]) -> Result<Vec<[u8; PACKET_SIZE]>, FrameError> {
    if payload.len() > MAX_MESSAGE {
        return Err(FrameError::TooLong(payload.len()));
    }
    let mut out =
        Vec::with_capacity(1 + payload.len().saturating_sub(INIT_DATA).div_ceil(CONT_DATA));
    let mut first = [0u8; PACKET_SIZE];
    first[..4].copy_from_slice(&cid.to_be_bytes());
    first[4] = cmd | 0x80;
    // Fits: MAX_MESSAGE < 65536.
    first[5..7].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    let head = payload.len().min(INIT_DATA);
    first[7..7 + head].copy_from_slice(&payload[..head]);
    out.push(first);
    for (seq, chunk) in payload[head..].chunks(CONT_DATA).enumerate() {
        let mut p = [0u8; PACKET_SIZE];
        p[..4].copy_from_slice(&cid.to_be_bytes());
        // At most 128 chunks: MAX_MESSAGE was checked.
        p[4] = seq as u8;
        p[5..5 + chunk.len()].copy_from_slice(chunk);
        out.push(p);
    }
    Ok(out)
}

/// A whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The channel.
    pub cid: u32,
    /// The command, without the 0x80 bit.
    pub cmd: u8,
    /// The payload, exactly BCNT bytes.
    pub payload: Vec<u8>,
}

/// A message being put together from its packets.
#[derive(Debug, Clone)]
pub struct Assembly {
    cid: u32,
    cmd: u8,
    total: usize,
    buf: Vec<u8>,
    next_seq: u8,
}

impl Assembly {
    /// Starts from an initialization packet's fields.
    pub fn begin(cid: u32, cmd: u8, len: u16, data: &[u8]) -> Result<Self, FrameError> {
        let total = usize::from(len);
        if total > MAX_MESSAGE {
            return Err(FrameError::TooLong(total));
        }
        let mut buf = Vec::with_capacity(total);
        buf.extend_from_slice(&data[..total.min(data.len())]);
        Ok(Self {
            cid,
            cmd,
            total,
            buf,
            next_seq: 0,
        })
    }

    /// The channel this message comes on.
    pub fn cid(&self) -> u32 {
        self.cid
    }

    /// Adds a continuation packet; a sequence number out of order is an error.
    pub fn push(&mut self, seq: u8, data: &[u8]) -> Result<(), FrameError> {
        if seq != self.next_seq || self.is_complete() {
            return Err(FrameError::InvalidSeq {
                expected: self.next_seq,
                got: seq,
            });
        }
        self.next_seq = self.next_seq.wrapping_add(1);
        let want = self.total - self.buf.len();
        self.buf.extend_from_slice(&data[..want.min(data.len())]);
        Ok(())
    }

    /// All BCNT bytes are here.
    pub fn is_complete(&self) -> bool {
        self.buf.len() >= self.total
    }

    /// The message (call when [`Assembly::is_complete`]).
    pub fn finish(self) -> Message {
        Message {
            cid: self.cid,
            cmd: self.cmd,
            payload: self.buf,
        }
    }
}

/// Builds the payload of a CTAPHID_INIT answer (17 bytes).
pub fn init_response(
    nonce: &[u8; 8],
    cid: u32,
    version: (u8, u8, u8),
    capabilities: u8,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(17);
    out.extend_from_slice(nonce);
    out.extend_from_slice(&cid.to_be_bytes());
    out.push(2); // CTAPHID protocol version
    out.extend_from_slice(&[version.0, version.1, version.2]);
    out.push(capabilities);
    out
}

/// Capability bits of the CTAPHID_INIT answer.
pub mod capability {
    /// Implements WINK.
    pub const WINK: u8 = 0x01;
    /// Implements CBOR (CTAP2).
    pub const CBOR: u8 = 0x04;
    /// Does NOT implement MSG (CTAP1).
    pub const NMSG: u8 = 0x08;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reassemble(packets: &[[u8; PACKET_SIZE]]) -> Result<Message, FrameError> {
        let mut it = packets.iter();
        let Packet::Init {
            cid,
            cmd,
            len,
            data,
        } = Packet::parse(it.next().unwrap())?
        else {
            panic!("first packet is not an init packet");
        };
        let mut a = Assembly::begin(cid, cmd, len, data)?;
        for p in it {
            let Packet::Cont { seq, data, .. } = Packet::parse(p)? else {
                panic!("init packet in the middle");
            };
            a.push(seq, data)?;
        }
        assert!(a.is_complete());
        Ok(a.finish())
    }

    #[test]
    fn sizes_are_the_specifications() {
        assert_eq!(INIT_DATA, 57);
        assert_eq!(CONT_DATA, 59);
        assert_eq!(MAX_MESSAGE, 7609);
    }

    #[test]
    fn a_short_message_is_one_packet() {
        let p = fragment(0x0102_0304, cmd::PING, b"hi").unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(&p[0][..9], &[1, 2, 3, 4, 0x81, 0, 2, b'h', b'i']);
        assert!(p[0][9..].iter().all(|&b| b == 0));
    }

    #[test]
    fn the_largest_message_uses_all_128_sequence_numbers() {
        let payload: Vec<u8> = (0..MAX_MESSAGE).map(|i| i as u8).collect();
        let p = fragment(7, cmd::CBOR, &payload).unwrap();
        assert_eq!(p.len(), 129);
        assert_eq!(p[128][4], 127);
        assert_eq!(reassemble(&p).unwrap().payload, payload);
        assert_eq!(
            fragment(7, cmd::CBOR, &vec![0; MAX_MESSAGE + 1]),
            Err(FrameError::TooLong(MAX_MESSAGE + 1))
        );
    }

    #[test]
    fn a_length_over_the_maximum_is_refused_at_the_first_packet() {
        let e = Assembly::begin(1, cmd::CBOR, u16::MAX, &[0; INIT_DATA]).unwrap_err();
        assert_eq!(e.error_code(), err::INVALID_LEN);
    }

    #[test]
    fn out_of_order_and_surplus_continuations_are_sequence_errors() {
        let p = fragment(9, cmd::MSG, &[5; 200]).unwrap();
        let Packet::Init {
            cid,
            cmd,
            len,
            data,
        } = Packet::parse(&p[0]).unwrap()
        else {
            unreachable!()
        };
        let mut a = Assembly::begin(cid, cmd, len, data).unwrap();
        assert_eq!(
            a.push(1, &[0; CONT_DATA]),
            Err(FrameError::InvalidSeq {
                expected: 0,
                got: 1
            })
        );
        for seq in 0..3 {
            a.push(seq, &[5; CONT_DATA]).unwrap();
        }
        assert!(a.is_complete());
        assert_eq!(
            a.push(3, &[0; CONT_DATA]).unwrap_err().error_code(),
            err::INVALID_SEQ
        );
    }

    #[test]
    fn wrong_report_sizes_are_length_errors() {
        for n in [0, 63, 65] {
            assert_eq!(Packet::parse(&vec![0; n]), Err(FrameError::PacketSize(n)));
        }
    }

    #[test]
    fn init_response_layout() {
        let r = init_response(&[1; 8], 0xaabb_ccdd, (1, 2, 3), capability::CBOR);
        assert_eq!(r.len(), 17);
        assert_eq!(&r[8..12], &[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(&r[12..], &[2, 1, 2, 3, 4]);
    }

    proptest! {
        #[test]
        fn fragment_then_reassemble_is_identity(cid: u32, cmd in 0u8..0x80, payload in proptest::collection::vec(any::<u8>(), 0..1200)) {
            let p = fragment(cid, cmd, &payload).unwrap();
            let m = reassemble(&p).unwrap();
            prop_assert_eq!(m, Message { cid, cmd, payload });
        }

        #[test]
        fn any_report_parses_or_is_refused_without_panic(raw in proptest::collection::vec(any::<u8>(), 0..70), more in proptest::collection::vec(any::<u8>(), 0..70)) {
            if let Ok(Packet::Init { cid, cmd, len, data }) = Packet::parse(&raw) {
                if let Ok(mut a) = Assembly::begin(cid, cmd, len, data) {
                    if let Ok(Packet::Cont { seq, data, .. }) = Packet::parse(&more) {
                        let _ = a.push(seq, data);
                    }
                    prop_assert!(a.buf.len() <= a.total);
                }
            }
        }
    }
}
