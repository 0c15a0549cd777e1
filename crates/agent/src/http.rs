//! The agent's API, called by the members (and the source agent of a migration).

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::time::Duration;

use api::{
    AttachDisk, ErrorBody, IncomingReady, IncomingRequest, IncomingStatus, MigrationProgress,
    StopVm, VmStatus,
};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::incoming::{self, IncomingError};
use crate::local::{disk_spec, Agent};
use crate::reconcile;

/// How long the guest gets to release a disk being removed.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(30);

pub struct AgentApiError(StatusCode, &'static str, String);

impl IntoResponse for AgentApiError {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(ErrorBody {
                error: self.2,
                kind: self.1.into(),
            }),
        )
            .into_response()
    }
}

impl From<IncomingError> for AgentApiError {
    fn from(e: IncomingError) -> Self {
        let (status, kind) = match e {
            IncomingError::Exists(_) => (StatusCode::CONFLICT, "already_exists"),
            IncomingError::NotIncoming(_) => (StatusCode::NOT_FOUND, "not_found"),
            IncomingError::Qemu(_) => (StatusCode::BAD_GATEWAY, "qemu"),
        };
        AgentApiError(status, kind, e.to_string())
    }
}

type Answer<T> = Result<Json<T>, AgentApiError>;

fn no_vm(name: &str) -> AgentApiError {
    AgentApiError(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("VM {name} does not run on this host"),
    )
}

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/vms", get(list))
        .route("/v1/vms/{name}", get(show))
        .route("/v1/vms/{name}/console", get(console))
        .route("/v1/vms/{name}/stop", post(stop))
        .route("/v1/vms/{name}/disks", post(add_disk))
        .route("/v1/vms/{name}/disks/{volume}", delete(remove_disk))
        .route("/v1/incoming", post(prepare))
        .route("/v1/incoming/{name}", get(incoming_status).delete(abandon))
        .route("/v1/incoming/{name}/load", post(load))
        .route("/v1/migrations/{id}", get(migration))
        .with_state(agent)
}

async fn list(State(a): State<Arc<Agent>>) -> Answer<Vec<VmStatus>> {
    Ok(Json(a.statuses().await))
}

async fn show(State(a): State<Arc<Agent>>, Path(name): Path<String>) -> Answer<VmStatus> {
    a.status(&name).await.map(Json).ok_or_else(|| no_vm(&name))
}

#[derive(Deserialize)]
struct Tail {
    #[serde(default)]
    bytes: Option<u64>,
}

async fn console(
    State(a): State<Arc<Agent>>,
    Path(name): Path<String>,
    Query(q): Query<Tail>,
) -> Answer<String> {
    let path = host::qemu::VmPaths::new(&a.run_dir, &name).console;
    let want = q.bytes.unwrap_or(16384);
    let text = (|| -> std::io::Result<String> {
        let mut f = std::fs::File::open(&path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(want)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    })()
    .map_err(|e| {
        AgentApiError(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no console of VM {name} on this host: {e}"),
        )
    })?;
    Ok(Json(text))
}

async fn stop(
    State(a): State<Arc<Agent>>,
    Path(name): Path<String>,
    Json(req): Json<StopVm>,
) -> Answer<VmStatus> {
    reconcile::stop(&a, &name, Duration::from_secs(req.timeout_secs), req.force)
        .await
        .map_err(|e| AgentApiError(StatusCode::BAD_GATEWAY, "qemu", e))?;
    Ok(Json(a.status(&name).await.unwrap_or(VmStatus {
        name,
        state: "stopped".into(),
        pid: None,
        error: None,
        disks: vec![],
        console: None,
    })))
}

async fn add_disk(
    State(a): State<Arc<Agent>>,
    Path(name): Path<String>,
    Json(req): Json<AttachDisk>,
) -> Answer<VmStatus> {
    let slot = a.slot(&name).ok_or_else(|| no_vm(&name))?;
    let portal = a.compute().group_portal.clone();
    {
        let vm = slot.vm.read().await;
        vm.add_disk(&disk_spec(&portal, &req.volume), &a.initiator)
            .await
            .map_err(|e| AgentApiError(StatusCode::BAD_GATEWAY, "qemu", e.to_string()))?;
    }
    {
        let mut def = slot.def.lock().unwrap();
        if !def.disks.contains(&req.volume) {
            def.disks.push(req.volume.clone());
        }
    }
    a.status(&name).await.map(Json).ok_or_else(|| no_vm(&name))
}

async fn remove_disk(
    State(a): State<Arc<Agent>>,
    Path((name, volume)): Path<(String, String)>,
) -> Answer<VmStatus> {
    let slot = a.slot(&name).ok_or_else(|| no_vm(&name))?;
    {
        let vm = slot.vm.read().await;
        vm.remove_disk(&volume, REMOVE_TIMEOUT)
            .await
            .map_err(|e| AgentApiError(StatusCode::BAD_GATEWAY, "qemu", e.to_string()))?;
    }
    slot.def.lock().unwrap().disks.retain(|d| *d != volume);
    a.status(&name).await.map(Json).ok_or_else(|| no_vm(&name))
}

async fn prepare(
    State(a): State<Arc<Agent>>,
    Json(req): Json<IncomingRequest>,
) -> Answer<IncomingReady> {
    Ok(Json(incoming::prepare(&a, req).await?))
}

async fn incoming_status(
    State(a): State<Arc<Agent>>,
    Path(name): Path<String>,
) -> Answer<IncomingStatus> {
    a.incoming
        .lock()
        .unwrap()
        .get(&name)
        .cloned()
        .map(Json)
        .ok_or_else(|| AgentApiError::from(IncomingError::NotIncoming(name)))
}

async fn abandon(
    State(a): State<Arc<Agent>>,
    Path(name): Path<String>,
) -> Answer<serde_json::Value> {
    incoming::abandon(&a, &name).await;
    Ok(Json(serde_json::json!({})))
}

async fn load(State(a): State<Arc<Agent>>, Path(name): Path<String>) -> Answer<IncomingStatus> {
    Ok(Json(incoming::load(&a, &name).await?))
}

async fn migration(State(a): State<Arc<Agent>>, Path(id): Path<u64>) -> Answer<MigrationProgress> {
    a.outgoing
        .lock()
        .unwrap()
        .get(&id)
        .cloned()
        .map(Json)
        .ok_or_else(|| {
            AgentApiError(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("migration {id} is not leaving this host"),
            )
        })
}
