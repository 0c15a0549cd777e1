//! Persistent reservations (SPC-4 5.13): PERSISTENT RESERVE IN / OUT, the access rules
//! per reservation type, and APTPL persistence.

use crate::cdb::{be16, be32, be64, byte, trunc, Cdb};
use crate::lu::{CmdResult, Ctx, Fail, NexusId, Reply};
use crate::rsoc::Access;
use crate::sense::{codes, invalid_cdb_field, invalid_param_field, Sense};
use serde::{Deserialize, Serialize};

/// Where APTPL persistent reservation state is stored (the store's volume metadata).
///
/// `save` is called, under the LU's reservation lock, after every PERSISTENT RESERVE OUT
/// that changes the state while APTPL is (or was just) set; the bytes are opaque and go
/// back to [`crate::LogicalUnit::restore_pr`] when the volume is opened again.
pub trait PrPersistence: Send + Sync {
    fn save(&self, bytes: &[u8]) -> std::io::Result<()>;
}

/// Where the reservations live when the logical unit has ports in other processes (a
/// group's members): one ordered record every port follows.
///
/// ```text
///  PERSISTENT RESERVE OUT at port A: run it on A's copy of the state (revision r)
///      commit(r, change) ──Ok(r+1)──► A's unit attentions; publish(r+1): every port applied it
///                        └─Newer(changes)─► apply them, run the command again
/// ```
pub trait SharedReservations: Send + Sync {
    /// Record `change` ([`LogicalUnit::apply_reservation_changes`] reads it) as the
    /// revision after `base`; the new revision.
    ///
    /// [`LogicalUnit::apply_reservation_changes`]: crate::LogicalUnit::apply_reservation_changes
    fn commit(&self, base: u64, change: &[u8]) -> Result<u64, ReservationConflict>;
    /// Return once every other reachable port has applied `revision`. Called without the
    /// unit's locks held.
    fn publish(&self, revision: u64);
}

/// Why [`SharedReservations::commit`] did not record a change.
#[derive(Debug)]
pub enum ReservationConflict {
    /// Another port changed the reservations first: these are the changes after `base`,
    /// oldest first, as (revision, change).
    Newer(Vec<(u64, Vec<u8>)>),
    /// The record could not be written.
    Failed(String),
}

/// A unit attention a change raises on the nexuses of these registrations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Notice {
    pub ids: Vec<RegId>,
    pub asc: u8,
    pub ascq: u8,
}

/// One change of the reservations as other ports receive it: the whole state after it,
/// and the unit attentions it raises (never on `origin`, the nexus that made it).
#[derive(Serialize, Deserialize)]
pub(crate) struct Change {
    pub version: u32,
    pub state: PrState,
    pub notices: Vec<Notice>,
    pub origin: NexusId,
}

pub(crate) fn encode_change(state: &PrState, notices: &[Notice], origin: &NexusId) -> Vec<u8> {
    serde_json::to_vec(&Change {
        version: 1,
        state: state.clone(),
        notices: notices.to_vec(),
        origin: origin.clone(),
    })
    .unwrap_or_default()
}

pub(crate) fn decode_change(bytes: &[u8]) -> Result<Change, PrRestoreError> {
    let c: Change =
        serde_json::from_slice(bytes).map_err(|e| PrRestoreError::Malformed(e.to_string()))?;
    if c.version != 1 {
        return Err(PrRestoreError::Malformed(format!("version {}", c.version)));
    }
    Ok(c)
}

/// How often a PERSISTENT RESERVE OUT runs again after losing a race with another port
/// before it reports BUSY.
const MAX_RACES: usize = 16;

/// Saved persistent reservation state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PrRestoreError {
    #[error("malformed persistent reservation state: {0}")]
    Malformed(String),
}

const WE: u8 = 1;
const EA: u8 = 3;
const WE_RO: u8 = 5;
const EA_RO: u8 = 6;
const WE_AR: u8 = 7;
const EA_AR: u8 = 8;

fn valid_type(t: u8) -> bool {
    matches!(t, WE | EA | WE_RO | EA_RO | WE_AR | EA_AR)
}

fn all_registrants(t: u8) -> bool {
    matches!(t, WE_AR | EA_AR)
}

/// An I_T nexus a registration applies to: `isid: None` is every ISID of the initiator
/// (TransportID format 0), `rtp: None` every target port (ALL_TG_PT).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RegId {
    pub name: String,
    pub isid: Option<u64>,
    pub rtp: Option<u16>,
}

impl RegId {
    fn of(n: &NexusId, all_tg_pt: bool) -> RegId {
        RegId {
            name: n.initiator_name.clone(),
            isid: Some(n.isid),
            rtp: if all_tg_pt {
                None
            } else {
                Some(n.relative_target_port)
            },
        }
    }

    pub fn matches(&self, n: &NexusId) -> bool {
        self.name.eq_ignore_ascii_case(&n.initiator_name)
            && self.isid.is_none_or_eq(n.isid)
            && self.rtp.is_none_or_eq(n.relative_target_port)
    }

    fn transport_id(&self) -> Vec<u8> {
        let (fmt, s) = match self.isid {
            Some(isid) => (
                0x40,
                format!("{},i,0x{:012x}", self.name, isid & 0xFFFF_FFFF_FFFF),
            ),
            None => (0x00, self.name.clone()),
        };
        let mut name = s.into_bytes();
        name.truncate(220);
        name.push(0);
        while name.len() < 20 || name.len() % 4 != 0 {
            name.push(0);
        }
        let mut t = vec![fmt | 0x05, 0];
        t.extend_from_slice(&(name.len() as u16).to_be_bytes());
        t.extend(name);
        t
    }
}

trait OptEq<T> {
    fn is_none_or_eq(&self, v: T) -> bool;
}
impl<T: PartialEq + Copy> OptEq<T> for Option<T> {
    fn is_none_or_eq(&self, v: T) -> bool {
        match self {
            None => true,
            Some(x) => *x == v,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Registrant {
    pub id: RegId,
    pub key: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Reservation {
    /// None for the all-registrants types.
    pub holder: Option<RegId>,
    pub rtype: u8,
    pub scope: u8,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PrState {
    pub generation: u32,
    pub regs: Vec<Registrant>,
    pub res: Option<Reservation>,
    pub aptpl: bool,
}

#[derive(Serialize, Deserialize)]
struct Saved {
    version: u32,
    state: PrState,
}

pub(crate) fn encode(st: &PrState) -> Vec<u8> {
    serde_json::to_vec(&Saved {
        version: 1,
        state: st.clone(),
    })
    .unwrap_or_default()
}

pub(crate) fn decode(bytes: &[u8]) -> Result<PrState, PrRestoreError> {
    if bytes.is_empty() {
        return Ok(PrState::default());
    }
    let s: Saved =
        serde_json::from_slice(bytes).map_err(|e| PrRestoreError::Malformed(e.to_string()))?;
    if s.version != 1 {
        return Err(PrRestoreError::Malformed(format!("version {}", s.version)));
    }
    Ok(if s.state.aptpl {
        s.state
    } else {
        PrState::default()
    })
}

impl PrState {
    fn reg_of(&self, n: &NexusId) -> Option<usize> {
        self.regs.iter().position(|r| r.id.matches(n))
    }

    fn is_holder(&self, n: &NexusId) -> bool {
        match &self.res {
            None => false,
            Some(r) if all_registrants(r.rtype) => self.reg_of(n).is_some(),
            Some(r) => r.holder.as_ref().is_some_and(|h| h.matches(n)),
        }
    }

    fn holds(&self, id: &RegId) -> bool {
        match &self.res {
            None => false,
            Some(r) if all_registrants(r.rtype) => true,
            Some(r) => r.holder.as_ref() == Some(id),
        }
    }
}

/// Reservation state of the LU: persistent reservations plus the SPC-2 reservation.
#[derive(Default)]
pub(crate) struct ResState {
    pub pr: PrState,
    /// The shared record's revision `pr` is at (see [`SharedReservations`]).
    pub revision: u64,
    pub spc2: Option<NexusId>,
    /// The only initiator allowed to change the medium, when the group fences the volume
    /// to the host that owns its VM (see [`crate::LogicalUnit::set_writer`]).
    pub writer: Option<String>,
}

impl ResState {
    /// RESERVATION CONFLICT if `nexus` may not run a command of class `access` now.
    pub fn check(&self, nexus: &NexusId, access: Access, cdb: &Cdb) -> Result<(), Fail> {
        if access == Access::Free {
            return Ok(());
        }
        if access == Access::Write {
            if let Some(w) = &self.writer {
                if nexus.initiator_name != *w {
                    return Err(Fail::Conflict);
                }
            }
        }
        if let Some(h) = &self.spc2 {
            if h != nexus {
                let release = matches!(cdb.op(), 0x17 | 0x57);
                return if release { Ok(()) } else { Err(Fail::Conflict) };
            }
        }
        let pr = &self.pr;
        let Some(r) = &pr.res else {
            return Ok(());
        };
        match access {
            Access::Free | Access::Info | Access::Pr => Ok(()),
            Access::Spc2 => Err(Fail::Conflict),
            Access::Read | Access::Write => {
                if pr.is_holder(nexus) {
                    return Ok(());
                }
                let registered = pr.reg_of(nexus).is_some();
                let ok = match r.rtype {
                    WE => access == Access::Read,
                    WE_RO | WE_AR => registered || access == Access::Read,
                    EA_RO | EA_AR => registered,
                    _ => false,
                };
                if ok {
                    Ok(())
                } else {
                    Err(Fail::Conflict)
                }
            }
        }
    }
}

pub(crate) fn persistent_reserve_in(ctx: &Ctx) -> CmdResult {
    let alloc = usize::from(ctx.cdb.u16(7));
    let r = ctx.lu.res_read();
    let pr = &r.pr;
    let mut d = Vec::new();
    match ctx.cdb.sa() {
        0 => {
            d.extend_from_slice(&pr.generation.to_be_bytes());
            d.extend_from_slice(&((pr.regs.len() * 8) as u32).to_be_bytes());
            for reg in &pr.regs {
                d.extend_from_slice(&reg.key.to_be_bytes());
            }
        }
        1 => {
            d.extend_from_slice(&pr.generation.to_be_bytes());
            match &pr.res {
                None => d.extend_from_slice(&0u32.to_be_bytes()),
                Some(res) => {
                    d.extend_from_slice(&16u32.to_be_bytes());
                    let key = match &res.holder {
                        Some(h) if !all_registrants(res.rtype) => pr
                            .regs
                            .iter()
                            .find(|x| &x.id == h)
                            .map(|x| x.key)
                            .unwrap_or(0),
                        _ => 0,
                    };
                    d.extend_from_slice(&key.to_be_bytes());
                    d.extend_from_slice(&[0, 0, 0, 0, 0]);
                    d.push((res.scope << 4) | res.rtype);
                    d.extend_from_slice(&[0, 0]);
                }
            }
        }
        2 => {
            d = vec![0, 8, 0x08 | 0x04 | 0x01, 0x80 | 0x10, 0xEA, 0x01, 0, 0];
            if pr.aptpl {
                d[3] |= 0x01;
            }
        }
        3 => {
            d.extend_from_slice(&pr.generation.to_be_bytes());
            d.extend_from_slice(&[0, 0, 0, 0]);
            for reg in &pr.regs {
                let holder = pr.holds(&reg.id);
                d.extend_from_slice(&reg.key.to_be_bytes());
                d.extend_from_slice(&[0, 0, 0, 0]);
                d.push(if reg.id.rtp.is_none() { 0x02 } else { 0 } | u8::from(holder));
                d.push(match (&pr.res, holder) {
                    (Some(res), true) => (res.scope << 4) | res.rtype,
                    _ => 0,
                });
                d.extend_from_slice(&[0, 0, 0, 0]);
                d.extend_from_slice(&reg.id.rtp.unwrap_or(0).to_be_bytes());
                let tid = reg.id.transport_id();
                d.extend_from_slice(&(tid.len() as u32).to_be_bytes());
                d.extend(tid);
            }
            let len = (d.len() - 8) as u32;
            d[4..8].copy_from_slice(&len.to_be_bytes());
        }
        _ => return Err(invalid_cdb_field(1, Some(4)).into()),
    }
    Ok(Reply::data(trunc(d, alloc)))
}

/// Parses one iSCSI TransportID; returns the id and its length.
fn parse_tid(t: &[u8], rtp: Option<u16>, at: usize) -> Result<(RegId, usize), Fail> {
    if t.len() < 4 {
        return Err(codes::PARAM_LIST_LENGTH_ERROR.into());
    }
    if t[0] & 0x0F != 0x05 {
        return Err(invalid_param_field(at as u16, None).into());
    }
    let fmt = t[0] >> 6;
    let len = 4 + usize::from(be16(t, 2));
    if len > t.len() {
        return Err(codes::PARAM_LIST_LENGTH_ERROR.into());
    }
    let raw = &t[4..len];
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let s = String::from_utf8_lossy(&raw[..end]).into_owned();
    let bad = || Fail::from(invalid_param_field(at as u16, None));
    let (name, isid) = match fmt {
        0 => (s, None),
        1 => {
            let lower = s.to_ascii_lowercase();
            let pos = lower.find(",i,0x").ok_or_else(bad)?;
            let isid = u64::from_str_radix(&s[pos + 5..], 16).map_err(|_| bad())?;
            (s[..pos].to_string(), Some(isid))
        }
        _ => return Err(bad()),
    };
    if name.is_empty() {
        return Err(bad());
    }
    Ok((RegId { name, isid, rtp }, len))
}

struct Out<'a> {
    ctx: &'a Ctx<'a>,
    rk: u64,
    sark: u64,
    flags: u8,
    p: &'a [u8],
    /// Unit attentions the command raises, sent once the change is recorded.
    notices: std::cell::RefCell<Vec<Notice>>,
}

pub(crate) fn persistent_reserve_out(ctx: &Ctx) -> CmdResult {
    let sa = ctx.cdb.sa();
    let scope = ctx.cdb.u8(2) >> 4;
    let rtype = ctx.cdb.u8(2) & 0x0F;
    let plen = ctx.cdb.u32(5) as usize;
    if plen < 24 || ctx.data.len() < plen {
        return Err(codes::PARAM_LIST_LENGTH_ERROR.into());
    }
    let p = &ctx.data[..plen];
    let flags = byte(p, 20);
    if sa != 7 && flags & 0x08 == 0 && plen != 24 {
        return Err(codes::PARAM_LIST_LENGTH_ERROR.into());
    }
    let shared = ctx.lu.shared_reservations();
    for _ in 0..MAX_RACES {
        let o = Out {
            ctx,
            rk: be64(p, 0),
            sark: be64(p, 8),
            flags,
            p,
            notices: Default::default(),
        };
        let mut guard = ctx.lu.res_write();
        let before = guard.pr.clone();
        let pr = &mut guard.pr;
        let res = match sa {
            0 => register(&o, pr, false),
            6 => register(&o, pr, true),
            1 => reserve(&o, pr, scope, rtype),
            2 => release(&o, pr, scope, rtype),
            3 => clear(&o, pr),
            4 | 5 => preempt(&o, pr, scope, rtype),
            7 => register_and_move(&o, pr, scope, rtype),
            _ => Err(invalid_cdb_field(1, Some(4)).into()),
        };
        if res.is_err() {
            guard.pr = before;
            return res.map(|_| Reply::good());
        }
        let notices = o.notices.take();
        if guard.pr == before && notices.is_empty() {
            return Ok(Reply::good());
        }
        let Some(shared) = &shared else {
            save_if_aptpl(ctx, &mut guard, before)?;
            raise(ctx.lu, &notices, ctx.nexus);
            return Ok(Reply::good());
        };
        let change = encode_change(&guard.pr, &notices, ctx.nexus);
        match shared.commit(guard.revision, &change) {
            Ok(revision) => {
                guard.revision = revision;
                drop(guard);
                raise(ctx.lu, &notices, ctx.nexus);
                shared.publish(revision);
                return Ok(Reply::good());
            }
            Err(ReservationConflict::Newer(changes)) => {
                guard.pr = before;
                drop(guard);
                ctx.lu.apply_reservation_changes(&changes);
            }
            Err(ReservationConflict::Failed(why)) => {
                guard.pr = before;
                tracing::warn!(error = %why, "recording persistent reservations failed");
                return Err(codes::INSUFFICIENT_REGISTRATION_RESOURCES.into());
            }
        }
    }
    Err(codes::INSUFFICIENT_REGISTRATION_RESOURCES.into())
}

/// The single-process path: APTPL state goes to the persistence hook.
fn save_if_aptpl(
    ctx: &Ctx,
    guard: &mut crate::lu::ResGuard<'_>,
    before: PrState,
) -> Result<(), Fail> {
    if guard.pr != before && (guard.pr.aptpl || before.aptpl) {
        let bytes = encode(&guard.pr);
        let p = ctx
            .lu
            .persistence
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(p) = p {
            if let Err(e) = p.save(&bytes) {
                tracing::warn!(error = %e, "saving persistent reservations failed");
                guard.pr = before;
                return Err(codes::INSUFFICIENT_REGISTRATION_RESOURCES.into());
            }
        }
    }
    Ok(())
}

/// Raise the unit attentions of `notices` on this process's nexuses, except `origin`.
pub(crate) fn raise(lu: &crate::LogicalUnit, notices: &[Notice], origin: &NexusId) {
    for n in notices {
        let sense = Sense::new(crate::sense::SenseKey::UnitAttention, n.asc, n.ascq);
        lu.ua.push_matching(sense, |x| {
            x != origin && n.ids.iter().any(|id| id.matches(x))
        });
    }
}

fn key_check(o: &Out, pr: &PrState) -> Result<usize, Fail> {
    let i = pr.reg_of(o.ctx.nexus).ok_or(Fail::Conflict)?;
    if pr.regs[i].key != o.rk {
        return Err(Fail::Conflict);
    }
    Ok(i)
}

fn notify(o: &Out, ids: &[RegId], s: Sense) {
    o.notices.borrow_mut().push(Notice {
        ids: ids.to_vec(),
        asc: s.asc,
        ascq: s.ascq,
    });
}

/// Removes registration `i`, releasing the reservation it held.
fn unregister(o: &Out, pr: &mut PrState, i: usize) {
    let gone = pr.regs.remove(i);
    if let Some(r) = pr.res.clone() {
        if all_registrants(r.rtype) {
            if pr.regs.is_empty() {
                pr.res = None;
            }
        } else if r.holder.as_ref() == Some(&gone.id) {
            pr.res = None;
            if matches!(r.rtype, WE_RO | EA_RO) {
                let ids: Vec<RegId> = pr.regs.iter().map(|r| r.id.clone()).collect();
                notify(o, &ids, codes::UA_RESERVATIONS_RELEASED);
            }
        }
    }
}

fn register(o: &Out, pr: &mut PrState, ignore: bool) -> Result<(), Fail> {
    let spec_i_pt = o.flags & 0x08 != 0;
    let all_tg_pt = o.flags & 0x04 != 0;
    match pr.reg_of(o.ctx.nexus) {
        None => {
            if !ignore && o.rk != 0 {
                return Err(Fail::Conflict);
            }
            if o.sark == 0 {
                return Ok(());
            }
            if spec_i_pt {
                if ignore {
                    return Err(invalid_param_field(20, Some(3)).into());
                }
                let tl = be32(o.p, 24) as usize;
                if o.p.len() < 28 || tl > o.p.len() - 28 {
                    return Err(codes::PARAM_LIST_LENGTH_ERROR.into());
                }
                let mut off = 28;
                let end = 28 + tl;
                let rtp = if all_tg_pt {
                    None
                } else {
                    Some(o.ctx.nexus.relative_target_port)
                };
                while off < end {
                    let (id, used) = parse_tid(&o.p[off..end], rtp, off)?;
                    if !pr.regs.iter().any(|r| r.id == id) && !id.matches(o.ctx.nexus) {
                        pr.regs.push(Registrant { id, key: o.sark });
                    }
                    off += used;
                }
            }
            pr.regs.push(Registrant {
                id: RegId::of(o.ctx.nexus, all_tg_pt),
                key: o.sark,
            });
        }
        Some(i) => {
            if !ignore && pr.regs[i].key != o.rk {
                return Err(Fail::Conflict);
            }
            if spec_i_pt {
                return Err(invalid_param_field(20, Some(3)).into());
            }
            if o.sark == 0 {
                unregister(o, pr, i);
            } else {
                pr.regs[i].key = o.sark;
            }
        }
    }
    pr.aptpl = o.flags & 0x01 != 0;
    pr.generation = pr.generation.wrapping_add(1);
    Ok(())
}

fn check_type(scope: u8, rtype: u8) -> Result<(), Fail> {
    if scope != 0 {
        return Err(invalid_cdb_field(2, Some(4)).into());
    }
    if !valid_type(rtype) {
        return Err(invalid_cdb_field(2, Some(0)).into());
    }
    Ok(())
}

fn reserve(o: &Out, pr: &mut PrState, scope: u8, rtype: u8) -> Result<(), Fail> {
    let i = key_check(o, pr)?;
    check_type(scope, rtype)?;
    match &pr.res {
        None => {
            pr.res = Some(Reservation {
                holder: if all_registrants(rtype) {
                    None
                } else {
                    Some(pr.regs[i].id.clone())
                },
                rtype,
                scope,
            });
            Ok(())
        }
        Some(r) if pr.is_holder(o.ctx.nexus) && r.rtype == rtype && r.scope == scope => Ok(()),
        Some(_) => Err(Fail::Conflict),
    }
}

fn release(o: &Out, pr: &mut PrState, scope: u8, rtype: u8) -> Result<(), Fail> {
    key_check(o, pr)?;
    let Some(r) = pr.res.clone() else {
        return Ok(());
    };
    if !pr.is_holder(o.ctx.nexus) {
        return Ok(());
    }
    if r.rtype != rtype || r.scope != scope {
        return Err(codes::INVALID_RELEASE_OF_PR.into());
    }
    pr.res = None;
    if matches!(rtype, WE_RO | EA_RO | WE_AR | EA_AR) {
        let ids: Vec<RegId> = pr.regs.iter().map(|r| r.id.clone()).collect();
        notify(o, &ids, codes::UA_RESERVATIONS_RELEASED);
    }
    Ok(())
}

fn clear(o: &Out, pr: &mut PrState) -> Result<(), Fail> {
    key_check(o, pr)?;
    let ids: Vec<RegId> = pr.regs.iter().map(|r| r.id.clone()).collect();
    notify(o, &ids, codes::UA_RESERVATIONS_PREEMPTED);
    pr.regs.clear();
    pr.res = None;
    pr.generation = pr.generation.wrapping_add(1);
    Ok(())
}

/// Removes every registration with `key` except the caller's; returns the removed ids.
fn remove_key(o: &Out, pr: &mut PrState, key: u64) -> Vec<RegId> {
    let me = o.ctx.nexus;
    let mut gone = Vec::new();
    pr.regs.retain(|r| {
        if r.key == key && !r.id.matches(me) {
            gone.push(r.id.clone());
            false
        } else {
            true
        }
    });
    gone
}

fn preempt(o: &Out, pr: &mut PrState, scope: u8, rtype: u8) -> Result<(), Fail> {
    let i = key_check(o, pr)?;
    let my_id = pr.regs[i].id.clone();
    match pr.res.clone() {
        None => {
            if o.sark == 0 {
                return Err(invalid_param_field(8, None).into());
            }
            let gone = remove_key(o, pr, o.sark);
            if gone.is_empty() {
                return Err(Fail::Conflict);
            }
            notify(o, &gone, codes::UA_REGISTRATIONS_PREEMPTED);
        }
        Some(r) if all_registrants(r.rtype) => {
            if o.sark == 0 {
                check_type(scope, rtype)?;
                let me = o.ctx.nexus;
                let gone: Vec<RegId> = pr
                    .regs
                    .iter()
                    .filter(|x| !x.id.matches(me))
                    .map(|x| x.id.clone())
                    .collect();
                pr.regs.retain(|x| x.id.matches(me));
                notify(o, &gone, codes::UA_REGISTRATIONS_PREEMPTED);
                pr.res = Some(Reservation {
                    holder: if all_registrants(rtype) {
                        None
                    } else {
                        Some(my_id)
                    },
                    rtype,
                    scope,
                });
            } else {
                let gone = remove_key(o, pr, o.sark);
                if gone.is_empty() {
                    return Err(Fail::Conflict);
                }
                notify(o, &gone, codes::UA_REGISTRATIONS_PREEMPTED);
            }
        }
        Some(r) => {
            let holder_key = r
                .holder
                .as_ref()
                .and_then(|h| pr.regs.iter().find(|x| &x.id == h))
                .map(|x| x.key);
            if holder_key == Some(o.sark) {
                check_type(scope, rtype)?;
                let gone = remove_key(o, pr, o.sark);
                notify(o, &gone, codes::UA_REGISTRATIONS_PREEMPTED);
                if r.rtype != rtype || r.scope != scope {
                    let ids: Vec<RegId> = pr.regs.iter().map(|x| x.id.clone()).collect();
                    notify(o, &ids, codes::UA_RESERVATIONS_RELEASED);
                }
                pr.res = Some(Reservation {
                    holder: if all_registrants(rtype) {
                        None
                    } else {
                        Some(my_id)
                    },
                    rtype,
                    scope,
                });
            } else {
                if o.sark == 0 {
                    return Err(invalid_param_field(8, None).into());
                }
                let gone = remove_key(o, pr, o.sark);
                if gone.is_empty() {
                    return Err(Fail::Conflict);
                }
                notify(o, &gone, codes::UA_REGISTRATIONS_PREEMPTED);
            }
        }
    }
    pr.generation = pr.generation.wrapping_add(1);
    Ok(())
}

fn register_and_move(o: &Out, pr: &mut PrState, scope: u8, rtype: u8) -> Result<(), Fail> {
    let i = key_check(o, pr)?;
    let Some(r) = pr.res.clone() else {
        return Err(Fail::Conflict);
    };
    if all_registrants(r.rtype) || !pr.is_holder(o.ctx.nexus) {
        return Err(Fail::Conflict);
    }
    let _ = (scope, rtype);
    if o.sark == 0 {
        return Err(invalid_param_field(8, None).into());
    }
    let flags = byte(o.p, 17);
    let rtp = be16(o.p, 18);
    let tl = be32(o.p, 20) as usize;
    if tl > o.p.len() - 24 {
        return Err(codes::PARAM_LIST_LENGTH_ERROR.into());
    }
    let (dest, _) = parse_tid(&o.p[24..24 + tl], Some(rtp), 24)?;
    if dest.matches(o.ctx.nexus) {
        return Err(invalid_param_field(24, None).into());
    }
    let src = pr.regs[i].id.clone();
    match pr.regs.iter_mut().find(|x| x.id == dest) {
        Some(x) => x.key = o.sark,
        None => pr.regs.push(Registrant {
            id: dest.clone(),
            key: o.sark,
        }),
    }
    pr.res = Some(Reservation {
        holder: Some(dest),
        rtype: r.rtype,
        scope: r.scope,
    });
    if flags & 0x02 != 0 {
        pr.regs.retain(|x| x.id != src);
    }
    pr.aptpl = flags & 0x01 != 0;
    pr.generation = pr.generation.wrapping_add(1);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_ids_round_trip() {
        let id = RegId {
            name: "iqn.a".into(),
            isid: Some(0x23d000000001),
            rtp: Some(1),
        };
        let t = id.transport_id();
        assert_eq!(t[0], 0x45);
        assert_eq!(t.len() % 4, 0);
        let (back, used) = parse_tid(&t, Some(1), 0).unwrap();
        assert_eq!(back, id);
        assert_eq!(used, t.len());
        let name_only = RegId {
            name: "iqn.b".into(),
            isid: None,
            rtp: None,
        };
        let t = name_only.transport_id();
        assert_eq!(t[0], 0x05);
        assert_eq!(parse_tid(&t, None, 0).unwrap().0, name_only);
        assert!(parse_tid(&[0x45, 0, 0, 9], None, 0).is_err());
    }

    #[test]
    fn state_round_trip() {
        let mut st = PrState {
            aptpl: true,
            ..Default::default()
        };
        st.regs.push(Registrant {
            id: RegId {
                name: "x".into(),
                isid: None,
                rtp: None,
            },
            key: 5,
        });
        assert_eq!(decode(&encode(&st)).unwrap(), st);
        st.aptpl = false;
        assert_eq!(decode(&encode(&st)).unwrap(), PrState::default());
        assert!(decode(b"nonsense").is_err());
    }
}
