//! The benchmark harness in quick mode, so it never rots: both servers come up, every client
//! runs against both, every figure comes back. Speed is not asserted here — that belongs in
//! BENCHMARKS.md (`cargo run --release -p haven-bench`), not in a test.

#[test]
fn the_quick_benchmark_measures_every_figure_on_tgtd_and_haven_and_replicated() {
    let mut opts = haven_bench::Options::new(env!("CARGO_BIN_EXE_haven"), true);
    opts.command = "cargo test -p haven --test bench_quick -- --nocapture".into();
    let report = haven_bench::run(&opts).expect("quick benchmark");
    println!("{}", report.table());
    assert!(report.figures.len() >= 5, "too few figures: {report:#?}");
    for f in &report.figures {
        assert!(
            f.tgtd > 0.0 && f.haven > 0.0,
            "{}: tgtd {} haven {}",
            f.name,
            f.tgtd,
            f.haven
        );
        assert!(f.ratio > 0.0, "{}: ratio {}", f.name, f.ratio);
        assert!(
            f.tgtd_cpu_pct >= 0.0 && f.haven_cpu_pct >= 0.0,
            "{}: negative CPU",
            f.name
        );
    }
    let r = report
        .replicated
        .as_ref()
        .expect("the replicated-writes figure");
    assert!(
        r.one_member > 0.0 && r.three_members > 0.0 && r.ratio > 0.0,
        "replicated writes: {r:?}"
    );
    // The JSON form serializes.
    let v = serde_json::to_value(&report).unwrap();
    assert!(v["figures"]
        .as_array()
        .is_some_and(|a| a.len() == report.figures.len()));
}
