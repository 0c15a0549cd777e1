//! iSCSI portals: accept TCP connections and drive the iSCSI engines over them.
//!
//! One task per connection owns the engine (login, then the session) and the read half
//! of the socket; a writer task owns the write half. SCSI commands run on tokio's
//! blocking pool (the store does file I/O) and come back as completions.

use crate::directory::PortalDirectory;
use crate::registry::{SessionKey, VolumeHandle};
use bytes::{Bytes, BytesMut};
use iscsi::keys::TargetLimits;
use iscsi::session::{tmf_response, Action, Outcome, Tmf};
use iscsi::{Codec, CodecError, Encoded, Login, LoginStep, Session};
use scsi::{NexusId, TaskManagement, TmfResult};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How long an initiator asked to log out (Async Message) has before the connection closes.
const LOGOUT_GRACE: Duration = Duration::from_secs(2);

/// A login must finish within this time, or the connection is dropped.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Accept connections on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, dir: Arc<PortalDirectory>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let dir = dir.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, dir).await {
                        tracing::debug!(%peer, error = %e, "connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

enum Phase {
    Login(Login),
    Full {
        session: Session,
        nexus: NexusId,
        volume: Option<Arc<VolumeHandle>>,
    },
}

async fn writer(
    stream: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<Encoded>,
) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(64 * 1024, stream);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(e) = next {
            w.write_all(&e.head).await?;
            w.write_all(&e.data).await?;
            w.write_all(&e.tail).await?;
            next = rx.try_recv().ok();
        }
        w.flush().await?;
    }
    Ok(())
}

fn parse_lun(lun: u64) -> Option<u16> {
    let b = lun.to_be_bytes();
    let method = b[0] >> 6;
    if (method == 0 || method == 1) && b[2..].iter().all(|&x| x == 0) {
        Some((((b[0] & 0x3f) as u16) << 8) | b[1] as u16)
    } else {
        None
    }
}

/// Answer a command addressed to a LUN that does not exist (only LUN 0 does).
fn no_such_lun(cdb: &[u8], lu: &scsi::LogicalUnit, nexus: &NexusId) -> Outcome {
    match cdb.first() {
        Some(0x12) => {
            // INQUIRY: peripheral qualifier 3 (no LU here), device type 0x1f.
            let alloc = cdb
                .get(3..5)
                .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
                .unwrap_or(0);
            let mut d = vec![0u8; 36];
            d[0] = 0x7f;
            d[2] = 0x06;
            d[3] = 0x02;
            d[4] = 31;
            d.truncate(alloc);
            Outcome {
                status: 0,
                sense: None,
                data: Bytes::from(d),
            }
        }
        Some(0xa0) | Some(0x03) => {
            let r = lu.execute(nexus, cdb, &[]);
            Outcome {
                status: r.status,
                sense: r.sense,
                data: Bytes::from(r.data),
            }
        }
        _ => Outcome {
            status: scsi::status::CHECK_CONDITION,
            sense: Some(iscsi::sense_bytes(0x05, 0x25, 0x00)),
            data: Bytes::new(),
        },
    }
}

async fn connection(stream: TcpStream, dir: Arc<PortalDirectory>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let peer = stream.peer_addr()?;
    let local = stream.local_addr()?.to_string();
    let (mut rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Encoded>(512);
    let writer_task = tokio::spawn(writer(wr, rx));
    // A finished command: its ITT, the outcome and (for writes) how many Data-Out bytes
    // the CDB described, for the residual.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(u32, Outcome, Option<u64>)>();
    let (tmf_tx, mut tmf_rx) = mpsc::unbounded_channel::<(u32, Tmf, u8)>();
    let limits = TargetLimits::default();
    let mut codec = Codec {
        max_recv_data: limits.max_recv_data_segment_length as usize,
        ..Codec::default()
    };
    let mut phase = Phase::Login(Login::new(limits.clone(), rand_stat_sn()));
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let login_deadline = tokio::time::Instant::now() + LOGIN_TIMEOUT;
    let mut session_key: Option<(SessionKey, u64)> = None;
    // The I_T nexus and volume of the session, for nexus loss when it ends.
    let mut lost_on_end: Option<(NexusId, Arc<VolumeHandle>)> = None;
    let mut close_signal = Arc::new(tokio::sync::Notify::new());
    let mut logout_deadline: Option<tokio::time::Instant> = None;
    let registry = dir.registry.clone();

    'conn: loop {
        let mut actions: Vec<Action> = Vec::new();
        tokio::select! {
            n = rd.read_buf(&mut buf) => {
                if n? == 0 {
                    break 'conn;
                }
                loop {
                    let pdu = match codec.decode(&mut buf) {
                        Ok(Some(p)) => p,
                        Ok(None) => break,
                        Err(CodecError::DataDigest { pdu }) => {
                            if let Phase::Full { session, .. } = &mut phase {
                                actions.extend(session.on_data_digest_error(&pdu));
                                continue;
                            }
                            break 'conn;
                        }
                        Err(e) => {
                            tracing::info!(%peer, error = %e, "closing connection");
                            break 'conn;
                        }
                    };
                    match &mut phase {
                        Phase::Login(login) => match login.step(&pdu, dir.as_ref()) {
                            LoginStep::Continue(resp) => {
                                if tx.send(codec.encode(resp)).await.is_err() {
                                    break 'conn;
                                }
                            }
                            LoginStep::Fail(resp) => {
                                let _ = tx.send(codec.encode(resp)).await;
                                break 'conn;
                            }
                            LoginStep::Done(resp, outcome) => {
                                if tx.send(codec.encode(resp)).await.is_err() {
                                    break 'conn;
                                }
                                codec.header_digest = outcome.params.header_digest;
                                codec.data_digest = outcome.params.data_digest;
                                let key = SessionKey {
                                    initiator: outcome.initiator_name.clone(),
                                    isid: outcome.isid,
                                    target: outcome.target_name.clone(),
                                };
                                let (id, close, reinstated) = registry.session_started(key.clone(), &local);
                                session_key = Some((key, id));
                                close_signal = close;
                                let volume = outcome.target_name.as_deref().and_then(|t| registry.get(t));
                                if outcome.target_name.is_some() && volume.is_none() {
                                    break 'conn;
                                }
                                tracing::info!(
                                    %peer,
                                    initiator = %outcome.initiator_name,
                                    target = outcome.target_name.as_deref().unwrap_or("(discovery)"),
                                    header_digest = outcome.params.header_digest,
                                    data_digest = outcome.params.data_digest,
                                    "login complete"
                                );
                                let nexus = NexusId {
                                    initiator_name: outcome.initiator_name.clone(),
                                    isid: outcome.isid,
                                    relative_target_port: dir.tpgt,
                                };
                                if let Some(vol) = &volume {
                                    if reinstated {
                                        // The old session's I_T nexus is gone (its reservation
                                        // and unit attentions with it) before the new one acts.
                                        vol.lu.nexus_lost(&nexus);
                                    }
                                    lost_on_end = Some((nexus.clone(), vol.clone()));
                                }
                                phase = Phase::Full {
                                    session: Session::new(outcome, Instant::now()),
                                    nexus,
                                    volume,
                                };
                            }
                        },
                        Phase::Full { session, .. } => {
                            actions.extend(session.on_pdu(pdu, dir.as_ref(), Instant::now()));
                        }
                    }
                }
            }
            Some((itt, outcome, described)) = done_rx.recv() => {
                if let Phase::Full { session, .. } = &mut phase {
                    actions.extend(session.complete_with_described(itt, outcome, described));
                }
            }
            Some((itt, f, code)) = tmf_rx.recv() => {
                if let Phase::Full { session, .. } = &mut phase {
                    actions.extend(session.tmf_done(itt, f, code));
                }
            }
            _ = tick.tick() => {
                if logout_deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    tracing::info!(%peer, "closing the session the member asked to end");
                    break 'conn;
                }
                match &mut phase {
                    Phase::Full { session, .. } => actions.extend(session.tick(Instant::now())),
                    Phase::Login(_) if tokio::time::Instant::now() > login_deadline => {
                        tracing::info!(%peer, "login did not finish in time; closing");
                        break 'conn;
                    }
                    Phase::Login(_) => {}
                }
            }
            _ = close_signal.notified(), if logout_deadline.is_none() => {
                // Reinstated, or its volume went away: ask the initiator to log out (Async
                // Message), then close after a short grace whether it did or not.
                match &mut phase {
                    Phase::Full { session, .. } => {
                        tracing::info!(%peer, "asking the initiator to log out (session reinstated or target removed)");
                        actions.extend(session.request_logout(LOGOUT_GRACE.as_secs() as u16));
                        logout_deadline = Some(tokio::time::Instant::now() + LOGOUT_GRACE);
                    }
                    Phase::Login(_) => break 'conn,
                }
            }
        }
        let Phase::Full { nexus, volume, .. } = &phase else {
            continue;
        };
        for a in actions {
            match a {
                Action::Send(p) => {
                    if tx.send(codec.encode(p)).await.is_err() {
                        break 'conn;
                    }
                }
                Action::Close => {
                    // Let the writer drain what was queued before closing.
                    break 'conn;
                }
                Action::Execute(cmd) => {
                    let Some(vol) = volume.clone() else { continue };
                    let nexus = nexus.clone();
                    let done = done_tx.clone();
                    tokio::task::spawn_blocking(move || {
                        let mut described = None;
                        let outcome = match parse_lun(cmd.lun) {
                            Some(0) => {
                                if cmd.write && !cmd.read {
                                    described = vol.lu.data_out_len(&cmd.cdb);
                                }
                                let r = vol.lu.execute(&nexus, &cmd.cdb, &cmd.data_out);
                                Outcome {
                                    status: r.status,
                                    sense: r.sense,
                                    data: Bytes::from(r.data),
                                }
                            }
                            _ => no_such_lun(&cmd.cdb, &vol.lu, &nexus),
                        };
                        let _ = done.send((cmd.itt, outcome, described));
                    });
                }
                Action::TaskManagement { itt, lun, function } => {
                    let Some(vol) = volume.clone() else { continue };
                    let nexus = nexus.clone();
                    let done = tmf_tx.clone();
                    tokio::task::spawn_blocking(move || {
                        let code = if parse_lun(lun) != Some(0)
                            && !matches!(function, Tmf::TargetWarmReset | Tmf::TargetColdReset)
                        {
                            tmf_response::NO_LUN
                        } else {
                            let tm = match function {
                                Tmf::AbortTaskSet => TaskManagement::AbortTaskSet,
                                Tmf::ClearTaskSet => TaskManagement::ClearTaskSet,
                                Tmf::LogicalUnitReset => TaskManagement::LogicalUnitReset,
                                Tmf::TargetWarmReset => TaskManagement::TargetWarmReset,
                                _ => TaskManagement::TargetColdReset,
                            };
                            match vol.lu.task_management(&nexus, tm) {
                                TmfResult::Complete => tmf_response::COMPLETE,
                                TmfResult::NotSupported => tmf_response::NOT_SUPPORTED,
                                TmfResult::Rejected => tmf_response::REJECTED,
                            }
                        };
                        let _ = done.send((itt, function, code));
                    });
                }
            }
        }
    }
    if let Some((key, id)) = session_key {
        // A reinstated session's nexus was already dealt with when the new one logged in.
        if registry.session_ended(&key, id) {
            if let Some((nexus, vol)) = lost_on_end {
                vol.lu.nexus_lost(&nexus);
            }
        }
    }
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer_task).await;
    Ok(())
}

fn rand_stat_sn() -> u32 {
    // Any starting StatSN is valid; a varying one catches initiators that assume zero.
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(1)
}
