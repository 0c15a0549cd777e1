//! Who may reach a volume: CHAP (one-way and mutual) and initiator ACLs, through the
//! group portal, with libiscsi as the initiator.

mod support;

use std::process::Command;
use support::*;

fn inq(url: &str, initiator: Option<&str>) -> (bool, String) {
    let mut c = Command::new("iscsi-inq");
    if let Some(i) = initiator {
        c.args(["-i", i]);
    }
    let o = c.arg(url).output().expect("iscsi-inq (run scripts/setup)");
    (o.status.success(), format!("{}{}", stdout(&o), stderr(&o)))
}

#[test]
fn chap_and_acls_decide_who_gets_in() {
    let lab = Lab::up();
    lab.ok(&[
        "volume",
        "create",
        "sec",
        "--size",
        "16MiB",
        "--chap-user",
        "alice",
        "--chap-secret",
        "alice-secret-1",
        "--mutual-user",
        "tgt",
        "--mutual-secret",
        "target-secret-2",
    ]);
    lab.ok(&[
        "volume",
        "create",
        "acl",
        "--size",
        "16MiB",
        "--allow",
        "iqn.2000-01.org.test:good",
    ]);
    let portal = &lab.portal;
    let sec = "iqn.2026-11.org.haven:sec";

    // No secret, a wrong secret, a wrong user: refused.
    let (ok, out) = inq(&format!("iscsi://{portal}/{sec}/0"), None);
    assert!(!ok && out.contains("Authentication failure"), "{out}");
    let (ok, out) = inq(
        &format!("iscsi://alice%wrong-secret-9@{portal}/{sec}/0"),
        None,
    );
    assert!(!ok && out.contains("Authentication failure"), "{out}");
    let (ok, out) = inq(
        &format!("iscsi://mallory%alice-secret-1@{portal}/{sec}/0"),
        None,
    );
    assert!(!ok && out.contains("Authentication failure"), "{out}");
    // The right secret: in.
    let (ok, out) = inq(
        &format!("iscsi://alice%alice-secret-1@{portal}/{sec}/0"),
        None,
    );
    assert!(ok && out.contains("DIRECT_ACCESS"), "{out}");
    // Mutual CHAP: the target proves itself; a wrong target secret is caught by libiscsi.
    let (ok, out) = inq(
        &format!("iscsi://alice%alice-secret-1@{portal}/{sec}/0?target_user=tgt&target_password=target-secret-2"),
        None,
    );
    assert!(ok && out.contains("DIRECT_ACCESS"), "{out}");
    let (ok, out) = inq(
        &format!("iscsi://alice%alice-secret-1@{portal}/{sec}/0?target_user=tgt&target_password=not-the-secret"),
        None,
    );
    assert!(!ok, "{out}");

    // The ACL: an allowed initiator discovers and logs in; another does neither.
    let good = "iqn.2000-01.org.test:good";
    let bad = "iqn.2000-01.org.test:bad";
    let seen = run_tool("iscsi-ls", &["-i", good, &format!("iscsi://{portal}")]);
    assert!(seen.contains("iqn.2026-11.org.haven:acl"), "{seen}");
    let seen = run_tool("iscsi-ls", &["-i", bad, &format!("iscsi://{portal}")]);
    assert!(!seen.contains("iqn.2026-11.org.haven:acl"), "{seen}");
    let (ok, out) = inq(
        &format!("iscsi://{portal}/iqn.2026-11.org.haven:acl/0"),
        Some(good),
    );
    assert!(ok, "{out}");
    let (ok, out) = inq(
        &format!("iscsi://{portal}/iqn.2026-11.org.haven:acl/0"),
        Some(bad),
    );
    assert!(!ok && out.contains("Authorization failure"), "{out}");

    // Secrets never reach the logs.
    let log = std::fs::read_to_string(lab.dir.join("member-1/member.log")).unwrap();
    for secret in ["alice-secret-1", "target-secret-2"] {
        assert!(
            !log.contains(secret),
            "a CHAP secret appeared in the member log"
        );
    }
    // Nor the API's answers.
    let shown = lab.ok(&["volume", "show", "sec", "--json"]);
    assert!(
        !shown.contains("alice-secret-1") && !shown.contains("target-secret-2"),
        "{shown}"
    );
}
