//! The destination side of a migration: start a QEMU that waits for the VM, watch for
//! the guest to resume, and (quick migration) load the saved state.

use std::sync::Arc;
use std::time::Duration;

use api::{IncomingReady, IncomingRequest, IncomingStatus};
use serde_json::{json, Value};

use crate::local::{remove_files, Agent, Phase};
use crate::migrate::{run_job, state_node, STATE_NODE};
use crate::now_us;

/// Why the destination cannot take the VM.
#[derive(Debug, thiserror::Error)]
pub enum IncomingError {
    /// The VM already has a QEMU on this host.
    #[error("VM {0} already has a QEMU on this host")]
    Exists(String),
    /// No migration of this VM is waiting here.
    #[error("no migration of VM {0} is arriving here")]
    NotIncoming(String),
    /// QEMU failed.
    #[error("{0}")]
    Qemu(String),
}

/// A free TCP port on `host` (the kernel's choice; released at once for QEMU to take).
fn free_port(host: &str) -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind((host, 0))?.local_addr()?.port())
}

/// Starts the destination QEMU for `req`.
pub async fn prepare(
    agent: &Arc<Agent>,
    req: IncomingRequest,
) -> Result<IncomingReady, IncomingError> {
    let name = req.vm.name.clone();
    if agent.slot(&name).is_some() {
        return Err(IncomingError::Exists(name));
    }
    remove_files(&agent.run_dir, &name);
    let spec = agent.spec(&req.vm);
    let mut opts = agent.launch_options();
    let host = agent
        .config
        .listen
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_string())
        .unwrap_or_else(|| "127.0.0.1".into());
    let uri = if req.state_volume.is_some() {
        opts.paused = true;
        String::new()
    } else {
        let port = free_port(&host).map_err(|e| IncomingError::Qemu(e.to_string()))?;
        opts.incoming = Some(host::Incoming::Tcp {
            host: host.clone(),
            port,
        });
        if host.contains(':') {
            format!("tcp:[{host}]:{port}")
        } else {
            format!("tcp:{host}:{port}")
        }
    };
    let vm = host::Vm::start(&spec, &opts)
        .await
        .map_err(|e| IncomingError::Qemu(format!("starting the destination QEMU: {e}")))?;
    let caps: Vec<Value> = [("events", true), ("postcopy-ram", req.postcopy)]
        .iter()
        .map(|(c, on)| json!({"capability": c, "state": on}))
        .collect();
    if req.state_volume.is_none() {
        if let Err(e) = vm
            .qmp()
            .execute("migrate-set-capabilities", json!({ "capabilities": caps }))
            .await
        {
            let mut vm = vm;
            let _ = vm.kill().await;
            return Err(IncomingError::Qemu(e.to_string()));
        }
    }
    let mut events = vm.qmp().subscribe();
    agent.incoming.lock().unwrap().insert(
        name.clone(),
        IncomingStatus {
            state: "waiting".into(),
            ..Default::default()
        },
    );
    let slot = agent.insert(
        req.vm.clone(),
        vm,
        Phase::Incoming {
            migration: req.migration,
        },
    );
    // The guest's first instruction here: QEMU's RESUME event.
    let agent2 = agent.clone();
    tokio::spawn(async move {
        while let Ok(ev) = events.recv().await {
            if ev.name == "RESUME" {
                if let Some(st) = agent2.incoming.lock().unwrap().get_mut(&name) {
                    st.state = "running".into();
                    st.resumed_at_us = Some(ev.timestamp_us);
                }
                slot.set_phase(Phase::Running);
                tracing::info!(vm = %name, "the guest resumed here");
                return;
            }
        }
    });
    Ok(IncomingReady { uri })
}

/// Quick migration: loads the saved state into the paused destination and lets it run.
pub async fn load(agent: &Agent, name: &str) -> Result<IncomingStatus, IncomingError> {
    let slot = agent
        .slot(name)
        .filter(|s| matches!(s.phase(), Phase::Incoming { .. }))
        .ok_or_else(|| IncomingError::NotIncoming(name.to_string()))?;
    let volume = format!("{name}-vmstate");
    let portal = agent.compute().group_portal.clone();
    let vm = slot.vm.read().await;
    let qmp = vm.qmp();
    let fail = |e: String| {
        if let Some(st) = agent.incoming.lock().unwrap().get_mut(name) {
            st.state = "failed".into();
            st.error = Some(e.clone());
        }
        IncomingError::Qemu(e)
    };
    qmp.execute(
        "blockdev-add",
        state_node(&portal, &volume, &agent.initiator),
    )
    .await
    .map_err(|e| fail(format!("opening the saved state: {e}")))?;
    run_job(
        qmp,
        "snapshot-load",
        json!({"job-id": "haven-load", "tag": "haven-quick", "vmstate": STATE_NODE, "devices": [STATE_NODE]}),
        "haven-load",
    )
    .await
    .map_err(|f| fail(format!("loading the saved state: {}", f.message)))?;
    let _ = qmp
        .execute("blockdev-del", json!({"node-name": STATE_NODE}))
        .await;
    qmp.execute("cont", Value::Null)
        .await
        .map_err(|e| fail(format!("resuming: {e}")))?;
    // The RESUME watcher records the time; wait briefly for it.
    for _ in 0..100 {
        if let Some(st) = agent.incoming.lock().unwrap().get(name) {
            if st.resumed_at_us.is_some() {
                return Ok(st.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(IncomingStatus {
        state: "running".into(),
        resumed_at_us: Some(now_us()),
        error: None,
    })
}

/// Gives up on an arriving VM: kills its QEMU unless the guest already runs here.
pub async fn abandon(agent: &Agent, name: &str) {
    if agent
        .slot(name)
        .is_some_and(|s| matches!(s.phase(), Phase::Incoming { .. }))
    {
        agent.discard(name).await;
    }
    agent.incoming.lock().unwrap().remove(name);
}
