//! The authenticator's side of CTAPHID (CTAP 2.1 section 11.2): channels, one
//! transaction at a time, message assembly with a timeout, CANCEL, and the
//! transport errors. It decides what to send; the caller moves the bytes.
//!
//! CBOR and MSG requests are handed to a worker (they may wait for a touch);
//! everything else is answered here at once, so a CANCEL or an INIT still gets
//! through while the worker waits.

use std::time::{Duration, Instant};

use chromecard_ctaphid::{
    capability, cmd, err, fragment, init_response, Assembly, Message, Packet, BROADCAST_CID,
    PACKET_SIZE,
};
use chromecard_gate::{CancelSignal, SOFT_MAX_MSG_SIZE};

/// How the transport behaves; the defaults are a CTAP 2.1 key's.
#[derive(Debug, Clone)]
pub struct TransportMode {
    /// CTAPHID_CANCEL stops the pending request (Qubes' CTAP proxy ignores it).
    pub honour_cancel: bool,
    /// The command byte of the answer to a CBOR request: CBOR, or MSG as Qubes'
    /// CTAP proxy 2.0.7 frames it.
    pub cbor_answer_cmd: u8,
    /// How long the next continuation packet of a message may take to arrive (the
    /// timer restarts with every packet, as real keys do: a long message over a
    /// slow host is not cut off while its packets keep coming).
    pub message_timeout: Duration,
}

impl Default for TransportMode {
    fn default() -> Self {
        Self {
            honour_cancel: true,
            cbor_answer_cmd: cmd::CBOR,
            message_timeout: Duration::from_millis(500),
        }
    }
}

/// A request for the worker.
#[derive(Debug)]
pub struct Job {
    /// Identifies this transaction when the worker answers.
    pub id: u64,
    /// The request.
    pub message: Message,
    /// Fires on CTAPHID_CANCEL or a resynchronising INIT on the channel.
    pub cancel: CancelSignal,
}

/// What the transport wants done.
#[derive(Debug)]
pub enum Action {
    /// Send these reports to the host.
    Send(Vec<[u8; PACKET_SIZE]>),
    /// Run this request on the worker.
    Dispatch(Job),
}

struct Busy {
    cid: u32,
    id: u64,
    cancel: CancelSignal,
}

/// The channel and transaction state of one device.
pub struct Transport {
    mode: TransportMode,
    /// Channel ids handed out so far are `1..next_cid`.
    next_cid: u32,
    /// The message being assembled, and when its last packet arrived.
    assembly: Option<(Assembly, Instant)>,
    busy: Option<Busy>,
    next_job: u64,
}

fn send(cid: u32, command: u8, payload: &[u8]) -> Action {
    // Every payload built here is far below the message limit.
    Action::Send(fragment(cid, command, payload).unwrap_or_default())
}

fn error(cid: u32, code: u8) -> Action {
    tracing::info!(
        cid = format_args!("{cid:#010x}"),
        code = format_args!("{code:#04x}"),
        "-> CTAPHID_ERROR"
    );
    send(cid, cmd::ERROR, &[code])
}

impl Transport {
    /// A device with no channel allocated yet.
    pub fn new(mode: TransportMode) -> Self {
        Self {
            mode,
            next_cid: 1,
            assembly: None,
            busy: None,
            next_job: 1,
        }
    }

    fn allocated(&self, cid: u32) -> bool {
        cid != 0 && cid != BROADCAST_CID && cid < self.next_cid
    }

    /// The channel whose request the worker runs, for keep-alives.
    pub fn busy_channel(&self) -> Option<u32> {
        self.busy.as_ref().map(|b| b.cid)
    }

    /// The worker finished job `id`: the channel to answer on, unless the
    /// transaction was abandoned (INIT resynchronised the channel) meanwhile.
    pub fn complete(&mut self, id: u64) -> Option<(u32, u8)> {
        match &self.busy {
            Some(b) if b.id == id => {
                let cid = b.cid;
                self.busy = None;
                Some((cid, self.mode.cbor_answer_cmd))
            }
            _ => None,
        }
    }

    /// Drops a message whose continuation packets stopped coming.
    pub fn on_tick(&mut self, now: Instant) -> Vec<Action> {
        match &self.assembly {
            Some((a, last)) if now.duration_since(*last) > self.mode.message_timeout => {
                let cid = a.cid();
                self.assembly = None;
                vec![error(cid, err::MSG_TIMEOUT)]
            }
            _ => Vec::new(),
        }
    }

    /// One output report from the host.
    pub fn on_report(&mut self, raw: &[u8], now: Instant) -> Vec<Action> {
        let packet = match Packet::parse(raw) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a malformed report");
                return Vec::new();
            }
        };
        match packet {
            Packet::Init {
                cid,
                cmd: command,
                len,
                data,
            } => self.on_init_packet(cid, command, len, data, now),
            Packet::Cont { cid, seq, data } => {
                let Some((assembly, last)) = self.assembly.as_mut().filter(|(a, _)| a.cid() == cid)
                else {
                    // A stray continuation packet is ignored (CTAP 2.1 section 11.2.4).
                    return Vec::new();
                };
                if let Err(e) = assembly.push(seq, data) {
                    self.assembly = None;
                    return vec![error(cid, e.error_code())];
                }
                *last = now;
                if assembly.is_complete() {
                    if let Some((a, _)) = self.assembly.take() {
                        return self.on_message(a.finish());
                    }
                }
                Vec::new()
            }
        }
    }

    fn on_init_packet(
        &mut self,
        cid: u32,
        command: u8,
        len: u16,
        data: &[u8],
        now: Instant,
    ) -> Vec<Action> {
        if command == cmd::INIT {
            return self.on_init(cid, len, data);
        }
        if !self.allocated(cid) {
            tracing::info!(
                cid = format_args!("{cid:#010x}"),
                command = cmd::name(command),
                "<- request on a channel that was never allocated"
            );
            return vec![error(cid, err::INVALID_CHANNEL)];
        }
        if command == cmd::CANCEL {
            tracing::info!(cid = format_args!("{cid:#010x}"), "<- CTAPHID_CANCEL");
            match &self.busy {
                Some(b) if b.cid == cid && self.mode.honour_cancel => b.cancel.cancel(),
                Some(b) if b.cid == cid => {
                    tracing::info!("CANCEL ignored (this key does not handle CANCEL)")
                }
                _ => tracing::info!("CANCEL with nothing pending on the channel"),
            }
            return Vec::new();
        }
        if let Some((a, _)) = &self.assembly {
            let other = a.cid();
            if other == cid {
                // A new message before the last one was whole.
                self.assembly = None;
                return vec![error(cid, err::INVALID_SEQ)];
            }
            return vec![error(cid, err::CHANNEL_BUSY)];
        }
        if self.busy.is_some() {
            tracing::info!(
                cid = format_args!("{cid:#010x}"),
                command = cmd::name(command),
                "<- request while busy"
            );
            return vec![error(cid, err::CHANNEL_BUSY)];
        }
        // Longer than getInfo's maxMsgSize says: refused at its first packet, as real
        // keys refuse what does not fit their buffer (CanoKey: ERR_INVALID_LEN).
        if usize::from(len) > SOFT_MAX_MSG_SIZE {
            tracing::info!(
                cid = format_args!("{cid:#010x}"),
                len,
                "<- message longer than maxMsgSize"
            );
            return vec![error(cid, err::INVALID_LEN)];
        }
        match Assembly::begin(cid, command, len, data) {
            Err(e) => vec![error(cid, e.error_code())],
            Ok(a) if a.is_complete() => self.on_message(a.finish()),
            Ok(a) => {
                self.assembly = Some((a, now));
                Vec::new()
            }
        }
    }

    fn on_init(&mut self, cid: u32, len: u16, data: &[u8]) -> Vec<Action> {
        tracing::info!(cid = format_args!("{cid:#010x}"), "<- CTAPHID_INIT");
        if len != 8 {
            return vec![error(cid, err::INVALID_LEN)];
        }
        let mut nonce = [0u8; 8];
        nonce.copy_from_slice(&data[..8]);
        // CTAP2 only: MSG gets SW_INS_NOT_SUPPORTED, so say so (NMSG).
        let caps = capability::WINK | capability::CBOR | capability::NMSG;
        if cid == BROADCAST_CID {
            let new = self.next_cid;
            if new == BROADCAST_CID - 1 {
                return vec![error(cid, err::OTHER)];
            }
            self.next_cid += 1;
            return vec![send(
                cid,
                cmd::INIT,
                &init_response(&nonce, new, (0, 1, 0), caps),
            )];
        }
        if !self.allocated(cid) {
            return vec![error(cid, err::INVALID_CHANNEL)];
        }
        // Resynchronise: whatever this channel had going is abandoned.
        if self.assembly.as_ref().is_some_and(|(a, _)| a.cid() == cid) {
            self.assembly = None;
        }
        if self.busy.as_ref().is_some_and(|b| b.cid == cid) {
            if let Some(b) = self.busy.take() {
                b.cancel.cancel();
            }
        }
        vec![send(
            cid,
            cmd::INIT,
            &init_response(&nonce, cid, (0, 1, 0), caps),
        )]
    }

    fn on_message(&mut self, m: Message) -> Vec<Action> {
        let cid = m.cid;
        tracing::info!(
            cid = format_args!("{cid:#010x}"),
            command = cmd::name(m.cmd),
            len = m.payload.len(),
            "<- CTAPHID_{}",
            cmd::name(m.cmd)
        );
        match m.cmd {
            cmd::PING => vec![send(cid, cmd::PING, &m.payload)],
            cmd::WINK if m.payload.is_empty() => vec![send(cid, cmd::WINK, &[])],
            cmd::WINK => vec![error(cid, err::INVALID_LEN)],
            cmd::CBOR if m.payload.is_empty() => vec![error(cid, err::INVALID_LEN)],
            cmd::CBOR | cmd::MSG => {
                let cancel = CancelSignal::new();
                let id = self.next_job;
                self.next_job += 1;
                self.busy = Some(Busy {
                    cid,
                    id,
                    cancel: cancel.clone(),
                });
                vec![Action::Dispatch(Job {
                    id,
                    message: m,
                    cancel,
                })]
            }
            _ => vec![error(cid, err::INVALID_CMD)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Transport {
        Transport::new(TransportMode::default())
    }

    fn one(actions: Vec<Action>) -> Vec<[u8; PACKET_SIZE]> {
        assert_eq!(actions.len(), 1, "{actions:?}");
        match actions.into_iter().next() {
            Some(Action::Send(p)) => p,
            other => panic!("expected a send, got {other:?}"),
        }
    }

    fn init(t: &mut Transport) -> u32 {
        let req = fragment(BROADCAST_CID, cmd::INIT, &[7; 8]).unwrap();
        let r = one(t.on_report(&req[0], Instant::now()));
        assert_eq!(&r[0][..5], &[0xff, 0xff, 0xff, 0xff, 0x86]);
        assert_eq!(&r[0][7..15], &[7; 8]);
        u32::from_be_bytes(r[0][15..19].try_into().unwrap())
    }

    fn error_code(p: &[[u8; PACKET_SIZE]]) -> u8 {
        assert_eq!(p[0][4], 0x80 | cmd::ERROR);
        p[0][7]
    }

    #[test]
    fn init_allocates_distinct_channels_and_ping_echoes() {
        let mut t = t();
        let a = init(&mut t);
        let b = init(&mut t);
        assert_ne!(a, b);
        let payload: Vec<u8> = (0..300).map(|i| i as u8).collect();
        let mut out = Vec::new();
        for p in fragment(a, cmd::PING, &payload).unwrap() {
            out.extend(t.on_report(&p, Instant::now()));
        }
        let reply = one(out);
        assert_eq!(reply, fragment(a, cmd::PING, &payload).unwrap());
    }

    /// A message longer than getInfo's maxMsgSize is refused at its first packet; one
    /// exactly that long is taken.
    #[test]
    fn a_message_longer_than_max_msg_size_is_invalid_len() {
        let mut t = t();
        let cid = init(&mut t);
        let long = fragment(cid, cmd::PING, &vec![1; SOFT_MAX_MSG_SIZE + 1]).unwrap();
        assert_eq!(
            error_code(&one(t.on_report(&long[0], Instant::now()))),
            err::INVALID_LEN
        );
        let mut out = Vec::new();
        for p in fragment(cid, cmd::PING, &vec![2; SOFT_MAX_MSG_SIZE]).unwrap() {
            out.extend(t.on_report(&p, Instant::now()));
        }
        assert_eq!(
            one(out),
            fragment(cid, cmd::PING, &vec![2; SOFT_MAX_MSG_SIZE]).unwrap()
        );
    }

    #[test]
    fn unknown_channels_broadcast_and_zero_are_invalid_channel() {
        let mut t = t();
        for cid in [0, 5, BROADCAST_CID] {
            let p = fragment(cid, cmd::PING, b"x").unwrap();
            assert_eq!(
                error_code(&one(t.on_report(&p[0], Instant::now()))),
                err::INVALID_CHANNEL
            );
        }
    }

    #[test]
    fn a_second_channel_is_busy_while_a_request_runs_and_cancel_fires() {
        let mut t = t();
        let a = init(&mut t);
        let b = init(&mut t);
        let req = fragment(a, cmd::CBOR, &[4]).unwrap();
        let job = match t.on_report(&req[0], Instant::now()).pop() {
            Some(Action::Dispatch(j)) => j,
            other => panic!("{other:?}"),
        };
        assert_eq!(t.busy_channel(), Some(a));
        let other = fragment(b, cmd::CBOR, &[4]).unwrap();
        assert_eq!(
            error_code(&one(t.on_report(&other[0], Instant::now()))),
            err::CHANNEL_BUSY
        );
        // CANCEL on another channel does nothing; on this one it fires.
        let cancel_b = fragment(b, cmd::CANCEL, &[]).unwrap();
        assert!(t.on_report(&cancel_b[0], Instant::now()).is_empty());
        assert!(!job.cancel.is_cancelled());
        let cancel_a = fragment(a, cmd::CANCEL, &[]).unwrap();
        assert!(t.on_report(&cancel_a[0], Instant::now()).is_empty());
        assert!(job.cancel.is_cancelled());
        assert_eq!(t.complete(job.id), Some((a, cmd::CBOR)));
        assert_eq!(t.busy_channel(), None);
    }

    #[test]
    fn a_keyish_proxy_ignores_cancel_and_answers_cbor_as_msg() {
        let mut t = Transport::new(TransportMode {
            honour_cancel: false,
            cbor_answer_cmd: cmd::MSG,
            ..TransportMode::default()
        });
        let a = init(&mut t);
        let job = match t
            .on_report(&fragment(a, cmd::CBOR, &[4]).unwrap()[0], Instant::now())
            .pop()
        {
            Some(Action::Dispatch(j)) => j,
            other => panic!("{other:?}"),
        };
        t.on_report(&fragment(a, cmd::CANCEL, &[]).unwrap()[0], Instant::now());
        assert!(!job.cancel.is_cancelled());
        assert_eq!(t.complete(job.id), Some((a, cmd::MSG)));
    }

    #[test]
    fn init_on_a_busy_channel_abandons_the_request() {
        let mut t = t();
        let a = init(&mut t);
        let job = match t
            .on_report(&fragment(a, cmd::CBOR, &[4]).unwrap()[0], Instant::now())
            .pop()
        {
            Some(Action::Dispatch(j)) => j,
            other => panic!("{other:?}"),
        };
        let resync = fragment(a, cmd::INIT, &[1; 8]).unwrap();
        let r = one(t.on_report(&resync[0], Instant::now()));
        assert_eq!(u32::from_be_bytes(r[0][15..19].try_into().unwrap()), a);
        assert!(job.cancel.is_cancelled());
        assert_eq!(
            t.complete(job.id),
            None,
            "the abandoned answer must not be sent"
        );
    }

    #[test]
    fn the_message_timeout_counts_from_the_last_packet_not_the_first() {
        // A PING as long as the key takes (1200 bytes, 21 packets) whose packets come
        // 100 ms apart takes longer than the timeout in all, with every gap far below it:
        // real keys (OpenSK's message assembler, for one) time the gap since the last
        // packet, so does this one.
        let mut t = t();
        let a = init(&mut t);
        let payload: Vec<u8> = (0..SOFT_MAX_MSG_SIZE).map(|i| i as u8).collect();
        let packets = fragment(a, cmd::PING, &payload).unwrap();
        assert_eq!(packets.len(), 21);
        let start = Instant::now();
        let gap = Duration::from_millis(100);
        let mut reply = Vec::new();
        for (i, p) in packets.iter().enumerate() {
            let now = start + gap * i as u32;
            assert!(t.on_tick(now).is_empty(), "timed out at packet {i}");
            reply.extend(t.on_report(p, now));
        }
        assert_eq!(one(reply), packets, "the echo");
        // A gap longer than the timeout still ends the message.
        let now = start + gap * 200;
        assert!(t.on_report(&packets[0], now).is_empty());
        assert!(t.on_report(&packets[1], now + gap).is_empty());
        assert!(t.on_tick(now + gap * 5).is_empty());
        assert_eq!(error_code(&one(t.on_tick(now + gap * 7))), err::MSG_TIMEOUT);
    }

    #[test]
    fn assembly_errors_seq_length_and_timeout() {
        let mut t = t();
        let a = init(&mut t);
        let b = init(&mut t);
        let start = Instant::now();
        let big = fragment(a, cmd::CBOR, &[1; 100]).unwrap();
        assert!(t.on_report(&big[0], start).is_empty());
        // Another channel while a message is being assembled: busy.
        assert_eq!(
            error_code(&one(
                t.on_report(&fragment(b, cmd::PING, b"x").unwrap()[0], start)
            )),
            err::CHANNEL_BUSY
        );
        // Wrong sequence number.
        let mut bad = big[1];
        bad[4] = 3;
        assert_eq!(error_code(&one(t.on_report(&bad, start))), err::INVALID_SEQ);
        // Timeout.
        assert!(t.on_report(&big[0], start).is_empty());
        assert!(t.on_tick(start + Duration::from_millis(100)).is_empty());
        assert_eq!(
            error_code(&one(t.on_tick(start + Duration::from_secs(1)))),
            err::MSG_TIMEOUT
        );
        // Too long.
        let mut huge = fragment(a, cmd::CBOR, &[0; 10]).unwrap()[0];
        huge[5..7].copy_from_slice(&8000u16.to_be_bytes());
        assert_eq!(
            error_code(&one(t.on_report(&huge, start))),
            err::INVALID_LEN
        );
        // INIT with the wrong length; unknown command.
        let mut short_init = fragment(BROADCAST_CID, cmd::INIT, &[0; 8]).unwrap()[0];
        short_init[6] = 4;
        assert_eq!(
            error_code(&one(t.on_report(&short_init, start))),
            err::INVALID_LEN
        );
        assert_eq!(
            error_code(&one(t.on_report(&fragment(a, 0x33, &[]).unwrap()[0], start))),
            err::INVALID_CMD
        );
    }
}
