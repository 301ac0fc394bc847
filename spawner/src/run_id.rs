//! Run ids: sortable by start time, unique without coordination.

use std::hash::{BuildHasher, Hasher};

/// A new run id: 12 hex digits of Unix milliseconds, then 16 random hex digits.
pub fn new_run_id() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    // RandomState is seeded from the OS's randomness; hashing the pid and a fine clock
    // reading through it gives 64 unpredictable bits without another dependency.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:012x}{:016x}", ms & 0xffff_ffff_ffff, h.finish())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_distinct_and_fixed_width() {
        let a = super::new_run_id();
        let b = super::new_run_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 28);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
