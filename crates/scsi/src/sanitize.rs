//! SANITIZE: OVERWRITE, BLOCK ERASE, CRYPTOGRAPHIC ERASE and EXIT FAILURE MODE.
//!
//! The command runs in the caller's thread; while it does (and for at least the LU's
//! minimum sanitize duration) every other command but INQUIRY, REPORT LUNS and
//! REQUEST SENSE gets NOT READY / SANITIZE IN PROGRESS. Resets do not stop it.
//!
//! Volumes are not encrypted, so there is no key to destroy: CRYPTOGRAPHIC ERASE
//! deallocates every block, exactly like BLOCK ERASE (reads then return zeros).
//!
//! Every CDB and parameter check happens before the LU enters the sanitize state, so
//! a refused command is answered at once.

use crate::cdb::{be16, byte};
use crate::lu::{CmdResult, Ctx, Fail, Reply};
use crate::sense::{invalid_cdb_field, invalid_param_field};
use std::sync::atomic::Ordering;
use std::time::Instant;

const OVERWRITE: u8 = 0x01;
const BLOCK_ERASE: u8 = 0x02;
const CRYPTO_ERASE: u8 = 0x03;
const EXIT_FAILURE_MODE: u8 = 0x1F;

pub(crate) fn sanitize(ctx: &Ctx) -> CmdResult {
    let sa = ctx.cdb.sa();
    let plen = usize::from(ctx.cdb.u16(7));
    let bs = ctx.dev().block_size() as usize;
    // Byte 1 bit 6 and bytes 2..=6 are reserved.
    if ctx.cdb.bit(1, 6) {
        return Err(invalid_cdb_field(1, Some(6)).into());
    }
    if let Some(i) = (2..=6).find(|&i| ctx.cdb.u8(i) != 0) {
        return Err(invalid_cdb_field(i as u16, None).into());
    }
    match sa {
        BLOCK_ERASE | CRYPTO_ERASE | EXIT_FAILURE_MODE => {
            if plen != 0 {
                return Err(invalid_cdb_field(7, None).into());
            }
        }
        OVERWRITE => {
            if plen < 5 || plen > bs + 4 {
                return Err(invalid_cdb_field(7, None).into());
            }
        }
        _ => return Err(invalid_cdb_field(1, Some(4)).into()),
    }
    ctx.check_writable()?;
    let pattern = if sa == OVERWRITE {
        let p = &ctx.data[..plen.min(ctx.data.len())];
        let count = byte(p, 0) & 0x1F;
        let invert = byte(p, 0) & 0x80 != 0;
        let ipl = usize::from(be16(p, 2));
        if count == 0 {
            return Err(invalid_param_field(0, Some(0)).into());
        }
        if ipl == 0 || ipl > bs || ipl + 4 > p.len() {
            return Err(invalid_param_field(2, None).into());
        }
        let pat = &p[4..4 + ipl];
        let mut block: Vec<u8> = pat.iter().copied().cycle().take(bs).collect();
        if invert {
            // The last pass writes the inverted pattern only when the count is odd
            // and INVERT is set; the final medium content is what matters.
            if count % 2 == 1 {
                block.iter_mut().for_each(|b| *b = !*b);
            }
        }
        Some(block)
    } else {
        None
    };
    if sa == EXIT_FAILURE_MODE {
        return Ok(Reply::good());
    }
    if ctx
        .lu
        .sanitizing
        .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        return Err(crate::sense::codes::SANITIZE_IN_PROGRESS.into());
    }
    let start = Instant::now();
    let result = run(ctx, pattern.as_deref());
    let min = *ctx
        .lu
        .sanitize_min
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let spent = start.elapsed();
    if spent < min {
        std::thread::sleep(min - spent);
    }
    ctx.lu.sanitizing.store(false, Ordering::SeqCst);
    result.map(|_| Reply::good())
}

fn run(ctx: &Ctx, pattern: Option<&[u8]>) -> Result<(), Fail> {
    let dev = ctx.dev();
    let nb = dev.num_blocks();
    match pattern {
        Some(block) if !(block.iter().all(|&b| b == 0) && dev.thin()) => {
            crate::thin::fill(ctx, 0, nb, block)
        }
        _ => {
            if nb == 0 {
                return Ok(());
            }
            let _g = ctx.lu.stripes.lock(0, nb);
            dev.unmap(0, nb).map_err(|e| ctx.dev_fail(e))
        }
    }
}
