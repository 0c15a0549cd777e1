//! The lineage of a member's copies: which store they live in and which boot of the machine
//! last wrote them.
//!
//! A member killed and restarted on the same boot lost nothing it had written (the journal
//! is written with `pwrite` before a write is acknowledged, and the page cache survives the
//! process), so the group may resync only what changed while it was away. After a reboot,
//! writes it acknowledged but had not synced may be gone, and a wiped store has nothing:
//! either changes the copy id, and the group then fills its copies completely.

use std::io;
use std::path::Path;

/// The file beside the store that names it.
const STORE_ID_FILE: &str = "store-id";

/// This member's copy id: `<store id>@<boot id>`. A new store id is drawn whenever the
/// store directory does not exist yet (first start, or the data was wiped).
pub fn copy_id(data_dir: &Path) -> io::Result<String> {
    let id_path = data_dir.join(STORE_ID_FILE);
    let fresh_store = !data_dir.join("store").exists();
    let existing = std::fs::read_to_string(&id_path).ok();
    let store_id = match existing {
        Some(id) if !fresh_store && !id.trim().is_empty() => id.trim().to_string(),
        _ => {
            let id = format!("{:016x}", random_u64());
            let tmp = id_path.with_extension("tmp");
            std::fs::write(&tmp, &id)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &id_path)?;
            id
        }
    };
    Ok(format!("{store_id}@{}", boot_id()))
}

/// The kernel's id of this boot; "unknown" where there is none (every restart then counts
/// as a new lineage, which only costs a full fill).
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| format!("unknown-{:016x}", random_u64()))
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_stays_while_the_store_does_and_changes_when_it_is_wiped() {
        let dir = tempfile::tempdir().unwrap();
        let first = copy_id(dir.path()).unwrap();
        // The member opens (creates) its store after drawing the id.
        std::fs::create_dir(dir.path().join("store")).unwrap();
        let kept = copy_id(dir.path()).unwrap();
        assert_eq!(first, kept);
        assert!(kept.ends_with(&boot_id()));
        std::fs::remove_dir(dir.path().join("store")).unwrap();
        assert_ne!(kept, copy_id(dir.path()).unwrap());
    }
}
