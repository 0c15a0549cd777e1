//! Make this host run what the control plane says, every 200 ms.
//!
//! - A VM placed here that should run and has no QEMU: start it.
//! - A VM placed here that should not run: stop it, then report it stopped.
//! - A QEMU whose VM is no longer placed here (and no migration involves it): kill it.
//! - A QEMU that exited by itself: the guest powered off or crashed; report it stopped.
//! - A queued migration leaving this host: ask for a slot, and drive it when admitted.
//! - A running migration this agent does not drive (it restarted): settle it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::ComputeState;
use control::{ComputeCommand, MigrationState, Outcome, Vm};

use crate::local::{remove_files, Agent, Phase};
use crate::{commit, migrate};

const PERIOD: Duration = Duration::from_millis(200);

/// A stop the control plane asks for without a timeout of its own.
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a queued migration asks for a slot.
const BEGIN_RETRY: Duration = Duration::from_millis(500);

pub async fn run(agent: Arc<Agent>) {
    let mut last_begin: HashMap<u64, Instant> = HashMap::new();
    let mut warned = false;
    loop {
        let fetched = Instant::now();
        match agent
            .group()
            .with_timeout(Duration::from_secs(3))
            .get::<ComputeState>("/v1/compute")
            .await
        {
            Ok(cs) => {
                warned = false;
                *agent.compute.lock().unwrap() = Arc::new(cs);
                step(&agent, fetched, &mut last_begin).await;
            }
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(error = %e, "cannot reach the group; VMs keep running");
            }
            Err(_) => {}
        }
        tokio::time::sleep(PERIOD).await;
    }
}

async fn step(agent: &Arc<Agent>, fetched: Instant, last_begin: &mut HashMap<u64, Instant>) {
    let cs = agent.compute();
    let me = agent.config.name.as_str();
    reap_exited(agent, &cs).await;
    for vm in cs.vms.iter().filter(|v| v.host.as_deref() == Some(me)) {
        let migrating = cs.migrations.iter().any(|m| m.vm == vm.name);
        let slot = agent.slot(&vm.name);
        if let Some(slot) = &slot {
            // Keep the definition current (hot-added disks, say).
            *slot.def.lock().unwrap() = vm.clone();
        }
        let starting = agent.starting.lock().unwrap().contains(&vm.name);
        match (&slot, vm.running) {
            (None, true) if !starting && !migrating => {
                tokio::spawn(start(agent.clone(), vm.clone()));
            }
            (None, false) if !starting => {
                let _ = commit(
                    agent,
                    ComputeCommand::VmStopped {
                        name: vm.name.clone(),
                        host: me.to_string(),
                    },
                )
                .await;
            }
            (Some(slot), false) if slot.phase() == Phase::Running && !migrating => {
                let agent = agent.clone();
                let name = vm.name.clone();
                tokio::spawn(async move { stop(&agent, &name, DEFAULT_STOP_TIMEOUT, false).await });
            }
            _ => {}
        }
    }
    discard_foreign(agent, &cs, fetched).await;
    for m in &cs.migrations {
        if m.from != me {
            continue;
        }
        let driving = agent.outgoing.lock().unwrap().contains_key(&m.id);
        match m.state {
            MigrationState::Queued if !driving => {
                if last_begin
                    .get(&m.id)
                    .is_some_and(|t| t.elapsed() < BEGIN_RETRY)
                {
                    continue;
                }
                last_begin.insert(m.id, Instant::now());
                if let Ok(Outcome::Migration(m)) =
                    commit(agent, ComputeCommand::BeginMigration { id: m.id }).await
                {
                    agent
                        .outgoing
                        .lock()
                        .unwrap()
                        .insert(m.id, Default::default());
                    tokio::spawn(migrate::drive(agent.clone(), m));
                }
            }
            MigrationState::Running | MigrationState::Switchover if !driving => {
                agent
                    .outgoing
                    .lock()
                    .unwrap()
                    .insert(m.id, Default::default());
                tokio::spawn(migrate::recover(agent.clone(), m.clone()));
            }
            _ => {}
        }
    }
    last_begin.retain(|id, _| cs.migrations.iter().any(|m| m.id == *id));
}

/// QEMUs that exited by themselves.
async fn reap_exited(agent: &Arc<Agent>, cs: &ComputeState) {
    let slots: Vec<_> = agent.slots.lock().unwrap().values().cloned().collect();
    for slot in slots {
        let exited = match slot.vm.try_write() {
            Ok(mut vm) => vm.has_exited(),
            Err(_) => false,
        };
        if !exited {
            continue;
        }
        let name = slot.name();
        let phase = slot.phase();
        agent.slots.lock().unwrap().remove(&name);
        remove_files(&agent.run_dir, &name);
        match phase {
            Phase::Running => {
                let placed_here = cs.vms.iter().any(|v| {
                    v.name == name && v.running && v.host.as_deref() == Some(&agent.config.name)
                });
                if placed_here {
                    agent.set_error(
                        &name,
                        "QEMU exited: the guest powered off or crashed (see its console)",
                    );
                    let _ = commit(agent, ComputeCommand::StopVm { name: name.clone() }).await;
                    let _ = commit(
                        agent,
                        ComputeCommand::VmStopped {
                            name,
                            host: agent.config.name.clone(),
                        },
                    )
                    .await;
                }
            }
            Phase::Incoming { migration } => {
                let mut incoming = agent.incoming.lock().unwrap();
                let st = incoming.entry(name.clone()).or_default();
                st.state = "failed".into();
                st.error = Some(format!(
                    "the destination QEMU exited during migration {migration}"
                ));
            }
            // Their owners (the migration driver, the stop) see it themselves.
            Phase::Outgoing { .. } | Phase::Stopping => {}
        }
    }
}

/// QEMUs of VMs no longer placed here, once the state fetched knows about them.
async fn discard_foreign(agent: &Arc<Agent>, cs: &ComputeState, fetched: Instant) {
    let me = agent.config.name.as_str();
    let slots: Vec<_> = agent.slots.lock().unwrap().values().cloned().collect();
    for slot in slots {
        if slot.created > fetched || matches!(slot.phase(), Phase::Outgoing { .. }) {
            continue;
        }
        let name = slot.name();
        let ours = cs
            .vms
            .iter()
            .any(|v| v.name == name && v.host.as_deref() == Some(me));
        let involved = cs
            .migrations
            .iter()
            .any(|m| m.vm == name && (m.from == me || m.to == me));
        if !ours && !involved {
            tracing::info!(vm = %name, "the VM is not placed here: its QEMU goes");
            agent.discard(&name).await;
            agent.incoming.lock().unwrap().remove(&name);
        }
    }
}

/// Starts `vm`'s QEMU; on failure records why and reports the VM stopped.
pub async fn start(agent: Arc<Agent>, vm: Vm) {
    if !agent.starting.lock().unwrap().insert(vm.name.clone()) {
        return;
    }
    agent.errors.lock().unwrap().remove(&vm.name);
    remove_files(&agent.run_dir, &vm.name);
    let spec = agent.spec(&vm);
    let result = host::Vm::start(&spec, &agent.launch_options()).await;
    match result {
        Ok(qemu) => {
            tracing::info!(vm = %vm.name, pid = qemu.pid(), "VM running");
            agent.insert(vm.clone(), qemu, Phase::Running);
        }
        Err(e) => {
            agent.set_error(&vm.name, format!("starting QEMU: {e}"));
            let _ = commit(
                &agent,
                ComputeCommand::StopVm {
                    name: vm.name.clone(),
                },
            )
            .await;
            let _ = commit(
                &agent,
                ComputeCommand::VmStopped {
                    name: vm.name.clone(),
                    host: agent.config.name.clone(),
                },
            )
            .await;
        }
    }
    agent.starting.lock().unwrap().remove(&vm.name);
}

/// Stops `name`: ACPI power-off, forced after `timeout` (at once with `force`); then
/// reports it stopped.
pub async fn stop(agent: &Agent, name: &str, timeout: Duration, force: bool) -> Result<(), String> {
    if let Some(slot) = agent.slot(name) {
        if slot.phase() == Phase::Stopping {
            return Ok(());
        }
        slot.set_phase(Phase::Stopping);
        let mut vm = slot.vm.write().await;
        let r = if force {
            vm.kill().await.map(|_| ())
        } else {
            vm.shutdown(timeout).await.map(|o| {
                tracing::info!(vm = %name, outcome = ?o, "VM stopped");
            })
        };
        drop(vm);
        if let Err(e) = r {
            slot.set_phase(Phase::Running);
            return Err(format!("stopping VM {name}: {e}"));
        }
        agent.slots.lock().unwrap().remove(name);
        remove_files(&agent.run_dir, name);
    }
    commit(
        agent,
        ComputeCommand::VmStopped {
            name: name.to_string(),
            host: agent.config.name.clone(),
        },
    )
    .await
    .map(drop)
}
