//! REST routes for hosts, VMs and migrations.
//!
//! The control plane records what should be; host agents make it so and report what is.
//! Routes that change a running VM (start, stop, hot-add, hot-remove) record the change
//! through Raft and then ask the VM's host agent to carry it out, answering once it has:
//!
//! ```text
//!  CLI ──POST /v1/vms/a/start──► member ──StartVm (Raft)──► state: a on h1, running
//!                                  │ polls h1's agent until `running` (or its error)
//!  agent h1 ──GET /v1/compute (every 200 ms)──► sees a placed here ─► starts QEMU
//! ```
//!
//! Migrations are queued here and driven by the source host's agent.

use crate::http::{applied, apply, refused, unexpected, ApiError, ApiResult};
use crate::Member;
use api::{
    AttachDisk, ComputeState, DefineVm, HostView, MigrateVm, MigrationProgress, MigrationView,
    StartVm, StopVm, VmStatus, VmView,
};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use control::{ClusterState, Command, ComputeCommand, Host, Migration, Outcome, Vm};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// A disk that saw I/O more recently than this is in use: removing it needs `--force`.
const DISK_IN_USE_WITHIN: Duration = Duration::from_secs(5);

/// How long starting a VM may take before the API gives up waiting (QEMU under TCG).
const START_WAIT: Duration = Duration::from_secs(120);

pub fn router() -> Router<Arc<Member>> {
    Router::new()
        .route("/v1/hosts", get(list_hosts).post(register_host))
        .route("/v1/hosts/{name}/drain", post(drain_host))
        .route("/v1/hosts/{name}/undrain", post(undrain_host))
        .route("/v1/compute", get(compute_state).post(compute_command))
        .route("/v1/vms", get(list_vms).post(define_vm))
        .route("/v1/vms/{name}", get(show_vm).delete(delete_vm))
        .route("/v1/vms/{name}/start", post(start_vm))
        .route("/v1/vms/{name}/stop", post(stop_vm))
        .route("/v1/vms/{name}/disks", post(attach_disk))
        .route("/v1/vms/{name}/disks/{volume}", delete(detach_disk))
        .route("/v1/vms/{name}/console", get(console))
        .route("/v1/vms/{name}/migrate", post(migrate_vm))
        .route("/v1/migrations", get(list_migrations))
        .route("/v1/migrations/{id}", get(show_migration))
        .route("/v1/migrations/{id}/cancel", post(cancel_migration))
}

fn compute(cmd: ComputeCommand) -> Command {
    Command::Compute { cmd }
}

/// A client for a host agent: short timeouts, so a dead host does not stall the API.
pub fn agent(host: &Host, timeout: Duration) -> api::Client {
    api::Client::new(vec![host.api_addr.clone()]).with_timeout(timeout)
}

fn not_found(what: String) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "not_found", what)
}

fn agent_failed(host: &str, e: api::ClientError) -> ApiError {
    match e {
        api::ClientError::Api {
            status,
            kind,
            message,
        } => ApiError(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            match kind.as_str() {
                "not_found" => "not_found",
                "invalid" => "invalid",
                "busy" => "busy",
                _ => "host",
            },
            format!("host {host}: {message}"),
        ),
        e => ApiError(
            StatusCode::BAD_GATEWAY,
            "unreachable",
            format!("host {host} did not answer: {e}"),
        ),
    }
}

fn vm_of(state: &ClusterState, name: &str) -> Result<Vm, ApiError> {
    state
        .vms
        .get(name)
        .cloned()
        .ok_or_else(|| not_found(format!("no VM named {name}")))
}

/// What the VM's host agent says about it (`None` when no host owns it or it is silent).
async fn live_status(state: &ClusterState, vm: &Vm) -> Option<VmStatus> {
    let host = state.hosts.get(vm.host.as_ref()?)?;
    agent(host, Duration::from_secs(2))
        .get(&format!("/v1/vms/{}", vm.name))
        .await
        .ok()
}

async fn view(state: &ClusterState, vm: Vm) -> VmView {
    let status = live_status(state, &vm).await;
    VmView { vm, status }
}

async fn list_hosts(State(m): State<Arc<Member>>) -> ApiResult<Vec<HostView>> {
    let state = m.control.state();
    let mut out = Vec::new();
    for h in state.hosts.values() {
        let reachable = agent(h, Duration::from_secs(1))
            .get::<Vec<VmStatus>>("/v1/vms")
            .await
            .is_ok();
        out.push(HostView {
            host: h.clone(),
            vms: state
                .vms
                .values()
                .filter(|v| v.host.as_deref() == Some(h.name.as_str()))
                .map(|v| v.name.clone())
                .collect(),
            reachable,
        });
    }
    Ok(Json(out))
}

async fn register_host(State(m): State<Arc<Member>>, Json(h): Json<Host>) -> ApiResult<Host> {
    match apply(&m, compute(ComputeCommand::RegisterHost(h))).await? {
        Outcome::Host(h) => Ok(Json(h)),
        o => Err(unexpected(o)),
    }
}

/// The schedulable host with the fewest VMs placed or arriving, other than `except`.
fn least_busy_host(state: &ClusterState, except: Option<&str>) -> Option<String> {
    state
        .hosts
        .values()
        .filter(|h| h.schedulable && Some(h.name.as_str()) != except)
        .min_by_key(|h| {
            let placed = state
                .vms
                .values()
                .filter(|v| v.host.as_deref() == Some(h.name.as_str()))
                .count();
            let arriving = state
                .migrations
                .values()
                .filter(|x| !x.state.is_final() && x.to == h.name)
                .count();
            (placed + arriving, h.name.clone())
        })
        .map(|h| h.name.clone())
}

async fn drain_host(
    State(m): State<Arc<Member>>,
    Path(name): Path<String>,
) -> ApiResult<Vec<Migration>> {
    let state = m.control.state();
    if !state.hosts.contains_key(&name) {
        return Err(not_found(format!("no host named {name}")));
    }
    let running: Vec<Vm> = state
        .vms
        .values()
        .filter(|v| v.running && v.host.as_deref() == Some(name.as_str()))
        .cloned()
        .collect();
    if !running.is_empty() && least_busy_host(&state, Some(&name)).is_none() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!(
                "host {name} runs {} VMs and no other host can take them",
                running.len()
            ),
        ));
    }
    apply(
        &m,
        compute(ComputeCommand::SetHostSchedulable {
            name: name.clone(),
            schedulable: false,
        }),
    )
    .await?;
    let mut out = Vec::new();
    for vm in running {
        let state = m.control.state();
        if let Some(existing) = state.active_migration(&vm.name) {
            out.push(existing.clone());
            continue;
        }
        let Some(to) = least_busy_host(&state, Some(&name)) else {
            break;
        };
        match apply(
            &m,
            compute(ComputeCommand::RequestMigration {
                vm: vm.name.clone(),
                to,
                quick: false,
                downtime_limit_ms: api::default_downtime_ms(),
                postcopy: false,
                max_bandwidth: None,
                requested: crate::http::now(),
            }),
        )
        .await?
        {
            Outcome::Migration(x) => out.push(x),
            o => return Err(unexpected(o)),
        }
    }
    Ok(Json(out))
}

async fn undrain_host(State(m): State<Arc<Member>>, Path(name): Path<String>) -> ApiResult<Host> {
    match apply(
        &m,
        compute(ComputeCommand::SetHostSchedulable {
            name,
            schedulable: true,
        }),
    )
    .await?
    {
        Outcome::Host(h) => Ok(Json(h)),
        o => Err(unexpected(o)),
    }
}

async fn compute_state(State(m): State<Arc<Member>>) -> ApiResult<ComputeState> {
    let state = m.control.state();
    Ok(Json(ComputeState {
        hosts: state.hosts.values().cloned().collect(),
        vms: state.vms.values().cloned().collect(),
        migrations: state
            .migrations
            .values()
            .filter(|x| !x.state.is_final())
            .cloned()
            .collect(),
        member_apis: state.members.values().map(|x| x.api_addr.clone()).collect(),
        group_portal: m
            .config
            .group_portal
            .clone()
            .unwrap_or_else(|| m.config.portal.clone()),
    }))
}

/// A host agent reports or asks for a change (a VM stopped, a migration's steps). The
/// answer comes once this member fences the VM's volumes as the new state says, so a
/// destination told "switch over" never writes before its writes are accepted.
async fn compute_command(
    State(m): State<Arc<Member>>,
    Json(cmd): Json<ComputeCommand>,
) -> ApiResult<Outcome> {
    let outcome = apply(&m, compute(cmd)).await?;
    let vm = match &outcome {
        Outcome::Vm(vm) => Some(vm.name.clone()),
        Outcome::Migration(x) => Some(x.vm.clone()),
        _ => None,
    };
    if let Some(vm) = vm {
        let state = m.control.state();
        if let Some(vm) = state.vms.get(&vm) {
            for disk in &vm.disks {
                wait_fenced(&m, disk, state.volume_writer(disk).as_deref()).await?;
            }
        }
    }
    Ok(Json(outcome))
}

async fn list_vms(State(m): State<Arc<Member>>) -> ApiResult<Vec<VmView>> {
    let state = m.control.state();
    let mut out = Vec::new();
    for vm in state.vms.values() {
        out.push(view(&state, vm.clone()).await);
    }
    Ok(Json(out))
}

async fn show_vm(State(m): State<Arc<Member>>, Path(name): Path<String>) -> ApiResult<VmView> {
    let state = m.control.state();
    let vm = vm_of(&state, &name)?;
    Ok(Json(view(&state, vm).await))
}

async fn define_vm(
    State(m): State<Arc<Member>>,
    Json(req): Json<DefineVm>,
) -> Result<(StatusCode, Json<VmView>), ApiError> {
    let cmd = ComputeCommand::DefineVm {
        name: req.name,
        cpus: req.cpus,
        memory_bytes: req.memory_bytes,
        disks: req.disks,
        boot: req.boot,
        created: crate::http::now(),
    };
    match apply(&m, compute(cmd)).await? {
        Outcome::Vm(vm) => Ok((StatusCode::CREATED, Json(VmView { vm, status: None }))),
        o => Err(unexpected(o)),
    }
}

async fn delete_vm(
    State(m): State<Arc<Member>>,
    Path(name): Path<String>,
) -> ApiResult<serde_json::Value> {
    apply(&m, compute(ComputeCommand::DeleteVm { name })).await?;
    Ok(Json(serde_json::json!({})))
}

async fn start_vm(
    State(m): State<Arc<Member>>,
    Path(name): Path<String>,
    Json(req): Json<StartVm>,
) -> ApiResult<VmView> {
    let state = m.control.state();
    let vm = vm_of(&state, &name)?;
    let host = match (req.host, &vm.host) {
        (Some(h), _) => h,
        // Still owned by a host that has not confirmed the stop: only it may run it.
        (None, Some(h)) => h.clone(),
        (None, None) => least_busy_host(&state, None).ok_or_else(|| {
            ApiError(
                StatusCode::BAD_REQUEST,
                "invalid",
                "no schedulable host: start a host agent (haven host run) or undrain one".into(),
            )
        })?,
    };
    apply(
        &m,
        compute(ComputeCommand::StartVm {
            name: name.clone(),
            host: host.clone(),
        }),
    )
    .await?;
    let deadline = tokio::time::Instant::now() + START_WAIT;
    loop {
        let state = m.control.state();
        let vm = vm_of(&state, &name)?;
        // Ask the host it was placed on: after a failed start the VM belongs to no host,
        // and that host's agent holds the reason.
        let status = match state.hosts.get(&host) {
            Some(h) => agent(h, Duration::from_secs(2))
                .get::<VmStatus>(&format!("/v1/vms/{name}"))
                .await
                .ok(),
            None => None,
        };
        match &status {
            Some(s) if s.state == "running" => return Ok(Json(VmView { vm, status })),
            Some(s) if !vm.running => {
                return Err(ApiError(
                    StatusCode::BAD_GATEWAY,
                    "host",
                    format!(
                        "host {host} could not start VM {name}: {}",
                        s.error.as_deref().unwrap_or("it stopped")
                    ),
                ))
            }
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError(
                StatusCode::GATEWAY_TIMEOUT,
                "indeterminate",
                format!(
                    "VM {name} is placed on {host} but did not report running within {}s (now: {})",
                    START_WAIT.as_secs(),
                    status
                        .map(|s| s.state)
                        .unwrap_or_else(|| "host silent".into())
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stop_vm(
    State(m): State<Arc<Member>>,
    Path(name): Path<String>,
    Json(req): Json<StopVm>,
) -> ApiResult<VmView> {
    let state = m.control.state();
    let vm = vm_of(&state, &name)?;
    apply(&m, compute(ComputeCommand::StopVm { name: name.clone() })).await?;
    if let Some(host) = vm.host.as_ref().and_then(|h| state.hosts.get(h)) {
        agent(host, Duration::from_secs(req.timeout_secs + 30))
            .post::<_, VmStatus>(&format!("/v1/vms/{name}/stop"), &req)
            .await
            .map_err(|e| agent_failed(&host.name, e))?;
        applied(format!("VM {name} stopped"), || {
            m.control
                .state()
                .vms
                .get(&name)
                .is_none_or(|v| v.host.is_none())
        })
        .await?;
    }
    let state = m.control.state();
    Ok(Json(view(&state, vm_of(&state, &name)?).await))
}

async fn attach_disk(
    State(m): State<Arc<Member>>,
    Path(name): Path<String>,
    Json(req): Json<AttachDisk>,
) -> ApiResult<VmView> {
    apply(
        &m,
        compute(ComputeCommand::AttachDisk {
            vm: name.clone(),
            volume: req.volume.clone(),
        }),
    )
    .await?;
    let state = m.control.state();
    let vm = vm_of(&state, &name)?;
    if let (true, Some(host)) = (
        vm.running,
        vm.host.as_ref().and_then(|h| state.hosts.get(h)),
    ) {
        // The fence must name the owner before the guest's first write to the new disk.
        wait_fenced(&m, &req.volume, Some(&host.initiator)).await?;
        if let Err(e) = agent(host, Duration::from_secs(60))
            .post::<_, VmStatus>(&format!("/v1/vms/{name}/disks"), &req)
            .await
        {
            let _ = apply(
                &m,
                compute(ComputeCommand::DetachDisk {
                    vm: name.clone(),
                    volume: req.volume.clone(),
                }),
            )
            .await;
            return Err(agent_failed(&host.name, e));
        }
    }
    let state = m.control.state();
    Ok(Json(view(&state, vm_of(&state, &name)?).await))
}

#[derive(Deserialize)]
struct Force {
    #[serde(default)]
    force: bool,
}

async fn detach_disk(
    State(m): State<Arc<Member>>,
    Path((name, volume)): Path<(String, String)>,
    Query(q): Query<Force>,
) -> ApiResult<VmView> {
    let state = m.control.state();
    let vm = vm_of(&state, &name)?;
    if !vm.disks.contains(&volume) {
        return Err(not_found(format!(
            "volume {volume} is not a disk of VM {name}"
        )));
    }
    if let (true, Some(host)) = (
        vm.running,
        vm.host.as_ref().and_then(|h| state.hosts.get(h)),
    ) {
        let client = agent(host, Duration::from_secs(60));
        if !q.force {
            let status: VmStatus = client
                .get(&format!("/v1/vms/{name}"))
                .await
                .map_err(|e| agent_failed(&host.name, e))?;
            let idle = status
                .disks
                .iter()
                .find(|d| d.volume == volume)
                .and_then(|d| d.idle_ms);
            if let Some(ms) = idle.filter(|ms| *ms < DISK_IN_USE_WITHIN.as_millis() as u64) {
                return Err(ApiError(
                    StatusCode::CONFLICT,
                    "in_use",
                    format!(
                        "disk {volume} of VM {name} did I/O {:.1} s ago; stop using it in the guest or pass --force",
                        ms as f64 / 1000.0
                    ),
                ));
            }
        }
        client
            .delete::<VmStatus>(&format!("/v1/vms/{name}/disks/{volume}"))
            .await
            .map_err(|e| agent_failed(&host.name, e))?;
    }
    apply(
        &m,
        compute(ComputeCommand::DetachDisk {
            vm: name.clone(),
            volume,
        }),
    )
    .await?;
    let state = m.control.state();
    Ok(Json(view(&state, vm_of(&state, &name)?).await))
}

#[derive(Deserialize)]
struct ConsoleQuery {
    #[serde(default)]
    bytes: Option<u64>,
}

async fn console(
    State(m): State<Arc<Member>>,
    Path(name): Path<String>,
    Query(q): Query<ConsoleQuery>,
) -> ApiResult<String> {
    let state = m.control.state();
    let vm = vm_of(&state, &name)?;
    let Some(host) = vm.host.as_ref().and_then(|h| state.hosts.get(h)) else {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("VM {name} runs on no host"),
        ));
    };
    let text: String = agent(host, Duration::from_secs(5))
        .get(&format!(
            "/v1/vms/{name}/console?bytes={}",
            q.bytes.unwrap_or(16384)
        ))
        .await
        .map_err(|e| agent_failed(&host.name, e))?;
    Ok(Json(text))
}

/// Waits until this member fences `volume` to `initiator`.
pub(crate) async fn wait_fenced(
    m: &Member,
    volume: &str,
    initiator: Option<&str>,
) -> Result<(), ApiError> {
    let iqn = format!("{}:{volume}", control::state::IQN_PREFIX);
    applied(format!("the write fence of {volume}"), || {
        m.registry
            .get(&iqn)
            .is_none_or(|h| h.lu.writer().as_deref() == initiator)
    })
    .await
}

async fn migrate_vm(
    State(m): State<Arc<Member>>,
    Path(name): Path<String>,
    Json(req): Json<MigrateVm>,
) -> Result<(StatusCode, Json<MigrationView>), ApiError> {
    let state = m.control.state();
    let vm = vm_of(&state, &name)?;
    let to = match req.to {
        Some(to) => to,
        None => least_busy_host(&state, vm.host.as_deref()).ok_or_else(|| {
            ApiError(
                StatusCode::BAD_REQUEST,
                "invalid",
                "no other schedulable host to migrate to".into(),
            )
        })?,
    };
    match apply(
        &m,
        compute(ComputeCommand::RequestMigration {
            vm: name,
            to,
            quick: req.quick,
            downtime_limit_ms: req.downtime_limit_ms,
            postcopy: req.postcopy,
            max_bandwidth: req.max_bandwidth,
            requested: crate::http::now(),
        }),
    )
    .await?
    {
        Outcome::Migration(migration) => Ok((
            StatusCode::CREATED,
            Json(MigrationView {
                migration,
                progress: None,
            }),
        )),
        o => Err(unexpected(o)),
    }
}

async fn migration_view(state: &ClusterState, migration: Migration) -> MigrationView {
    let progress = if migration.state.is_active() {
        match state.hosts.get(&migration.from) {
            Some(h) => agent(h, Duration::from_secs(2))
                .get::<MigrationProgress>(&format!("/v1/migrations/{}", migration.id))
                .await
                .ok(),
            None => None,
        }
    } else {
        None
    };
    MigrationView {
        migration,
        progress,
    }
}

async fn list_migrations(State(m): State<Arc<Member>>) -> ApiResult<Vec<MigrationView>> {
    let state = m.control.state();
    let mut out = Vec::new();
    for x in state.migrations.values() {
        out.push(migration_view(&state, x.clone()).await);
    }
    Ok(Json(out))
}

async fn show_migration(
    State(m): State<Arc<Member>>,
    Path(id): Path<u64>,
) -> ApiResult<MigrationView> {
    let state = m.control.state();
    let x = state
        .migrations
        .get(&id)
        .cloned()
        .ok_or_else(|| not_found(format!("no migration {id}")))?;
    Ok(Json(migration_view(&state, x).await))
}

async fn cancel_migration(
    State(m): State<Arc<Member>>,
    Path(id): Path<u64>,
) -> ApiResult<MigrationView> {
    match apply(&m, compute(ComputeCommand::CancelMigration { id })).await? {
        Outcome::Migration(x) => {
            let state = m.control.state();
            Ok(Json(migration_view(&state, x).await))
        }
        Outcome::Refused { kind, message } => Err(refused(kind, message)),
        o => Err(unexpected(o)),
    }
}
