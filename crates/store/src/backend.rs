//! redb's file backend (which holds an exclusive `flock` on the file), wrapped so that
//! the unit tests can make writes and fsyncs fail as a full disk would, and count the
//! fsyncs that make commits durable.

use std::fs::File;
use std::io;

use redb::backends::FileBackend;
use redb::{DatabaseError, StorageBackend};

/// What a unit test holds on a store's file: a switch that makes writes and fsyncs fail,
/// and a count of the durable fsyncs done.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Probe {
    pub(crate) fail: std::sync::atomic::AtomicBool,
    /// `sync_data` calls that asked for durability now (not `eventual`) and succeeded.
    pub(crate) durable_syncs: std::sync::atomic::AtomicU64,
}

#[cfg(test)]
pub(crate) type FaultSwitch = std::sync::Arc<Probe>;

#[derive(Debug)]
pub(crate) struct Backend {
    file: FileBackend,
    #[cfg(test)]
    fault: Option<FaultSwitch>,
}

impl Backend {
    /// Takes the file's lock; a file locked by another process is
    /// `DatabaseError::DatabaseAlreadyOpen`.
    pub(crate) fn new(
        file: File,
        #[cfg(test)] fault: Option<FaultSwitch>,
    ) -> Result<Self, DatabaseError> {
        Ok(Self {
            file: FileBackend::new(file)?,
            #[cfg(test)]
            fault,
        })
    }

    #[cfg(test)]
    fn check(&self) -> Result<(), io::Error> {
        match &self.fault {
            Some(fault) if fault.fail.load(std::sync::atomic::Ordering::SeqCst) => {
                // ENOSPC: what a full disk answers.
                Err(io::Error::from_raw_os_error(28))
            }
            _ => Ok(()),
        }
    }

    #[cfg(not(test))]
    #[inline]
    fn check(&self) -> Result<(), io::Error> {
        Ok(())
    }
}

impl StorageBackend for Backend {
    fn len(&self) -> Result<u64, io::Error> {
        self.file.len()
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, io::Error> {
        self.file.read(offset, len)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.check()?;
        self.file.set_len(len)
    }

    fn sync_data(&self, eventual: bool) -> Result<(), io::Error> {
        self.check()?;
        self.file.sync_data(eventual)?;
        #[cfg(test)]
        if let (Some(probe), false) = (&self.fault, eventual) {
            probe
                .durable_syncs
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.check()?;
        self.file.write(offset, data)
    }
}
