//! A HID device made from user space through `/dev/uhid` (the kernel's
//! Documentation/hid/uhid.rst): the events are fixed-layout little-endian
//! records, built and read here as bytes.
//!
//! Why not the uhid-virt crate: it generates its bindings with bindgen (libclang
//! at build time, on every CI machine), opens the device non-blocking without
//! exposing the descriptor (so a reader could only poll with sleeps), and asserts
//! on report types it does not expect. The records are small and stable ABI.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `struct uhid_event`: a u32 type and the largest member of the union
/// (`uhid_create2_req`, 4372 bytes).
pub const EVENT_SIZE: usize = 4 + 4372;
/// Largest report payload in one event.
const DATA_MAX: usize = 4096;

const UHID_DESTROY: u32 = 1;
const UHID_START: u32 = 2;
const UHID_STOP: u32 = 3;
const UHID_OPEN: u32 = 4;
const UHID_CLOSE: u32 = 5;
const UHID_OUTPUT: u32 = 6;
const UHID_GET_REPORT: u32 = 9;
const UHID_GET_REPORT_REPLY: u32 = 10;
const UHID_CREATE2: u32 = 11;
const UHID_INPUT2: u32 = 12;
const UHID_SET_REPORT: u32 = 13;
const UHID_SET_REPORT_REPLY: u32 = 14;

/// `BUS_USB` from linux/input.h.
pub const BUS_USB: u16 = 0x03;

/// The FIDO HID report descriptor (CTAP 2.1 section 11.2.8.1): usage page
/// 0xF1D0, usage 0x01, one 64-byte input and one 64-byte output report, no ids.
pub const FIDO_REPORT_DESCRIPTOR: [u8; 34] = [
    0x06, 0xd0, 0xf1, // Usage Page (FIDO Alliance)
    0x09, 0x01, // Usage (CTAPHID)
    0xa1, 0x01, // Collection (Application)
    0x09, 0x20, //   Usage (Input Report Data)
    0x15, 0x00, //   Logical Minimum (0)
    0x26, 0xff, 0x00, //   Logical Maximum (255)
    0x75, 0x08, //   Report Size (8)
    0x95, 0x40, //   Report Count (64)
    0x81, 0x02, //   Input (Data, Var, Abs)
    0x09, 0x21, //   Usage (Output Report Data)
    0x15, 0x00, //   Logical Minimum (0)
    0x26, 0xff, 0x00, //   Logical Maximum (255)
    0x75, 0x08, //   Report Size (8)
    0x95, 0x40, //   Report Count (64)
    0x91, 0x02, //   Output (Data, Var, Abs)
    0xc0, // End Collection
];

/// What the device is called.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The product name (`HID_NAME`), what hidapi shows as the product string.
    pub name: String,
    /// A string unique to this device (`HID_UNIQ`), to find its hidraw node.
    pub uniq: String,
    /// USB vendor id.
    pub vendor: u32,
    /// USB product id.
    pub product: u32,
}

/// An event from the kernel that the device must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The host wrote an output report.
    Output(Vec<u8>),
    /// The host asked for a feature/input report (answered with an error).
    GetReport { id: u32 },
    /// The host sent a report through SET_REPORT (answered as done, data used as output).
    SetReport { id: u32, data: Vec<u8> },
    /// Start, stop, open, close: nothing to do.
    Lifecycle(&'static str),
    /// An event type this code does not know.
    Unknown(u32),
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Builds a UHID_CREATE2 record.
pub fn create2(identity: &Identity, descriptor: &[u8]) -> Vec<u8> {
    let mut ev = vec![0u8; EVENT_SIZE];
    ev[..4].copy_from_slice(&UHID_CREATE2.to_le_bytes());
    let put_str = |ev: &mut [u8], at: usize, cap: usize, s: &str| {
        let n = s.len().min(cap - 1);
        ev[at..at + n].copy_from_slice(&s.as_bytes()[..n]);
    };
    put_str(&mut ev, 4, 128, &identity.name);
    put_str(&mut ev, 4 + 128, 64, "chromecard-vkey");
    put_str(&mut ev, 4 + 192, 64, &identity.uniq);
    let at = 4 + 256;
    let rd = descriptor.len().min(DATA_MAX);
    ev[at..at + 2].copy_from_slice(&(rd as u16).to_le_bytes());
    ev[at + 2..at + 4].copy_from_slice(&BUS_USB.to_le_bytes());
    ev[at + 4..at + 8].copy_from_slice(&identity.vendor.to_le_bytes());
    ev[at + 8..at + 12].copy_from_slice(&identity.product.to_le_bytes());
    ev[at + 12..at + 16].copy_from_slice(&0x0100u32.to_le_bytes()); // version
    ev[at + 16..at + 20].copy_from_slice(&0u32.to_le_bytes()); // country
    ev[at + 20..at + 20 + rd].copy_from_slice(&descriptor[..rd]);
    ev
}

/// Builds a UHID_INPUT2 record carrying one input report.
pub fn input2(report: &[u8]) -> Vec<u8> {
    let n = report.len().min(DATA_MAX);
    let mut ev = vec![0u8; 4 + 2 + n];
    ev[..4].copy_from_slice(&UHID_INPUT2.to_le_bytes());
    ev[4..6].copy_from_slice(&(n as u16).to_le_bytes());
    ev[6..].copy_from_slice(&report[..n]);
    ev
}

fn reply(kind: u32, id: u32, err: u16) -> Vec<u8> {
    // uhid_get_report_reply_req / uhid_set_report_reply_req: id, err, (size, data).
    let mut ev = vec![0u8; 4 + 4 + 2 + 2];
    ev[..4].copy_from_slice(&kind.to_le_bytes());
    ev[4..8].copy_from_slice(&id.to_le_bytes());
    ev[8..10].copy_from_slice(&err.to_le_bytes());
    ev
}

/// Reads one record from the kernel.
pub fn parse_event(ev: &[u8]) -> Option<Event> {
    if ev.len() < 4 {
        return None;
    }
    let kind = u32_at(ev, 0);
    let body = &ev[4..];
    Some(match kind {
        UHID_START => Event::Lifecycle("start"),
        UHID_STOP => Event::Lifecycle("stop"),
        UHID_OPEN => Event::Lifecycle("open"),
        UHID_CLOSE => Event::Lifecycle("close"),
        UHID_OUTPUT => {
            // uhid_output_req: data[4096], size u16, rtype u8.
            if body.len() < DATA_MAX + 2 {
                return None;
            }
            let size = usize::from(u16_at(body, DATA_MAX)).min(DATA_MAX);
            Event::Output(body[..size].to_vec())
        }
        UHID_GET_REPORT => {
            if body.len() < 4 {
                return None;
            }
            Event::GetReport {
                id: u32_at(body, 0),
            }
        }
        UHID_SET_REPORT => {
            // uhid_set_report_req: id u32, rnum u8, rtype u8, size u16, data[4096].
            if body.len() < 8 {
                return None;
            }
            let size = usize::from(u16_at(body, 6)).min(DATA_MAX);
            let data = body.get(8..8 + size).unwrap_or(&[]).to_vec();
            Event::SetReport {
                id: u32_at(body, 0),
                data,
            }
        }
        other => Event::Unknown(other),
    })
}

/// The reading half of a uhid device.
pub struct Reader(File);

/// The writing half; several threads share it behind a mutex.
pub struct Writer(File);

/// Opens `/dev/uhid` and creates the device.
pub fn create(
    uhid_path: &Path,
    identity: &Identity,
    descriptor: &[u8],
) -> io::Result<(Reader, Writer)> {
    let mut file = OpenOptions::new().read(true).write(true).open(uhid_path)?;
    file.write_all(&create2(identity, descriptor))?;
    let reader = file.try_clone()?;
    Ok((Reader(reader), Writer(file)))
}

impl Reader {
    /// Blocks for the next event.
    pub fn next_event(&mut self) -> io::Result<Option<Event>> {
        let mut buf = vec![0u8; EVENT_SIZE];
        let n = self.0.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "/dev/uhid closed",
            ));
        }
        Ok(parse_event(&buf[..n]))
    }
}

impl Writer {
    /// Sends one input report to the host.
    pub fn input(&mut self, report: &[u8]) -> io::Result<()> {
        self.0.write_all(&input2(report))
    }

    /// Answers a GET_REPORT: this device has no feature reports.
    pub fn refuse_get_report(&mut self, id: u32) -> io::Result<()> {
        self.0
            .write_all(&reply(UHID_GET_REPORT_REPLY, id, 5 /* EIO */))
    }

    /// Answers a SET_REPORT as done.
    pub fn ack_set_report(&mut self, id: u32) -> io::Result<()> {
        self.0.write_all(&reply(UHID_SET_REPORT_REPLY, id, 0))
    }

    /// Destroys the device, as if its USB cable were pulled.
    pub fn destroy(&mut self) -> io::Result<()> {
        let mut ev = vec![0u8; 4];
        ev.copy_from_slice(&UHID_DESTROY.to_le_bytes());
        self.0.write_all(&ev)
    }
}

/// Finds the hidraw node the kernel made for the device whose `HID_UNIQ` is
/// `uniq`, waiting up to `limit` for it (and for devtmpfs to show it).
pub fn find_hidraw(uniq: &str, limit: Duration) -> io::Result<PathBuf> {
    let deadline = Instant::now() + limit;
    let wanted = format!("HID_UNIQ={uniq}");
    loop {
        if let Ok(entries) = std::fs::read_dir("/sys/class/hidraw") {
            for entry in entries.flatten() {
                let uevent = entry.path().join("device/uevent");
                let Ok(text) = std::fs::read_to_string(&uevent) else {
                    continue;
                };
                if text.lines().any(|l| l == wanted) {
                    let node = Path::new("/dev").join(entry.file_name());
                    if node.exists() {
                        return Ok(node);
                    }
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no /dev/hidraw node appeared for HID_UNIQ={uniq} within {limit:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create2_puts_the_fields_where_the_kernel_reads_them() {
        let id = Identity {
            name: "n".into(),
            uniq: "u".into(),
            vendor: 0x1209,
            product: 0xcafe,
        };
        let ev = create2(&id, &FIDO_REPORT_DESCRIPTOR);
        assert_eq!(ev.len(), EVENT_SIZE);
        assert_eq!(u32_at(&ev, 0), UHID_CREATE2);
        assert_eq!(ev[4], b'n');
        assert_eq!(ev[4 + 192], b'u');
        assert_eq!(u16_at(&ev, 260), 34);
        assert_eq!(u16_at(&ev, 262), BUS_USB);
        assert_eq!(u32_at(&ev, 264), 0x1209);
        assert_eq!(u32_at(&ev, 268), 0xcafe);
        assert_eq!(&ev[280..280 + 34], &FIDO_REPORT_DESCRIPTOR);
    }

    #[test]
    fn output_events_give_their_report() {
        let mut ev = vec![0u8; EVENT_SIZE];
        ev[..4].copy_from_slice(&UHID_OUTPUT.to_le_bytes());
        ev[4..8].copy_from_slice(&[1, 2, 3, 4]);
        ev[4 + DATA_MAX..4 + DATA_MAX + 2].copy_from_slice(&4u16.to_le_bytes());
        assert_eq!(parse_event(&ev), Some(Event::Output(vec![1, 2, 3, 4])));
        assert_eq!(parse_event(&ev[..10]), None);
        let mut start = vec![0u8; 8];
        start[..4].copy_from_slice(&UHID_START.to_le_bytes());
        assert_eq!(parse_event(&start), Some(Event::Lifecycle("start")));
    }

    #[test]
    fn input2_carries_the_report() {
        let ev = input2(&[9; 64]);
        assert_eq!(u32_at(&ev, 0), UHID_INPUT2);
        assert_eq!(u16_at(&ev, 4), 64);
        assert_eq!(&ev[6..], &[9; 64]);
    }
}
