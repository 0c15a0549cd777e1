//! Interop with QEMU: qemu-img round trips, and a TCG guest using a haven volume as its
//! virtio disk through QEMU's iscsi driver.

mod support;

use std::io::Read;
use std::process::Command;
use support::*;

fn same_prefix(a: &std::path::Path, b: &std::path::Path, len: u64) -> bool {
    let mut fa = std::fs::File::open(a).unwrap();
    let mut fb = std::fs::File::open(b).unwrap();
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(ba.len() as u64) as usize;
        fa.read_exact(&mut ba[..n]).unwrap();
        fb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            return false;
        }
        left -= n as u64;
    }
    true
}

#[test]
fn qemu_img_round_trip_of_1gib_of_random_data_is_byte_identical() {
    let lab = Lab::up();
    lab.ok(&["volume", "create", "big", "--size", "1GiB"]);
    let src = lab.tmp.path().join("src.img");
    let back = lab.tmp.path().join("back.img");
    write_random(&src, 1 << 30, 7);
    let url = lab.iscsi_url("big");
    qemu_img_put(src.to_str().unwrap(), &url);
    qemu_img_get(&url, back.to_str().unwrap());
    assert_eq!(std::fs::metadata(&back).unwrap().len(), 1 << 30);
    assert!(same_prefix(&src, &back, 1 << 30), "1 GiB read back differs");
    // qemu-img compare agrees.
    let cmp = run_tool(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            src.to_str().unwrap(),
            &url,
        ],
    );
    assert!(cmp.contains("identical"), "{cmp}");
}

fn md5(path: &std::path::Path) -> String {
    run_tool("md5sum", &[path.to_str().unwrap()])
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn a_qemu_guest_reads_and_writes_a_haven_volume_as_its_virtio_disk() {
    let lab = Lab::up();
    lab.ok(&["volume", "create", "gdisk", "--size", "16MiB"]);
    let guest = lab.tmp.path().join("guest");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/build-test-guest"
    );
    run_tool(script, &[guest.to_str().unwrap()]);

    // Known content in the first MiB, written by qemu-img.
    let pattern = lab.tmp.path().join("first.bin");
    write_random(&pattern, 1 << 20, 99);
    let url = lab.iscsi_url("gdisk");
    qemu_img_put(pattern.to_str().unwrap(), &url);

    let o = Command::new("timeout")
        .args([
            "180",
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            "256",
            "-nographic",
            "-no-reboot",
        ])
        .args(["-kernel", guest.join("vmlinuz").to_str().unwrap()])
        .args(["-initrd", guest.join("initrd.img").to_str().unwrap()])
        .args(["-append", "console=ttyS0 quiet haven.mode=disktest"])
        .args([
            "-drive",
            &format!("file={url},format=raw,if=virtio,cache=none"),
        ])
        .args(["-iscsi", "initiator-name=iqn.2000-01.org.test:guest"])
        .output()
        .expect("qemu-system-x86_64 (run scripts/setup)");
    let console = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        console.contains("HAVEN-DISKTEST-DONE"),
        "guest did not finish: {console}"
    );
    let read = console
        .lines()
        .find_map(|l| l.split("HAVEN-DISKTEST-READ ").nth(1))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(
        read,
        md5(&pattern),
        "the guest read other bytes than qemu-img wrote"
    );

    // What the guest wrote is on the volume.
    let back = lab.tmp.path().join("back.bin");
    qemu_img_get(&url, back.to_str().unwrap());
    let bytes = std::fs::read(&back).unwrap();
    assert!(
        bytes[..1 << 20].iter().all(|&b| b == 0x5a),
        "the guest's write did not reach the volume"
    );
}
