//! `haven volume …`

use crate::output;
use anyhow::bail;
use api::{
    format_size, parse_size, ChapSpec, CloneVolume, CreateVolume, Resize, SetAcl, SetChap,
    VolumeView,
};
use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// Create a volume (one iSCSI target with one LUN).
    Create(Create),
    /// List volumes.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one volume, with its sessions.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Grow a volume online; initiators see CAPACITY DATA HAS CHANGED.
    Resize {
        name: String,
        #[arg(long)]
        size: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a volume (refused while initiators are logged in, unless --force).
    Delete {
        name: String,
        #[arg(long)]
        force: bool,
    },
    /// Set which initiators may discover and log in (no --allow: everyone).
    Acl {
        name: String,
        #[arg(long, value_name = "IQN")]
        allow: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Set or clear the target's CHAP credentials.
    Chap(ChapArgs),
    /// Set the snapshot reserve and what happens when snapshots outgrow it.
    Reserve {
        name: String,
        /// Percent of the volume's size (10–1000; default 100).
        #[arg(long)]
        percent: u32,
        #[arg(long, value_enum, default_value = "delete-oldest")]
        policy: Policy,
        #[arg(long)]
        json: bool,
    },
    /// Make a clone independent of its origin, in the background, with progress.
    Flatten {
        name: String,
        /// Start it and return at once.
        #[arg(long)]
        no_wait: bool,
    },
    /// Verify every block's checksum; report (and repair where a replica exists).
    Scrub {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Compare the copies of a quiet volume across members: CRC32C of every chunk as each
    /// member's own store holds it. Fails when any two complete copies differ.
    VerifyCopies {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// A new writable volume from a snapshot, instant, sharing unchanged data.
    Clone {
        /// VOLUME@SNAPSHOT
        source: String,
        /// The new volume's name.
        name: String,
        /// Then copy the shared data so the clone stands alone (in the background, with progress).
        #[arg(long)]
        flatten: bool,
        /// In a group of several members the clone is a copy, served once whole: return at
        /// once instead of following the copy with progress.
        #[arg(long)]
        no_wait: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct Create {
    name: String,
    /// Size, e.g. 10GiB.
    #[arg(long)]
    size: String,
    /// Copies of the data (1–3).
    #[arg(long)]
    replicas: Option<u8>,
    /// Allocate all space now instead of on first write.
    #[arg(long)]
    thick: bool,
    /// Logical block size: 512 (default) or 4096.
    #[arg(long)]
    block_size: Option<u32>,
    #[arg(long, requires = "chap_secret")]
    chap_user: Option<String>,
    #[arg(long, requires = "chap_user")]
    chap_secret: Option<String>,
    /// Mutual CHAP: the name the target answers with.
    #[arg(long, requires_all = ["mutual_secret", "chap_user"])]
    mutual_user: Option<String>,
    #[arg(long, requires = "mutual_user")]
    mutual_secret: Option<String>,
    /// Initiators allowed (repeat); none means every initiator.
    #[arg(long, value_name = "IQN")]
    allow: Vec<String>,
    /// Snapshot reserve, percent of the size (10–1000; default 100).
    #[arg(long, value_name = "PCT")]
    snapshot_reserve: Option<u32>,
    /// When snapshots outgrow the reserve: delete-oldest (default) or offline.
    #[arg(long, value_enum)]
    reserve_policy: Option<Policy>,
    #[arg(long)]
    json: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum Policy {
    DeleteOldest,
    Offline,
}

impl From<Policy> for api::ReservePolicy {
    fn from(p: Policy) -> Self {
        match p {
            Policy::DeleteOldest => api::ReservePolicy::DeleteOldest,
            Policy::Offline => api::ReservePolicy::Offline,
        }
    }
}

#[derive(Args, Debug)]
pub struct ChapArgs {
    name: String,
    #[arg(long, requires = "secret", conflicts_with = "none")]
    user: Option<String>,
    #[arg(long, requires = "user")]
    secret: Option<String>,
    #[arg(long, requires_all = ["mutual_secret", "user"])]
    mutual_user: Option<String>,
    #[arg(long, requires = "mutual_user")]
    mutual_secret: Option<String>,
    /// Remove CHAP: any allowed initiator may log in without credentials.
    #[arg(long)]
    none: bool,
    #[arg(long)]
    json: bool,
}

fn chap(
    user: Option<String>,
    secret: Option<String>,
    mu: Option<String>,
    ms: Option<String>,
) -> Option<ChapSpec> {
    Some(ChapSpec {
        user: user?,
        secret: secret?,
        mutual_user: mu,
        mutual_secret: ms,
    })
}

fn print(v: &VolumeView, json: bool) -> anyhow::Result<()> {
    if json {
        return output::json(v);
    }
    println!("name:        {}", v.name);
    println!("iqn:         {}", v.iqn);
    println!("size:        {} ({} bytes)", format_size(v.size), v.size);
    println!("block size:  {}", v.block_size);
    println!("replicas:    {}", v.replicas);
    if let Some(r) = &v.replication {
        println!(
            "copies:      {} placement groups, {} degraded, {} copies filling, {} unavailable",
            r.placement_groups, r.degraded, r.filling, r.unavailable
        );
    }
    println!("provisioning: {}", if v.thick { "thick" } else { "thin" });
    println!(
        "acl:         {}",
        if v.allow.is_empty() {
            "everyone".to_string()
        } else {
            v.allow.join(", ")
        }
    );
    println!(
        "chap:        {}",
        match (&v.chap_user, v.mutual_chap) {
            (Some(u), true) => format!("user {u}, mutual"),
            (Some(u), false) => format!("user {u}"),
            (None, _) => "none".into(),
        }
    );
    if let Some(s) = &v.space {
        println!(
            "space:       {} in use of {}; snapshots {} (reserve {}){}{}",
            format_size(s.in_use),
            format_size(s.provisioned),
            format_size(s.snapshot_in_use),
            format_size(s.snapshot_reserve),
            if s.reserve_warning {
                "  WARNING: snapshot reserve 60% used"
            } else {
                ""
            },
            if s.offline {
                "  OFFLINE: snapshot reserve exhausted"
            } else {
                ""
            }
        );
    }
    println!(
        "reserve:     {}% of the size for snapshots, {:?} when exceeded",
        v.snapshot_reserve_pct, v.reserve_policy
    );
    if let Some(p) = &v.parent {
        println!("clone of:    {p} (volume id @ snapshot id; `haven volume flatten` detaches it)");
    }
    if let Some(c) = &v.copying {
        println!(
            "copying:     from {} (volume id @ snapshot id), {} of {}; served once whole",
            c.from,
            format_size(c.copied),
            format_size(v.size)
        );
    }
    println!("sessions:    {}", v.sessions.len());
    for s in &v.sessions {
        println!(
            "  {} (isid {}) via {} on {}",
            s.initiator, s.isid, s.portal, s.member
        );
    }
    Ok(())
}

pub async fn run(cmd: VolumeCommand, api: &Option<String>) -> anyhow::Result<()> {
    // Validate local input before reaching for the network.
    if let VolumeCommand::Create(c) = &cmd {
        parse_size(&c.size)?;
    }
    if let VolumeCommand::Resize { size, .. } = &cmd {
        parse_size(size)?;
    }
    let client = super::client(api)?;
    match cmd {
        VolumeCommand::Create(c) => {
            let req = CreateVolume {
                name: c.name,
                size: parse_size(&c.size)?,
                replicas: c.replicas,
                thick: c.thick,
                block_size: c.block_size,
                allow: c.allow,
                chap: chap(c.chap_user, c.chap_secret, c.mutual_user, c.mutual_secret),
            };
            let mut v: VolumeView = client.post("/v1/volumes", &req).await?;
            if c.snapshot_reserve.is_some() || c.reserve_policy.is_some() {
                let req = api::SetSnapshotReserve {
                    percent: c.snapshot_reserve.unwrap_or(100),
                    policy: c.reserve_policy.map(Into::into).unwrap_or_default(),
                };
                v = client
                    .put(
                        &format!("/v1/volumes/{}/snapshot-reserve", enc(&v.name)?),
                        &req,
                    )
                    .await?;
            }
            if c.json {
                output::json(&v)
            } else {
                println!("created {} ({}) as {}", v.name, format_size(v.size), v.iqn);
                Ok(())
            }
        }
        VolumeCommand::List { json } => {
            let vs: Vec<VolumeView> = client.get("/v1/volumes").await?;
            if json {
                return output::json(&vs);
            }
            output::table(
                &["NAME", "SIZE", "REPLICAS", "SESSIONS", "IQN"],
                vs.iter()
                    .map(|v| {
                        vec![
                            v.name.clone(),
                            format_size(v.size),
                            v.replicas.to_string(),
                            v.sessions.len().to_string(),
                            v.iqn.clone(),
                        ]
                    })
                    .collect(),
            );
            Ok(())
        }
        VolumeCommand::Show { name, json } => {
            let v: VolumeView = client.get(&format!("/v1/volumes/{}", enc(&name)?)).await?;
            print(&v, json)
        }
        VolumeCommand::Resize { name, size, json } => {
            let v: VolumeView = client
                .post(
                    &format!("/v1/volumes/{}/resize", enc(&name)?),
                    &Resize {
                        size: parse_size(&size)?,
                    },
                )
                .await?;
            if json {
                output::json(&v)
            } else {
                println!("{} is now {}", v.name, format_size(v.size));
                Ok(())
            }
        }
        VolumeCommand::Delete { name, force } => {
            let _: serde_json::Value = client
                .delete(&format!(
                    "/v1/volumes/{}{}",
                    enc(&name)?,
                    if force { "?force=true" } else { "" }
                ))
                .await?;
            println!("deleted {name}");
            Ok(())
        }
        VolumeCommand::Acl { name, allow, json } => {
            let v: VolumeView = client
                .put(
                    &format!("/v1/volumes/{}/acl", enc(&name)?),
                    &SetAcl { allow },
                )
                .await?;
            print(&v, json)
        }
        VolumeCommand::Chap(c) => {
            if !c.none && c.user.is_none() {
                bail!("give --user and --secret, or --none to remove CHAP");
            }
            let spec = if c.none {
                None
            } else {
                chap(c.user, c.secret, c.mutual_user, c.mutual_secret)
            };
            let v: VolumeView = client
                .put(
                    &format!("/v1/volumes/{}/chap", enc(&c.name)?),
                    &SetChap { chap: spec },
                )
                .await?;
            print(&v, c.json)
        }
        VolumeCommand::VerifyCopies { name, json } => {
            super::copies::verify(&client, &name, json).await
        }
        VolumeCommand::Scrub { name, json } => {
            let r: api::ScrubView = client
                .post(
                    &format!("/v1/volumes/{}/scrub", enc(&name)?),
                    &serde_json::json!({}),
                )
                .await?;
            if json {
                output::json(&r)?;
            } else {
                println!(
                    "{}: {} blocks checked, {} bad, {} repaired",
                    r.volume,
                    r.blocks_checked,
                    r.bad.len(),
                    r.repaired
                );
                for lba in r.bad.iter().take(20) {
                    println!("  bad block at lba {lba}");
                }
            }
            if !r.bad.is_empty() {
                anyhow::bail!(
                    "volume {} has {} block(s) failing their checksum",
                    r.volume,
                    r.bad.len()
                );
            }
            Ok(())
        }
        VolumeCommand::Reserve {
            name,
            percent,
            policy,
            json,
        } => {
            let req = api::SetSnapshotReserve {
                percent,
                policy: policy.into(),
            };
            let v: VolumeView = client
                .put(
                    &format!("/v1/volumes/{}/snapshot-reserve", enc(&name)?),
                    &req,
                )
                .await?;
            print(&v, json)
        }
        VolumeCommand::Flatten { name, no_wait } => flatten(&client, &name, no_wait).await,
        VolumeCommand::Clone {
            source,
            name,
            flatten: then_flatten,
            no_wait,
            json,
        } => {
            let Some((vol, snap)) = source.split_once('@') else {
                bail!("clone source {source:?} must be VOLUME@SNAPSHOT");
            };
            let req = CloneVolume {
                snapshot: snap.to_string(),
                name,
            };
            let mut v: VolumeView = client
                .post(&format!("/v1/volumes/{}/clone", enc(vol)?), &req)
                .await?;
            let copied = v.copying.is_some();
            if copied && no_wait {
                if !json {
                    println!(
                        "copying {source} into {} in the background; `haven volume show {}` tells when it is served",
                        v.name, v.name
                    );
                }
            } else {
                if copied {
                    v = follow_copy(&client, &v.name).await?;
                }
                if !json {
                    println!("cloned {source} as {} ({})", v.name, v.iqn);
                }
            }
            // A copy stands alone already.
            if then_flatten && !copied {
                flatten(&client, &v.name, false).await?;
            }
            if json {
                output::json(&v)
            } else {
                Ok(())
            }
        }
    }
}

/// Follow a clone's copy from its snapshot until it is whole, with progress.
async fn follow_copy(client: &api::Client, name: &str) -> anyhow::Result<VolumeView> {
    let path = format!("/v1/volumes/{}", enc(name)?);
    let mut bar = crate::progress::Progress::new(&format!("copying into {name}"));
    loop {
        let v: VolumeView = client.get(&path).await?;
        match &v.copying {
            None => {
                bar.update(v.size, v.size);
                bar.finish();
                return Ok(v);
            }
            Some(copy) => bar.update(copy.copied, v.size),
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Start a flatten and, unless `no_wait`, follow it to the end with progress.
async fn flatten(client: &api::Client, name: &str, no_wait: bool) -> anyhow::Result<()> {
    let path = format!("/v1/volumes/{}/flatten", enc(name)?);
    let mut f: api::FlattenView = client.post(&path, &serde_json::json!({})).await?;
    if no_wait {
        println!(
            "flattening {name} in the background; `haven volume show {name}` tells when it is done"
        );
        return Ok(());
    }
    let mut bar = crate::progress::Progress::new(&format!("flattening {name}"));
    loop {
        bar.update(f.done, f.total.max(f.done));
        match f.state.as_str() {
            "done" => break,
            "failed" => {
                bar.finish();
                bail!("flatten of {name} failed: {}", f.error.unwrap_or_default());
            }
            _ => {}
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        f = client.get(&path).await?;
    }
    bar.finish();
    println!("{name} flattened");
    Ok(())
}

/// A name checked for use in a URL path.
pub fn checked(name: &str) -> anyhow::Result<&str> {
    enc(name)
}

/// Volume names go into URL paths; refuse anything that is not a plain name.
pub(super) fn enc(name: &str) -> anyhow::Result<&str> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        bail!("invalid volume name {name:?}: use a-z, 0-9, '-', '.'");
    }
    Ok(name)
}
