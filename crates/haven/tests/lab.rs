//! The lab as an operator uses it: up, a volume reached by standard initiators, down and
//! up again with the same portals and data, a member killed and started again.

mod support;

use support::*;

#[test]
fn lab_serves_a_volume_to_standard_initiators_and_survives_restarts() {
    let lab = Lab::up();
    let created: serde_json::Value =
        serde_json::from_str(&lab.ok(&["volume", "create", "vol1", "--size", "64MiB", "--json"]))
            .unwrap();
    assert_eq!(created["iqn"], "iqn.2026-11.org.haven:vol1");

    // Discovery at the group portal lists the target; the login is redirected to a member.
    let ls = run_tool("iscsi-ls", &["-s", &format!("iscsi://{}", lab.portal)]);
    assert!(ls.contains("iqn.2026-11.org.haven:vol1"), "{ls}");
    assert!(
        ls.contains("Size:64M") || ls.contains("Size:63M") || ls.contains("DIRECT_ACCESS"),
        "{ls}"
    );

    // qemu-img writes 8 MiB of random data and reads back the same bytes.
    let src = lab.tmp.path().join("src.img");
    let back = lab.tmp.path().join("back.img");
    write_random(&src, 8 << 20, 42);
    let url = lab.iscsi_url("vol1");
    qemu_img_put(src.to_str().unwrap(), &url);
    qemu_img_get(&url, back.to_str().unwrap());
    let a = std::fs::read(&src).unwrap();
    let b = std::fs::read(&back).unwrap();
    assert_eq!(b.len(), 64 << 20);
    assert!(a[..] == b[..a.len()], "data read back differs");

    // Down and up: the same portals and API, the same volume and data.
    let before = lab.status_json();
    let o = haven(&["lab", "down", "--data", lab.dir_str()], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(lab.status_json()["members"][0]["state"], "stopped");
    lab.up_again();
    let after = lab.status_json();
    assert_eq!(before["group_portal"], after["group_portal"]);
    assert_eq!(
        before["members"][0]["portal"],
        after["members"][0]["portal"]
    );
    assert_eq!(before["api"], after["api"]);
    assert_eq!(after["members"][0]["state"], "running");
    qemu_img_get(&url, back.to_str().unwrap());
    assert!(
        a[..] == std::fs::read(&back).unwrap()[..a.len()],
        "data lost across lab down/up"
    );

    // A killed member comes back serving.
    let o = haven(&["lab", "kill", "member-1", "--data", lab.dir_str()], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(lab.status_json()["members"][0]["state"], "stopped");
    let o = haven(&["lab", "start", "member-1", "--data", lab.dir_str()], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ls = run_tool("iscsi-ls", &["-s", &format!("iscsi://{}", lab.portal)]);
    assert!(ls.contains("iqn.2026-11.org.haven:vol1"), "{ls}");
    qemu_img_get(&url, back.to_str().unwrap());
    assert!(
        a[..] == std::fs::read(&back).unwrap()[..a.len()],
        "data lost across kill/start"
    );

    let list: serde_json::Value =
        serde_json::from_str(&lab.ok(&["volume", "list", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
}

/// Members of one lab share the machine's cores rather than each run a scheduler thread
/// per core: on two cores, three members with two threads each spent their time waking
/// one another.
#[test]
fn members_of_one_lab_share_the_cores() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let lab = Lab::up_group(2);
    let workers = lab.member_workers();
    assert_eq!(workers.len(), 2, "{workers:?}");
    for (pid, n) in workers {
        assert_eq!(
            n,
            Some((cores / 2).max(1)),
            "member {pid}'s scheduler threads"
        );
    }
}
