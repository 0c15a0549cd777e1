//! `haven snapshot …`

use crate::output;
use api::{format_size, CreateSnapshot, Restore, SnapshotView, VolumeView};
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Take an instant snapshot of a volume; it is served read-only as its own target.
    Create {
        volume: String,
        snapshot: String,
        /// Another volume to snapshot in the same instant (repeat for each: all disks of
        /// a VM); each gets a snapshot of the same name.
        #[arg(long = "with", value_name = "VOLUME")]
        with: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// List a volume's snapshots.
    List {
        volume: String,
        #[arg(long)]
        json: bool,
    },
    /// Show one snapshot.
    Show {
        volume: String,
        snapshot: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot (any order; its space is reclaimed).
    Delete { volume: String, snapshot: String },
    /// Roll a volume back to a snapshot (refused while initiators are logged in, unless --force).
    Restore {
        volume: String,
        snapshot: String,
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
}

fn print(s: &SnapshotView, json: bool) -> anyhow::Result<()> {
    if json {
        return output::json(s);
    }
    println!("snapshot:  {}@{}", s.volume, s.name);
    println!("iqn:       {}", s.iqn);
    println!("size:      {}", format_size(s.size));
    println!("created:   {}", s.created);
    Ok(())
}

pub async fn run(cmd: SnapshotCommand, api: &Option<String>) -> anyhow::Result<()> {
    let client = super::client(api)?;
    match cmd {
        SnapshotCommand::Create {
            volume,
            snapshot,
            with,
            json,
        } => {
            let v = super::volume::checked(&volume)?;
            for w in &with {
                super::volume::checked(w)?;
            }
            let s: SnapshotView = client
                .post(
                    &format!("/v1/volumes/{v}/snapshots"),
                    &CreateSnapshot {
                        name: snapshot,
                        with,
                    },
                )
                .await?;
            if json {
                output::json(&s)
            } else {
                for t in std::iter::once(&s).chain(&s.with) {
                    println!(
                        "snapshot {}@{} taken; read-only target {}",
                        t.volume, t.name, t.iqn
                    );
                }
                Ok(())
            }
        }
        SnapshotCommand::List { volume, json } => {
            let v = super::volume::checked(&volume)?;
            let ss: Vec<SnapshotView> = client.get(&format!("/v1/volumes/{v}/snapshots")).await?;
            if json {
                return output::json(&ss);
            }
            output::table(
                &["SNAPSHOT", "SIZE", "CREATED", "IQN"],
                ss.iter()
                    .map(|s| {
                        vec![
                            s.name.clone(),
                            format_size(s.size),
                            s.created.to_string(),
                            s.iqn.clone(),
                        ]
                    })
                    .collect(),
            );
            Ok(())
        }
        SnapshotCommand::Show {
            volume,
            snapshot,
            json,
        } => {
            let v = super::volume::checked(&volume)?;
            let sn = super::volume::checked(&snapshot)?;
            let s: SnapshotView = client
                .get(&format!("/v1/volumes/{v}/snapshots/{sn}"))
                .await?;
            print(&s, json)
        }
        SnapshotCommand::Delete { volume, snapshot } => {
            let v = super::volume::checked(&volume)?;
            let sn = super::volume::checked(&snapshot)?;
            let _: serde_json::Value = client
                .delete(&format!("/v1/volumes/{v}/snapshots/{sn}"))
                .await?;
            println!("deleted snapshot {volume}@{snapshot}");
            Ok(())
        }
        SnapshotCommand::Restore {
            volume,
            snapshot,
            force,
            json,
        } => {
            let v = super::volume::checked(&volume)?;
            let r: VolumeView = client
                .post(
                    &format!("/v1/volumes/{v}/restore"),
                    &Restore {
                        snapshot: snapshot.clone(),
                        force,
                    },
                )
                .await?;
            if json {
                output::json(&r)
            } else {
                println!("{} restored to {snapshot}", r.name);
                Ok(())
            }
        }
    }
}
