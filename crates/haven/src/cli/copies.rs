//! `haven volume verify-copies`: every member that holds a complete copy of a chunk must
//! hold the same bytes.

use crate::output;
use api::{Client, CopyDigests, MemberView};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Serialize)]
struct Report {
    volume: String,
    /// Members that answered.
    members: Vec<String>,
    /// Members that did not (down, or not serving the API).
    unreachable: Vec<String>,
    chunks: usize,
    copies: usize,
    /// Chunks whose copies differ: chunk → (member, CRC32C) of each copy.
    diverged: BTreeMap<u64, Vec<(String, u32)>>,
    /// Chunks no answering member holds a complete copy of.
    uncovered: usize,
}

pub async fn verify(client: &Client, name: &str, json: bool) -> anyhow::Result<()> {
    let members: Vec<MemberView> = client.get("/v1/members").await?;
    let path = format!("/v1/volumes/{}/copies", super::volume::enc(name)?);
    let mut report = Report {
        volume: name.to_string(),
        members: Vec::new(),
        unreachable: Vec::new(),
        chunks: 0,
        copies: 0,
        diverged: BTreeMap::new(),
        uncovered: 0,
    };
    let mut by_chunk: BTreeMap<u64, Vec<(String, u32)>> = BTreeMap::new();
    let mut chunk_count = 0;
    for m in &members {
        let one = Client::new(vec![format!("http://{}", m.api)]);
        match one.get::<CopyDigests>(&path).await {
            Ok(d) => {
                report.members.push(m.name.clone());
                for c in d.chunks {
                    chunk_count = chunk_count.max(c.chunk + 1);
                    by_chunk
                        .entry(c.chunk)
                        .or_default()
                        .push((m.name.clone(), c.crc32c));
                }
            }
            Err(_) => report.unreachable.push(m.name.clone()),
        }
    }
    report.chunks = by_chunk.len();
    report.uncovered = (chunk_count as usize).saturating_sub(by_chunk.len());
    for (chunk, copies) in by_chunk {
        report.copies += copies.len();
        if copies.iter().any(|(_, crc)| *crc != copies[0].1) {
            report.diverged.insert(chunk, copies);
        }
    }
    if json {
        output::json(&report)?;
    } else {
        println!(
            "{}: {} chunks, {} copies compared on {} member(s); {} diverged",
            report.volume,
            report.chunks,
            report.copies,
            report.members.len(),
            report.diverged.len()
        );
        if !report.unreachable.is_empty() {
            println!(
                "  not compared (unreachable): {}",
                report.unreachable.join(", ")
            );
        }
        for (chunk, copies) in report.diverged.iter().take(20) {
            let list: Vec<String> = copies
                .iter()
                .map(|(m, crc)| format!("{m}={crc:08x}"))
                .collect();
            println!("  chunk {chunk}: {}", list.join(" "));
        }
    }
    if !report.diverged.is_empty() {
        anyhow::bail!(
            "volume {name}: {} chunk(s) differ between copies",
            report.diverged.len()
        );
    }
    Ok(())
}
