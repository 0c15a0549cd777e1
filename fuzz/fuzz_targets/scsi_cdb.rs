//! The SCSI command engine on an arbitrary CDB and Data-Out buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = (n as usize % 33).min(rest.len());
    let (cdb, data_out) = rest.split_at(n);
    let _ = scsi::fuzz_execute(cdb, data_out);
});
