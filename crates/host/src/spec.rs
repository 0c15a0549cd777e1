//! The definition of a VM: what the host needs to know to run it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// A VM definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// The VM's name: letters, digits, `-`, `_` and `.`.
    pub name: String,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory, a multiple of 1 MiB.
    pub memory_bytes: u64,
    /// Disks, in the order the guest sees them (`vda`, `vdb`, …).
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    /// How the guest boots.
    pub boot: Boot,
    /// The iSCSI initiator name (IQN) this host logs in with.
    pub initiator_name: String,
}

/// One disk of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    /// The volume's name; also names the disk's QEMU block node and device.
    pub volume: String,
    /// Where the disk is: `iscsi://PORTAL/TARGET-IQN/LUN`, or `file:///PATH` (a local raw
    /// file, for tests).
    pub url: String,
}

/// How a VM boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Boot {
    /// Direct kernel boot.
    Kernel {
        /// The kernel image.
        kernel: PathBuf,
        /// The initial ramdisk, if any.
        #[serde(default)]
        initrd: Option<PathBuf>,
        /// The kernel command line (`console=ttyS0` is added when no console is given).
        #[serde(default)]
        append: String,
    },
    /// Firmware boot from the first disk.
    Disk,
}

/// Where a disk is, parsed from [`DiskSpec::url`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskLocation {
    /// An iSCSI LUN.
    Iscsi {
        /// `host:port` (port 3260 when the URL has none).
        portal: String,
        /// The target's IQN.
        target: String,
        /// The LUN.
        lun: u32,
    },
    /// A local raw file.
    File(PathBuf),
}

impl DiskSpec {
    /// Parses the disk's URL.
    pub fn location(&self) -> Result<DiskLocation> {
        let bad = |why: &str| {
            Error::new(
                ErrorKind::Invalid,
                format!("disk {:?}: url {:?}: {why}", self.volume, self.url),
            )
        };
        if let Some(path) = self.url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad("a file url needs an absolute path"));
            }
            return Ok(DiskLocation::File(PathBuf::from(path)));
        }
        let Some(rest) = self.url.strip_prefix("iscsi://") else {
            return Err(bad("expected iscsi://PORTAL/TARGET/LUN or file:///PATH"));
        };
        let mut parts = rest.splitn(2, '/');
        let portal = parts.next().unwrap_or_default();
        let rest = parts.next().ok_or_else(|| bad("no target"))?;
        let (target, lun) = rest.rsplit_once('/').ok_or_else(|| bad("no LUN"))?;
        if portal.is_empty() || portal.contains('@') {
            return Err(bad("bad portal (credentials are not supported)"));
        }
        if target.is_empty() || target.contains('/') {
            return Err(bad("bad target"));
        }
        let lun: u32 = lun.parse().map_err(|_| bad("the LUN is not a number"))?;
        let portal = if portal.starts_with('[') {
            // [v6]:port or [v6]
            if portal.contains("]:") {
                portal.to_string()
            } else {
                format!("{portal}:3260")
            }
        } else if portal.contains(':') {
            portal.to_string()
        } else {
            format!("{portal}:3260")
        };
        Ok(DiskLocation::Iscsi {
            portal,
            target: target.to_string(),
            lun,
        })
    }
}

impl VmSpec {
    /// Checks the definition for what QEMU would reject or misread.
    pub fn validate(&self) -> Result<()> {
        let bad =
            |why: String| Error::new(ErrorKind::Invalid, format!("VM {:?}: {why}", self.name));
        if !is_name(&self.name) {
            return Err(bad(
                "the name must be 1-64 letters, digits, '-', '_' or '.'".into(),
            ));
        }
        if self.cpus == 0 || self.cpus > 255 {
            return Err(bad(format!("{} CPUs", self.cpus)));
        }
        const MIB: u64 = 1 << 20;
        if self.memory_bytes < 16 * MIB || self.memory_bytes % MIB != 0 {
            return Err(bad(format!(
                "memory {} bytes: must be a multiple of 1 MiB and at least 16 MiB",
                self.memory_bytes
            )));
        }
        if self.initiator_name.is_empty()
            || self.initiator_name.contains(',')
            || self.initiator_name.contains(char::is_whitespace)
        {
            return Err(bad(format!("bad initiator name {:?}", self.initiator_name)));
        }
        let mut seen = std::collections::HashSet::new();
        for d in &self.disks {
            if !is_name(&d.volume) {
                return Err(bad(format!("bad volume name {:?}", d.volume)));
            }
            if !seen.insert(&d.volume) {
                return Err(bad(format!("volume {:?} attached twice", d.volume)));
            }
            d.location()?;
        }
        if matches!(self.boot, Boot::Disk) && self.disks.is_empty() {
            return Err(bad("boots from disk but has no disk".into()));
        }
        Ok(())
    }
}

pub(crate) fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(url: &str) -> DiskSpec {
        DiskSpec {
            volume: "v1".into(),
            url: url.into(),
        }
    }

    #[test]
    fn iscsi_urls_parse() {
        assert_eq!(
            disk("iscsi://10.0.0.1:3261/iqn.2024-01.io.haven:vol-1/0")
                .location()
                .unwrap(),
            DiskLocation::Iscsi {
                portal: "10.0.0.1:3261".into(),
                target: "iqn.2024-01.io.haven:vol-1".into(),
                lun: 0
            }
        );
        assert_eq!(
            disk("iscsi://san/iqn.x:y/3").location().unwrap(),
            DiskLocation::Iscsi {
                portal: "san:3260".into(),
                target: "iqn.x:y".into(),
                lun: 3
            }
        );
        assert_eq!(
            disk("file:///tmp/d.img").location().unwrap(),
            DiskLocation::File("/tmp/d.img".into())
        );
        for bad in [
            "iscsi://san/iqn.x",
            "iscsi://san/iqn.x/lun",
            "iscsi:///iqn.x/0",
            "nbd://x/y",
            "file://rel",
            "iscsi://u:p@san/iqn/0",
        ] {
            assert_eq!(
                disk(bad).location().unwrap_err().kind,
                ErrorKind::Invalid,
                "{bad}"
            );
        }
    }

    #[test]
    fn specs_round_trip_through_json_and_validate() {
        let spec = VmSpec {
            name: "web-1".into(),
            cpus: 2,
            memory_bytes: 512 << 20,
            disks: vec![disk("iscsi://127.0.0.1:3260/iqn.2024-01.io.haven:web/0")],
            boot: Boot::Kernel {
                kernel: "/k".into(),
                initrd: Some("/i".into()),
                append: "quiet".into(),
            },
            initiator_name: "iqn.2024-01.io.haven:host-a".into(),
        };
        spec.validate().unwrap();
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains("\"type\":\"kernel\""), "{json}");
        let back: VmSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);

        let mut bad = spec.clone();
        bad.name = "a b".into();
        assert!(bad.validate().is_err());
        let mut bad = spec.clone();
        bad.memory_bytes += 1;
        assert!(bad.validate().is_err());
        let mut bad = spec.clone();
        bad.disks.push(bad.disks[0].clone());
        assert!(bad.validate().is_err());
        let mut bad = spec;
        bad.boot = Boot::Disk;
        bad.disks.clear();
        assert!(bad.validate().is_err());
    }
}
