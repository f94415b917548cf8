//! The USB side: FIDO HID devices found through hidapi (hidraw on Linux), and a
//! [`Port`] that moves 64-byte reports with a timeout on every read. This file
//! knows nothing of CTAPHID or CTAP2.

use std::ffi::CString;
use std::time::Duration;

use chromecard_ctaphid::host::{HostError, Port};
use chromecard_ctaphid::PACKET_SIZE;
use hidapi::{HidApi, HidDevice};

/// The FIDO Alliance usage page and the CTAPHID usage (CTAP 2.1 section 11.2.8.1).
const FIDO_USAGE_PAGE: u16 = 0xf1d0;
const CTAPHID_USAGE: u16 = 0x01;

/// One attached FIDO HID interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// hidapi's path (`/dev/hidrawN` on Linux); `None` if it was not UTF-8.
    pub path: Option<String>,
    /// The product name the device reports.
    pub product: String,
}

/// Every attached FIDO HID interface, enumerated afresh.
pub fn enumerate() -> Result<Vec<Found>, String> {
    let api = HidApi::new().map_err(|e| format!("hidapi: {e}"))?;
    Ok(api
        .device_list()
        .filter(|d| d.usage_page() == FIDO_USAGE_PAGE && d.usage() == CTAPHID_USAGE)
        .map(|d| Found {
            path: d.path().to_str().ok().map(str::to_string),
            product: d.product_string().unwrap_or_default().to_string(),
        })
        .collect())
}

/// An open FIDO HID device.
pub struct HidPort {
    device: HidDevice,
}

impl HidPort {
    /// Opens the device at `path`.
    pub fn open(path: &str) -> Result<Self, String> {
        let c = CString::new(path).map_err(|_| format!("{path:?}: a NUL byte in the path"))?;
        let api = HidApi::new().map_err(|e| format!("hidapi: {e}"))?;
        let device = api.open_path(&c).map_err(|e| format!("{path}: {e}"))?;
        Ok(Self { device })
    }
}

impl Port for HidPort {
    fn send(&mut self, report: &[u8; PACKET_SIZE]) -> Result<(), HostError> {
        // Report number 0 first: the FIDO descriptor has no report ids.
        let mut out = [0u8; PACKET_SIZE + 1];
        out[1..].copy_from_slice(report);
        match self.device.write(&out) {
            Ok(n) if n >= PACKET_SIZE => Ok(()),
            Ok(n) => Err(HostError::Io(format!("short write: {n} bytes"))),
            Err(e) => Err(HostError::Io(e.to_string())),
        }
    }

    fn recv(&mut self, wait: Duration) -> Result<Option<[u8; PACKET_SIZE]>, HostError> {
        let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX).max(1);
        let mut buf = [0u8; PACKET_SIZE];
        match self.device.read_timeout(&mut buf, ms) {
            Ok(0) => Ok(None),
            Ok(PACKET_SIZE) => Ok(Some(buf)),
            // A FIDO interface's input report is 64 bytes; anything else is not one,
            // and zero-padding it would invent bytes the device never sent.
            Ok(n) => Err(HostError::Io(format!(
                "short read: {n} bytes, expected a {PACKET_SIZE}-byte report"
            ))),
            Err(e) => Err(HostError::Io(e.to_string())),
        }
    }
}
