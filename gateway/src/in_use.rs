//! Values shared by the configs that use them, found by a key: a reload that builds the
//! same thing again gets the one in use (its state kept: TLS tickets, a fetched OCSP
//! response), and a value no config holds any more is let go.

use std::sync::{Arc, Mutex, PoisonError, Weak};

/// The values in use, by key; each is held only by its users.
#[derive(Debug)]
pub struct InUse<K, T> {
    entries: Mutex<Vec<(K, Weak<T>)>>,
}

impl<K: PartialEq, T> Default for InUse<K, T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: PartialEq, T> InUse<K, T> {
    /// None in use.
    pub const fn new() -> Self {
        Self {
            entries: Mutex::new(Vec::new()),
        }
    }

    /// The value in use for `key`, or the one `make` makes (then in use for `key`);
    /// whether it was made.
    pub fn get_or_make<E>(
        &self,
        key: K,
        make: impl FnOnce() -> Result<T, E>,
    ) -> Result<(Arc<T>, bool), E> {
        let mut entries = self.lock();
        if let Some(kept) = entries
            .iter()
            .filter(|(for_key, _)| *for_key == key)
            .find_map(|(_, value)| value.upgrade())
        {
            return Ok((kept, false));
        }
        let made = Arc::new(make()?);
        entries.push((key, Arc::downgrade(&made)));
        Ok((made, true))
    }

    /// Every value in use.
    pub fn all(&self) -> Vec<Arc<T>> {
        self.lock()
            .iter()
            .filter_map(|(_, value)| value.upgrade())
            .collect()
    }

    /// The entries, those no one holds any more dropped.
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(K, Weak<T>)>> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|(_, value)| value.strong_count() > 0);
        entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_shared_while_held_and_made_again_after() -> Result<(), String> {
        let in_use: InUse<u8, String> = InUse::new();
        let (first, made) = in_use.get_or_make(1, || Ok::<_, String>("one".into()))?;
        assert!(made);
        let (again, made) = in_use.get_or_make(1, || Err("not called".to_owned()))?;
        assert!(!made && Arc::ptr_eq(&first, &again));
        let (other, made) = in_use.get_or_make(2, || Ok::<_, String>("two".into()))?;
        assert!(made && *other == "two");
        assert_eq!(in_use.all().len(), 2);
        drop((first, again));
        assert_eq!(in_use.all().len(), 1);
        let (_, made) = in_use.get_or_make(1, || Ok::<_, String>("one again".into()))?;
        assert!(made);
        // A failed make keeps nothing.
        assert!(in_use.get_or_make(3, || Err("no".to_owned())).is_err());
        assert_eq!(in_use.all().len(), 1);
        Ok(())
    }
}
