//! The lab's record of itself (`DIR/lab.toml`): addresses chosen once and kept, so a lab
//! brought down and up again has the same portals and API URLs.

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LabMember {
    pub name: String,
    pub node_id: u64,
    pub api: String,
    pub portal: String,
    /// Member-to-member listener ("" in labs made before it existed: any free port).
    #[serde(default)]
    pub peer: String,
    /// What the member offers the pool (`--member-capacity`); free space when unset.
    #[serde(default)]
    pub capacity: Option<String>,
}

/// A hypervisor host of the lab: its agent's API address.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LabHost {
    pub name: String,
    pub api: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LabState {
    pub group_portal: String,
    pub members: Vec<LabMember>,
    #[serde(default)]
    pub hosts: Vec<LabHost>,
    /// How long a down member keeps its placement groups (`--down-out-secs`); the
    /// member's default when unset.
    #[serde(default)]
    pub down_out_secs: Option<u64>,
    #[serde(skip)]
    pub dir: PathBuf,
}

impl LabState {
    pub fn file(dir: &Path) -> PathBuf {
        dir.join("lab.toml")
    }

    /// The lab in `dir`, or None when there is none yet.
    pub fn load(dir: &Path) -> anyhow::Result<Option<LabState>> {
        if dir.exists() && !dir.is_dir() {
            bail!(
                "lab data dir {} exists and is not a directory",
                dir.display()
            );
        }
        let f = Self::file(dir);
        if !f.exists() {
            return Ok(None);
        }
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        let mut s: LabState =
            toml::from_str(&text).with_context(|| format!("parsing {}", f.display()))?;
        s.dir = dir.to_path_buf();
        Ok(Some(s))
    }

    pub fn save(&self) -> anyhow::Result<()> {
        let f = Self::file(&self.dir);
        let tmp = f.with_extension("toml.tmp");
        std::fs::write(&tmp, toml::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &f).with_context(|| format!("writing {}", f.display()))?;
        Ok(())
    }

    pub fn api_urls(&self) -> Vec<String> {
        self.active_members()
            .map(|m| format!("http://{}", m.api))
            .collect()
    }

    pub fn member(&self, name: &str) -> Option<&LabMember> {
        self.members.iter().find(|m| m.name == name)
    }

    pub fn host(&self, name: &str) -> Option<&LabHost> {
        self.hosts.iter().find(|h| h.name == name)
    }

    pub fn member_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Members the group has not removed (`haven member remove` leaves a mark in the data
    /// dir of the member it removed, which then does not start again).
    pub fn active_members(&self) -> impl Iterator<Item = &LabMember> {
        self.members.iter().filter(|m| {
            !self
                .member_dir(&m.name)
                .join("data")
                .join(member::REMOVED_MARKER)
                .exists()
        })
    }

    /// Write `DIR/env` for `source`.
    pub fn write_env(&self) -> anyhow::Result<()> {
        let text = format!(
            "HAVEN_API={}\nHAVEN_PORTAL={}\nexport HAVEN_API HAVEN_PORTAL\n",
            self.api_urls().join(","),
            self.group_portal
        );
        std::fs::write(self.dir.join("env"), text).context("writing the lab's env file")?;
        Ok(())
    }
}

/// A free TCP port on 127.0.0.1 that outgoing connections never take
/// ([`member::ports`]).
pub fn free_port() -> anyhow::Result<u16> {
    member::ports::free_local_port().context("finding a free port")
}
