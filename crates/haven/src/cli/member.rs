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
    /// List the group's members: state, capacity, fill and the placement groups each holds.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a member: its copies move to the others first (refused when they cannot hold
    /// the pool), then it leaves the group and stops. Waits with progress unless --no-wait.
    Remove {
        name: String,
        /// Return once the removal started.
        #[arg(long)]
        no_wait: bool,
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
            println!(
                "tracked changes:  {} chunks for {} copies away",
                g.tracked_chunks, g.tracked_copies
            );
            println!(
                "writes to peers:  {} in {} frames",
                g.peer_writes, g.peer_write_frames
            );
            Ok(())
        }
        MemberCommand::Remove {
            name,
            no_wait,
            json,
        } => remove(api, &name, no_wait, json).await,
        MemberCommand::List { json } => {
            let client = super::client(api)?;
            let ms: Vec<MemberView> = client.get("/v1/members").await?;
            if json {
                return output::json(&ms);
            }
            output::table(
                &[
                    "NAME", "STATE", "LEADER", "CAPACITY", "IN USE", "GROUPS", "PORTAL", "API",
                ],
                ms.iter()
                    .map(|m| {
                        vec![
                            m.name.clone(),
                            m.state.clone(),
                            if m.leader { "yes".into() } else { "".into() },
                            format_size(m.capacity),
                            in_use_cell(m),
                            m.copies.to_string(),
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

fn in_use_cell(m: &MemberView) -> String {
    let Some(in_use) = m.in_use else {
        return "-".into();
    };
    let pct = if m.capacity > 0 {
        in_use as f64 * 100.0 / m.capacity as f64
    } else {
        0.0
    };
    let warning = m.pool.as_ref().is_some_and(|p| p.warning);
    format!(
        "{} ({pct:.0}%){}",
        format_size(in_use),
        if warning { " WARNING" } else { "" }
    )
}

/// Start removing `name`, then follow its placement groups moving away until the group
/// forgets it.
async fn remove(api: &Option<String>, name: &str, no_wait: bool, json: bool) -> anyhow::Result<()> {
    let client = super::client(api)?;
    let path = format!("/v1/members/{name}/remove");
    let views: Vec<MemberView> = client.post(&path, &serde_json::json!({})).await?;
    let Some(first) = views.iter().find(|m| m.name == name) else {
        anyhow::bail!("{name} is not in the group any more");
    };
    if no_wait {
        return if json {
            output::json(&views)
        } else {
            println!("removing {name}: {} placement groups to move", first.copies);
            Ok(())
        };
    }
    let total = first.copies.max(1) as u64;
    let mut progress = crate::progress::Progress::new(&format!("moving {name}'s data"));
    let started = std::time::Instant::now();
    loop {
        let views: Vec<MemberView> = client.get("/v1/members").await?;
        let Some(m) = views.iter().find(|m| m.name == name) else {
            progress.finish();
            if json {
                return output::json(&serde_json::json!({
                    "removed": name,
                    "seconds": started.elapsed().as_secs_f64(),
                }));
            }
            println!(
                "{name} removed: its data moved to the others in {:.1}s",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        };
        progress.update(total.saturating_sub(m.copies as u64), total);
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
