//! The command line: clap definitions and dispatch.

mod copies;
mod host;
mod member;
mod snapshot;
mod vm;
mod volume;

use crate::lab;
use crate::logging::LogFormat;
use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "haven",
    version,
    about = "haven keeps virtual machines available: a scale-out iSCSI SAN under a cluster of hypervisor hosts"
)]
pub struct Cli {
    /// API URLs of the group, comma-separated, tried in turn (else $HAVEN_API, else the lab in ./haven-lab).
    #[arg(long, global = true, value_name = "URL[,URL…]")]
    pub api: Option<String>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// A local lab group on this machine: members on loopback, a group portal.
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// Volumes: create, list, show, resize, delete, access control.
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    /// Snapshots: create, list, show, delete, restore.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// Storage members: run the daemon, list the group's members.
    #[command(subcommand)]
    Member(member::MemberCommand),
    /// Hypervisor hosts: run the agent, list, drain.
    #[command(subcommand)]
    Host(host::HostCommand),
    /// VMs: create, start, stop, disks, migrate.
    #[command(subcommand)]
    Vm(vm::VmCommand),
    /// Migrations: list, show, cancel.
    #[command(subcommand)]
    Migration(vm::MigrationCommand),
}

impl Command {
    /// Long-running processes log at info by default.
    pub fn is_daemon(&self) -> bool {
        matches!(
            self,
            Command::Member(member::MemberCommand::Run(_))
                | Command::Host(host::HostCommand::Run(_))
                | Command::Lab(lab::LabCommand::Up(_))
        )
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Lab(c) => lab::run(c).await,
        Command::Volume(c) => volume::run(c, &cli.api).await,
        Command::Member(c) => member::run(c, &cli.api).await,
        Command::Snapshot(c) => snapshot::run(c, &cli.api).await,
        Command::Host(c) => host::run(c, &cli.api).await,
        Command::Vm(c) => vm::run(c, &cli.api).await,
        Command::Migration(c) => vm::run_migration(c, &cli.api).await,
    }
}

/// The API client: `--api`, else `HAVEN_API`, else the lab in `./haven-lab`.
pub fn client(api: &Option<String>) -> anyhow::Result<api::Client> {
    let urls: Vec<String> = if let Some(a) = api {
        a.split(',').map(str::to_string).collect()
    } else if let Ok(a) = std::env::var("HAVEN_API") {
        a.split(',').map(str::to_string).collect()
    } else {
        let dir = PathBuf::from(lab::DEFAULT_DIR);
        match lab::LabState::load(&dir) {
            Ok(Some(s)) => s.api_urls(),
            Ok(None) => bail!("no haven API to talk to: pass --api URL, set HAVEN_API, or start a lab with `haven lab up`"),
            Err(e) => return Err(e).context("reading the lab in ./haven-lab"),
        }
    };
    let c = api::Client::new(urls);
    if c.urls().is_empty() {
        bail!("no haven API to talk to: --api / HAVEN_API is empty");
    }
    Ok(c)
}
