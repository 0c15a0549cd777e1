//! Many standard clients at once: readers (iscsi-perf) and verified writers (qemu-io),
//! no error, and the member's memory stays flat.
//!
//! Short form (CI): `cargo nextest run -E 'test(many_clients)'` runs 30 s.
//! Long form: `HAVEN_SOAK_SECS=60 cargo nextest run -E 'test(many_clients)' --no-capture`.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// The member's own memory: anonymous resident pages. Not VmRSS, which also counts the
/// page cache that large reads touch through the store's mapping of its extent file
/// (`store`'s `mapped`): the writers' 1 MiB read-backs grew it by 8 MiB in 30 s.
fn rss_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

struct Killed(Vec<Child>);
impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn many_clients_read_and_write_without_error_and_memory_stays_flat() {
    let secs: u64 = std::env::var("HAVEN_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let readers = 48;
    let writers = 16;
    let lab = Lab::up();
    lab.ok(&["volume", "create", "soak", "--size", "256MiB"]);
    let url = lab.iscsi_url("soak");
    // Fill it so reads touch data, not holes.
    let fill = lab.tmp.path().join("fill.img");
    write_random(&fill, 256 << 20, 3);
    qemu_img_put(fill.to_str().unwrap(), &url);
    let pid: i32 = std::fs::read_to_string(lab.dir.join("member-1/pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let mut readers_p = Killed(Vec::new());
    for i in 0..readers {
        let c = Command::new("iscsi-perf")
            .args([
                "-i",
                &format!("iqn.2000-01.org.test:reader{i}"),
                "-t",
                &secs.to_string(),
                "-r",
                "-m",
                "4",
            ])
            .arg(&url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("iscsi-perf (run scripts/setup)");
        readers_p.0.push(c);
    }
    // Each writer owns 1 MiB and loops: write a pattern, read it back verified.
    let start = Instant::now();
    let mut writer_threads = Vec::new();
    for w in 0..writers {
        let url = url.clone();
        writer_threads.push(std::thread::spawn(move || {
            let mut rounds = 0u32;
            let mut failures = Vec::new();
            while start.elapsed() < Duration::from_secs(secs) {
                let base = (200u64 << 20) + w as u64 * (1 << 20);
                let pat = 1 + (rounds % 250) as u8;
                let mut args = vec!["-f".to_string(), "raw".to_string()];
                for k in 0..8u64 {
                    let off = base + k * 128 * 1024;
                    args.push("-c".into());
                    args.push(format!("write -P {pat} {off} 128k"));
                    args.push("-c".into());
                    args.push(format!("read -P {pat} {off} 128k"));
                }
                args.push(url.clone());
                let o = Command::new("qemu-io")
                    .args(&args)
                    .output()
                    .expect("qemu-io");
                let out = String::from_utf8_lossy(&o.stdout).to_string()
                    + &String::from_utf8_lossy(&o.stderr);
                if !o.status.success() || out.contains("fail") || out.contains("error") {
                    failures.push(out);
                }
                rounds += 1;
            }
            (rounds, failures)
        }));
    }
    // Memory from the 10th second to the end.
    let warm = 10.min(secs / 2);
    std::thread::sleep(Duration::from_secs(warm));
    let rss_start = rss_kib(pid);
    let mut rss_peak = rss_start;
    while start.elapsed() < Duration::from_secs(secs) {
        rss_peak = rss_peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut total_rounds = 0;
    for t in writer_threads {
        let (rounds, failures) = t.join().unwrap();
        assert!(failures.is_empty(), "a writer saw errors: {}", failures[0]);
        total_rounds += rounds;
    }
    let mut total_iops = 0.0;
    for mut c in std::mem::take(&mut readers_p.0) {
        let status = c.wait().unwrap();
        let mut out = String::new();
        use std::io::Read;
        c.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        let mut err = String::new();
        c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert!(status.success(), "iscsi-perf failed: {out}{err}");
        assert!(
            !err.to_lowercase().contains("error"),
            "iscsi-perf error: {err}"
        );
        if let Some(avg) = out.rsplit("iops average ").next() {
            total_iops += avg
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<f64>().ok())
                .unwrap_or(0.0);
        }
    }
    let rss_end = rss_kib(pid);
    let growth = (rss_peak.max(rss_end) as f64 - rss_start as f64) / rss_start as f64;
    println!(
        "soak {secs}s: {readers} readers ({total_iops:.0} IOPS total), {writers} verified writers ({total_rounds} rounds), rss {rss_start} KiB -> peak {rss_peak} KiB, end {rss_end} KiB ({:+.1}%)",
        growth * 100.0
    );
    assert!(
        growth < 0.10,
        "member memory grew {:.1}% (from {rss_start} KiB to {rss_peak} KiB)",
        growth * 100.0
    );
}
