//! The member's REST API (routes listed in the `api` crate), merged with the control
//! plane's Raft routes on one port.

use crate::group_sessions;
use crate::Member;
use api::{
    CloneVolume, CreateSnapshot, CreateVolume, ErrorBody, GroupStatus, MemberView, Resize, Restore,
    SetAcl, SetChap, SnapshotView, VolumeView,
};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use control::{Chap, Command, Outcome, RefusalKind};
use serde::Deserialize;
use std::sync::Arc;

/// An API error: status, kind and message.
pub struct ApiError(pub StatusCode, pub &'static str, pub String);

impl IntoResponse for ApiError {
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

impl From<control::ControlError> for ApiError {
    fn from(e: control::ControlError) -> Self {
        use control::ErrorKind::*;
        match e.kind() {
            NoLeader | Network | Shutdown => ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
            Indeterminate => ApiError(StatusCode::GATEWAY_TIMEOUT, "indeterminate", e.to_string()),
            _ => ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
        }
    }
}

pub(crate) fn refused(kind: RefusalKind, message: String) -> ApiError {
    match kind {
        RefusalKind::NotFound => ApiError(StatusCode::NOT_FOUND, "not_found", message),
        RefusalKind::AlreadyExists => ApiError(StatusCode::CONFLICT, "already_exists", message),
        RefusalKind::Invalid => ApiError(StatusCode::BAD_REQUEST, "invalid", message),
        RefusalKind::Busy => ApiError(StatusCode::CONFLICT, "busy", message),
    }
}

/// A command answered with an outcome of another kind than it produces: a bug.
pub(crate) fn unexpected(o: Outcome) -> ApiError {
    ApiError(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        format!("unexpected outcome {o:?}"),
    )
}

fn not_found(name: &str) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no volume named {name}"),
    )
}

pub(crate) type ApiResult<T> = Result<Json<T>, ApiError>;

pub fn router(member: Arc<Member>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/members", get(members))
        .route("/v1/members/join", post(join_member))
        .route("/v1/members/{name}/remove", post(remove_member))
        .route("/v1/load", get(load))
        .route("/v1/group", get(group_view))
        .route("/v1/volumes", get(list_volumes).post(create_volume))
        .route("/v1/sessions/here", get(sessions_here))
        .route("/v1/volumes/{name}", get(show_volume).delete(delete_volume))
        .route("/v1/volumes/{name}/resize", post(resize_volume))
        .route("/v1/volumes/{name}/acl", put(set_acl))
        .route("/v1/volumes/{name}/chap", put(set_chap))
        .route(
            "/v1/volumes/{name}/snapshots",
            get(list_snapshots).post(create_snapshot),
        )
        .route(
            "/v1/volumes/{name}/snapshots/{snap}",
            get(show_snapshot).delete(delete_snapshot),
        )
        .route("/v1/volumes/{name}/restore", post(restore_volume))
        .route("/v1/volumes/{name}/clone", post(clone_volume))
        .route("/v1/volumes/{name}/scrub", post(scrub_volume))
        .route("/v1/volumes/{name}/copies", get(copy_digests))
        .route(
            "/v1/volumes/{name}/snapshot-reserve",
            put(set_snapshot_reserve),
        )
        .route(
            "/v1/volumes/{name}/flatten",
            post(start_flatten).get(flatten_status),
        )
        .merge(crate::vms::router())
        .with_state(member)
}

fn member_views(m: &Member) -> Vec<MemberView> {
    let state = m.control.state();
    let leader = m.control.leader().map(|(id, _)| id);
    let fills = m.registry.peer_fills();
    let own_in_use = m.registry.store().space().in_use;
    state
        .members
        .values()
        .map(|x| {
            let me = x.name == m.config.name;
            MemberView {
                name: x.name.clone(),
                node_id: x.node_id,
                api: x.api_addr.clone(),
                portal: x.portal.clone(),
                capacity: x.capacity,
                state: member_state(x).into(),
                leader: Some(x.node_id) == leader,
                in_use: if me {
                    Some(own_in_use)
                } else {
                    fills.get(&x.node_id).copied()
                },
                copies: copies_on(&state, x.node_id),
                pool: me.then(|| {
                    let s = m.registry.store().space();
                    let unlimited = s.capacity == u64::MAX;
                    api::PoolView {
                        capacity: if unlimited { x.capacity } else { s.capacity },
                        provisioned: s.provisioned,
                        in_use: s.in_use,
                        free: if unlimited {
                            x.capacity.saturating_sub(s.in_use)
                        } else {
                            s.free
                        },
                        snapshot_in_use: s.snapshot_in_use,
                        warning: s.warn,
                    }
                }),
            }
        })
        .collect()
}

fn member_state(x: &control::Member) -> &'static str {
    if x.removing {
        "removing"
    } else if x.out {
        "out"
    } else if x.down {
        "down"
    } else {
        "online"
    }
}

/// Placement groups (over every replica class) that `node` holds or is given a copy of.
fn copies_on(state: &control::ClusterState, node: u64) -> usize {
    state
        .layout
        .tables
        .values()
        .map(|t| {
            (0..t.map.pg_count)
                .filter(|&pg| t.copies(pg).contains(&node))
                .count()
        })
        .sum()
}

/// Start removing a member: refused when the others cannot hold what the pool holds.
async fn remove_member(
    State(m): State<Arc<Member>>,
    Path(name): Path<String>,
) -> ApiResult<Vec<MemberView>> {
    let state = m.control.state();
    let Some(target) = state.members.get(&name) else {
        return Err(refused(
            RefusalKind::NotFound,
            format!("no member named {name}"),
        ));
    };
    if !target.removing {
        let views = member_views(&m);
        let in_use: u64 = views.iter().filter_map(|v| v.in_use).sum();
        let rest: u64 = state
            .placeable_members()
            .filter(|x| x.name != name)
            .map(|x| x.capacity)
            .sum();
        // Leave headroom: a pool run to its last byte fails writes.
        if in_use > rest / 10 * 9 {
            return Err(refused(
                RefusalKind::Invalid,
                format!(
                    "the other members offer {} and the pool holds {}: removing {name} would fill them past 90%; add a member first",
                    api::format_size(rest),
                    api::format_size(in_use)
                ),
            ));
        }
    }
    match m
        .control
        .write(Command::RemoveMember { name: name.clone() })
        .await?
    {
        Outcome::Ok => Ok(Json(member_views(&m))),
        Outcome::Refused { kind, message } => Err(refused(kind, message)),
        other => Err(unexpected(other)),
    }
}

async fn status(State(m): State<Arc<Member>>) -> ApiResult<GroupStatus> {
    let state = m.control.state();
    let leader = m.control.leader().and_then(|(id, _)| {
        state
            .members
            .values()
            .find(|x| x.node_id == id)
            .map(|x| x.name.clone())
    });
    Ok(Json(GroupStatus {
        member: m.config.name.clone(),
        leader,
        group_portal: m.config.group_portal.clone(),
        members: member_views(&m),
        volumes: state.volumes.len(),
    }))
}

async fn group_view(State(m): State<Arc<Member>>) -> ApiResult<api::GroupView> {
    let state = m.control.state();
    let down = state.down_nodes();
    let mut view = api::GroupView {
        member: m.config.name.clone(),
        epoch: state.layout.epoch,
        placement_groups: 0,
        degraded: 0,
        filling: 0,
        unavailable: 0,
        resync_bytes: m.registry.resync_bytes(),
        tracked_copies: 0,
        tracked_chunks: 0,
        peer_writes: 0,
        peer_write_frames: 0,
    };
    (view.tracked_copies, view.tracked_chunks) = m.registry.tracked_resync();
    (view.peer_writes, view.peer_write_frames) = m.registry.peer_writes();
    for table in state.layout.tables.values() {
        for pg in 0..table.map.pg_count {
            view.placement_groups += 1;
            let planned = table.planned(pg).count();
            let complete = table
                .planned(pg)
                .filter(|n| table.is_in_sync(pg, *n) && !down.contains(n))
                .count();
            let filling = table.backfills(pg).len();
            view.filling += filling;
            if complete < planned.max(usize::from(table.map.replicas).min(planned)) {
                view.degraded += 1;
            }
            if table.primary(pg).is_none_or(|p| down.contains(&p)) {
                view.unavailable += 1;
            }
        }
    }
    Ok(Json(view))
}

async fn load(State(m): State<Arc<Member>>) -> ApiResult<api::LoadView> {
    Ok(Json(api::LoadView {
        sessions: m.registry.session_count(),
        in_use: m.registry.store().space().in_use,
    }))
}

/// Voters of the control plane; members beyond are learners (they follow the log).
const VOTERS: usize = 3;

/// A new member asks to be added to the control plane.
async fn join_member(
    State(m): State<Arc<Member>>,
    Json(req): Json<api::JoinRequest>,
) -> ApiResult<serde_json::Value> {
    let known = m.control.membership();
    if known.iter().any(|n| n.node_id == req.node_id && n.voter) {
        return Ok(Json(serde_json::json!({"joined": "voter"})));
    }
    let voters = known.iter().filter(|n| n.voter).count();
    let result = if voters < VOTERS {
        m.control.add_voter(req.node_id, req.api_addr.clone()).await
    } else {
        m.control
            .add_learner(req.node_id, req.api_addr.clone())
            .await
    };
    result.map_err(ApiError::from)?;
    tracing::info!(node = req.node_id, addr = %req.api_addr, "node joined the control plane");
    Ok(Json(
        serde_json::json!({"joined": if voters < VOTERS { "voter" } else { "learner" }}),
    ))
}

async fn members(State(m): State<Arc<Member>>) -> ApiResult<Vec<MemberView>> {
    Ok(Json(member_views(&m)))
}

/// The state of `v`'s placement groups (those its chunks map to).
fn replication(state: &control::ClusterState, v: &control::Volume) -> Option<api::ReplicationView> {
    let table = state.table(v.replicas)?;
    let down = state.down_nodes();
    let striping = placement::Striping::new(control::CHUNK_BYTES, control::PG_COUNT).ok()?;
    let pgs: std::collections::BTreeSet<u32> = (0..v.size.div_ceil(control::CHUNK_BYTES))
        .take(control::PG_COUNT as usize * 4)
        .map(|c| striping.pg_of(v.placement_key(), c * control::CHUNK_BYTES))
        .collect();
    let mut r = api::ReplicationView {
        placement_groups: pgs.len(),
        ..Default::default()
    };
    for pg in pgs {
        let complete = table
            .planned(pg)
            .filter(|n| table.is_in_sync(pg, *n) && !down.contains(n))
            .count();
        if complete < usize::from(v.replicas) {
            r.degraded += 1;
        }
        r.filling += table
            .backfills(pg)
            .iter()
            .filter(|n| !down.contains(n))
            .count();
        if table.primary(pg).is_none_or(|p| down.contains(&p)) {
            r.unavailable += 1;
        }
    }
    Some(r)
}

fn view(m: &Member, v: &control::Volume, sessions: &[api::SessionView]) -> VolumeView {
    let mut view = VolumeView::from_volume(v, group_sessions::of_target(sessions, &v.iqn()));
    view.replication = replication(&m.control.state(), v);
    view.space = m
        .registry
        .store()
        .volume_space(v.id)
        .ok()
        .map(|s| api::SpaceView {
            provisioned: s.provisioned,
            in_use: s.in_use,
            snapshot_reserve: s.snapshot_reserve,
            snapshot_in_use: s.snapshot_in_use,
            reserve_warning: s.reserve_warn,
            offline: s.offline,
        });
    view
}

async fn list_volumes(State(m): State<Arc<Member>>) -> ApiResult<Vec<VolumeView>> {
    let state = m.control.state();
    let sessions = group_sessions::of_group(&m).await;
    Ok(Json(
        state
            .volumes
            .values()
            .map(|v| view(&m, v, &sessions))
            .collect(),
    ))
}

async fn show_volume(
    State(m): State<Arc<Member>>,
    Path(name): Path<String>,
) -> ApiResult<VolumeView> {
    let state = m.control.state();
    let v = state.volumes.get(&name).ok_or_else(|| not_found(&name))?;
    let sessions = group_sessions::of_group(&m).await;
    Ok(Json(view(&m, v, &sessions)))
}

/// This member's own sessions (every target): other members gather the group's from it.
async fn sessions_here(State(m): State<Arc<Member>>) -> ApiResult<Vec<api::SessionView>> {
    Ok(Json(m.registry.all_sessions()))
}

fn chap_of(spec: Option<api::ChapSpec>) -> Result<Option<Chap>, ApiError> {
    let Some(c) = spec else { return Ok(None) };
    if c.user.is_empty() || c.secret.len() < 12 || c.secret.len() > 255 {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "invalid",
            "CHAP needs a user and a secret of 12 to 255 characters".into(),
        ));
    }
    if c.mutual_user.is_some() != c.mutual_secret.is_some() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "invalid",
            "mutual CHAP needs both a user and a secret".into(),
        ));
    }
    if c.mutual_secret.as_ref().is_some_and(|s| s == &c.secret) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "invalid",
            "the mutual CHAP secret must differ from the initiator's".into(),
        ));
    }
    Ok(Some(Chap {
        user: c.user,
        secret: c.secret,
        mutual_user: c.mutual_user,
        mutual_secret: c.mutual_secret,
    }))
}

pub(crate) async fn apply(m: &Member, cmd: Command) -> Result<Outcome, ApiError> {
    match m.control.write(cmd).await? {
        Outcome::Refused { kind, message } => Err(refused(kind, message)),
        o => Ok(o),
    }
}

/// Wait until this member's registry serves `name` (it follows the applied state).
async fn settled(m: &Member, v: &control::Volume) -> Result<(), ApiError> {
    applied(format!("volume {}", v.name), || {
        m.registry
            .get(&v.iqn())
            .is_some_and(|h| h.volume.read().unwrap().size == v.size)
            && m.registry
                .store()
                .volume(v.id)
                .is_ok_and(|sv| scsi::BlockDevice::num_blocks(&*sv) * v.block_size as u64 >= v.size)
    })
    .await
}

async fn create_volume(
    State(m): State<Arc<Member>>,
    Json(req): Json<CreateVolume>,
) -> Result<(StatusCode, Json<VolumeView>), ApiError> {
    let chap = chap_of(req.chap)?;
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let cmd = Command::CreateVolume {
        name: req.name,
        size: req.size,
        block_size: req.block_size.unwrap_or(512),
        replicas: req
            .replicas
            .unwrap_or_else(|| m.control.state().default_replicas()),
        thick: req.thick,
        allow: req.allow,
        chap,
        created,
    };
    match apply(&m, cmd).await? {
        Outcome::Volume(v) => {
            settled(&m, &v).await?;
            Ok((
                StatusCode::CREATED,
                Json(view(&m, &v, &m.registry.all_sessions())),
            ))
        }
        other => Err(unexpected(other)),
    }
}

#[derive(Deserialize)]
struct Force {
    #[serde(default)]
    force: bool,
}

async fn delete_volume(
    State(m): State<Arc<Member>>,
    Path(name): Path<String>,
    Query(q): Query<Force>,
) -> ApiResult<serde_json::Value> {
    let state = m.control.state();
    let v = state.volumes.get(&name).ok_or_else(|| not_found(&name))?;
    let sessions = group_sessions::of_target(&group_sessions::of_group(&m).await, &v.iqn());
    if !sessions.is_empty() && !q.force {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "volume {name} has {} iSCSI session(s); log them out or use --force",
                sessions.len()
            ),
        ));
    }
    let snaps = state.snapshots.get(&name).map(|s| s.len()).unwrap_or(0);
    if snaps > 0 && !q.force {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "conflict",
            format!("volume {name} has {snaps} snapshot(s); delete them or use --force"),
        ));
    }
    let clones: Vec<&str> = state
        .volumes
        .values()
        .filter(|c| c.parent.is_some_and(|p| p.volume_id == v.id))
        .map(|c| c.name.as_str())
        .collect();
    if !clones.is_empty() && !q.force {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "conflict",
            format!("volume {name} has clones ({}); its data stays until they are flattened or deleted; use --force", clones.join(", ")),
        ));
    }
    apply(&m, Command::DeleteVolume { name }).await?;
    Ok(Json(serde_json::json!({})))
}

async fn resize_volume(
    State(m): State<Arc<Member>>,
    Path(name): Path<String>,
    Json(req): Json<Resize>,
) -> ApiResult<VolumeView> {
    match apply(
        &m,
        Command::ResizeVolume {
            name,
            size: req.size,
        },
    )
    .await?
    {
        Outcome::Volume(v) => {
            settled(&m, &v).await?;
            Ok(Json(view(&m, &v, &m.registry.all_sessions())))
        }
        other => Err(unexpected(other)),
    }
}

async fn set_acl(
    State(m): State<Arc<Member>>,
    Path(name): Path<String>,
    Json(req): Json<SetAcl>,
) -> ApiResult<VolumeView> {
    match apply(
        &m,
        Command::SetAcl {
            name,
            allow: req.allow,
        },
    )
    .await?
    {
        Outcome::Volume(v) => Ok(Json(view(&m, &v, &m.registry.all_sessions()))),
        other => Err(unexpected(other)),
    }
}

async fn set_chap(
    State(m): State<Arc<Member>>,
    Path(name): Path<String>,
    Json(req): Json<SetChap>,
) -> ApiResult<VolumeView> {
    let chap = chap_of(req.chap)?;
    match apply(&m, Command::SetChap { name, chap }).await? {
        Outcome::Volume(v) => Ok(Json(view(&m, &v, &m.registry.all_sessions()))),
        other => Err(unexpected(other)),
    }
}

fn no_snapshot(volume: &str, snap: &str) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no snapshot {volume}@{snap}"),
    )
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Wait until this member serves the target `iqn` (snapshots follow the applied state).
/// How long a change may take to reach this member's store before the API gives up
/// waiting (the change stays committed and is still applied).
const APPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Poll `done` until it holds; an error if this member has not applied the change in time.
/// The API answers only once the change is in effect here: a snapshot it reports taken
/// holds no write acknowledged after the answer.
pub(crate) async fn applied(what: String, mut done: impl FnMut() -> bool) -> Result<(), ApiError> {
    let deadline = tokio::time::Instant::now() + APPLY_WAIT;
    // Start fine-grained: a migration's storage handover waits here with the guest paused.
    let mut pause = std::time::Duration::from_micros(500);
    while !done() {
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError(
                StatusCode::GATEWAY_TIMEOUT,
                "indeterminate",
                format!("{what} is recorded but this member has not applied it within {}s; see the member log", APPLY_WAIT.as_secs()),
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(10));
    }
    Ok(())
}

async fn serving(m: &Member, iqn: &str) -> Result<(), ApiError> {
    applied(format!("target {iqn}"), || m.registry.get(iqn).is_some()).await
}

async fn list_snapshots(
    State(m): State<Arc<Member>>,
    Path(name): Path<String>,
) -> ApiResult<Vec<SnapshotView>> {
    let state = m.control.state();
    if !state.volumes.contains_key(&name) {
        return Err(not_found(&name));
    }
    let mut snaps: Vec<&control::Snapshot> = state
        .snapshots
        .get(&name)
        .map(|s| s.values().collect())
        .unwrap_or_default();
    snaps.sort_by_key(|s| s.id);
    Ok(Json(
        snaps.into_iter().map(SnapshotView::from_snapshot).collect(),
    ))
}

async fn show_snapshot(
    State(m): State<Arc<Member>>,
    Path((name, snap)): Path<(String, String)>,
) -> ApiResult<SnapshotView> {
    let state = m.control.state();
    let s = state
        .snapshots
        .get(&name)
        .and_then(|s| s.get(&snap))
        .ok_or_else(|| no_snapshot(&name, &snap))?;
    Ok(Json(SnapshotView::from_snapshot(s)))
}

async fn create_snapshot(
    State(m): State<Arc<Member>>,
    Path(name): Path<String>,
    Json(req): Json<CreateSnapshot>,
) -> Result<(StatusCode, Json<SnapshotView>), ApiError> {
    let mut volumes = vec![name];
    for w in req.with {
        if !volumes.contains(&w) {
            volumes.push(w);
        }
    }
    // Several volumes, or several members: one cut, taken by the members together.
    let in_group = m.control.state().members.len() > 1 || volumes.len() > 1;
    let mut reserved = Vec::new();
    for volume in &volumes {
        let taken = apply(
            &m,
            Command::CreateSnapshot {
                volume: volume.clone(),
                name: req.name.clone(),
                created: now(),
                in_group,
            },
        )
        .await;
        match taken {
            Ok(Outcome::Snapshot(s)) => reserved.push(s),
            Ok(other) => {
                drop_snapshots(&m, &reserved).await;
                return Err(unexpected(other));
            }
            Err(e) => {
                drop_snapshots(&m, &reserved).await;
                return Err(e);
            }
        }
    }
    let taken = if in_group {
        take_group_snapshots(&m, reserved).await?
    } else {
        reserved
    };
    for s in &taken {
        serving(&m, &s.iqn()).await?;
    }
    let mut views = taken.iter().map(SnapshotView::from_snapshot);
    let mut first = views.next().ok_or_else(|| unexpected(Outcome::Ok))?;
    first.with = views.collect();
    Ok((StatusCode::CREATED, Json(first)))
}

/// Forget reserved snapshots the group did not take.
async fn drop_snapshots(m: &Member, snaps: &[control::Snapshot]) {
    for s in snaps {
        let _ = apply(
            m,
            Command::DeleteSnapshot {
                volume: s.volume.clone(),
                name: s.name.clone(),
            },
        )
        .await;
    }
}

/// The members take reserved snapshots in one cut; they are recorded with their holders,
/// or dropped again if the group could not take them.
async fn take_group_snapshots(
    m: &Member,
    reserved: Vec<control::Snapshot>,
) -> Result<Vec<control::Snapshot>, ApiError> {
    let Some(group) = m.registry.group() else {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this member has no group data path".into(),
        ));
    };
    let ids: Vec<(u64, u64)> = reserved.iter().map(|s| (s.volume_id, s.id)).collect();
    let holders = match group.take_snapshots(&ids).await {
        Ok(h) => h,
        Err(why) => {
            drop_snapshots(m, &reserved).await;
            let names: Vec<String> = reserved
                .iter()
                .map(|s| format!("{}@{}", s.volume, s.name))
                .collect();
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("the group could not take {}: {why}", names.join(", ")),
            ));
        }
    };
    let mut done = Vec::new();
    for (s, holders) in reserved.iter().zip(holders) {
        match apply(
            m,
            Command::CompleteSnapshot {
                volume: s.volume.clone(),
                name: s.name.clone(),
                holders,
            },
        )
        .await?
        {
            Outcome::Snapshot(t) => done.push(t),
            other => return Err(unexpected(other)),
        }
    }
    Ok(done)
}

async fn delete_snapshot(
    State(m): State<Arc<Member>>,
    Path((name, snap)): Path<(String, String)>,
) -> ApiResult<serde_json::Value> {
    apply(
        &m,
        Command::DeleteSnapshot {
            volume: name,
            name: snap,
        },
    )
    .await?;
    Ok(Json(serde_json::json!({})))
}

async fn restore_volume(
    State(m): State<Arc<Member>>,
    Path(name): Path<String>,
    Json(req): Json<Restore>,
) -> ApiResult<VolumeView> {
    let state = m.control.state();
    let v = state.volumes.get(&name).ok_or_else(|| not_found(&name))?;
    let sessions = group_sessions::of_target(&group_sessions::of_group(&m).await, &v.iqn());
    if !sessions.is_empty() && !req.force {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "volume {name} has {} iSCSI session(s): restoring would change data under them; log them out or use --force",
                sessions.len()
            ),
        ));
    }
    match apply(
        &m,
        Command::RestoreVolume {
            volume: name,
            snapshot: req.snapshot,
        },
    )
    .await?
    {
        Outcome::Volume(v) => {
            wait_restored(&m, &v).await?;
            Ok(Json(view(&m, &v, &m.registry.all_sessions())))
        }
        other => Err(unexpected(other)),
    }
}

async fn clone_volume(
    State(m): State<Arc<Member>>,
    Path(name): Path<String>,
    Json(req): Json<CloneVolume>,
) -> ApiResult<VolumeView> {
    match apply(
        &m,
        Command::CloneVolume {
            volume: name,
            snapshot: req.snapshot,
            name: req.name,
            created: now(),
        },
    )
    .await?
    {
        Outcome::Volume(v) => {
            // A clone in a group is served once the leader copied it (`copying` says how far).
            if v.copy_from.is_none() {
                settled(&m, &v).await?;
            }
            Ok(Json(view(&m, &v, &m.registry.all_sessions())))
        }
        other => Err(unexpected(other)),
    }
}

/// Wait until this member has rolled the volume back.
async fn wait_restored(m: &Member, v: &control::Volume) -> Result<(), ApiError> {
    applied(format!("the restore of {}", v.name), || {
        m.registry.restored_generation(v.id) >= v.restore_generation
    })
    .await
}

/// CRC32C per chunk of this member's complete copies of a volume (see [`api::CopyDigests`]).
async fn copy_digests(
    State(m): State<Arc<Member>>,
    Path(name): Path<String>,
) -> ApiResult<api::CopyDigests> {
    let state = m.control.state();
    let v = state.volumes.get(&name).ok_or_else(|| not_found(&name))?;
    let id = v.id;
    let Some(group) = m.registry.group() else {
        return Err(refused(
            RefusalKind::Busy,
            "this member has not joined the group's data path yet".into(),
        ));
    };
    let chunks = tokio::task::spawn_blocking(move || group.copy_digests(id))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(Json(api::CopyDigests {
        member: m.config.name.clone(),
        volume: name,
        chunk_bytes: control::CHUNK_BYTES,
        chunks,
    }))
}

async fn scrub_volume(
    State(m): State<Arc<Member>>,
    Path(name): Path<String>,
) -> ApiResult<api::ScrubView> {
    let state = m.control.state();
    let v = state
        .volumes
        .get(&name)
        .ok_or_else(|| not_found(&name))?
        .clone();
    let store = m.registry.store().clone();
    let report = tokio::task::spawn_blocking(move || store.scrub(v.id))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    if !report.bad.is_empty() {
        tracing::warn!(volume = %name, bad = report.bad.len(), "scrub found blocks failing their checksum");
    }
    Ok(Json(api::ScrubView {
        volume: name,
        blocks_checked: report.blocks_checked,
        bad: report.bad,
        repaired: report.repaired,
    }))
}

async fn set_snapshot_reserve(
    State(m): State<Arc<Member>>,
    Path(name): Path<String>,
    Json(req): Json<api::SetSnapshotReserve>,
) -> ApiResult<VolumeView> {
    match apply(
        &m,
        Command::SetSnapshotReserve {
            name,
            pct: req.percent,
            policy: req.policy,
        },
    )
    .await?
    {
        Outcome::Volume(v) => Ok(Json(view(&m, &v, &m.registry.all_sessions()))),
        other => Err(unexpected(other)),
    }
}

/// Progress of one background flatten.
#[derive(Default)]
pub struct FlattenJob {
    done: std::sync::atomic::AtomicU64,
    total: std::sync::atomic::AtomicU64,
    /// None while running; Some(Ok) or Some(Err(message)) when finished.
    result: std::sync::Mutex<Option<Result<(), String>>>,
}

fn flatten_view(name: &str, j: &FlattenJob) -> api::FlattenView {
    use std::sync::atomic::Ordering::Relaxed;
    let result = j.result.lock().unwrap().clone();
    api::FlattenView {
        volume: name.to_string(),
        state: match &result {
            None => "running",
            Some(Ok(())) => "done",
            Some(Err(_)) => "failed",
        }
        .into(),
        done: j.done.load(Relaxed),
        total: j.total.load(Relaxed),
        error: result.and_then(|r| r.err()),
    }
}

async fn start_flatten(
    State(m): State<Arc<Member>>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<api::FlattenView>), ApiError> {
    let state = m.control.state();
    let v = state
        .volumes
        .get(&name)
        .ok_or_else(|| not_found(&name))?
        .clone();
    if v.parent.is_none() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("volume {name} is not a clone; nothing to flatten"),
        ));
    }
    let job = {
        let mut jobs = m.flattens.lock().unwrap();
        if let Some(j) = jobs.get(&name) {
            if j.result.lock().unwrap().is_none() {
                return Ok((StatusCode::ACCEPTED, Json(flatten_view(&name, j))));
            }
        }
        let j = Arc::new(FlattenJob::default());
        jobs.insert(name.clone(), j.clone());
        j
    };
    let store = m.registry.store().clone();
    let (job2, member, vname) = (job.clone(), m.clone(), name.clone());
    tokio::spawn(async move {
        let j = job2.clone();
        let r = tokio::task::spawn_blocking(move || {
            use std::sync::atomic::Ordering::Relaxed;
            store.flatten(v.id, |done, total| {
                j.done.store(done, Relaxed);
                j.total.store(total, Relaxed);
            })
        })
        .await;
        let outcome = match r {
            Ok(Ok(())) => match member
                .control
                .write(Command::Flattened {
                    name: vname.clone(),
                })
                .await
            {
                Ok(_) => Ok(()),
                Err(e) => Err(format!("flattened, but recording it failed: {e}")),
            },
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = &outcome {
            tracing::error!(volume = %vname, error = %e, "flatten failed");
        } else {
            tracing::info!(volume = %vname, "clone flattened");
        }
        *job2.result.lock().unwrap() = Some(outcome);
    });
    Ok((StatusCode::ACCEPTED, Json(flatten_view(&name, &job))))
}

async fn flatten_status(
    State(m): State<Arc<Member>>,
    Path(name): Path<String>,
) -> ApiResult<api::FlattenView> {
    let jobs = m.flattens.lock().unwrap();
    let j = jobs.get(&name).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no flatten of {name} on this member"),
        )
    })?;
    Ok(Json(flatten_view(&name, j)))
}
