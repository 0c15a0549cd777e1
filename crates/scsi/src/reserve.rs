//! SPC-2 RESERVE / RELEASE (6 and 10).

use crate::lu::{CmdResult, Ctx, Fail, Reply};
use crate::sense::invalid_cdb_field;

pub(crate) fn reserve(ctx: &Ctx) -> CmdResult {
    if ctx.cdb.op() == 0x56 && ctx.cdb.bit(1, 4) {
        return Err(invalid_cdb_field(1, Some(4)).into()); // third-party reservations
    }
    let mut r = ctx.lu.res_write();
    if r.pr.res.is_some() {
        return Err(Fail::Conflict);
    }
    match &r.spc2 {
        Some(h) if h != ctx.nexus => Err(Fail::Conflict),
        _ => {
            r.spc2 = Some(ctx.nexus.clone());
            Ok(Reply::good())
        }
    }
}

pub(crate) fn release(ctx: &Ctx) -> CmdResult {
    if ctx.cdb.op() == 0x57 && ctx.cdb.bit(1, 4) {
        return Err(invalid_cdb_field(1, Some(4)).into());
    }
    let mut r = ctx.lu.res_write();
    if r.spc2.as_ref() == Some(ctx.nexus) {
        r.spc2 = None;
    }
    // Releasing a reservation held by someone else (or none) is a no-op.
    Ok(Reply::good())
}
