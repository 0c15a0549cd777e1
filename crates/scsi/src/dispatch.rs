//! Routes a validated CDB to its handler.

use crate::lu::{CmdResult, Ctx};
use crate::{admin, inquiry, mode, pr, reserve, rw, sanitize, thin, xcopy};

pub(crate) fn dispatch(ctx: &Ctx) -> CmdResult {
    let sa = ctx.cdb.sa();
    match ctx.cdb.op() {
        0x00 => admin::test_unit_ready(ctx),
        0x03 => admin::request_sense(ctx),
        0x08 | 0x28 | 0xA8 | 0x88 => rw::read(ctx),
        0x0A | 0x2A | 0xAA | 0x8A => rw::write(ctx),
        0x12 => inquiry::inquiry(ctx),
        0x15 | 0x55 => mode::mode_select(ctx),
        0x16 | 0x56 => reserve::reserve(ctx),
        0x17 | 0x57 => reserve::release(ctx),
        0x1A | 0x5A => mode::mode_sense(ctx),
        0x1B => admin::start_stop_unit(ctx),
        0x1E => admin::prevent_allow(ctx),
        0x25 => admin::read_capacity10(ctx),
        0x2E | 0xAE | 0x8E => rw::write_and_verify(ctx),
        0x2F | 0xAF | 0x8F => rw::verify(ctx),
        0x34 | 0x90 => rw::prefetch(ctx),
        0x35 | 0x91 => rw::synchronize_cache(ctx),
        0x37 | 0xB7 => admin::read_defect_data(ctx),
        0x41 | 0x93 => thin::write_same(ctx),
        0x42 => thin::unmap(ctx),
        0x48 => sanitize::sanitize(ctx),
        0x5E => pr::persistent_reserve_in(ctx),
        0x5F => pr::persistent_reserve_out(ctx),
        0x83 => xcopy::extended_copy(ctx),
        0x84 => xcopy::receive_copy_results(ctx),
        0x89 => rw::compare_and_write(ctx),
        0x8B => rw::orwrite(ctx),
        0x9C => rw::write_atomic(ctx),
        0x9E if sa == 0x10 => admin::read_capacity16(ctx),
        0x9E => thin::get_lba_status(ctx),
        0xA0 => admin::report_luns(ctx),
        0xA3 if sa == 0x0A => admin::report_target_port_groups(ctx),
        0xA3 if sa == 0x0C => crate::rsoc::report_supported_opcodes(ctx),
        0xA3 => crate::rsoc::report_supported_tmfs(ctx),
        _ => Err(crate::sense::codes::INVALID_OPCODE.into()),
    }
}
