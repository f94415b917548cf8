//! The client's side of CTAPHID: allocate a channel, send one request, read its
//! answer, with keep-alives, CANCEL and a deadline. The device is a [`Port`] that
//! moves 64-byte reports; this module never blocks longer than one poll period
//! without looking at the clock and the cancel signal, so no wait is unbounded.
//! Writes keep to the same deadline: none starts after it, and one that returns after
//! it (a hidraw write blocks, and hidapi cannot bound it) ends the transaction with
//! the timeout rather than going on to read an answer nobody waits for.
//!
//! One quirk of real devices is tolerated on purpose: Qubes' CTAP proxy 2.0.7
//! (qubes-ctap, the way Qubes keeps keys in sys-usb) answers a CTAPHID_CBOR
//! request with the CTAPHID_MSG command byte around a correct CTAP2 answer
//! (Qubes issue 10981). The answer is read as the CBOR answer it is, as Chromium
//! does, and [`Answer::framed_as_msg`] says so.

use std::time::{Duration, Instant};

use crate::{
    cmd, err, fragment, Assembly, FrameError, Packet, BROADCAST_CID, MAX_MESSAGE, PACKET_SIZE,
};

/// Moves reports to and from one HID device.
pub trait Port {
    /// Writes one output report (it may block; the caller checks the clock around it).
    fn send(&mut self, report: &[u8; PACKET_SIZE]) -> Result<(), HostError>;
    /// Reads one input report, or `None` when `wait` passed without one.
    fn recv(&mut self, wait: Duration) -> Result<Option<[u8; PACKET_SIZE]>, HostError>;
}

/// Why a transaction ended without an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// The device could not be read or written (unplugged, permissions).
    #[error("the device cannot be used: {0}")]
    Io(String),
    /// No answer before the deadline (a CANCEL was sent and the grace period ran out).
    #[error("the device did not answer in time")]
    Timeout,
    /// The caller cancelled; the device did not answer within the grace period.
    #[error("the request was cancelled")]
    Cancelled,
    /// The device answered CTAPHID_ERROR with this code.
    #[error("the device answered CTAPHID_ERROR {code:#04x} ({name})", code = .0, name = error_name(*.0))]
    Device(u8),
    /// The device's answer broke the framing.
    #[error("the device's answer is malformed: {0}")]
    Protocol(String),
    /// The request is longer than a CTAPHID message can be; nothing was sent.
    #[error("the request is {0} bytes, more than a CTAPHID message carries ({MAX_MESSAGE})")]
    RequestTooLong(usize),
}

/// A name for a CTAPHID_ERROR code.
pub fn error_name(code: u8) -> &'static str {
    match code {
        err::INVALID_CMD => "ERR_INVALID_CMD",
        err::INVALID_PAR => "ERR_INVALID_PAR",
        err::INVALID_LEN => "ERR_INVALID_LEN",
        err::INVALID_SEQ => "ERR_INVALID_SEQ",
        err::MSG_TIMEOUT => "ERR_MSG_TIMEOUT",
        err::CHANNEL_BUSY => "ERR_CHANNEL_BUSY",
        err::LOCK_REQUIRED => "ERR_LOCK_REQUIRED",
        err::INVALID_CHANNEL => "ERR_INVALID_CHANNEL",
        _ => "ERR_OTHER",
    }
}

impl From<FrameError> for HostError {
    fn from(e: FrameError) -> Self {
        HostError::Protocol(e.to_string())
    }
}

/// Bounds of one transaction.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Past this instant a CANCEL is sent, as if the caller cancelled.
    pub deadline: Instant,
    /// How long to keep reading after a CANCEL for the device's last word. A key
    /// answers CTAP2_ERR_KEEPALIVE_CANCEL at once; a device that ignores CANCEL
    /// (Qubes' CTAP proxy) answers when its own request ends.
    pub cancel_grace: Duration,
    /// The longest single wait for a report (the period between looks at the
    /// clock and the cancel signal, and between repeated CANCELs).
    pub poll: Duration,
}

/// A whole answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The answer's payload.
    pub payload: Vec<u8>,
    /// A CBOR request was answered with the MSG command byte (Qubes' CTAP proxy 2.0.7).
    pub framed_as_msg: bool,
    /// The device sent at least one KEEPALIVE with status UP_NEEDED.
    pub asked_for_touch: bool,
    /// CANCELs sent (0 unless the caller cancelled or the deadline passed).
    pub cancels_sent: u32,
}

/// How long INIT still waits for its own answer after an error on the broadcast channel,
/// which may have been another client's: a device answers an INIT within milliseconds,
/// and one that answers ours with an error is not kept waiting on for long.
pub const BROADCAST_ERROR_GRACE: Duration = Duration::from_millis(250);

/// The CTAPHID protocol version this client speaks (the INIT answer's byte 12).
pub const PROTOCOL_VERSION: u8 = 2;

/// One allocated channel on one device.
pub struct Channel<P: Port> {
    port: P,
    cid: u32,
    capabilities: u8,
}

impl<P: Port> Channel<P> {
    /// CTAPHID_INIT on the broadcast channel: allocates a channel. `nonce` must be
    /// fresh random bytes; answers carrying another nonce are someone else's.
    ///
    /// A CTAPHID_ERROR on the broadcast channel carries no nonce: it may answer another
    /// client's INIT (every client of the device reads every report). So it ends the wait
    /// only [`BROADCAST_ERROR_GRACE`] later (or at the deadline, if sooner), as the reason
    /// no answer came, unless our answer comes first.
    pub fn open(mut port: P, nonce: [u8; 8], deadline: Instant) -> Result<Self, HostError> {
        for r in fragment(BROADCAST_CID, cmd::INIT, &nonce)? {
            send_by(&mut port, &r, deadline, HostError::Timeout)?;
        }
        let mut deadline = deadline;
        let mut broadcast_error = None;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(broadcast_error.map_or(HostError::Timeout, HostError::Device));
            }
            let Some(raw) = port.recv(deadline - now)? else {
                continue;
            };
            match Packet::parse(&raw)? {
                Packet::Init {
                    cid: BROADCAST_CID,
                    cmd: cmd::INIT,
                    len,
                    data,
                } if len >= 17 && data[..8] == nonce => {
                    let cid = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
                    if cid == 0 || cid == BROADCAST_CID {
                        return Err(HostError::Protocol(format!(
                            "CTAPHID_INIT gave the reserved channel {cid:#010x}"
                        )));
                    }
                    // A device speaking another CTAPHID version frames differently;
                    // reading its answers as ours would be guesswork.
                    if data[12] != PROTOCOL_VERSION {
                        return Err(HostError::Protocol(format!(
                            "CTAPHID_INIT answered protocol version {}; this client speaks {PROTOCOL_VERSION}",
                            data[12]
                        )));
                    }
                    return Ok(Self {
                        port,
                        cid,
                        capabilities: data[16],
                    });
                }
                Packet::Init {
                    cid: BROADCAST_CID,
                    cmd: cmd::ERROR,
                    data,
                    ..
                } => {
                    if broadcast_error.is_none() {
                        deadline = deadline.min(Instant::now() + BROADCAST_ERROR_GRACE);
                    }
                    broadcast_error = Some(data[0]);
                }
                // Another client's traffic, or a stale answer: not ours.
                _ => continue,
            }
        }
    }

    /// The channel id.
    pub fn cid(&self) -> u32 {
        self.cid
    }

    /// The capability bits of the INIT answer ([`crate::capability`]).
    pub fn capabilities(&self) -> u8 {
        self.capabilities
    }

    /// One request and its answer. `cancelled` is asked between reads; once it
    /// says yes (or the deadline passes) CTAPHID_CANCEL is sent, repeated every
    /// poll period, and the answer is awaited for `limits.cancel_grace` more.
    /// `on_keepalive` sees each KEEPALIVE status byte. When the answer breaks the
    /// framing, the request may still be running on the device (waiting for a touch):
    /// one CANCEL is sent, best effort, so the key does not go on blinking for nobody.
    pub fn transact(
        &mut self,
        command: u8,
        payload: &[u8],
        limits: &Limits,
        cancelled: &dyn Fn() -> bool,
        on_keepalive: &mut dyn FnMut(u8),
    ) -> Result<Answer, HostError> {
        let result = self.exchange(command, payload, limits, cancelled, on_keepalive);
        if let Err(HostError::Protocol(_)) = &result {
            if let Ok(cancel) = self.cancel_report() {
                let until = limits.deadline + limits.cancel_grace;
                let _ = cancel_by(&mut self.port, &cancel, until, HostError::Timeout);
            }
        }
        result
    }

    /// This channel's CTAPHID_CANCEL (one packet, no payload).
    fn cancel_report(&self) -> Result<[u8; PACKET_SIZE], HostError> {
        Ok(fragment(self.cid, cmd::CANCEL, &[])?[0])
    }

    /// [`Channel::transact`]'s loop: send, then read until the answer, an error, or
    /// the grace after a CANCEL runs out.
    fn exchange(
        &mut self,
        command: u8,
        payload: &[u8],
        limits: &Limits,
        cancelled: &dyn Fn() -> bool,
        on_keepalive: &mut dyn FnMut(u8),
    ) -> Result<Answer, HostError> {
        // Too long is this side's fault, found before a byte is sent: not the device's
        // malformed answer, and no CANCEL for a request it never got.
        let reports = fragment(self.cid, command, payload).map_err(|e| match e {
            FrameError::TooLong(n) => HostError::RequestTooLong(n),
            other => other.into(),
        })?;
        for r in reports {
            send_by(&mut self.port, &r, limits.deadline, HostError::Timeout)?;
        }
        let cancel_report = self.cancel_report()?;
        let mut assembly: Option<Assembly> = None;
        let mut framed_as_msg = false;
        let mut asked_for_touch = false;
        let mut cancels_sent = 0u32;
        let mut gave_up: Option<(Instant, HostError)> = None;
        let mut last_cancel = Instant::now();
        loop {
            let now = Instant::now();
            match &gave_up {
                None if cancelled() || now >= limits.deadline => {
                    let why = if now >= limits.deadline {
                        HostError::Timeout
                    } else {
                        HostError::Cancelled
                    };
                    let until = now + limits.cancel_grace;
                    gave_up = Some((until, why.clone()));
                    cancel_by(&mut self.port, &cancel_report, until, why)?;
                    cancels_sent += 1;
                    last_cancel = now;
                }
                Some((until, why)) if now >= *until => return Err(why.clone()),
                // A key ignores a CANCEL that overtook its request: say it again.
                Some((until, why)) if now.duration_since(last_cancel) >= limits.poll => {
                    cancel_by(&mut self.port, &cancel_report, *until, why.clone())?;
                    cancels_sent += 1;
                    last_cancel = now;
                }
                _ => {}
            }
            let Some(raw) = self.port.recv(limits.poll)? else {
                continue;
            };
            match Packet::parse(&raw)? {
                Packet::Init { cid, .. } | Packet::Cont { cid, .. } if cid != self.cid => continue,
                Packet::Init {
                    cmd: cmd::KEEPALIVE,
                    len,
                    data,
                    ..
                } => {
                    if len >= 1 {
                        asked_for_touch |= data[0] == crate::keepalive::UP_NEEDED;
                        on_keepalive(data[0]);
                    }
                }
                Packet::Init {
                    cmd: cmd::ERROR,
                    data,
                    ..
                } => return Err(HostError::Device(data[0])),
                Packet::Init {
                    cmd: got,
                    len,
                    data,
                    ..
                } => {
                    let expected = got == command;
                    let msg_for_cbor = command == cmd::CBOR && got == cmd::MSG;
                    if !expected && !msg_for_cbor {
                        return Err(HostError::Protocol(format!(
                            "answer with command {} ({got:#04x}) to a {} request",
                            cmd::name(got),
                            cmd::name(command)
                        )));
                    }
                    framed_as_msg = msg_for_cbor;
                    assembly = Some(Assembly::begin(self.cid, got, len, data)?);
                }
                Packet::Cont { seq, data, .. } => match assembly.as_mut() {
                    Some(a) => a.push(seq, data)?,
                    // A continuation with no start: a stale fragment, not ours to read.
                    None => continue,
                },
            }
            if let Some(a) = assembly.take_if(|a| a.is_complete()) {
                return Ok(Answer {
                    payload: a.finish().payload,
                    framed_as_msg,
                    asked_for_touch,
                    cancels_sent,
                });
            }
        }
    }
}

/// Writes `report` unless `until` has passed, and fails with `late` if the write
/// returned only after it: the same bound as the reads, so a write that blocked past
/// the deadline ends the transaction instead of going on.
fn send_by<P: Port>(
    port: &mut P,
    report: &[u8; PACKET_SIZE],
    until: Instant,
    late: HostError,
) -> Result<(), HostError> {
    if Instant::now() >= until {
        return Err(late);
    }
    port.send(report)?;
    if Instant::now() >= until {
        return Err(late);
    }
    Ok(())
}

/// A CANCEL goes out past the deadline (that is what it is for), but a write of it
/// that returns only after `until` (the end of the grace) ends the transaction with `late`.
fn cancel_by<P: Port>(
    port: &mut P,
    report: &[u8; PACKET_SIZE],
    until: Instant,
    late: HostError,
) -> Result<(), HostError> {
    port.send(report)?;
    if Instant::now() >= until {
        return Err(late);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keepalive;
    use std::collections::VecDeque;

    /// A scripted device: reports to hand out, what was written, and how long each
    /// write blocks (a device that does not take its reports).
    #[derive(Default)]
    struct Script {
        to_host: VecDeque<Option<[u8; PACKET_SIZE]>>,
        written: Vec<[u8; PACKET_SIZE]>,
        write_blocks: Duration,
    }

    impl Port for Script {
        fn send(&mut self, report: &[u8; PACKET_SIZE]) -> Result<(), HostError> {
            std::thread::sleep(self.write_blocks);
            self.written.push(*report);
            Ok(())
        }
        fn recv(&mut self, wait: Duration) -> Result<Option<[u8; PACKET_SIZE]>, HostError> {
            match self.to_host.pop_front() {
                Some(r) => Ok(r),
                None => {
                    std::thread::sleep(wait.min(Duration::from_millis(5)));
                    Ok(None)
                }
            }
        }
    }

    fn limits(ms: u64) -> Limits {
        Limits {
            deadline: Instant::now() + Duration::from_millis(ms),
            cancel_grace: Duration::from_millis(50),
            poll: Duration::from_millis(5),
        }
    }

    fn opened(mut script: Script) -> Channel<Script> {
        let nonce = [5; 8];
        let mut answer = nonce.to_vec();
        answer.extend_from_slice(&[0, 0, 0, 9, 2, 0, 1, 0, 4]);
        // A stranger's INIT answer first (another nonce), then ours.
        let mut stranger = [6; 8].to_vec();
        stranger.extend_from_slice(&[0, 0, 0, 8, 2, 0, 1, 0, 4]);
        script.to_host.push_back(Some(
            fragment(BROADCAST_CID, cmd::INIT, &stranger).unwrap()[0],
        ));
        script.to_host.push_back(Some(
            fragment(BROADCAST_CID, cmd::INIT, &answer).unwrap()[0],
        ));
        let ch = Channel::open(script, nonce, Instant::now() + Duration::from_secs(1)).unwrap();
        assert_eq!(ch.cid(), 9);
        assert_eq!(ch.capabilities(), 4);
        ch
    }

    fn push(ch: &mut Channel<Script>, cid: u32, command: u8, payload: &[u8]) {
        for r in fragment(cid, command, payload).unwrap() {
            ch.port.to_host.push_back(Some(r));
        }
    }

    /// A device whose first report is a CTAPHID_ERROR `code` on the broadcast channel.
    fn broadcast_error(code: u8) -> Script {
        let mut script = Script::default();
        script.to_host.push_back(Some(
            fragment(BROADCAST_CID, cmd::ERROR, &[code]).unwrap()[0],
        ));
        script
    }

    /// An ERROR on the broadcast channel may be another client's: the wait goes on, and
    /// our answer after it opens the channel.
    #[test]
    fn a_broadcast_error_does_not_end_the_init_that_is_answered_after_it() {
        opened(broadcast_error(err::INVALID_LEN));
    }

    /// With no answer of ours, the error seen is the reason given at the deadline.
    #[test]
    fn a_broadcast_error_without_an_answer_is_reported_at_the_deadline() {
        let started = Instant::now();
        let e = Channel::open(
            broadcast_error(err::CHANNEL_BUSY),
            [5; 8],
            started + Duration::from_millis(60),
        )
        .err()
        .unwrap();
        assert_eq!(e, HostError::Device(err::CHANNEL_BUSY));
        assert!(started.elapsed() >= Duration::from_millis(60));
        // With a long deadline, the error ends the wait after the grace, not at the end.
        let started = Instant::now();
        let e = Channel::open(
            broadcast_error(err::CHANNEL_BUSY),
            [5; 8],
            started + Duration::from_secs(5),
        )
        .err()
        .unwrap();
        assert_eq!(e, HostError::Device(err::CHANNEL_BUSY));
        let waited = started.elapsed();
        assert!(
            waited >= BROADCAST_ERROR_GRACE && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        let e = Channel::open(
            Script::default(),
            [5; 8],
            Instant::now() + Duration::from_millis(20),
        )
        .err()
        .unwrap();
        assert_eq!(e, HostError::Timeout);
    }

    /// A request too long for CTAPHID is refused before anything is written: it is not
    /// the device's malformed answer, and no CANCEL goes out for it.
    #[test]
    fn a_request_too_long_is_refused_before_it_is_sent() {
        let mut ch = opened(Script::default());
        let before = ch.port.written.len();
        let e = ch
            .transact(
                cmd::CBOR,
                &vec![0; MAX_MESSAGE + 1],
                &limits(1000),
                &|| false,
                &mut |_| {},
            )
            .unwrap_err();
        assert_eq!(e, HostError::RequestTooLong(MAX_MESSAGE + 1));
        assert!(e.to_string().contains("7610 bytes"), "{e}");
        assert_eq!(ch.port.written.len(), before, "nothing written, no CANCEL");
    }

    #[test]
    fn an_answer_across_packets_with_keepalives_and_strangers_in_between() {
        let mut ch = opened(Script::default());
        push(&mut ch, 9, cmd::KEEPALIVE, &[keepalive::UP_NEEDED]);
        push(&mut ch, 77, cmd::CBOR, &[1; 300]);
        let body: Vec<u8> = (0..300).map(|i| i as u8).collect();
        push(&mut ch, 9, cmd::CBOR, &body);
        let mut seen = Vec::new();
        let a = ch
            .transact(cmd::CBOR, &[4], &limits(1000), &|| false, &mut |s| {
                seen.push(s)
            })
            .unwrap();
        assert_eq!(a.payload, body);
        assert!(a.asked_for_touch && !a.framed_as_msg);
        assert_eq!(seen, vec![keepalive::UP_NEEDED]);
        assert_eq!(a.cancels_sent, 0);
    }

    #[test]
    fn a_cbor_answer_framed_as_msg_is_read_as_cbor() {
        let mut ch = opened(Script::default());
        push(&mut ch, 9, cmd::MSG, &[0, 0xa0]);
        let a = ch
            .transact(cmd::CBOR, &[4], &limits(1000), &|| false, &mut |_| {})
            .unwrap();
        assert_eq!(a.payload, vec![0, 0xa0]);
        assert!(a.framed_as_msg);
        // But a PING answered with anything else is a protocol error.
        push(&mut ch, 9, cmd::MSG, &[1]);
        let e = ch
            .transact(cmd::PING, &[1], &limits(1000), &|| false, &mut |_| {})
            .unwrap_err();
        assert!(matches!(e, HostError::Protocol(_)), "{e:?}");
    }

    #[test]
    fn cancel_is_sent_repeated_and_the_device_answer_is_read() {
        let mut ch = opened(Script::default());
        // Nothing for a while (the device waits for a touch), then its cancel answer.
        for _ in 0..6 {
            ch.port.to_host.push_back(None);
        }
        push(&mut ch, 9, cmd::CBOR, &[0x2d]);
        let a = ch
            .transact(cmd::CBOR, &[2], &limits(10_000), &|| true, &mut |_| {})
            .unwrap();
        assert_eq!(a.payload, vec![0x2d]);
        assert!(a.cancels_sent >= 1);
        let cancels = ch
            .port
            .written
            .iter()
            .filter(|r| r[..5] == [0, 0, 0, 9, 0x80 | cmd::CANCEL])
            .count();
        assert_eq!(cancels as u32, a.cancels_sent);
    }

    #[test]
    fn a_device_that_never_answers_ends_at_the_deadline_plus_grace() {
        let mut ch = opened(Script::default());
        let t = Instant::now();
        let e = ch
            .transact(cmd::CBOR, &[2], &limits(30), &|| false, &mut |_| {})
            .unwrap_err();
        assert_eq!(e, HostError::Timeout);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        let e = ch
            .transact(cmd::CBOR, &[2], &limits(10_000), &|| true, &mut |_| {})
            .unwrap_err();
        assert_eq!(e, HostError::Cancelled);
    }

    fn is_cancel(r: &[u8; PACKET_SIZE]) -> bool {
        r[..5] == [0, 0, 0, 9, 0x80 | cmd::CANCEL]
    }

    #[test]
    fn no_request_is_written_after_the_deadline() {
        let mut ch = opened(Script::default());
        // The answer is there, but the deadline passed before the request went out.
        push(&mut ch, 9, cmd::CBOR, &[0]);
        let past = Limits {
            deadline: Instant::now(),
            ..limits(0)
        };
        let e = ch
            .transact(cmd::CBOR, &[4], &past, &|| false, &mut |_| {})
            .unwrap_err();
        assert_eq!(e, HostError::Timeout);
        assert!(ch.port.written.iter().all(|r| r[4] != 0x80 | cmd::CBOR));
        assert_eq!(ch.port.to_host.len(), 1, "nothing read");
    }

    #[test]
    fn a_request_write_that_blocks_past_the_deadline_is_a_timeout() {
        let mut ch = opened(Script::default());
        ch.port.write_blocks = Duration::from_millis(40);
        push(&mut ch, 9, cmd::CBOR, &[0]);
        let e = ch
            .transact(cmd::CBOR, &[4], &limits(10), &|| false, &mut |_| {})
            .unwrap_err();
        assert_eq!(e, HostError::Timeout);
        assert_eq!(ch.port.to_host.len(), 1, "nothing read");
        // Within the deadline the same slow writes are fine.
        let a = ch
            .transact(cmd::CBOR, &[4], &limits(1000), &|| false, &mut |_| {})
            .unwrap();
        assert_eq!(a.payload, vec![0]);
    }

    #[test]
    fn a_cancel_write_that_blocks_past_the_grace_ends_the_request() {
        let mut ch = opened(Script::default());
        // Each write blocks longer than the grace (50 ms): the CANCEL's too.
        ch.port.write_blocks = Duration::from_millis(80);
        push(&mut ch, 9, cmd::CBOR, &[0x2d]);
        let e = ch
            .transact(cmd::CBOR, &[2], &limits(10_000), &|| true, &mut |_| {})
            .unwrap_err();
        assert_eq!(e, HostError::Cancelled);
        assert_eq!(ch.port.written.iter().filter(|r| is_cancel(r)).count(), 1);
        assert_eq!(ch.port.to_host.len(), 1, "nothing read");
    }

    /// (The INIT loop's clock check before its first read caught this already; the
    /// write's own check keeps it so whatever comes after the write.)
    #[test]
    fn an_init_write_that_blocks_past_the_deadline_is_a_timeout() {
        let nonce = [5; 8];
        let mut answer = nonce.to_vec();
        answer.extend_from_slice(&[0, 0, 0, 9, 2, 0, 1, 0, 4]);
        let mut script = Script {
            write_blocks: Duration::from_millis(40),
            ..Script::default()
        };
        script.to_host.push_back(Some(
            fragment(BROADCAST_CID, cmd::INIT, &answer).unwrap()[0],
        ));
        let e = Channel::open(script, nonce, Instant::now() + Duration::from_millis(10))
            .err()
            .expect("the INIT write ended after the deadline");
        assert_eq!(e, HostError::Timeout);
    }

    #[test]
    fn another_ctaphid_version_is_refused_at_init() {
        let mut script = Script::default();
        let nonce = [5; 8];
        let mut answer = nonce.to_vec();
        answer.extend_from_slice(&[0, 0, 0, 9, 1, 0, 1, 0, 4]);
        script.to_host.push_back(Some(
            fragment(BROADCAST_CID, cmd::INIT, &answer).unwrap()[0],
        ));
        let e = Channel::open(script, nonce, Instant::now() + Duration::from_secs(1))
            .err()
            .expect("version 1 must be refused");
        assert!(
            matches!(&e, HostError::Protocol(m) if m.contains("version 1")),
            "{e:?}"
        );
    }

    #[test]
    fn a_broken_answer_cancels_the_request_but_a_device_error_does_not() {
        let mut ch = opened(Script::default());
        push(&mut ch, 9, cmd::ERROR, &[err::INVALID_PAR]);
        let _ = ch.transact(cmd::CBOR, &[4], &limits(1000), &|| false, &mut |_| {});
        assert_eq!(ch.port.written.iter().filter(|r| is_cancel(r)).count(), 0);
        push(&mut ch, 9, cmd::WINK, &[]);
        let e = ch
            .transact(cmd::CBOR, &[2], &limits(1000), &|| false, &mut |_| {})
            .unwrap_err();
        assert!(matches!(e, HostError::Protocol(_)), "{e:?}");
        assert_eq!(ch.port.written.iter().filter(|r| is_cancel(r)).count(), 1);
    }

    #[test]
    fn errors_and_broken_framing() {
        let mut ch = opened(Script::default());
        push(&mut ch, 9, cmd::ERROR, &[err::CHANNEL_BUSY]);
        assert_eq!(
            ch.transact(cmd::CBOR, &[4], &limits(1000), &|| false, &mut |_| {}),
            Err(HostError::Device(err::CHANNEL_BUSY))
        );
        let mut long = fragment(9, cmd::CBOR, &[0; 100]).unwrap();
        long[1][4] = 5; // wrong sequence number
        for r in long {
            ch.port.to_host.push_back(Some(r));
        }
        assert!(matches!(
            ch.transact(cmd::CBOR, &[4], &limits(1000), &|| false, &mut |_| {}),
            Err(HostError::Protocol(_))
        ));
    }
}
