//! A value replaced whole on reload (SIGHUP): readers take the current `Arc` and keep
//! it for the rest of their request, so a reload never changes a request half-way.

use std::sync::{Arc, RwLock};

/// The reload slot.
pub struct Slot<T>(RwLock<Arc<T>>);

impl<T> Slot<T> {
    /// A slot holding `value`.
    pub fn new(value: T) -> Self {
        Self(RwLock::new(Arc::new(value)))
    }

    /// The current value. A poisoned lock still holds a whole value (writers only swap an
    /// `Arc`), so it is used as is.
    pub fn get(&self) -> Arc<T> {
        match self.0.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Swaps in a new value; requests already running keep the old one.
    pub fn replace(&self, value: T) {
        let value = Arc::new(value);
        match self.0.write() {
            Ok(mut current) => *current = value,
            Err(poisoned) => *poisoned.into_inner() = value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_keeps_its_value_across_a_replace() {
        let slot = Slot::new(1);
        let held = slot.get();
        slot.replace(2);
        assert_eq!((*held, *slot.get()), (1, 2));
    }
}
