//! Adding and removing disks of a running VM.
//!
//! Adding: `blockdev-add` the disk's node, then `device_add` a `virtio-blk-pci` on it (on
//! q35 into the first free `pcie-root-port`). Removing: `device_del`, which the guest must
//! acknowledge (ejecting the PCI device), so wait for `DEVICE_DELETED`, then `blockdev-del`
//! the node.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use crate::error::{Error, ErrorKind, Result};
use crate::qemu::{self, blockdev_options, device_id, node_name};
use crate::spec::{is_name, DiskSpec};
use crate::vm::Vm;

impl Vm {
    /// Attaches `disk` to the running VM, logging in to iSCSI as `initiator_name`.
    pub async fn add_disk(&self, disk: &DiskSpec, initiator_name: &str) -> Result<()> {
        if !is_name(&disk.volume) {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("bad volume name {:?}", disk.volume),
            ));
        }
        let qmp = self.qmp();
        qmp.execute("blockdev-add", blockdev_options(disk, initiator_name)?)
            .await
            .map_err(|mut e| {
                e.context = format!("attaching {}: {}", disk.volume, e.context);
                e
            })?;
        let added = self.add_device(disk).await;
        if added.is_err() {
            let _ = qmp
                .execute(
                    "blockdev-del",
                    json!({"node-name": node_name(&disk.volume)}),
                )
                .await;
        }
        added?;
        tracing::info!(vm = %self.name(), volume = %disk.volume, "disk attached");
        Ok(())
    }

    async fn add_device(&self, disk: &DiskSpec) -> Result<()> {
        let ports = self.hotplug_ports().await?;
        if ports.is_empty() {
            return self
                .qmp()
                .execute("device_add", qemu::device_options(disk, None, None))
                .await
                .map(drop);
        }
        for port in &ports {
            match self
                .qmp()
                .execute("device_add", qemu::device_options(disk, Some(port), None))
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.qmp().is_some_and(|q| slot_taken(&q.desc)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::new(
            ErrorKind::NoSlot,
            format!(
                "attaching {}: all {} hotplug ports are in use",
                disk.volume,
                ports.len()
            ),
        ))
    }

    /// The ids of the VM's hotplug ports (`pcie-root-port`s), in order.
    async fn hotplug_ports(&self) -> Result<Vec<String>> {
        let list = self
            .qmp()
            .execute("qom-list", json!({"path": "/machine/peripheral"}))
            .await?;
        let mut ports: Vec<(usize, String)> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["type"].as_str() == Some("child<pcie-root-port>"))
            .filter_map(|p| {
                let name = p["name"].as_str()?;
                let i = name.strip_prefix("hp")?.parse().ok()?;
                Some((i, name.to_string()))
            })
            .collect();
        ports.sort();
        Ok(ports.into_iter().map(|(_, n)| n).collect())
    }

    /// Detaches the disk of `volume`: waits up to `timeout` for the guest to release it.
    pub async fn remove_disk(&self, volume: &str, timeout: Duration) -> Result<()> {
        let qmp = self.qmp();
        let id = device_id(volume);
        let node = node_name(volume);
        let mut events = qmp.subscribe();
        let started = Instant::now();
        let device_found = match qmp.execute("device_del", json!({ "id": id })).await {
            Ok(_) => true,
            Err(e) if e.qmp().is_some_and(|q| q.class == "DeviceNotFound") => false,
            Err(e) => return Err(e),
        };
        if device_found {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    Err(_) => {
                        return Err(Error::new(
                            ErrorKind::Timeout,
                            format!(
                                "detaching {volume}: the guest did not release the device within {timeout:?}"
                            ),
                        ))
                    }
                    Ok(Ok(e)) => {
                        if e.name == "DEVICE_DELETED"
                            && e.data.get("device").and_then(Value::as_str) == Some(id.as_str())
                        {
                            break;
                        }
                    }
                    Ok(Err(RecvError::Lagged(n))) => {
                        // Missed events: ask QEMU whether the device is still there.
                        tracing::warn!(missed = n, "QMP events lagged");
                        if !self.device_exists(&id).await? {
                            break;
                        }
                    }
                    Ok(Err(RecvError::Closed)) => {
                        return Err(Error::new(
                            ErrorKind::Disconnected,
                            format!("detaching {volume}: QMP connection lost"),
                        ))
                    }
                }
            }
        }
        match qmp
            .execute("blockdev-del", json!({ "node-name": node }))
            .await
        {
            Ok(_) => {}
            Err(e) if !device_found && e.kind == ErrorKind::Command => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("detaching {volume}: no such disk ({e})"),
                ))
            }
            Err(e) => return Err(e),
        }
        tracing::info!(vm = %self.name(), %volume, after = ?started.elapsed(), "disk detached");
        Ok(())
    }

    async fn device_exists(&self, id: &str) -> Result<bool> {
        let list = self
            .qmp()
            .execute("qom-list", json!({"path": "/machine/peripheral"}))
            .await?;
        Ok(list
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["name"].as_str() == Some(id)))
    }

    /// The volumes whose disks are attached (by their QEMU device ids), as `device_id`s.
    pub async fn disk_devices(&self) -> Result<Vec<String>> {
        let list = self
            .qmp()
            .execute("qom-list", json!({"path": "/machine/peripheral"}))
            .await?;
        Ok(list
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["type"].as_str() == Some("child<virtio-blk-pci>"))
            .filter_map(|p| p["name"].as_str().map(str::to_string))
            .collect())
    }
}

fn slot_taken(desc: &str) -> bool {
    desc.contains("in use")
        || desc.contains("occupied")
        || desc.contains("not available")
        || desc.contains("no free")
}
