//! The member's configuration file (TOML).
//!
//! ```toml
//! name = "member-1"          # default: member-<node_id>
//! node_id = 1                # default: 1
//! data_dir = "/var/lib/haven"
//! portal = "0.0.0.0:3260"    # this member's iSCSI portal; default 127.0.0.1:3260
//! api = "127.0.0.1:7070"     # REST API (and Raft) address; default 127.0.0.1:7070
//! group_portal = "127.0.0.2:3260"  # served by whichever member leads; optional
//! capacity = "100GiB"        # what this member offers the pool; default: the free space
//!                            # when its store first joined (a restart keeps it)
//! bootstrap = true           # start a new single-member group if none exists; default true
//! join = "127.0.0.1:7070"    # a member's API to join the group through (with bootstrap = false)
//! peer = "127.0.0.1:7170"    # member-to-member data path; default: the API's host, any port
//! ```

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML for a member.
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value is out of range or malformed.
    #[error("invalid config value for {key}: {message}")]
    Value { key: &'static str, message: String },
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: Option<String>,
    node_id: Option<u64>,
    data_dir: Option<PathBuf>,
    portal: Option<String>,
    api: Option<String>,
    group_portal: Option<String>,
    capacity: Option<String>,
    bootstrap: Option<bool>,
    join: Option<String>,
    peer: Option<String>,
    down_out_secs: Option<u64>,
    io_deadline_secs: Option<u64>,
    busy_poll_us: Option<u64>,
}

/// A member's settings, with defaults filled in.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    pub name: String,
    pub node_id: u64,
    pub data_dir: PathBuf,
    pub portal: String,
    pub api: String,
    pub group_portal: Option<String>,
    pub capacity: Option<u64>,
    pub bootstrap: bool,
    /// The API of a member of the group to join (a new member that does not bootstrap).
    pub join: Option<String>,
    /// The member-to-member listener.
    pub peer: String,
    /// How long a down member keeps its placement groups before they get new copies
    /// elsewhere (applied by whichever member leads). A member back sooner resyncs only
    /// what changed while it was away.
    pub down_out: std::time::Duration,
    /// How long an I/O is retried while its data has no reachable primary (a member
    /// failing over, or this member cut off) before the initiator gets an error.
    pub io_deadline: std::time::Duration,
    /// How long a session's connection looks for the initiator's next command before it
    /// sleeps (`busy_poll_us`; 0, the default, never): lower latency at low queue depth
    /// for the CPU of the looks, on a member whose cores its initiators do not share.
    pub busy_poll: std::time::Duration,
}

/// The longest `busy_poll_us` accepted: 10 ms.
const MAX_BUSY_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// The default I/O deadline: the usual SCSI command timeout of an initiator.
pub const DEFAULT_IO_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// The default wait before a down member's groups move: long enough for a restart or a
/// short network outage, short enough not to run on one copy for long.
pub const DEFAULT_DOWN_OUT: std::time::Duration = std::time::Duration::from_secs(300);

impl MemberConfig {
    /// Defaults for a standalone member keeping its data in `data_dir`.
    pub fn standalone(data_dir: PathBuf) -> Self {
        MemberConfig {
            name: "member-1".into(),
            node_id: 1,
            data_dir,
            portal: "127.0.0.1:3260".into(),
            api: "127.0.0.1:7070".into(),
            group_portal: None,
            capacity: None,
            bootstrap: true,
            join: None,
            peer: "127.0.0.1:0".into(),
            down_out: DEFAULT_DOWN_OUT,
            io_deadline: DEFAULT_IO_DEADLINE,
            busy_poll: crate::portal::DEFAULT_BUSY_POLL,
        }
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: Raw = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
        let node_id = raw.node_id.unwrap_or(1);
        if node_id == 0 {
            return Err(ConfigError::Value {
                key: "node_id",
                message: "must be at least 1".into(),
            });
        }
        let data_dir = raw.data_dir.ok_or(ConfigError::Value {
            key: "data_dir",
            message: "is required".into(),
        })?;
        let capacity = match raw.capacity {
            Some(c) => Some(api::parse_size(&c).map_err(|e| ConfigError::Value {
                key: "capacity",
                message: e.to_string(),
            })?),
            None => None,
        };
        let api = raw.api.unwrap_or_else(|| "127.0.0.1:7070".into());
        let peer = raw
            .peer
            .unwrap_or_else(|| match api.parse::<std::net::SocketAddr>() {
                Ok(a) => std::net::SocketAddr::new(a.ip(), 0).to_string(),
                Err(_) => "127.0.0.1:0".into(),
            });
        let cfg = MemberConfig {
            name: raw.name.unwrap_or_else(|| format!("member-{node_id}")),
            node_id,
            data_dir,
            portal: raw.portal.unwrap_or_else(|| "127.0.0.1:3260".into()),
            api,
            group_portal: raw.group_portal,
            capacity,
            bootstrap: raw.bootstrap.unwrap_or(true),
            join: raw.join,
            peer,
            down_out: raw
                .down_out_secs
                .map_or(DEFAULT_DOWN_OUT, std::time::Duration::from_secs),
            io_deadline: raw
                .io_deadline_secs
                .map_or(DEFAULT_IO_DEADLINE, std::time::Duration::from_secs),
            busy_poll: raw.busy_poll_us.map_or(
                crate::portal::DEFAULT_BUSY_POLL,
                std::time::Duration::from_micros,
            ),
        };
        if cfg.busy_poll > MAX_BUSY_POLL {
            return Err(ConfigError::Value {
                key: "busy_poll_us",
                message: format!(
                    "must be at most {}: a longer look costs CPU and gains nothing",
                    MAX_BUSY_POLL.as_micros()
                ),
            });
        }
        if cfg.io_deadline < std::time::Duration::from_secs(5) {
            return Err(ConfigError::Value {
                key: "io_deadline_secs",
                message: "must be at least 5: failover takes a few seconds".into(),
            });
        }
        for (key, addr) in [
            ("portal", Some(&cfg.portal)),
            ("api", Some(&cfg.api)),
            ("group_portal", cfg.group_portal.as_ref()),
            ("join", cfg.join.as_ref()),
            ("peer", Some(&cfg.peer)),
        ] {
            if let Some(a) = addr {
                if a.parse::<std::net::SocketAddr>().is_err() {
                    return Err(ConfigError::Value {
                        key,
                        message: format!("{a:?} is not an ip:port address"),
                    });
                }
            }
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let p = Path::new("m.toml");
        let c = MemberConfig::parse("data_dir = \"/tmp/x\"\nnode_id = 2\n", p).unwrap();
        assert_eq!(c.name, "member-2");
        assert!(c.bootstrap);
        assert!(MemberConfig::parse("node_id = 1\n", p).is_err());
        assert!(MemberConfig::parse("data_dir = \"/x\"\nportal = \"nope\"\n", p).is_err());
        assert!(MemberConfig::parse("data_dir = \"/x\"\nbogus = 1\n", p).is_err());
        assert!(MemberConfig::parse("data_dir = \"/x\"\ncapacity = \"12XB\"\n", p).is_err());
        assert_eq!(c.down_out, DEFAULT_DOWN_OUT);
        assert_eq!(c.busy_poll, crate::portal::DEFAULT_BUSY_POLL);
        assert!(c.busy_poll.is_zero(), "looking is off unless asked for");
        let on = MemberConfig::parse("data_dir = \"/x\"\nbusy_poll_us = 50\n", p).unwrap();
        assert_eq!(on.busy_poll, std::time::Duration::from_micros(50));
        assert!(MemberConfig::parse("data_dir = \"/x\"\nbusy_poll_us = 20000\n", p).is_err());
        let c = MemberConfig::parse("data_dir = \"/x\"\ndown_out_secs = 7\n", p).unwrap();
        assert_eq!(c.down_out.as_secs(), 7);
        assert!(MemberConfig::parse("data_dir = \"/x\"\nio_deadline_secs = 1\n", p).is_err());
    }
}
