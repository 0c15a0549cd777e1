//! `haven member …`

use crate::output;
use anyhow::Context;
use api::{format_size, MemberView};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// Run a storage member (with no --config: a standalone single-member group in --data).
    Run(RunArgs),
    /// List the group's members: state, capacity.
    List {
        #[arg(long)]
        json: bool,
    },
    /// The data layout as one member sees it: epoch, placement groups degraded or being
    /// filled, bytes this member copied to others.
    Layout {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// TOML configuration file (see `member::config` for keys and defaults).
    #[arg(long, conflicts_with = "data")]
    config: Option<PathBuf>,
    /// Data directory for a standalone member (default ./haven-data).
    #[arg(long)]
    data: Option<PathBuf>,
    /// iSCSI portal address of a standalone member.
    #[arg(long, default_value = "127.0.0.1:3260")]
    portal: String,
    /// API address of a standalone member.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen_api: String,
}

pub async fn run(cmd: MemberCommand, api: &Option<String>) -> anyhow::Result<()> {
    match cmd {
        MemberCommand::Run(a) => {
            let cfg = match a.config {
                Some(path) => member::MemberConfig::load(&path)?,
                None => {
                    let mut c = member::MemberConfig::standalone(
                        a.data.unwrap_or_else(|| PathBuf::from("haven-data")),
                    );
                    c.portal = a.portal;
                    c.api = a.listen_api;
                    c
                }
            };
            member::run(cfg).await.context("member")
        }
        MemberCommand::Layout { json } => {
            let client = super::client(api)?;
            let g: api::GroupView = client.get("/v1/group").await?;
            if json {
                return output::json(&g);
            }
            println!("member:           {}", g.member);
            println!("epoch:            {}", g.epoch);
            println!("placement groups: {}", g.placement_groups);
            println!("degraded:         {}", g.degraded);
            println!("copies filling:   {}", g.filling);
            println!("unavailable:      {}", g.unavailable);
            println!("resynced by it:   {}", format_size(g.resync_bytes));
            Ok(())
        }
        MemberCommand::List { json } => {
            let client = super::client(api)?;
            let ms: Vec<MemberView> = client.get("/v1/members").await?;
            if json {
                return output::json(&ms);
            }
            output::table(
                &[
                    "NAME", "STATE", "LEADER", "CAPACITY", "IN USE", "PORTAL", "API",
                ],
                ms.iter()
                    .map(|m| {
                        vec![
                            m.name.clone(),
                            m.state.clone(),
                            if m.leader { "yes".into() } else { "".into() },
                            format_size(m.capacity),
                            m.pool
                                .as_ref()
                                .map(|p| {
                                    let pct = if p.capacity > 0 {
                                        p.in_use as f64 * 100.0 / p.capacity as f64
                                    } else {
                                        0.0
                                    };
                                    format!(
                                        "{} ({pct:.0}%){}",
                                        format_size(p.in_use),
                                        if p.warning { " WARNING" } else { "" }
                                    )
                                })
                                .unwrap_or_else(|| "-".into()),
                            m.portal.clone(),
                            m.api.clone(),
                        ]
                    })
                    .collect(),
            );
            Ok(())
        }
    }
}
