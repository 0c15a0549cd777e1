//! `haven vm …` and `haven migration …`

use crate::output;
use crate::progress::Progress;
use anyhow::bail;
use api::{
    format_size, parse_size, AttachDisk, DefineVm, MigrateVm, MigrationView, StartVm, StopVm,
    VmView,
};
use clap::Subcommand;
use control::{MigrationResult, MigrationState, VmBoot};
use std::time::Duration;

#[derive(Subcommand, Debug)]
pub enum VmCommand {
    /// Define a VM (it does not start until `haven vm start`).
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        cpus: u32,
        /// Memory, e.g. 512MiB.
        #[arg(long, default_value = "512MiB")]
        memory: String,
        /// A volume as a disk (repeat for more; the first is vda).
        #[arg(long = "disk", value_name = "VOLUME")]
        disks: Vec<String>,
        /// Boot this kernel directly (a path on every host); else boot from the first disk.
        #[arg(long)]
        kernel: Option<String>,
        #[arg(long, requires = "kernel")]
        initrd: Option<String>,
        /// The kernel command line.
        #[arg(long, requires = "kernel", default_value = "")]
        append: String,
        #[arg(long)]
        json: bool,
    },
    /// List VMs: where they run and their state.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One VM in detail.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Start a VM (on --on HOST, else the least busy host); returns once it runs.
    Start {
        name: String,
        #[arg(long = "on", value_name = "HOST")]
        host: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Stop a VM: ACPI power-off, forced after --timeout seconds.
    Stop {
        name: String,
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Kill it at once.
        #[arg(long)]
        force: bool,
    },
    /// Delete a stopped VM's definition (its volumes stay).
    Delete { name: String },
    /// Print the end of a VM's serial console.
    Console {
        name: String,
        #[arg(long, default_value_t = 16384)]
        bytes: u64,
    },
    /// Add or remove disks, also while the VM runs.
    #[command(subcommand)]
    Disk(DiskCommand),
    /// Move a VM to another host: live (default) or --quick (pause, save, restore).
    Migrate {
        name: String,
        /// The destination (default: the least busy other host).
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        quick: bool,
        /// The most the guest may be paused at the switch-over (live).
        #[arg(long, default_value_t = 300)]
        downtime_ms: u64,
        /// Switch to post-copy when pre-copy does not converge.
        #[arg(long)]
        postcopy: bool,
        /// Cap the memory copy, per second (e.g. 100MiB).
        #[arg(long, value_name = "SIZE")]
        max_bandwidth: Option<String>,
        /// Queue it and return.
        #[arg(long)]
        no_wait: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum DiskCommand {
    /// Attach a volume (hot-add when the VM runs).
    Add { vm: String, volume: String },
    /// Detach a volume (hot-remove when the VM runs; a disk in use needs --force).
    Remove {
        vm: String,
        volume: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum MigrationCommand {
    /// Migrations queued, running and recently finished.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One migration.
    Show {
        id: u64,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a queued or running migration (the VM stays on its source).
    Cancel { id: u64 },
}

fn print_vm(v: &VmView, json: bool) -> anyhow::Result<()> {
    if json {
        return output::json(v);
    }
    let state = v
        .status
        .as_ref()
        .map(|s| s.state.clone())
        .unwrap_or_else(|| if v.vm.running { "unknown" } else { "stopped" }.into());
    println!("name:      {}", v.vm.name);
    println!("state:     {state}");
    println!("host:      {}", v.vm.host.as_deref().unwrap_or("-"));
    println!("cpus:      {}", v.vm.cpus);
    println!("memory:    {}", format_size(v.vm.memory_bytes));
    println!("disks:     {}", v.vm.disks.join(", "));
    if let Some(s) = &v.status {
        if let Some(pid) = s.pid {
            println!("pid:       {pid}");
        }
        if let Some(c) = &s.console {
            println!("console:   {c}");
        }
        if let Some(e) = &s.error {
            println!("error:     {e}");
        }
    }
    Ok(())
}

pub async fn run(cmd: VmCommand, api: &Option<String>) -> anyhow::Result<()> {
    let client = super::client(api)?.with_timeout(Duration::from_secs(300));
    match cmd {
        VmCommand::Create {
            name,
            cpus,
            memory,
            disks,
            kernel,
            initrd,
            append,
            json,
        } => {
            let boot = match kernel {
                Some(kernel) => VmBoot::Kernel {
                    kernel,
                    initrd,
                    append,
                },
                None => VmBoot::Disk,
            };
            let v: VmView = client
                .post(
                    "/v1/vms",
                    &DefineVm {
                        name,
                        cpus,
                        memory_bytes: parse_size(&memory)?,
                        disks,
                        boot,
                    },
                )
                .await?;
            print_vm(&v, json)
        }
        VmCommand::List { json } => {
            let vms: Vec<VmView> = client.get("/v1/vms").await?;
            if json {
                return output::json(&vms);
            }
            output::table(
                &["NAME", "STATE", "HOST", "CPUS", "MEMORY", "DISKS"],
                vms.iter()
                    .map(|v| {
                        vec![
                            v.vm.name.clone(),
                            v.status
                                .as_ref()
                                .map(|s| s.state.clone())
                                .unwrap_or_else(|| {
                                    if v.vm.running { "unknown" } else { "stopped" }.into()
                                }),
                            v.vm.host.clone().unwrap_or_else(|| "-".into()),
                            v.vm.cpus.to_string(),
                            format_size(v.vm.memory_bytes),
                            v.vm.disks.join(","),
                        ]
                    })
                    .collect(),
            );
            Ok(())
        }
        VmCommand::Show { name, json } => {
            let v: VmView = client.get(&format!("/v1/vms/{name}")).await?;
            print_vm(&v, json)
        }
        VmCommand::Start { name, host, json } => {
            let v: VmView = client
                .post(&format!("/v1/vms/{name}/start"), &StartVm { host })
                .await?;
            if json {
                return output::json(&v);
            }
            println!("VM {name} runs on {}", v.vm.host.as_deref().unwrap_or("?"));
            Ok(())
        }
        VmCommand::Stop {
            name,
            timeout,
            force,
        } => {
            let _: VmView = client
                .post(
                    &format!("/v1/vms/{name}/stop"),
                    &StopVm {
                        timeout_secs: timeout,
                        force,
                    },
                )
                .await?;
            println!("VM {name} stopped");
            Ok(())
        }
        VmCommand::Delete { name } => {
            let _: serde_json::Value = client.delete(&format!("/v1/vms/{name}")).await?;
            println!("VM {name} deleted (its volumes stay)");
            Ok(())
        }
        VmCommand::Console { name, bytes } => {
            let text: String = client
                .get(&format!("/v1/vms/{name}/console?bytes={bytes}"))
                .await?;
            print!("{text}");
            Ok(())
        }
        VmCommand::Disk(DiskCommand::Add { vm, volume }) => {
            let _: VmView = client
                .post(
                    &format!("/v1/vms/{vm}/disks"),
                    &AttachDisk {
                        volume: volume.clone(),
                    },
                )
                .await?;
            println!("volume {volume} attached to VM {vm}");
            Ok(())
        }
        VmCommand::Disk(DiskCommand::Remove { vm, volume, force }) => {
            let _: VmView = client
                .delete(&format!("/v1/vms/{vm}/disks/{volume}?force={force}"))
                .await?;
            println!("volume {volume} detached from VM {vm} (the volume keeps its data)");
            Ok(())
        }
        VmCommand::Migrate {
            name,
            to,
            quick,
            downtime_ms,
            postcopy,
            max_bandwidth,
            no_wait,
            json,
        } => {
            let max_bandwidth = max_bandwidth.as_deref().map(parse_size).transpose()?;
            let m: MigrationView = client
                .post(
                    &format!("/v1/vms/{name}/migrate"),
                    &MigrateVm {
                        to,
                        quick,
                        downtime_limit_ms: downtime_ms,
                        postcopy,
                        max_bandwidth,
                    },
                )
                .await?;
            if no_wait {
                if json {
                    return output::json(&m);
                }
                println!(
                    "migration {} of {name} to {} queued",
                    m.migration.id, m.migration.to
                );
                return Ok(());
            }
            let done = follow(&client, m.migration.id, !json).await?;
            if json {
                output::json(&done)?;
            }
            report(&done, json)
        }
    }
}

/// Polls a migration until it ends, showing its progress.
async fn follow(client: &api::Client, id: u64, show: bool) -> anyhow::Result<MigrationView> {
    let mut bar = Progress::new(&format!("migration {id}"));
    let mut last = String::new();
    loop {
        let m: MigrationView = client.get(&format!("/v1/migrations/{id}")).await?;
        if m.migration.state.is_final() {
            if show && !last.is_empty() {
                bar.finish();
            }
            return Ok(m);
        }
        let text = match (&m.migration.state, &m.progress) {
            (MigrationState::Queued, _) => "queued".to_string(),
            (_, Some(p)) if p.total_bytes > 0 => format!(
                "{}: {} of {} sent, {} remaining, {} dirty pages/s",
                p.status,
                format_size(p.transferred_bytes),
                format_size(p.total_bytes),
                format_size(p.remaining_bytes),
                p.dirty_pages_rate
            ),
            (_, Some(p)) => p.status.clone(),
            (s, None) => format!("{s:?}").to_lowercase(),
        };
        if show && text != last {
            bar.status(&text);
            last = text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn report(m: &MigrationView, json: bool) -> anyhow::Result<()> {
    let x = &m.migration;
    match &x.end {
        Some(MigrationResult::Completed {
            downtime_ms,
            total_ms,
            ..
        }) => {
            if !json {
                println!(
                    "VM {} migrated {} → {}{} in {total_ms} ms; the guest was paused {downtime_ms} ms",
                    x.vm,
                    x.from,
                    x.to,
                    if x.quick { " (quick)" } else { "" }
                );
            }
            Ok(())
        }
        Some(MigrationResult::Failed { error }) => {
            bail!(
                "migration {} failed: {error}; VM {} still runs on {}",
                x.id,
                x.vm,
                x.from
            )
        }
        Some(MigrationResult::Cancelled { reason }) => {
            bail!(
                "migration {} cancelled ({reason}); VM {} still runs on {}",
                x.id,
                x.vm,
                x.from
            )
        }
        None => bail!("migration {} ended without a result", x.id),
    }
}

pub async fn run_migration(cmd: MigrationCommand, api: &Option<String>) -> anyhow::Result<()> {
    let client = super::client(api)?;
    match cmd {
        MigrationCommand::List { json } => {
            let ms: Vec<MigrationView> = client.get("/v1/migrations").await?;
            if json {
                return output::json(&ms);
            }
            output::table(
                &["ID", "VM", "FROM", "TO", "KIND", "STATE", "RESULT"],
                ms.iter()
                    .map(|m| {
                        let x = &m.migration;
                        vec![
                            x.id.to_string(),
                            x.vm.clone(),
                            x.from.clone(),
                            x.to.clone(),
                            if x.quick { "quick" } else { "live" }.into(),
                            format!("{:?}", x.state).to_lowercase(),
                            match &x.end {
                                Some(MigrationResult::Completed { downtime_ms, .. }) => {
                                    format!("paused {downtime_ms} ms")
                                }
                                Some(MigrationResult::Failed { error }) => error.clone(),
                                Some(MigrationResult::Cancelled { reason }) => reason.clone(),
                                None => m
                                    .progress
                                    .as_ref()
                                    .map(|p| p.status.clone())
                                    .unwrap_or_default(),
                            },
                        ]
                    })
                    .collect(),
            );
            Ok(())
        }
        MigrationCommand::Show { id, json } => {
            let m: MigrationView = client.get(&format!("/v1/migrations/{id}")).await?;
            if json {
                return output::json(&m);
            }
            let x = &m.migration;
            println!("migration {}: VM {} {} → {}", x.id, x.vm, x.from, x.to);
            println!("kind:      {}", if x.quick { "quick" } else { "live" });
            println!("state:     {}", format!("{:?}", x.state).to_lowercase());
            if let Some(p) = &m.progress {
                println!(
                    "progress:  {}: {} of {} sent, {} remaining",
                    p.status,
                    format_size(p.transferred_bytes),
                    format_size(p.total_bytes),
                    format_size(p.remaining_bytes)
                );
            }
            match &x.end {
                Some(MigrationResult::Completed {
                    downtime_ms,
                    total_ms,
                    ..
                }) => println!("result:    completed in {total_ms} ms, paused {downtime_ms} ms"),
                Some(MigrationResult::Failed { error }) => println!("result:    failed: {error}"),
                Some(MigrationResult::Cancelled { reason }) => {
                    println!("result:    cancelled: {reason}")
                }
                None => {}
            }
            Ok(())
        }
        MigrationCommand::Cancel { id } => {
            let m: MigrationView = client
                .post(
                    &format!("/v1/migrations/{id}/cancel"),
                    &serde_json::json!({}),
                )
                .await?;
            println!(
                "migration {id} of {}: {}",
                m.migration.vm,
                if m.migration.state == MigrationState::Cancelled {
                    "cancelled"
                } else {
                    "cancelling (the VM stays on its source)"
                }
            );
            Ok(())
        }
    }
}
