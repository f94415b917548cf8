//! redb's file backend (which holds an exclusive `flock` on the file), wrapped so that
//! the unit tests can make writes and fsyncs fail as a full disk would.

use std::fs::File;
use std::io;

use redb::backends::FileBackend;
use redb::{DatabaseError, StorageBackend};

#[cfg(test)]
pub(crate) type FaultSwitch = std::sync::Arc<std::sync::atomic::AtomicBool>;

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
            Some(fault) if fault.load(std::sync::atomic::Ordering::SeqCst) => {
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
        self.file.sync_data(eventual)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.check()?;
        self.file.write(offset, data)
    }
}
