//! iSCSI portals: accept TCP connections and drive the iSCSI engines over them.
//!
//! One task per connection owns the socket and the engine (login, then the session):
//!
//! * it reads what the socket has (one `recv` for many PDUs at queue depth), decodes
//!   every complete PDU and feeds it to the session;
//! * reads and cached writes execute inline (see [`exec`]); other commands and task
//!   management run on tokio's blocking pool and come back as completions;
//! * every PDU to send is framed onto one [`Outgoing`] queue, and the queue goes out with
//!   one `writev` once the batch is processed — no writer task, no channel per PDU.
//!
//! While the queue holds more than [`OUT_HIGH`] bytes the task stops reading, so a peer
//! that does not read its responses cannot make the member buffer without bound.

mod exec;
mod poll;

pub use poll::DEFAULT_WINDOW as DEFAULT_BUSY_POLL;

use crate::directory::PortalDirectory;
use crate::registry::{SessionKey, VolumeHandle};
use bytes::BytesMut;
use iscsi::keys::TargetLimits;
use iscsi::session::{Action, Tmf};
use iscsi::{Codec, CodecError, Login, LoginStep, Outgoing, Session};
use scsi::NexusId;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::{Duration, Instant};
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

/// Stop reading while this much is waiting to be sent.
const OUT_HIGH: usize = 4 << 20;
/// Size of a receive buffer, and the least room left in one worth reading into.
const READ_CHUNK: usize = 64 * 1024;
const MIN_READ: usize = 4096;
/// Send without waiting for the end of the batch once this much is queued.
const SEND_EARLY: usize = 256 * 1024;
/// Completions answered together at most, before the batch is sent.
const COMPLETIONS_BATCH: usize = 64;
/// Slices per `writev`.
const IOV: usize = 64;

/// Send what the socket takes now; the rest stays queued.
fn send_some(stream: &TcpStream, out: &mut Outgoing) -> std::io::Result<()> {
    while !out.is_empty() {
        let mut sl = [IoSlice::new(&[]); IOV];
        let n = out.io_slices(&mut sl);
        match stream.try_write_vectored(&sl[..n]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(k) => out.advance(k),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Send everything queued, waiting for the socket as needed.
async fn send_all(stream: &TcpStream, out: &mut Outgoing) -> std::io::Result<()> {
    loop {
        send_some(stream, out)?;
        if out.is_empty() {
            return Ok(());
        }
        stream.writable().await?;
    }
}

/// Raised when a connection's task ends, for the commands it started.
#[derive(Default)]
struct ConnectionGone(Arc<std::sync::atomic::AtomicBool>);

impl Drop for ConnectionGone {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

async fn connection(stream: TcpStream, dir: Arc<PortalDirectory>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let peer = stream.peer_addr()?;
    let local = stream.local_addr()?.to_string();
    let mut out = Outgoing::default();
    // A command finished on the blocking pool: its ITT, the outcome and (for writes) how
    // many Data-Out bytes the CDB described, for the residual.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<exec::Done>();
    let (tmf_tx, mut tmf_rx) = mpsc::unbounded_channel::<(u32, Tmf, u8)>();
    let limits = TargetLimits::default();
    let mut codec = Codec {
        max_recv_data: limits.max_recv_data_segment_length as usize,
        ..Codec::default()
    };
    let mut phase = Phase::Login(Login::new(limits.clone(), rand_stat_sn()));
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let login_deadline = tokio::time::Instant::now() + LOGIN_TIMEOUT;
    let mut session_key: Option<(SessionKey, u64)> = None;
    // The I_T nexus and volume of the session, for nexus loss when it ends.
    let mut lost_on_end: Option<(NexusId, Arc<VolumeHandle>)> = None;
    let mut close_signal = Arc::new(tokio::sync::Notify::new());
    let mut logout_deadline: Option<tokio::time::Instant> = None;
    let registry = dir.registry.clone();
    // Reused for every batch: the session appends, the loop below drains.
    let mut actions: Vec<Action> = Vec::with_capacity(64);
    let pool = exec::BufPool::default();
    let mut completed: Vec<Action> = Vec::with_capacity(8);
    // Set when this function returns, however: commands still running stop retrying.
    let gone = ConnectionGone::default();

    // Whether this portal looks for the next command at all (`poll`); off, nothing
    // below counts commands for it.
    let polls = !dir.busy_poll.is_zero();
    // Commands the last batch read from the initiator carried.
    let mut last_commands = 0usize;
    'conn: loop {
        send_some(&stream, &mut out)?;
        actions.clear();
        if polls && out.is_empty() && matches!(phase, Phase::Full { .. }) && last_commands <= 1 {
            // One command at a time: the next often comes within microseconds, so look
            // for it before sleeping (`poll`), unless a finished command is waiting to be
            // answered. Several at a time, the initiator is busy making more, and looking
            // would take the core it needs (4 KiB writes at QD32: about 4 % fewer).
            poll::next_input(&stream, dir.busy_poll, || !done_rx.is_empty()).await;
        }
        tokio::select! {
            r = stream.readable(), if out.len() < OUT_HIGH => {
                r?;
                if buf.capacity() - buf.len() < MIN_READ {
                    // A fresh buffer, the partial PDU carried over; the old one is freed
                    // when the last PDU decoded from it is. (Growing it in place copied
                    // every byte ever received into it, again and again.)
                    let mut fresh = BytesMut::with_capacity(READ_CHUNK.max(2 * buf.len()));
                    fresh.extend_from_slice(&buf);
                    buf = fresh;
                }
                match stream.try_read_buf(&mut buf) {
                    Ok(0) => break 'conn,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
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
                            LoginStep::Continue(resp) => codec.encode_to(resp, &mut out),
                            LoginStep::Fail(resp) => {
                                codec.encode_to(resp, &mut out);
                                break 'conn;
                            }
                            LoginStep::Done(resp, outcome) => {
                                codec.encode_to(resp, &mut out);
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
                            session.on_pdu_into(pdu, dir.as_ref(), Instant::now(), &mut actions);
                        }
                    }
                }
            }
            r = stream.writable(), if !out.is_empty() => {
                // The top of the loop sends.
                r?;
            }
            Some(first) = done_rx.recv() => {
                // Every command finished by now, answered with one `writev`; the tasks
                // that are ready run first, again while that brought more, since under
                // load they finish more.
                let mut next = Some(first);
                let mut done = 0;
                while next.is_some() {
                    while let Some((itt, outcome, described)) = next {
                        if let Phase::Full { session, .. } = &mut phase {
                            session.complete_into(itt, outcome, described, &mut actions);
                        }
                        done += 1;
                        next = done_rx.try_recv().ok();
                    }
                    if done >= COMPLETIONS_BATCH {
                        break;
                    }
                    tokio::task::yield_now().await;
                    next = done_rx.try_recv().ok();
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
        let Phase::Full {
            session,
            nexus,
            volume,
        } = &mut phase
        else {
            continue;
        };
        if polls {
            let commands = actions
                .iter()
                .filter(|a| matches!(a, Action::Execute(_)))
                .count();
            if commands > 0 {
                last_commands = commands;
            }
        }
        let mut i = 0;
        while i < actions.len() {
            let a = std::mem::replace(&mut actions[i], Action::Close);
            i += 1;
            match a {
                Action::Send(p) => {
                    codec.encode_to(p, &mut out);
                    if out.len() >= SEND_EARLY {
                        // Large reads: the initiator has the first while the next executes.
                        send_some(&stream, &mut out)?;
                    }
                }
                Action::Close => break 'conn,
                Action::Execute(cmd) => {
                    let Some(vol) = volume.clone() else { continue };
                    match exec::write(&vol, nexus, &cmd, &done_tx, &gone.0) {
                        exec::Write::Started => continue,
                        exec::Write::Answered(outcome, described) => {
                            session.complete_into(cmd.itt, outcome, described, &mut completed);
                            for a in completed.drain(..) {
                                if let Action::Send(p) = a {
                                    codec.encode_to(p, &mut out);
                                }
                            }
                            continue;
                        }
                        exec::Write::No => {}
                    }
                    if exec::runs_inline(&cmd, &vol) {
                        let (outcome, described) = exec::execute(&vol, nexus, &cmd, &pool);
                        session.complete_into(cmd.itt, outcome, described, &mut completed);
                        // Framed at once, sent with the rest of the batch: answering
                        // each command as it completes measured slower (the initiator's
                        // next batch waits for its last answer either way, and every
                        // send is a system call on both sides).
                        for a in completed.drain(..) {
                            if let Action::Send(p) = a {
                                codec.encode_to(p, &mut out);
                            }
                        }
                        if out.len() >= SEND_EARLY {
                            send_some(&stream, &mut out)?;
                        }
                        continue;
                    }
                    let nexus = nexus.clone();
                    let done = done_tx.clone();
                    let pool = pool.clone();
                    let gone = gone.0.clone();
                    tokio::task::spawn_blocking(move || {
                        let (outcome, described) =
                            crate::group::abandon::for_command(&gone, || {
                                exec::execute(&vol, &nexus, &cmd, &pool)
                            });
                        let _ = done.send((cmd.itt, outcome, described));
                    });
                }
                Action::TaskManagement { itt, lun, function } => {
                    let Some(vol) = volume.clone() else { continue };
                    let nexus = nexus.clone();
                    let done = tmf_tx.clone();
                    tokio::task::spawn_blocking(move || {
                        let code = exec::task_management(&vol, &nexus, lun, function);
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
    // What was queued before closing (a Logout Response, a final Reject) still goes out.
    let _ = tokio::time::timeout(Duration::from_secs(5), send_all(&stream, &mut out)).await;
    Ok(())
}

fn rand_stat_sn() -> u32 {
    // Any starting StatSN is valid; a varying one catches initiators that assume zero.
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(1)
}
