//! The external clients, each driving one server's LUN and returning what it measured.

use crate::proc::{run_tool, Daemon};
use crate::servers::Server;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Slack beyond a client's own run time before it is declared hung.
const SLACK: Duration = Duration::from_secs(120);

/// Write `len` bytes of deterministic, incompressible data to `path`.
pub fn write_random(path: &Path, len: u64, seed: u64) -> Result<()> {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut x = seed | 1;
    let mut left = len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        for chunk in buf.chunks_exact_mut(8) {
            // xorshift64*
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            chunk.copy_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

/// Copy `src` over the whole LUN with `qemu-img convert -n`.
pub fn fill(dir: &Path, src: &Path, s: &Server) -> Result<()> {
    run_tool(
        dir,
        "qemu-img-convert",
        Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw", "-t", "none"])
            .arg(src)
            .arg(&s.url),
        Duration::from_secs(3600),
    )?;
    Ok(())
}

/// Confirm with `qemu-img map` (GET LBA STATUS underneath) that all `size` bytes hold data.
pub fn check_mapped(dir: &Path, s: &Server, size: u64) -> Result<()> {
    let o = run_tool(
        dir,
        "qemu-img-map",
        Command::new("qemu-img").args(["map", "--output=json", "-f", "raw", &s.url]),
        Duration::from_secs(600),
    )?;
    let map: Vec<serde_json::Value> = serde_json::from_str(&o.stdout)
        .with_context(|| format!("qemu-img map printed {:?}", o.stdout))?;
    let mut data = 0u64;
    for e in &map {
        let len = e["length"]
            .as_u64()
            .context("qemu-img map entry without length")?;
        if e["data"].as_bool() != Some(true) || e["zero"].as_bool() == Some(true) {
            bail!("{}: qemu-img map shows a hole after the fill: {e}", s.name);
        }
        data += len;
    }
    if data != size {
        bail!(
            "{}: qemu-img map covers {data} bytes of data, the volume has {size}",
            s.name
        );
    }
    Ok(())
}

/// iscsi-perf: IOPS averaged over `secs` seconds.
pub fn iscsi_perf(
    dir: &Path,
    s: &Server,
    random: bool,
    bytes: u64,
    depth: u32,
    secs: u64,
) -> Result<f64> {
    if bytes % s.block_size != 0 {
        bail!(
            "{}: {bytes}-byte requests on {}-byte blocks",
            s.name,
            s.block_size
        );
    }
    let mut c = Command::new("iscsi-perf");
    if random {
        c.arg("-r");
    }
    c.args(["-b", &(bytes / s.block_size).to_string()])
        .args(["-m", &depth.to_string()])
        .args(["-t", &secs.to_string()])
        .arg(&s.url);
    let o = run_tool(dir, "iscsi-perf", &mut c, Duration::from_secs(secs) + SLACK)?;
    parse_iscsi_perf(&o.stdout).with_context(|| {
        format!(
            "{}: no \"iops average\" in iscsi-perf output: {}",
            s.name, o.stdout
        )
    })
}

/// The last "iops average N" of iscsi-perf's output (progress lines end in carriage returns).
pub fn parse_iscsi_perf(out: &str) -> Option<f64> {
    let i = out.rfind("iops average ")?;
    out[i + "iops average ".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `qemu-img bench`, 4 KiB requests at queue depth 32: IOPS of `count` requests.
pub fn qemu_img_bench(dir: &Path, s: &Server, write: bool, count: u64) -> Result<f64> {
    qemu_img_bench_at(dir, s.name, &s.url, write, count)
}

/// [`qemu_img_bench`] against the LUN at `url` (`name` for messages).
pub fn qemu_img_bench_at(
    dir: &Path,
    name: &str,
    url: &str,
    write: bool,
    count: u64,
) -> Result<f64> {
    let mut c = Command::new("qemu-img");
    c.arg("bench");
    if write {
        c.arg("-w");
    }
    c.args([
        "-d",
        "32",
        "-s",
        "4k",
        "-c",
        &count.to_string(),
        "-t",
        "none",
        "-f",
        "raw",
    ])
    .arg(url);
    let o = run_tool(dir, "qemu-img-bench", &mut c, SLACK * 5)?;
    let secs = parse_qemu_img_bench(&o.stdout).with_context(|| {
        format!(
            "{}: no \"Run completed in\" in qemu-img bench output: {}",
            name, o.stdout
        )
    })?;
    if secs <= 0.0 {
        bail!("{}: qemu-img bench ran {count} requests in {secs} s", name);
    }
    Ok(count as f64 / secs)
}

/// X of "Run completed in X seconds."
pub fn parse_qemu_img_bench(out: &str) -> Option<f64> {
    let i = out.rfind("Run completed in ")?;
    out[i + "Run completed in ".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A `qemu-nbd -t` export of a server's LUN on a unix socket, for fio's nbd engine.
pub struct NbdExport {
    pub socket: PathBuf,
    _daemon: Daemon,
}

pub fn nbd_export(dir: &Path, s: &Server) -> Result<NbdExport> {
    let socket = dir.join(format!("{}.nbd.sock", s.name));
    let mut d = Daemon::spawn(
        dir,
        "qemu-nbd",
        Command::new("qemu-nbd")
            .args(["-t", "-f", "raw", "--cache=none", "-k"])
            .arg(&socket)
            .arg(&s.url),
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(&socket).is_err() {
        d.check_alive()?;
        if Instant::now() > deadline {
            bail!("qemu-nbd never listened on {}", socket.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(NbdExport { socket, _daemon: d })
}

/// fio over NBD, 4 KiB random reads at QD1 for `secs`: completion latency p50 and p99 in µs.
pub fn fio_latency(
    dir: &Path,
    s: &Server,
    nbd: &NbdExport,
    size: u64,
    secs: u64,
) -> Result<(f64, f64)> {
    let out = dir.join(format!("fio-{}.json", s.name));
    let _ = std::fs::remove_file(&out);
    run_tool(
        dir,
        "fio",
        Command::new("fio")
            .args([
                "--name=lat",
                "--ioengine=nbd",
                "--rw=randread",
                "--bs=4k",
                "--iodepth=1",
            ])
            .args(["--numjobs=1", "--time_based", "--output-format=json"])
            .arg(format!(
                "--uri=nbd+unix:///?socket={}",
                nbd.socket.display()
            ))
            .arg(format!("--runtime={secs}"))
            .arg(format!("--size={size}"))
            .arg(format!("--output={}", out.display())),
        Duration::from_secs(secs) + SLACK,
    )?;
    let text = std::fs::read_to_string(&out)?;
    parse_fio(&text)
        .with_context(|| format!("{}: no clat percentiles in fio output: {text}", s.name))
}

/// (p50, p99) of the read completion latency, in µs, from fio's JSON output.
pub fn parse_fio(text: &str) -> Option<(f64, f64)> {
    // Engines may print a line before the JSON document.
    let v: serde_json::Value = serde_json::from_str(&text[text.find('{')?..]).ok()?;
    let p = &v["jobs"][0]["read"]["clat_ns"]["percentile"];
    let p50 = p["50.000000"].as_f64()?;
    let p99 = p["99.000000"].as_f64()?;
    Some((p50 / 1000.0, p99 / 1000.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_last_iops_average_of_iscsi_perf() {
        let out = "will run for 3 seconds.\n\n\n00:00:02 - lba 1, iops current 10274 (40 MB/s), iops average 10274 (40 MB/s), in_flight 1, busy 0        \r00:00:01 - lba 8489, iops current 11497 (44 MB/s), iops average 10886 (42 MB/s), in_flight 1\riops average 12230 (47 MB/s)        \n\nfinished.\n";
        assert_eq!(parse_iscsi_perf(out), Some(12230.0));
    }

    #[test]
    fn parses_qemu_img_bench() {
        let out = "Sending 20000 write requests, 4096 bytes each, 32 in parallel (starting at offset 0, step size 4096)\nRun completed in 3.332 seconds.\n";
        assert_eq!(parse_qemu_img_bench(out), Some(3.332));
    }

    #[test]
    fn parses_fio_json_after_a_banner() {
        let out = "fio: connected to NBD server\n{\"jobs\":[{\"read\":{\"clat_ns\":{\"percentile\":{\"50.000000\":183296,\"99.000000\":2637824}}}}]}";
        assert_eq!(parse_fio(out), Some((183.296, 2637.824)));
    }
}
