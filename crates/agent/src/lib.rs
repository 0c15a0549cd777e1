//! The host agent (`haven host run`): one per hypervisor host.
//!
//! It registers the host with the group, follows the compute state (`GET /v1/compute`
//! every 200 ms), runs one QEMU per VM placed here, drives the migrations that leave this
//! host and receives those that arrive, and answers the members' questions about its VMs
//! on its own small API.
//!
//! - [`local`]: the VMs this host runs, and what they look like now.
//! - [`reconcile`]: make this host run what the control plane says.
//! - [`migrate`]: the source side of live and quick migration.
//! - [`incoming`]: the destination side.
//! - [`http`]: the agent's API.
//!
//! QEMUs run in their own process groups: the agent can die and come back without the
//! guests noticing; on start it adopts every QEMU whose pid file it finds in its run
//! directory.

pub mod http;
pub mod incoming;
pub mod local;
pub mod migrate;
pub mod reconcile;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use control::{ComputeCommand, Host, Outcome};
use local::Agent;

/// How the agent is configured.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The host's name in the group.
    pub name: String,
    /// Where QEMU's sockets, consoles and pid files live (`run/`), and the accelerator cache.
    pub data_dir: PathBuf,
    /// The agent API's listening address (`host:port`); members call it.
    pub listen: String,
    /// The group's API URLs.
    pub members: Vec<String>,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// `auto` (KVM when it really boots a guest, else TCG), `kvm` or `tcg`.
    pub accel: String,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The data directory could not be created.
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    /// The API address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    /// The accelerator setting is not one of auto, kvm, tcg.
    #[error("unknown accelerator {0:?}: use auto, kvm or tcg")]
    Accel(String),
    /// Probing the accelerator failed.
    #[error("accelerator probe: {0}")]
    Probe(host::Error),
    /// Serving the API failed.
    #[error("agent api: {0}")]
    Serve(std::io::Error),
}

/// Runs the agent until the process is stopped.
pub async fn run(config: AgentConfig) -> Result<(), AgentError> {
    let run_dir = config.data_dir.join("run");
    std::fs::create_dir_all(&run_dir).map_err(|source| AgentError::DataDir {
        path: run_dir.display().to_string(),
        source,
    })?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|source| AgentError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
    let accel = detect_accel(&config).await?;
    tracing::info!(host = %config.name, accel = accel.qemu_name(), listen = %config.listen, "host agent starting");
    let agent = Arc::new(Agent::new(config.clone(), run_dir, accel));
    agent.adopt_running().await;
    register(&agent).await;
    tokio::spawn(reconcile::run(agent.clone()));
    axum::serve(listener, http::router(agent))
        .await
        .map_err(AgentError::Serve)
}

/// Registers the host, retrying until the group answers.
async fn register(agent: &Agent) {
    let host = Host {
        name: agent.config.name.clone(),
        api_addr: agent.config.listen.clone(),
        initiator: agent.initiator.clone(),
        accel: agent.accel.qemu_name().to_string(),
        schedulable: true,
    };
    let mut delay = Duration::from_millis(100);
    loop {
        match agent.group().post::<_, Host>("/v1/hosts", &host).await {
            Ok(_) => {
                tracing::info!(host = %host.name, "registered with the group");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot register with the group yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn detect_accel(config: &AgentConfig) -> Result<host::Accel, AgentError> {
    match config.accel.as_str() {
        "kvm" => Ok(host::Accel::Kvm),
        "tcg" => Ok(host::Accel::Tcg),
        "auto" => {
            let Some(kernel) = newest_kernel() else {
                tracing::info!("no kernel in /boot to probe KVM with: TCG");
                return Ok(host::Accel::Tcg);
            };
            let probe = host::accel::Probe {
                qemu: config.qemu.clone(),
                kernel,
                initrd: None,
                append: "console=ttyS0 panic=-1".into(),
                boot_line: "Linux version".into(),
                timeout: Duration::from_secs(20),
                cache: config.data_dir.join("accel.json"),
            };
            host::accel::detect(&probe).await.map_err(AgentError::Probe)
        }
        other => Err(AgentError::Accel(other.to_string())),
    }
}

fn newest_kernel() -> Option<PathBuf> {
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    kernels.pop()
}

/// Records a change through the group; the answer comes once the group applied it.
pub(crate) async fn commit(agent: &Agent, cmd: ComputeCommand) -> Result<Outcome, String> {
    match agent.group().post::<_, Outcome>("/v1/compute", &cmd).await {
        Ok(Outcome::Refused { message, .. }) => Err(message),
        Ok(o) => Ok(o),
        Err(e) => Err(e.to_string()),
    }
}

/// Microseconds since the epoch, QEMU's event clock.
pub(crate) fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
