//! The access line both binaries write for every request, under one target so that an
//! operator can drop it (`RUST_LOG=info,chromecard::access=off`) and keep every audit
//! line. Targets are not printed.
//!
//! It is the one line written per request, so it is written without tracing's formatter
//! when it can be (the subscriber is ours and writes plain text): the same bytes,
//! formatted directly, for about a tenth of the instructions (the formatter visits each
//! field through `dyn Debug`, and formats the time through `fmt`). The filter still
//! decides whether it is written at all. Otherwise (colours on a terminal, or another
//! subscriber, as in tests) it is an ordinary tracing event.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};

/// One request, answered.
pub fn access_line(
    peer: SocketAddr,
    method: &Method,
    path: &str,
    status: StatusCode,
    user: Option<&str>,
    took: Duration,
) {
    if !tracing::enabled!(target: "chromecard::access", tracing::Level::INFO) {
        return;
    }
    let served = Served {
        peer,
        method,
        path,
        status,
        user: user.unwrap_or("-"),
        micros: took.as_micros() as u64,
    };
    if crate::telemetry::plain_text() {
        let mut line = Vec::with_capacity(128 + path.len() + served.user.len());
        format_line(&mut line, SystemTime::now(), &served);
        crate::log_writer::write_lines(&line);
        return;
    }
    access_event(&served);
}

/// What the access line says of one request.
struct Served<'a> {
    peer: SocketAddr,
    method: &'a Method,
    path: &'a str,
    status: StatusCode,
    /// `-` when no user is known.
    user: &'a str,
    micros: u64,
}

/// The access line as an ordinary tracing event: where our plain-text writer is not in
/// use, and the reference its direct formatting is tested against.
fn access_event(served: &Served<'_>) {
    tracing::info!(
        target: "chromecard::access",
        peer = %served.peer,
        method = %served.method,
        path = %served.path,
        status = served.status.as_u16(),
        user = served.user,
        micros = served.micros,
        "request"
    );
}

/// The line tracing-subscriber's default format gives the event above (no target, no
/// colours): `<RFC 3339 time, microseconds>  INFO request peer=.. method=.. path=..
/// status=.. user=".." micros=..`, the user as `Debug` (quoted).
fn format_line(line: &mut Vec<u8>, now: SystemTime, served: &Served<'_>) {
    let &Served {
        peer,
        method,
        path,
        status,
        user,
        micros,
    } = served;
    push_time(line, now);
    line.extend_from_slice(b"  INFO request peer=");
    push_peer(line, peer);
    line.extend_from_slice(b" method=");
    line.extend_from_slice(method.as_str().as_bytes());
    line.extend_from_slice(b" path=");
    line.extend_from_slice(path.as_bytes());
    line.extend_from_slice(b" status=");
    push_u64(line, u64::from(status.as_u16()));
    line.extend_from_slice(b" user=");
    if user
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        // What `{:?}` gives a string that needs no escape, without the formatter.
        line.push(b'"');
        line.extend_from_slice(user.as_bytes());
        line.push(b'"');
    } else {
        let _ = write!(line, "{user:?}");
    }
    line.extend_from_slice(b" micros=");
    push_u64(line, micros);
    line.push(b'\n');
}

/// `SocketAddr`'s `Display`, without the formatter for the usual IPv4 peer.
fn push_peer(line: &mut Vec<u8>, peer: SocketAddr) {
    match peer {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    line.push(b'.');
                }
                push_u64(line, u64::from(octet));
            }
            line.push(b':');
            push_u64(line, u64::from(v4.port()));
        }
        SocketAddr::V6(_) => {
            let _ = write!(line, "{peer}");
        }
    }
}

/// `value` in decimal.
fn push_u64(line: &mut Vec<u8>, value: u64) {
    if value < 10 {
        line.push(b'0' + value as u8);
        return;
    }
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = value;
    while rest > 0 {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    line.extend_from_slice(&digits[at..]);
}

/// `value` (below 100) in two digits.
fn push_two(line: &mut Vec<u8>, value: u64) {
    line.push(b'0' + (value / 10 % 10) as u8);
    line.push(b'0' + (value % 10) as u8);
}

/// `2026-12-06T19:57:03.168073Z`, as tracing-subscriber's `SystemTime` timer writes it
/// (UTC, microseconds, truncated).
fn push_time(line: &mut Vec<u8>, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let of_day = secs % 86_400;
    if (1000..=9999).contains(&year) {
        push_u64(line, year as u64);
    } else {
        // Beyond tracing-subscriber's four digits, as it writes them.
        let _ = if year > 9999 {
            write!(line, "+{year}")
        } else {
            write!(line, "{year:04}")
        };
    }
    for (sep, value) in [
        (b'-', u64::from(month)),
        (b'-', u64::from(day)),
        (b'T', of_day / 3600),
        (b':', of_day / 60 % 60),
        (b':', of_day % 60),
    ] {
        line.push(sep);
        push_two(line, value);
    }
    line.push(b'.');
    let micros = u64::from(since.subsec_micros());
    push_two(line, micros / 10_000);
    push_two(line, micros / 100 % 100);
    push_two(line, micros % 100);
    line.push(b'Z');
}

/// Year, month, day of the day `days` after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The line tracing-subscriber writes for the event, with the settings of
    /// `init_tracing` (no target, no colours).
    fn through_tracing(served: &Served<'_>) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_target(false)
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || access_event(served));
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn the_direct_line_is_the_line_tracing_writes() {
        let cases: [(&str, &str, &str, u16, &str, u64); 8] = [
            (
                "127.0.0.1:50020",
                "GET",
                "/resource/counter",
                200,
                "bench",
                19327,
            ),
            ("[::1]:8770", "POST", "/session/login", 401, "-", 0),
            (
                "10.0.0.7:1",
                "DELETE",
                "/resource/secrets/a%20b",
                404,
                "al\"ice",
                7,
            ),
            ("127.0.0.1:9", "PATCH", "/x y", 502, "ünï\\code\n", u64::MAX),
            ("127.0.0.1:9", "GET", "", 100, "", 18_446_744),
            ("0.0.0.0:0", "GET", "/", 200, "a", 10),
            ("255.255.255.255:65535", "GET", "/", 200, "a", 10),
            ("[fe80::1%2]:443", "GET", "/", 200, "a", 10),
        ];
        for (peer, method, path, status, user, micros) in cases {
            let peer: SocketAddr = peer.parse().unwrap();
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let status = StatusCode::from_u16(status).unwrap();
            let served = Served {
                peer,
                method: &method,
                path,
                status,
                user,
                micros,
            };
            let theirs = through_tracing(&served);
            let mut ours = Vec::new();
            format_line(&mut ours, SystemTime::now(), &served);
            let ours = String::from_utf8(ours).unwrap();
            // The times differ (two clocks read); the shape is checked below.
            let strip = |line: &str| line.split_once(' ').unwrap().1.to_owned();
            assert_eq!(strip(&ours), strip(&theirs));
            let (our_time, their_time) = (
                ours.split_once(' ').unwrap().0,
                theirs.split_once(' ').unwrap().0,
            );
            assert_eq!(our_time.len(), their_time.len(), "{our_time} {their_time}");
            assert_eq!(&our_time[..10], &their_time[..10], "the dates differ");
        }
    }

    #[test]
    fn times_as_rfc_3339_with_microseconds() {
        let at = |secs: u64, micros: u64| {
            let mut line = Vec::new();
            push_time(
                &mut line,
                UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros),
            );
            String::from_utf8(line).unwrap()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        // `date -u -d @951782400` is 2000-02-29 00:00:00 (a leap day of a century year).
        assert_eq!(at(951_782_400, 1), "2000-02-29T00:00:00.000001Z");
        assert_eq!(at(1_796_587_023, 168_073), "2026-12-06T19:57:03.168073Z");
        assert_eq!(at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
        assert_eq!(at(253_402_300_799, 0), "9999-12-31T23:59:59.000000Z");
        // Every day from 1970 to 2200 against a plain day-by-day count.
        let mut days = 0i64;
        for year in 1970..2200i64 {
            let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
            for (month, length) in [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ]
            .into_iter()
            .enumerate()
            {
                for day in 1..=length {
                    assert_eq!(civil_from_days(days), (year, month as u32 + 1, day));
                    days += 1;
                }
            }
        }
    }
}
