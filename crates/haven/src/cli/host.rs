//! `haven host …`

use crate::output;
use anyhow::Context;
use api::HostView;
use clap::{Args, Subcommand};
use control::Migration;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum HostCommand {
    /// Run the host agent: registers this host and runs the VMs the group places on it.
    Run(RunArgs),
    /// List the hosts: accelerator, schedulable, VMs.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Live-migrate every VM off a host and stop placing VMs on it.
    Drain {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Let the group place VMs on a drained host again.
    Undrain { name: String },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The host's name in the group.
    #[arg(long)]
    name: String,
    /// Where QEMU's sockets, consoles and pid files live.
    #[arg(long, default_value = "haven-host")]
    data: PathBuf,
    /// The agent API's address (members call it).
    #[arg(long, default_value = "127.0.0.1:7080")]
    listen: String,
    /// The QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// Accelerator: auto (KVM when it really boots a guest, else TCG), kvm or tcg.
    #[arg(long, default_value = "auto")]
    accel: String,
}

pub async fn run(cmd: HostCommand, api: &Option<String>) -> anyhow::Result<()> {
    match cmd {
        HostCommand::Run(a) => {
            let members = super::client(api)?.urls().to_vec();
            agent::run(agent::AgentConfig {
                name: a.name,
                data_dir: a.data,
                listen: a.listen,
                members,
                qemu: a.qemu,
                accel: a.accel,
            })
            .await
            .context("host agent")
        }
        HostCommand::List { json } => {
            let hosts: Vec<HostView> = super::client(api)?.get("/v1/hosts").await?;
            if json {
                return output::json(&hosts);
            }
            output::table(
                &["NAME", "STATE", "SCHEDULABLE", "ACCEL", "VMS", "AGENT"],
                hosts
                    .iter()
                    .map(|h| {
                        vec![
                            h.host.name.clone(),
                            if h.reachable { "up" } else { "unreachable" }.into(),
                            if h.host.schedulable { "yes" } else { "drained" }.into(),
                            h.host.accel.clone(),
                            h.vms.join(","),
                            h.host.api_addr.clone(),
                        ]
                    })
                    .collect(),
            );
            Ok(())
        }
        HostCommand::Drain { name, json } => {
            let ms: Vec<Migration> = super::client(api)?
                .post(&format!("/v1/hosts/{name}/drain"), &serde_json::json!({}))
                .await?;
            if json {
                return output::json(&ms);
            }
            println!(
                "host {name} drained: {} migrations queued{}",
                ms.len(),
                if ms.is_empty() {
                    String::new()
                } else {
                    format!(
                        " ({}); follow them with `haven migration list`",
                        ms.iter()
                            .map(|m| format!("{} {}→{}", m.vm, m.from, m.to))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            );
            Ok(())
        }
        HostCommand::Undrain { name } => {
            let _: control::Host = super::client(api)?
                .post(&format!("/v1/hosts/{name}/undrain"), &serde_json::json!({}))
                .await?;
            println!("host {name} takes VMs again");
            Ok(())
        }
    }
}
