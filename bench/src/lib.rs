//! haven-bench: haven's data path beside tgtd, driven in one run by the same external clients.
//!
//! One call to [`run`] makes a tmpfs work dir, starts a private tgtd and a standalone haven
//! member (each in its own process group, killed on drop), fills both LUNs with the same random
//! data, checks haven's volume is fully mapped, then runs every client against tgtd and haven in
//! turn (the other server idle), R times each; every figure is the median of its runs. See
//! BENCHMARKS.md at the workspace root.

mod clients;
mod lab;
mod proc;
mod servers;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use servers::Server;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

pub use clients::{parse_fio, parse_iscsi_perf, parse_qemu_img_bench};

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The `haven` binary to measure.
    pub haven: PathBuf,
    /// Quick mode: one short run per figure on a small volume (a smoke test, not a measurement).
    pub quick: bool,
    /// Runs per figure (default: 3, quick 1).
    pub runs: Option<u32>,
    /// Seconds per run (default: 10, quick 2).
    pub seconds: Option<u64>,
    /// Volume size in MiB (default: 1024, quick 64).
    pub size_mib: Option<u64>,
    /// The command that repeats this run, recorded in the report.
    pub command: String,
    /// Print progress on stderr.
    pub verbose: bool,
    /// Measure only the figures whose name contains this (case-insensitive; "replicated"
    /// selects the replicated-writes figure): for iterating on one figure.
    pub only: Option<String>,
}

impl Options {
    pub fn new(haven: impl Into<PathBuf>, quick: bool) -> Options {
        Options {
            haven: haven.into(),
            quick,
            runs: None,
            seconds: None,
            size_mib: None,
            command: format!(
                "cargo run --release -p haven-bench --{}",
                if quick { " --quick" } else { "" }
            ),
            verbose: true,
            only: None,
        }
    }
    fn runs(&self) -> u32 {
        self.runs.unwrap_or(if self.quick { 1 } else { 3 }).max(1)
    }
    fn seconds(&self) -> u64 {
        self.seconds
            .unwrap_or(if self.quick { 2 } else { 10 })
            .max(1)
    }
    fn size(&self) -> u64 {
        self.size_mib
            .unwrap_or(if self.quick { 64 } else { 1024 })
            .max(16)
            << 20
    }
}

/// The machine the figures were measured on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    /// /proc/loadavg when the run started and when it ended: a busy machine skews everything.
    pub loadavg_start: String,
    pub loadavg_end: String,
}

/// One figure: the median over the runs, for each server.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub name: String,
    /// "IOPS" or "µs".
    pub unit: String,
    pub higher_is_better: bool,
    pub tgtd: f64,
    pub haven: f64,
    /// haven / tgtd.
    pub ratio: f64,
    /// CPU each server used during the figure's runs, in % of one core (median over runs).
    pub tgtd_cpu_pct: f64,
    pub haven_cpu_pct: f64,
    /// Every run's value, in run order.
    pub tgtd_runs: Vec<f64>,
    pub haven_runs: Vec<f64>,
}

/// Everything one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub command: String,
    pub quick: bool,
    pub runs: u32,
    pub seconds_per_run: u64,
    pub volume_bytes: u64,
    pub machine: Machine,
    /// `tool --version` first lines, and the haven binary measured.
    pub tools: BTreeMap<String, String>,
    pub figures: Vec<Figure>,
    /// Replicated writes: a 3-member group with 2 replicas against 1 member.
    pub replicated: Option<Replicated>,
    /// Figures asked for but not measured, each with the reason.
    pub not_measured: Vec<String>,
}

/// 4 KiB writes at QD32 through the group portal of a 1-member and of a 3-member lab (a
/// volume with 2 replicas), in the same run: what replication costs.
#[derive(Clone, Debug, Serialize)]
pub struct Replicated {
    pub name: String,
    pub unit: String,
    /// Medians over the runs.
    pub one_member: f64,
    pub three_members: f64,
    /// three_members / one_member.
    pub ratio: f64,
    /// CPU of every member of the lab, in % of one core (median over runs).
    pub one_member_cpu_pct: f64,
    pub three_members_cpu_pct: f64,
    pub one_member_runs: Vec<f64>,
    pub three_members_runs: Vec<f64>,
}

/// The tmpfs work dir, removed on drop (after the servers, which are declared after it).
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> Result<WorkDir> {
        let base = Path::new("/dev/shm");
        if !base.is_dir() {
            bail!("/dev/shm is missing: the harness needs a tmpfs for both backings");
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        let p = base.join(format!("haven-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(WorkDir(p))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One run of one client against one server: its values and the server's CPU in % of a core.
struct Sample {
    values: Vec<f64>,
    cpu_pct: f64,
}

fn sample(s: &Server, f: impl FnOnce() -> Result<Vec<f64>>) -> Result<Sample> {
    let cpu0 = s.cpu_seconds();
    let t0 = Instant::now();
    let values = f()?;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = s.cpu_seconds() - cpu0;
    Ok(Sample {
        values,
        cpu_pct: 100.0 * cpu / wall.max(1e-6),
    })
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A client, run the same way against each server.
enum Client {
    IscsiPerf {
        random: bool,
        bytes: u64,
        depth: u32,
    },
    QemuImgBench {
        write: bool,
    },
    FioLatency,
}

/// A client and the figures it yields (fio yields p50 and p99).
struct Group {
    client: Client,
    figures: Vec<(&'static str, &'static str, bool)>,
}

fn groups(with_fio: bool) -> Vec<Group> {
    let mut g = vec![
        Group {
            client: Client::IscsiPerf {
                random: true,
                bytes: 4096,
                depth: 1,
            },
            figures: vec![("4 KiB random read QD1 (iscsi-perf)", "IOPS", true)],
        },
        Group {
            client: Client::IscsiPerf {
                random: true,
                bytes: 4096,
                depth: 32,
            },
            figures: vec![("4 KiB random read QD32 (iscsi-perf)", "IOPS", true)],
        },
        Group {
            client: Client::IscsiPerf {
                random: false,
                bytes: 1 << 20,
                depth: 8,
            },
            figures: vec![("1 MiB sequential read QD8 (iscsi-perf)", "IOPS", true)],
        },
        Group {
            client: Client::QemuImgBench { write: true },
            figures: vec![("4 KiB sequential write QD32 (qemu-img bench)", "IOPS", true)],
        },
        Group {
            client: Client::QemuImgBench { write: false },
            figures: vec![("4 KiB sequential read QD32 (qemu-img bench)", "IOPS", true)],
        },
    ];
    if with_fio {
        g.push(Group {
            client: Client::FioLatency,
            figures: vec![
                (
                    "4 KiB random read QD1 latency p50 (fio nbd → qemu-nbd)",
                    "µs",
                    false,
                ),
                (
                    "4 KiB random read QD1 latency p99 (fio nbd → qemu-nbd)",
                    "µs",
                    false,
                ),
            ],
        });
    }
    g
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    match Command::new(cmd).args(args).output() {
        Ok(o) => {
            let s = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            s.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string()
        }
        Err(_) => "not installed".into(),
    }
}

fn fio_works() -> bool {
    Command::new("fio")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// fio if present; installed with apt when running as root; otherwise the reason it is absent.
/// In CI (the `CI` variable set) a missing fio is an error, not a skipped figure.
fn ensure_fio(verbose: bool) -> Result<Option<String>> {
    if fio_works() {
        return Ok(None);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        if verbose {
            eprintln!("bench: fio missing; installing it with apt-get");
        }
        let install = || {
            Command::new("apt-get")
                .args(["install", "-y", "-q", "fio"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !install() {
            let _ = Command::new("apt-get").args(["update", "-qq"]).output();
            install();
        }
        if fio_works() {
            return Ok(None);
        }
    }
    if std::env::var_os("CI").is_some() {
        bail!("fio not installed (apt-get install fio; scripts/setup)");
    }
    Ok(Some(
        "not measured: QD1 latency p50/p99: fio not installed (apt-get install fio)".into(),
    ))
}

fn machine(loadavg_start: String) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim())
        })
        .unwrap_or("unknown")
        .to_string();
    Machine {
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        loadavg_start,
        loadavg_end: loadavg(),
    }
}

fn loadavg() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// Run the whole benchmark: both servers, every client, every figure.
pub fn run(opts: &Options) -> Result<Report> {
    let load0 = loadavg();
    let (runs, secs, size) = (opts.runs(), opts.seconds(), opts.size());
    let say = |m: &str| {
        if opts.verbose {
            eprintln!("bench: {m}");
        }
    };
    let mut not_measured = Vec::new();
    let fio_missing = ensure_fio(opts.verbose)?;
    let with_fio = fio_missing.is_none();
    not_measured.extend(fio_missing);

    let mut tools = BTreeMap::new();
    tools.insert("haven".into(), opts.haven.display().to_string());
    tools.insert("tgtd".into(), first_line("tgtd", &["-V"]));
    tools.insert("qemu-img".into(), first_line("qemu-img", &["--version"]));
    tools.insert(
        "libiscsi".into(),
        first_line("dpkg-query", &["-W", "-f", "${Version}", "libiscsi-bin"]),
    );
    if with_fio {
        tools.insert("fio".into(), first_line("fio", &["--version"]));
    }

    // The work dir is declared first so it is removed last, after every process using it.
    let work = WorkDir::new()?;
    let dir = work.0.as_path();
    say(&format!(
        "work dir {}, volume {} MiB, {runs} run(s) of {secs} s per figure",
        dir.display(),
        size >> 20
    ));
    let tgtd = servers::start_tgtd(dir, size).context("starting tgtd")?;
    let haven = servers::start_haven(dir, &opts.haven, size).context("starting haven")?;
    let servers = [&tgtd, &haven];
    say(&format!("tgtd at {}, haven at {}", tgtd.url, haven.url));

    let src = dir.join("random.img");
    clients::write_random(&src, size, 0x6861_7665_6e21)?;
    for s in servers {
        say(&format!(
            "filling {} with {} MiB of random data",
            s.name,
            size >> 20
        ));
        clients::fill(dir, &src, s)?;
        clients::check_mapped(dir, s, size)?;
    }
    std::fs::remove_file(&src)?;

    let wanted = |name: &str| {
        opts.only
            .as_ref()
            .map_or(true, |o| name.to_lowercase().contains(&o.to_lowercase()))
    };
    let mut figures = Vec::new();
    for g in groups(with_fio) {
        if !g.figures.iter().any(|f| wanted(f.0)) {
            continue;
        }
        // qemu-img bench runs a fixed request count: size it to about `secs` per server.
        let mut counts = [0u64; 2];
        if let Client::QemuImgBench { write } = g.client {
            for (i, s) in servers.iter().enumerate() {
                let probe = 2000;
                let iops = clients::qemu_img_bench(dir, s, write, probe)?;
                counts[i] = ((iops * secs as f64) as u64).max(probe);
            }
        }
        let nbd = match g.client {
            Client::FioLatency => Some([
                clients::nbd_export(dir, &tgtd)?,
                clients::nbd_export(dir, &haven)?,
            ]),
            _ => None,
        };
        let mut samples: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
        for r in 0..runs {
            for (i, s) in servers.iter().enumerate() {
                say(&format!(
                    "{} run {}/{runs}: {}",
                    g.figures[0].0,
                    r + 1,
                    s.name
                ));
                let smp = sample(s, || match g.client {
                    Client::IscsiPerf {
                        random,
                        bytes,
                        depth,
                    } => Ok(vec![clients::iscsi_perf(
                        dir, s, random, bytes, depth, secs,
                    )?]),
                    Client::QemuImgBench { write } => {
                        Ok(vec![clients::qemu_img_bench(dir, s, write, counts[i])?])
                    }
                    Client::FioLatency => {
                        let nbd = &nbd.as_ref().expect("nbd exports")[i];
                        let (p50, p99) = clients::fio_latency(dir, s, nbd, size, secs)?;
                        Ok(vec![p50, p99])
                    }
                })
                .with_context(|| format!("{} against {}", g.figures[0].0, s.name))?;
                samples[i].push(smp);
            }
        }
        drop(nbd);
        for (k, (name, unit, higher)) in g.figures.iter().enumerate() {
            let runs_of = |i: usize| samples[i].iter().map(|s| s.values[k]).collect::<Vec<_>>();
            let cpu_of =
                |i: usize| median(&samples[i].iter().map(|s| s.cpu_pct).collect::<Vec<_>>());
            let (t, h) = (runs_of(0), runs_of(1));
            let (tm, hm) = (median(&t), median(&h));
            let f = Figure {
                name: name.to_string(),
                unit: unit.to_string(),
                higher_is_better: *higher,
                tgtd: tm,
                haven: hm,
                ratio: if tm > 0.0 { hm / tm } else { f64::NAN },
                tgtd_cpu_pct: cpu_of(0),
                haven_cpu_pct: cpu_of(1),
                tgtd_runs: t,
                haven_runs: h,
            };
            say(&format!(
                "{name}: tgtd {:.1} {unit}, haven {:.1} {unit}",
                f.tgtd, f.haven
            ));
            figures.push(f);
        }
    }
    drop(haven);
    drop(tgtd);
    // After the servers above are gone: the labs need the cores and the tmpfs to themselves.
    let replicated = if wanted("replicated writes") {
        Some(replicated_writes(opts, dir, size, runs, secs).context("replicated writes")?)
    } else {
        None
    };
    drop(work);
    Ok(Report {
        command: opts.command.clone(),
        quick: opts.quick,
        runs,
        seconds_per_run: secs,
        volume_bytes: size,
        machine: machine(load0),
        tools,
        figures,
        replicated,
        not_measured,
    })
}

/// The replicated-writes figure: both labs up, a probe sizing `qemu-img bench`'s count to
/// about `secs` on each, then `runs` alternating runs.
fn replicated_writes(
    opts: &Options,
    dir: &Path,
    size: u64,
    runs: u32,
    secs: u64,
) -> Result<Replicated> {
    let say = |m: &str| {
        if opts.verbose {
            eprintln!("bench: {m}");
        }
    };
    say("starting a 1-member and a 3-member lab");
    let labs = [
        lab::Lab::up(dir, &opts.haven, "lab-1", 1, 1, size)?,
        lab::Lab::up(dir, &opts.haven, "lab-3", 3, 2, size)?,
    ];
    let mut counts = [0u64; 2];
    for (i, l) in labs.iter().enumerate() {
        let probe = 2000;
        let iops = clients::qemu_img_bench_at(dir, &l.name, &l.url, true, probe)?;
        counts[i] = ((iops * secs as f64) as u64).max(probe);
    }
    let mut values: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut cpu: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for r in 0..runs {
        for (i, l) in labs.iter().enumerate() {
            say(&format!(
                "replicated writes run {}/{runs}: {}",
                r + 1,
                l.name
            ));
            let cpu0 = l.cpu_seconds();
            let t0 = Instant::now();
            let v = clients::qemu_img_bench_at(dir, &l.name, &l.url, true, counts[i])?;
            let wall = t0.elapsed().as_secs_f64();
            cpu[i].push(100.0 * (l.cpu_seconds() - cpu0) / wall.max(1e-6));
            values[i].push(v);
        }
    }
    let (one, three) = (median(&values[0]), median(&values[1]));
    say(&format!(
        "replicated writes: 1 member {one:.0} IOPS, 3 members {three:.0} IOPS"
    ));
    let [one_runs, three_runs] = values;
    Ok(Replicated {
        name: "4 KiB write QD32 (qemu-img bench), group portal".into(),
        unit: "IOPS".into(),
        one_member: one,
        three_members: three,
        ratio: if one > 0.0 { three / one } else { f64::NAN },
        one_member_cpu_pct: median(&cpu[0]),
        three_members_cpu_pct: median(&cpu[1]),
        one_member_runs: one_runs,
        three_members_runs: three_runs,
    })
}

fn fmt_value(v: f64, unit: &str) -> String {
    if !v.is_finite() {
        "-".into()
    } else if unit == "IOPS" {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

impl Report {
    /// The report as a plain-text table with the machine and the command to repeat it.
    pub fn table(&self) -> String {
        let head = [
            "figure",
            "unit",
            "tgtd",
            "haven",
            "haven/tgtd",
            "tgtd CPU",
            "haven CPU",
        ];
        let rows: Vec<[String; 7]> = self
            .figures
            .iter()
            .map(|f| {
                [
                    f.name.clone(),
                    if f.higher_is_better {
                        f.unit.clone()
                    } else {
                        format!("{} (lower is better)", f.unit)
                    },
                    fmt_value(f.tgtd, &f.unit),
                    fmt_value(f.haven, &f.unit),
                    if f.ratio.is_finite() {
                        format!("{:.2}", f.ratio)
                    } else {
                        "-".into()
                    },
                    format!("{:.0}%", f.tgtd_cpu_pct),
                    format!("{:.0}%", f.haven_cpu_pct),
                ]
            })
            .collect();
        let mut w = head.map(|h| h.chars().count());
        for r in &rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                let pad = w[i] - c.chars().count();
                if i == 0 || i == 1 {
                    s += &format!("{c}{}  ", " ".repeat(pad));
                } else {
                    s += &format!("{}{c}  ", " ".repeat(pad));
                }
            }
            s.trim_end().to_string() + "\n"
        };
        let mut out = String::new();
        out += &format!(
            "haven beside tgtd — {} mode: median of {} run(s) of {} s, {} MiB volume on tmpfs\n",
            if self.quick { "quick" } else { "full" },
            self.runs,
            self.seconds_per_run,
            self.volume_bytes >> 20
        );
        out += &format!(
            "machine: {} × {}, kernel {}, load average {} at start, {} at end\n\n",
            self.machine.nproc,
            self.machine.cpu_model,
            self.machine.kernel,
            self.machine.loadavg_start,
            self.machine.loadavg_end
        );
        out += &line(&head.map(String::from));
        for r in &rows {
            out += &line(r);
        }
        out += "\nCPU: utime+stime of each server's processes during the figure's runs, in % of one core.\n";
        if let Some(r) = &self.replicated {
            out += &format!(
                "\nreplicated writes, {}: 1 member {} {unit}, 3 members with 2 replicas {} {unit}, \
                 ratio {:.2} (CPU of all members {:.0}% / {:.0}%)\n",
                r.name,
                fmt_value(r.one_member, &r.unit),
                fmt_value(r.three_members, &r.unit),
                r.ratio,
                r.one_member_cpu_pct,
                r.three_members_cpu_pct,
                unit = r.unit,
            );
        }
        for n in &self.not_measured {
            out += &format!("{n}\n");
        }
        out += "tools:";
        for (k, v) in &self.tools {
            out += &format!("\n  {k}: {v}");
        }
        out += &format!("\nrepeat with: {}\n", self.command);
        out
    }
}
