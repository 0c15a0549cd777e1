//! The storage member service: one process per storage server.
//!
//! It runs the control plane node (Raft), serves the REST API on its API address, its
//! own iSCSI portal, and — while it leads the group — the group portal. Volumes follow
//! the replicated state: the registry opens, grows and removes them as commands apply.

pub mod config;
pub mod directory;
pub mod group;
mod group_sessions;
pub mod http;
mod lineage;
pub mod portal;
pub mod ports;
pub mod registry;
pub mod vms;

pub use config::{ConfigError, MemberConfig};

use control::{Command, ControlConfig, ControlPlane};
use directory::{PortalDirectory, PortalKind};
use registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Why a member could not start.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    /// The data directory could not be created or is not a directory.
    #[error("data directory {path}: {message}")]
    DataDir { path: String, message: String },
    /// A listening address could not be bound.
    #[error("cannot listen on {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    /// The control plane failed to open or bootstrap.
    #[error("control plane: {0}")]
    Control(#[from] control::ControlError),
    /// Serving the API failed.
    #[error("api server: {0}")]
    Serve(std::io::Error),
}

/// A running member.
pub struct Member {
    pub config: MemberConfig,
    pub control: ControlPlane,
    pub registry: Arc<Registry>,
    /// Background flattens, by volume name.
    pub flattens: std::sync::Mutex<std::collections::HashMap<String, Arc<http::FlattenJob>>>,
}

async fn bind(what: &'static str, addr: &str) -> Result<TcpListener, MemberError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MemberError::Bind {
            what,
            addr: addr.to_string(),
            source,
        })
}

fn check_data_dir(path: &std::path::Path) -> Result<(), MemberError> {
    let err = |message: String| MemberError::DataDir {
        path: path.display().to_string(),
        message,
    };
    if path.exists() && !path.is_dir() {
        return Err(err("exists and is not a directory".into()));
    }
    std::fs::create_dir_all(path).map_err(|e| err(e.to_string()))
}

fn free_space(path: &std::path::Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return 0;
    };
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs writes into the struct we own; the path is a valid C string.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return 0;
    }
    s.f_bavail as u64 * s.f_frsize as u64
}

/// The capacity this member offers the pool: the config's when set; else, for the same
/// store coming back, what the group recorded when it first joined; else the free space
/// now. Free space moves with every write to the file system, and the group weighs its
/// placement by capacity: re-measuring it at each restart would move placement groups (and
/// their data) whenever a member restarts.
fn offered_capacity(
    configured: Option<u64>,
    recorded: Option<&control::Member>,
    copy_id: &str,
    free_now: impl FnOnce() -> u64,
) -> u64 {
    configured
        .or_else(|| {
            recorded
                .filter(|r| r.copy_id == copy_id && r.capacity > 0)
                .map(|r| r.capacity)
        })
        .unwrap_or_else(free_now)
}

/// Written in the data dir of a member the group removed: it does not start again.
pub const REMOVED_MARKER: &str = "removed";

/// Run a member until SIGINT or SIGTERM, or until the group removes it.
pub async fn run(config: MemberConfig) -> Result<(), MemberError> {
    check_data_dir(&config.data_dir)?;
    if config.data_dir.join(REMOVED_MARKER).exists() {
        return Err(MemberError::DataDir {
            path: config.data_dir.display().to_string(),
            message: "this member was removed from its group; wipe the data dir to join again"
                .into(),
        });
    }
    let copy_id = lineage::copy_id(&config.data_dir).map_err(|e| MemberError::DataDir {
        path: config.data_dir.display().to_string(),
        message: format!("cannot record the store's id: {e}"),
    })?;
    // Bind every listener first: a port in use is reported before anything changes.
    let api_listener = bind("api", &config.api).await?;
    let portal_listener = bind("portal", &config.portal).await?;
    let peer_listener = bind("peer", &config.peer).await?;
    let peer_addr = peer_listener
        .local_addr()
        .map_err(MemberError::Serve)?
        .to_string();
    let api_addr = api_listener
        .local_addr()
        .map_err(MemberError::Serve)?
        .to_string();
    let portal_addr = portal_listener
        .local_addr()
        .map_err(MemberError::Serve)?
        .to_string();

    let control = ControlPlane::open(ControlConfig {
        node_id: config.node_id,
        data_dir: config.data_dir.join("control"),
        api_addr: api_addr.clone(),
    })
    .await?;
    let registry = Arc::new(
        Registry::new(
            config.name.clone(),
            config.data_dir.clone(),
            config.capacity,
        )
        .map_err(|e| MemberError::DataDir {
            path: config.data_dir.display().to_string(),
            message: e.to_string(),
        })?,
    );
    let member = Arc::new(Member {
        config: config.clone(),
        control: control.clone(),
        registry: registry.clone(),
        flattens: Default::default(),
    });

    // The API comes up before bootstrap so peers and the CLI can reach it at once.
    let app = http::router(member.clone()).merge(control.router());
    let api_task = tokio::spawn(async move { axum::serve(api_listener, app).await });

    if config.bootstrap {
        control.bootstrap_single().await?;
    } else if let Some(join) = config.join.clone() {
        // Once in the group (a restart), the log knows the membership.
        if control.membership().is_empty() {
            join_group(&join, config.node_id, &api_addr).await;
        }
    }

    let group = group::Group::new(
        config.node_id,
        control.clone(),
        registry.store().clone(),
        group::Timing {
            down_out: config.down_out,
            io_deadline: config.io_deadline,
        },
    );
    registry.attach_group(group.clone());
    let events_to = Arc::downgrade(&registry);
    group.set_lu_events(Arc::new(move |event, state| match events_to.upgrade() {
        Some(registry) => registry.lu_event(event, state),
        None => Err("the member is stopping".into()),
    }));

    // Volumes follow the applied state.
    let mut state_rx = control.subscribe();
    let reg = registry.clone();
    let ctl_follow = control.clone();
    let follow_group = group.clone();
    let removed = Arc::new(tokio::sync::Notify::new());
    let (removed_tx, my_name) = (removed.clone(), config.name.clone());
    tokio::spawn(async move {
        let mut was_member = false;
        loop {
            let state = state_rx.borrow_and_update().clone();
            let seen_at = std::time::Instant::now();
            // Forgotten by the group after `member remove` moved its data away: stop.
            let is_member = state.members.contains_key(&my_name);
            if was_member && !is_member {
                removed_tx.notify_one();
            }
            was_member |= is_member;
            let r = reg.clone();
            let applied = state.clone();
            // A thread of its own, not tokio's blocking pool: SCSI commands waiting there for
            // the group's next epoch must not keep the state that brings it from applying.
            let (done, follow_up) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let _ = done.send(r.reconcile(&applied));
            });
            let follow_up = follow_up.await.unwrap_or_default();
            // Volumes exist locally before peers may address them at this epoch.
            follow_group.observe(state, seen_at);
            for cmd in follow_up {
                if let Err(e) = ctl_follow.write(cmd).await {
                    tracing::warn!(error = %e, "cannot record a change the store made; retrying on the next change");
                }
            }
            if state_rx.changed().await.is_err() {
                break;
            }
        }
    });

    // Register (or re-register, with today's addresses) in the group.
    let capacity = offered_capacity(
        config.capacity,
        control.state().members.get(&config.name),
        &copy_id,
        || free_space(&config.data_dir),
    );
    let record = control::Member {
        name: config.name.clone(),
        node_id: config.node_id,
        api_addr: api_addr.clone(),
        portal: portal_addr.clone(),
        capacity,
        peer: peer_addr.clone(),
        down: false,
        out: false,
        removing: false,
        copy_id,
    };
    let ctl = control.clone();
    let peer_group = group.clone();
    tokio::spawn(async move {
        // Register, then say this member (re)started: copies it held may lack writes it had
        // not synced, so they leave the in-sync sets before it serves peers again.
        let name = record.name.clone();
        for cmd in [
            Command::RegisterMember(record),
            Command::MemberUp {
                name,
                restarted: true,
            },
        ] {
            while let Err(e) = ctl.write(cmd.clone()).await {
                tracing::warn!(error = %e, "cannot register in the group yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        peer_group.set_ready();
        let server =
            peer::ServerConfig::new(peer_group.engine_config(), peer_group.epoch_counter());
        let handler_group = peer_group.clone();
        tokio::spawn(peer::serve(peer_listener, server, move |req| {
            group::handle(handler_group.clone(), req)
        }));
        peer_group.start();
    });

    let tpgt = u16::try_from(config.node_id).unwrap_or(u16::MAX);
    let member_dir = Arc::new(PortalDirectory {
        kind: PortalKind::Member {
            address: portal_addr.clone(),
        },
        registry: registry.clone(),
        state: control.subscribe(),
        tpgt,
        affinity: Default::default(),
        busy_poll: config.busy_poll,
    });
    tokio::spawn(portal::serve(portal_listener, member_dir));

    if let Some(group) = config.group_portal.clone() {
        tokio::spawn(group_portal(group, control.clone(), registry.clone()));
    }

    tracing::info!(member = %config.name, api = %api_addr, portal = %portal_addr, "member serving");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(MemberError::Serve)?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = removed.notified() => {
            tracing::warn!("this member was removed from the group; stopping");
            // Stay until the control plane let it go (the leader does that next, and may
            // be this member), so the group never keeps a dead voter.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while control.membership().iter().any(|n| n.node_id == config.node_id)
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let marker = config.data_dir.join(REMOVED_MARKER);
            if let Err(e) = std::fs::write(&marker, "removed from the group\n") {
                tracing::warn!(path = %marker.display(), error = %e, "cannot mark the data dir removed");
            }
        }
        r = api_task => {
            if let Ok(Err(e)) = r {
                return Err(MemberError::Serve(e));
            }
        }
    }
    tracing::info!("shutting down");
    let reg = registry.clone();
    let _ = tokio::task::spawn_blocking(move || reg.shutdown()).await;
    control.shutdown().await;
    Ok(())
}

/// Ask a member of the group at `join` to add this node, until it answers.
async fn join_group(join: &str, node_id: u64, api_addr: &str) {
    let client = api::Client::new(vec![format!("http://{join}")]);
    let req = api::JoinRequest {
        node_id,
        api_addr: api_addr.to_string(),
    };
    loop {
        match client
            .post::<_, serde_json::Value>("/v1/members/join", &req)
            .await
        {
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(%join, error = %e, "cannot join the group yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Serve the group portal while this member leads the group.
async fn group_portal(address: String, control: ControlPlane, registry: Arc<Registry>) {
    let mut serving: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let leading = control.is_leader();
        match (&serving, leading) {
            (None, true) => match TcpListener::bind(&address).await {
                Ok(l) => {
                    tracing::info!(%address, "serving the group portal");
                    let dir = Arc::new(PortalDirectory {
                        kind: PortalKind::Group {
                            address: address.clone(),
                        },
                        registry: registry.clone(),
                        state: control.subscribe(),
                        tpgt: 1,
                        affinity: Default::default(),
                        // It only redirects logins: no session's commands to wait for.
                        busy_poll: std::time::Duration::ZERO,
                    });
                    serving = Some(tokio::spawn(portal::serve(l, dir)));
                }
                Err(e) => tracing::warn!(%address, error = %e, "cannot bind the group portal yet"),
            },
            (Some(_), false) => {
                tracing::info!(%address, "no longer leading; releasing the group portal");
                if let Some(h) = serving.take() {
                    h.abort();
                }
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::offered_capacity;

    fn recorded(capacity: u64, copy_id: &str) -> control::Member {
        control::Member {
            name: "m".into(),
            node_id: 1,
            api_addr: String::new(),
            portal: String::new(),
            capacity,
            peer: String::new(),
            down: true,
            out: false,
            removing: false,
            copy_id: copy_id.into(),
        }
    }

    #[test]
    fn a_restarted_store_keeps_the_capacity_it_joined_with() {
        let was = recorded(100, "store-a");
        // The free space changed meanwhile: the record wins.
        assert_eq!(offered_capacity(None, Some(&was), "store-a", || 90), 100);
        // A wiped store is a new copy: measured again.
        assert_eq!(offered_capacity(None, Some(&was), "store-b", || 90), 90);
        // First start.
        assert_eq!(offered_capacity(None, None, "store-a", || 90), 90);
        // The operator's setting always wins.
        assert_eq!(offered_capacity(Some(50), Some(&was), "store-a", || 90), 50);
        // A record of nothing is no record.
        let empty = recorded(0, "store-a");
        assert_eq!(offered_capacity(None, Some(&empty), "store-a", || 90), 90);
    }
}
