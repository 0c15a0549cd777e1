//! Random CDBs and parameter data never panic the engine.

use proptest::prelude::*;

fn cdb() -> impl Strategy<Value = Vec<u8>> {
    let ops = prop::sample::select(vec![
        0x00u8, 0x03, 0x08, 0x0A, 0x12, 0x15, 0x16, 0x17, 0x1A, 0x1B, 0x1E, 0x25, 0x28, 0x2A, 0x2E,
        0x2F, 0x34, 0x35, 0x37, 0x41, 0x42, 0x48, 0x55, 0x56, 0x57, 0x5A, 0x5E, 0x5F, 0x83, 0x84,
        0x88, 0x89, 0x8A, 0x8B, 0x8E, 0x8F, 0x90, 0x91, 0x93, 0x9C, 0x9E, 0xA0, 0xA3, 0xA8, 0xAA,
        0xAE, 0xAF, 0xB7, 0x7F, 0xFF,
    ]);
    (ops, prop::collection::vec(any::<u8>(), 0..20)).prop_map(|(op, mut rest)| {
        rest.insert(0, op);
        // Keep transfer sizes small most of the time.
        if rest.len() > 9 && rest[1] & 1 == 0 {
            rest[6] = 0;
            rest[7] = 0;
            let last = 10.min(rest.len() - 1);
            rest[last] = 0;
        }
        rest
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]
    #[test]
    fn random_cdbs_never_panic(c in cdb(), data in prop::collection::vec(any::<u8>(), 0..600)) {
        let r = scsi::fuzz_execute(&c, &data);
        if r.status == scsi::status::CHECK_CONDITION {
            prop_assert_eq!(r.sense.map(|s| s.len()), Some(18));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(c in prop::collection::vec(any::<u8>(), 0..40),
                                   data in prop::collection::vec(any::<u8>(), 0..128)) {
        let _ = scsi::fuzz_execute(&c, &data);
    }
}
