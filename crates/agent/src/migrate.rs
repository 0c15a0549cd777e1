//! The source side of a migration. Live:
//!
//! ```text
//!  source agent                 destination agent            group
//!   │ POST /v1/incoming ─────────► QEMU -incoming tcp:…
//!   │ migrate (pause-before-switchover, auto-converge, downtime limit)
//!   │ … pre-copy passes, progress in query-migrate …
//!   │ status pre-switchover (guest stopped: STOP event)
//!   │ MigrationSwitchover ─────────────────────────────────────► vm.host = dest,
//!   │                                                           fence → dest initiator
//!   │ migrate-continue ──────────► RESUME event (guest runs)
//!   │ completed: kill source QEMU, FinishMigration{Completed, downtime} ─► group
//! ```
//!
//! Quick: the destination QEMU starts paused; the source stops its guest, saves the device
//! and memory state into a qcow2 on a haven volume (`snapshot-save`), hands the storage
//! over, and the destination loads the state (`snapshot-load`) and runs.
//!
//! Any failure before the switch-over leaves the guest running on the source; after it,
//! the group gives the storage back to the source first, then the source resumes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use api::{IncomingReady, IncomingRequest, IncomingStatus, MigrationProgress};
use control::{ComputeCommand, Host, Migration, MigrationResult, MigrationState, Vm};
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use crate::local::{Agent, Phase, Slot};
use crate::{commit, now_us};

/// A live migration still copying memory after this long is cancelled.
const LIVE_TIMEOUT: Duration = Duration::from_secs(600);

/// Post-copy, when asked for, starts after this much pre-copy.
const POSTCOPY_AFTER: Duration = Duration::from_secs(3);

/// The quick migration's state volume holds the memory plus room for devices.
const STATE_HEADROOM: u64 = 256 << 20;

/// Why a migration did not complete.
pub struct Failure {
    pub message: String,
    pub cancelled: bool,
}

impl Failure {
    fn failed(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            cancelled: false,
        }
    }
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure::failed(e.to_string())
    }
}

fn dest_client(host: &Host, timeout: Duration) -> api::Client {
    api::Client::new(vec![host.api_addr.clone()]).with_timeout(timeout)
}

/// Drives migration `m` (admitted: `Running`) to its end and records the result.
pub async fn drive(agent: Arc<Agent>, m: Migration) {
    let started = Instant::now();
    tracing::info!(id = m.id, vm = %m.vm, to = %m.to, quick = m.quick, "migration starting");
    let outcome = match agent.slot(&m.vm) {
        None => Err(Failure::failed(format!(
            "VM {} is not running on {}",
            m.vm, agent.config.name
        ))),
        Some(slot) => {
            slot.set_phase(Phase::Outgoing { migration: m.id });
            let r = if m.quick {
                quick(&agent, &m, &slot).await
            } else {
                live(&agent, &m, &slot, started).await
            };
            if r.is_err() {
                slot.set_phase(Phase::Running);
            }
            r
        }
    };
    let result = match outcome {
        Ok(r) => r,
        Err(f) => {
            if let Some(dest) = agent.compute().hosts.iter().find(|h| h.name == m.to) {
                let _ = dest_client(dest, Duration::from_secs(10))
                    .delete::<Value>(&format!("/v1/incoming/{}", m.vm))
                    .await;
            }
            tracing::warn!(id = m.id, vm = %m.vm, error = %f.message, "migration did not complete; the VM stays on the source");
            if f.cancelled {
                MigrationResult::Cancelled { reason: f.message }
            } else {
                MigrationResult::Failed { error: f.message }
            }
        }
    };
    finish(&agent, m.id, result.clone()).await;
    if !matches!(result, MigrationResult::Completed { .. }) {
        // The group gave the storage back to this host: only now may the guest run here.
        if let Some(slot) = agent.slot(&m.vm) {
            resume_if_paused(&slot).await;
        }
    }
    agent.outgoing.lock().unwrap().remove(&m.id);
}

/// Records the end of a migration, retrying until the group has it: until then the
/// group does not know which host owns the VM.
async fn finish(agent: &Agent, id: u64, result: MigrationResult) {
    let mut delay = Duration::from_millis(100);
    loop {
        match commit(
            agent,
            ComputeCommand::FinishMigration {
                id,
                result: result.clone(),
            },
        )
        .await
        {
            Ok(_) => return,
            Err(e) if e.contains("already") || e.contains("no migration") => return,
            Err(e) => {
                tracing::warn!(id, error = %e, "cannot record the end of the migration yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn resume_if_paused(slot: &Slot) {
    let vm = slot.vm.read().await;
    if let Ok(v) = vm.qmp().execute("query-status", Value::Null).await {
        if v["status"].as_str() != Some("running") {
            if let Err(e) = vm.qmp().execute("cont", Value::Null).await {
                tracing::warn!(error = %e, "resuming the guest on the source");
            }
        }
    }
}

fn cancel_requested(agent: &Agent, id: u64) -> bool {
    agent
        .compute()
        .migrations
        .iter()
        .any(|m| m.id == id && m.cancel_requested)
}

fn definition(agent: &Agent, name: &str) -> Result<Vm, Failure> {
    agent
        .compute()
        .vms
        .iter()
        .find(|v| v.name == name)
        .cloned()
        .ok_or_else(|| Failure::failed(format!("VM {name} is no longer defined")))
}

fn destination(agent: &Agent, name: &str) -> Result<Host, Failure> {
    agent
        .compute()
        .hosts
        .iter()
        .find(|h| h.name == name)
        .cloned()
        .ok_or_else(|| Failure::failed(format!("no host named {name}")))
}

fn set_progress(agent: &Agent, id: u64, p: MigrationProgress) {
    if let Some(slot) = agent.outgoing.lock().unwrap().get_mut(&id) {
        *slot = p;
    }
}

async fn live(
    agent: &Agent,
    m: &Migration,
    slot: &Slot,
    started: Instant,
) -> Result<MigrationResult, Failure> {
    let def = definition(agent, &m.vm)?;
    let dest = destination(agent, &m.to)?;
    let ready: IncomingReady = dest_client(&dest, Duration::from_secs(120))
        .post(
            "/v1/incoming",
            &IncomingRequest {
                migration: m.id,
                vm: def,
                state_volume: None,
                postcopy: m.postcopy,
            },
        )
        .await
        .map_err(|e| Failure::failed(format!("destination {}: {e}", m.to)))?;
    let vm = slot.vm.read().await;
    let qmp = vm.qmp();
    let mut events = qmp.subscribe();
    let caps: Vec<Value> = [
        ("events", true),
        ("pause-before-switchover", true),
        ("auto-converge", true),
        ("postcopy-ram", m.postcopy),
    ]
    .iter()
    .map(|(c, on)| json!({"capability": c, "state": on}))
    .collect();
    qmp.execute("migrate-set-capabilities", json!({ "capabilities": caps }))
        .await?;
    qmp.execute(
        "migrate-set-parameters",
        json!({
            "downtime-limit": m.downtime_limit_ms,
            // QEMU's own default (128 MiB/s) would stretch every migration; loopback and
            // datacenter links take far more.
            "max-bandwidth": m.max_bandwidth.unwrap_or(8 << 30),
        }),
    )
    .await?;
    qmp.execute("migrate", json!({ "uri": ready.uri })).await?;
    let mut stopped_us: Option<u64> = None;
    let mut switched = false;
    let mut cancelling: Option<(bool, String)> = None;
    let mut postcopy_started = false;
    let mut handover_ms = 0;
    let info = loop {
        // React to QEMU's MIGRATION events at once (the switch-over is on the guest's
        // downtime path); poll anyway for progress and in case an event is missed.
        let wake = tokio::time::sleep(Duration::from_millis(50));
        tokio::pin!(wake);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(ev) if ev.name == "STOP" => {
                        stopped_us.get_or_insert(ev.timestamp_us);
                    }
                    Ok(ev) if ev.name == "MIGRATION" => break,
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                },
                _ = &mut wake => break,
            }
        }
        let info = qmp.execute("query-migrate", Value::Null).await?;
        let status = info["status"].as_str().unwrap_or("").to_string();
        set_progress(agent, m.id, progress(&info, &status));
        match status.as_str() {
            "pre-switchover" if !switched => {
                if let Some((cancelled, why)) = &cancelling {
                    let _ = qmp.execute("migrate_cancel", Value::Null).await;
                    return Err(Failure {
                        message: why.clone(),
                        cancelled: *cancelled,
                    });
                }
                let t = Instant::now();
                if let Err(e) =
                    commit(agent, ComputeCommand::MigrationSwitchover { id: m.id }).await
                {
                    let _ = qmp.execute("migrate_cancel", Value::Null).await;
                    return Err(Failure::failed(format!("storage handover: {e}")));
                }
                handover_ms = t.elapsed().as_millis();
                switched = true;
                qmp.execute("migrate-continue", json!({"state": "pre-switchover"}))
                    .await?;
            }
            "completed" => break info,
            "failed" | "cancelled" => {
                let (cancelled, why) = cancelling.clone().unwrap_or((
                    false,
                    info["error-desc"]
                        .as_str()
                        .unwrap_or("QEMU reports the migration failed")
                        .to_string(),
                ));
                return Err(Failure {
                    message: why,
                    cancelled,
                });
            }
            _ => {}
        }
        if !switched && cancelling.is_none() {
            if cancel_requested(agent, m.id) {
                cancelling = Some((true, "cancelled by the operator".into()));
            } else if started.elapsed() > LIVE_TIMEOUT {
                cancelling = Some((
                    false,
                    format!("did not converge within {}s", LIVE_TIMEOUT.as_secs()),
                ));
            }
            if cancelling.is_some() {
                qmp.execute("migrate_cancel", Value::Null).await?;
            }
        }
        if m.postcopy
            && !postcopy_started
            && status == "active"
            && started.elapsed() > POSTCOPY_AFTER
        {
            postcopy_started = true;
            qmp.execute("migrate-start-postcopy", Value::Null).await?;
        }
    };
    drop(vm);
    let resumed_us = wait_resumed(&dest, &m.vm).await?;
    agent.discard(&m.vm).await;
    let stopped_us = stopped_us.unwrap_or(resumed_us);
    tracing::info!(
        id = m.id,
        vm = %m.vm,
        downtime_ms = resumed_us.saturating_sub(stopped_us) / 1000,
        handover_ms,
        qemu_downtime_ms = info["downtime"].as_u64().unwrap_or(0),
        "migration completed"
    );
    Ok(MigrationResult::Completed {
        downtime_ms: resumed_us.saturating_sub(stopped_us) / 1000,
        qemu_downtime_ms: info["downtime"].as_u64().unwrap_or(0),
        total_ms: started.elapsed().as_millis() as u64,
    })
}

fn progress(info: &Value, status: &str) -> MigrationProgress {
    let ram = &info["ram"];
    MigrationProgress {
        status: status.to_string(),
        transferred_bytes: ram["transferred"].as_u64().unwrap_or(0),
        remaining_bytes: ram["remaining"].as_u64().unwrap_or(0),
        total_bytes: ram["total"].as_u64().unwrap_or(0),
        dirty_pages_rate: ram["dirty-pages-rate"].as_u64().unwrap_or(0),
        elapsed_ms: info["total-time"].as_u64().unwrap_or(0),
    }
}

/// When the guest resumed on the destination.
async fn wait_resumed(dest: &Host, vm: &str) -> Result<u64, Failure> {
    let client = dest_client(dest, Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client
            .get::<IncomingStatus>(&format!("/v1/incoming/{vm}"))
            .await
        {
            Ok(s) if s.resumed_at_us.is_some() => return Ok(s.resumed_at_us.unwrap_or(0)),
            Ok(s) if s.state == "failed" => {
                return Err(Failure::failed(format!(
                    "the destination failed after the switch-over: {}",
                    s.error.unwrap_or_default()
                )))
            }
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(Failure::failed(
                "the destination did not report the guest running within 30 s",
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn quick(agent: &Agent, m: &Migration, slot: &Slot) -> Result<MigrationResult, Failure> {
    let started = Instant::now();
    let def = definition(agent, &m.vm)?;
    let dest = destination(agent, &m.to)?;
    let volume = state_volume(agent, &def).await?;
    set_progress(agent, m.id, phase("preparing the destination"));
    dest_client(&dest, Duration::from_secs(120))
        .post::<_, IncomingReady>(
            "/v1/incoming",
            &IncomingRequest {
                migration: m.id,
                vm: def.clone(),
                state_volume: Some(volume.clone()),
                postcopy: false,
            },
        )
        .await
        .map_err(|e| Failure::failed(format!("destination {}: {e}", m.to)))?;
    let vm = slot.vm.read().await;
    let qmp = vm.qmp();
    let portal = agent.compute().group_portal.clone();
    qmp.execute(
        "blockdev-add",
        state_node(&portal, &volume, &agent.initiator),
    )
    .await?;
    let mut events = qmp.subscribe();
    set_progress(agent, m.id, phase("saving"));
    qmp.execute("stop", Value::Null).await?;
    let saved = run_job(
        qmp,
        "snapshot-save",
        json!({"job-id": "haven-save", "tag": "haven-quick", "vmstate": STATE_NODE, "devices": [STATE_NODE]}),
        "haven-save",
    )
    .await;
    let _ = qmp
        .execute("blockdev-del", json!({"node-name": STATE_NODE}))
        .await;
    let mut stopped_us = now_us();
    while let Ok(ev) = events.try_recv() {
        if ev.name == "STOP" {
            stopped_us = ev.timestamp_us;
            break;
        }
    }
    saved?;
    if cancel_requested(agent, m.id) {
        return Err(Failure {
            message: "cancelled by the operator".into(),
            cancelled: true,
        });
    }
    commit(agent, ComputeCommand::MigrationSwitchover { id: m.id })
        .await
        .map_err(|e| Failure::failed(format!("storage handover: {e}")))?;
    set_progress(agent, m.id, phase("restoring on the destination"));
    let loaded: IncomingStatus = dest_client(&dest, Duration::from_secs(300))
        .post(&format!("/v1/incoming/{}/load", m.vm), &json!({}))
        .await
        .map_err(|e| Failure::failed(format!("restoring on {}: {e}", m.to)))?;
    drop(vm);
    agent.discard(&m.vm).await;
    let resumed_us = loaded.resumed_at_us.unwrap_or_else(now_us);
    Ok(MigrationResult::Completed {
        downtime_ms: resumed_us.saturating_sub(stopped_us) / 1000,
        qemu_downtime_ms: 0,
        total_ms: started.elapsed().as_millis() as u64,
    })
}

fn phase(status: &str) -> MigrationProgress {
    MigrationProgress {
        status: status.into(),
        ..Default::default()
    }
}

/// The QEMU node name of the quick-migration state image.
pub const STATE_NODE: &str = "haven-vmstate";

/// `blockdev-add` arguments: a qcow2 on the state volume at the group portal.
pub fn state_node(portal: &str, volume: &str, initiator: &str) -> Value {
    json!({
        "driver": "qcow2",
        "node-name": STATE_NODE,
        "file": {
            "driver": "iscsi",
            "transport": "tcp",
            "portal": portal,
            "target": format!("{}:{volume}", control::state::IQN_PREFIX),
            "lun": 0,
            "initiator-name": initiator,
            "cache": {"direct": true, "no-flush": false},
        },
    })
}

/// The VM's state volume (`NAME-vmstate`), created or reused, formatted as an empty qcow2.
async fn state_volume(agent: &Agent, vm: &Vm) -> Result<String, Failure> {
    let name = format!("{}-vmstate", vm.name);
    let size = (vm.memory_bytes + STATE_HEADROOM).div_ceil(1 << 20) << 20;
    let req = api::CreateVolume {
        name: name.clone(),
        size,
        block_size: None,
        replicas: None,
        thick: false,
        allow: vec![],
        chap: None,
    };
    match agent
        .group()
        .post::<_, api::VolumeView>("/v1/volumes", &req)
        .await
    {
        Ok(_) => {}
        Err(e) if e.kind() == Some("already_exists") => {}
        Err(e) => return Err(Failure::failed(format!("creating {name}: {e}"))),
    }
    let portal = agent.compute().group_portal.clone();
    let url = format!("iscsi://{portal}/{}:{name}/0", control::state::IQN_PREFIX);
    let out = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", &url, &size.to_string()])
        .output()
        .await
        .map_err(|e| Failure::failed(format!("running qemu-img: {e}")))?;
    if !out.status.success() {
        return Err(Failure::failed(format!(
            "formatting {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(name)
}

/// Runs a QMP job to its end; its error, if it had one.
pub async fn run_job(
    qmp: &host::QmpClient,
    command: &str,
    args: Value,
    job: &str,
) -> Result<(), Failure> {
    qmp.execute(command, args).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let jobs = qmp.execute("query-jobs", Value::Null).await?;
        let this = jobs
            .as_array()
            .into_iter()
            .flatten()
            .find(|j| j["id"].as_str() == Some(job))
            .cloned();
        match this {
            Some(j) if j["status"].as_str() == Some("concluded") => {
                let _ = qmp.execute("job-dismiss", json!({ "id": job })).await;
                return match j["error"].as_str() {
                    Some(e) => Err(Failure::failed(format!("{command}: {e}"))),
                    None => Ok(()),
                };
            }
            None => return Err(Failure::failed(format!("{command}: the job vanished"))),
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(Failure::failed(format!(
                "{command}: still running after 300 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Settles a migration this agent was driving when it died: QEMU knows how it ended.
pub async fn recover(agent: Arc<Agent>, m: Migration) {
    let status = match agent.slot(&m.vm) {
        Some(slot) => {
            let vm = slot.vm.read().await;
            vm.qmp()
                .execute("query-status", Value::Null)
                .await
                .ok()
                .and_then(|v| v["status"].as_str().map(str::to_string))
        }
        None => None,
    };
    let result =
        if status.as_deref() == Some("postmigrate") && m.state == MigrationState::Switchover {
            agent.discard(&m.vm).await;
            MigrationResult::Completed {
                downtime_ms: 0,
                qemu_downtime_ms: 0,
                total_ms: 0,
            }
        } else {
            MigrationResult::Failed {
                error: "the source host agent restarted during the migration".into(),
            }
        };
    tracing::info!(id = m.id, vm = %m.vm, ?result, "settling a migration from before a restart");
    finish(&agent, m.id, result.clone()).await;
    if !matches!(result, MigrationResult::Completed { .. }) {
        if let Some(slot) = agent.slot(&m.vm) {
            slot.set_phase(Phase::Running);
            resume_if_paused(&slot).await;
        }
    }
    agent.outgoing.lock().unwrap().remove(&m.id);
}
