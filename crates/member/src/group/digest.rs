//! Digests of this member's own copies, for comparing copies across members: a volume at
//! rest must read the same on every member that holds a complete copy of a chunk.

use super::Group;
use control::CHUNK_BYTES;
use scsi::{BlockDevice, DeviceError};

impl Group {
    /// (chunk, placement group, CRC32C) of every chunk of `volume` this member holds in
    /// sync, read from its store. Blocking: reads the whole of those copies.
    pub fn copy_digests(&self, volume: u64) -> Result<Vec<api::ChunkDigest>, DeviceError> {
        let state = self.state();
        let Some(v) = state.volume_by_id(volume) else {
            return Err(DeviceError::Io(std::io::Error::other(format!(
                "no volume {volume}"
            ))));
        };
        let Some(table) = state.table(v.replicas) else {
            return Ok(Vec::new());
        };
        let local = self
            .store
            .volume(volume)
            .map_err(|e| DeviceError::Io(std::io::Error::other(e.to_string())))?;
        let bs = u64::from(local.block_size());
        let mut buf = vec![0u8; CHUNK_BYTES as usize];
        let mut out = Vec::new();
        for chunk in 0..v.size.div_ceil(CHUNK_BYTES) {
            let start = chunk * CHUNK_BYTES;
            let pg = self.striping.pg_of(v.placement_key(), start);
            if !table.is_in_sync(pg, self.node) {
                continue;
            }
            let len = (v.size - start).min(CHUNK_BYTES) as usize;
            local.read(start / bs, &mut buf[..len])?;
            out.push(api::ChunkDigest {
                chunk,
                pg,
                crc32c: crc32c::crc32c(&buf[..len]),
                primary: table.primary(pg) == Some(self.node),
            });
        }
        Ok(out)
    }
}
