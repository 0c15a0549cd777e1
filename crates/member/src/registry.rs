//! The volumes this member serves and the sessions logged in to them.
//!
//! The registry follows the control plane's state: every applied change is reconciled
//! here (open new volumes, grow resized ones, close and delete removed ones).

use api::SessionView;
use control::{ClusterState, Volume};
use scsi::{BlockDevice, LogicalUnit, LuIdentity};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use store::FileDevice;
use tokio::sync::Notify;

/// One volume served here.
pub struct VolumeHandle {
    pub volume: RwLock<Volume>,
    pub lu: Arc<LogicalUnit>,
    pub dev: Arc<FileDevice>,
}

/// Identifies a session for reinstatement: the same initiator port to the same target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub initiator: String,
    pub isid: u64,
    pub target: Option<String>,
}

struct SessionEntry {
    id: u64,
    close: Arc<Notify>,
    portal: String,
}

/// Volumes and sessions of this member.
pub struct Registry {
    pub member: String,
    data_dir: PathBuf,
    volumes: RwLock<HashMap<String, Arc<VolumeHandle>>>,
    sessions: Mutex<HashMap<SessionKey, SessionEntry>>,
    next_session: AtomicU64,
}

/// The NAA designator of a volume: type 6 (IEEE registered extended) with haven's
/// locally chosen company id and the volume's id and creation time, so it is stable for the
/// volume's life and the same on every member.
pub fn naa_for(v: &Volume) -> [u8; 16] {
    let mut naa = [0u8; 16];
    naa[0] = 0x60; // NAA 6, company id 0x000000 follows in the next 24 bits
    naa[3] = 0x0a; // vendor-specific identifier starts: 'haven' marker nibble
    naa[4..12].copy_from_slice(&v.id.to_be_bytes());
    naa[12..16].copy_from_slice(&(v.created as u32).to_be_bytes());
    naa
}

impl Registry {
    pub fn new(member: String, data_dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(data_dir.join("volumes"))?;
        Ok(Registry {
            member,
            data_dir,
            volumes: RwLock::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
        })
    }

    fn path_for(&self, v: &Volume) -> PathBuf {
        self.data_dir
            .join("volumes")
            .join(format!("{:016x}.img", v.id))
    }

    /// The volume whose target is `iqn`.
    pub fn get(&self, iqn: &str) -> Option<Arc<VolumeHandle>> {
        self.volumes.read().unwrap().get(iqn).cloned()
    }

    pub fn all(&self) -> Vec<Arc<VolumeHandle>> {
        let mut v: Vec<_> = self.volumes.read().unwrap().values().cloned().collect();
        v.sort_by_key(|h| h.volume.read().unwrap().name.clone());
        v
    }

    /// Bring the served volumes in line with the cluster state.
    pub fn reconcile(&self, state: &ClusterState) {
        let wanted: HashMap<String, &Volume> =
            state.volumes.values().map(|v| (v.iqn(), v)).collect();
        let mut gone = Vec::new();
        {
            let mut vols = self.volumes.write().unwrap();
            vols.retain(|iqn, h| {
                let keep = wanted
                    .get(iqn)
                    .is_some_and(|v| v.id == h.volume.read().unwrap().id);
                if !keep {
                    gone.push((iqn.clone(), h.clone()));
                }
                keep
            });
            for (iqn, v) in &wanted {
                match vols.get(iqn) {
                    Some(h) => {
                        let old_size = h.volume.read().unwrap().size;
                        if v.size > old_size {
                            match h.dev.grow(v.size) {
                                Ok(()) => {
                                    h.lu.capacity_changed();
                                    tracing::info!(volume = %v.name, size = v.size, "volume grown");
                                }
                                Err(e) => {
                                    tracing::error!(volume = %v.name, error = %e, "cannot grow volume")
                                }
                            }
                        }
                        *h.volume.write().unwrap() = (*v).clone();
                    }
                    None => match self.open(v) {
                        Ok(h) => {
                            vols.insert(iqn.clone(), Arc::new(h));
                        }
                        Err(e) => {
                            tracing::error!(volume = %v.name, error = %e, "cannot open volume")
                        }
                    },
                }
            }
        }
        for (iqn, h) in gone {
            self.close_sessions(&iqn);
            let v = h.volume.read().unwrap().clone();
            let path = self.path_for(&v);
            drop(h);
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::error!(volume = %v.name, error = %e, "cannot remove volume data");
                }
            }
            tracing::info!(volume = %v.name, "volume removed");
        }
    }

    fn open(&self, v: &Volume) -> std::io::Result<VolumeHandle> {
        let dev = Arc::new(FileDevice::open(
            &self.path_for(v),
            v.size,
            v.block_size,
            false,
        )?);
        if v.thick {
            preallocate(&self.path_for(v), v.size)?;
        }
        let identity = LuIdentity {
            naa: naa_for(v),
            serial: format!("{:016x}", v.id),
            target_name: v.iqn(),
            target_port_group: 1,
        };
        let lu = Arc::new(LogicalUnit::new(
            dev.clone() as Arc<dyn BlockDevice>,
            identity,
        ));
        tracing::info!(volume = %v.name, size = v.size, "volume opened");
        Ok(VolumeHandle {
            volume: RwLock::new(v.clone()),
            lu,
            dev,
        })
    }

    /// Record a new session; an older one with the same key is told to close
    /// (session reinstatement). Returns the session id and its close signal.
    pub fn session_started(&self, key: SessionKey, portal: &str) -> (u64, Arc<Notify>) {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        let old = self.sessions.lock().unwrap().insert(
            key,
            SessionEntry {
                id,
                close: close.clone(),
                portal: portal.to_string(),
            },
        );
        if let Some(old) = old {
            old.close.notify_one();
        }
        (id, close)
    }

    pub fn session_ended(&self, key: &SessionKey, id: u64) {
        let mut s = self.sessions.lock().unwrap();
        if s.get(key).is_some_and(|e| e.id == id) {
            s.remove(key);
        }
    }

    fn close_sessions(&self, iqn: &str) {
        for (k, e) in self.sessions.lock().unwrap().iter() {
            if k.target.as_deref() == Some(iqn) {
                e.close.notify_one();
            }
        }
    }

    /// Sessions logged in to `iqn` (normal sessions only).
    pub fn sessions_of(&self, iqn: &str) -> Vec<SessionView> {
        let mut out: Vec<SessionView> = self
            .sessions
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.target.as_deref() == Some(iqn))
            .map(|(k, e)| SessionView {
                initiator: k.initiator.clone(),
                isid: format!("{:012x}", k.isid),
                member: self.member.clone(),
                portal: e.portal.clone(),
            })
            .collect();
        out.sort_by(|a, b| (&a.initiator, &a.isid).cmp(&(&b.initiator, &b.isid)));
        out
    }

    /// Normal sessions on this member.
    pub fn session_count(&self) -> usize {
        self.sessions
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.target.is_some())
            .count()
    }
}

fn preallocate(path: &std::path::Path, size: u64) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    // SAFETY: fallocate on a descriptor we own; no memory is passed.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, size as libc::off_t) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
