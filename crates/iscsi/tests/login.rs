//! The login engine against a table directory.

mod support;

use iscsi::chap;
use iscsi::directory::ChapSecrets;
use iscsi::keys::TargetLimits;
use iscsi::login::{status, FULL_FEATURE, OPERATIONAL, SECURITY};
use iscsi::pdu::{flags, Opcode, Pdu};
use iscsi::text;
use iscsi::{Login, LoginOutcome, LoginStep};
use support::*;

fn cont(step: LoginStep) -> Pdu {
    match step {
        LoginStep::Continue(p) => p,
        other => panic!("expected Continue, got {other:?}"),
    }
}

fn done(step: LoginStep) -> (Pdu, LoginOutcome) {
    match step {
        LoginStep::Done(p, o) => (p, o),
        other => panic!("expected Done, got {other:?}"),
    }
}

fn fail(step: LoginStep) -> Pdu {
    match step {
        LoginStep::Fail(p) => p,
        other => panic!("expected Fail, got {other:?}"),
    }
}

fn csg(p: &Pdu) -> u8 {
    (p.flags() >> 2) & 3
}

fn nsg(p: &Pdu) -> u8 {
    p.flags() & 3
}

fn transit(p: &Pdu) -> bool {
    p.flags() & flags::TRANSIT != 0
}

fn new_login() -> Login {
    Login::new(TargetLimits::default(), 500)
}

const FIRST: [(&str, &str); 4] = [
    ("InitiatorName", INITIATOR),
    ("TargetName", TARGET),
    ("SessionType", "Normal"),
    ("AuthMethod", "None"),
];

#[test]
fn security_then_operational_then_full_feature() {
    let dir = TestDir::standard();
    let mut l = new_login();
    let r = cont(l.step(&login(SECURITY, OPERATIONAL, true, 7, &FIRST), &dir));
    assert_eq!(r.opcode(), Some(Opcode::LoginResponse));
    assert_eq!(login_status(&r), 0);
    assert!(transit(&r));
    assert_eq!((csg(&r), nsg(&r)), (SECURITY, OPERATIONAL));
    assert_eq!(&r.bhs[8..14], &ISID);
    assert_eq!(r.itt(), 0x1000);
    assert_eq!(r.stat_sn(), 500);
    assert_eq!(r.exp_cmd_sn(), 7);
    assert!(r.max_cmd_sn() > 7);
    let pairs = pairs_of(&r);
    assert_eq!(get(&pairs, "AuthMethod").as_deref(), Some("None"));
    assert_eq!(get(&pairs, "TargetPortalGroupTag").as_deref(), Some("7"));

    let op = [
        ("HeaderDigest", "None"),
        ("DataDigest", "None"),
        ("MaxRecvDataSegmentLength", "65536"),
        ("MaxBurstLength", "131072"),
        ("FirstBurstLength", "65536"),
        ("InitialR2T", "No"),
        ("ImmediateData", "Yes"),
        ("MaxOutstandingR2T", "4"),
        ("ErrorRecoveryLevel", "0"),
    ];
    let (r, o) = done(l.step(&login(OPERATIONAL, FULL_FEATURE, true, 7, &op), &dir));
    assert_eq!(login_status(&r), 0);
    assert!(transit(&r));
    assert_eq!((csg(&r), nsg(&r)), (OPERATIONAL, FULL_FEATURE));
    assert_eq!(r.stat_sn(), 501);
    assert_ne!(r.get16(14), 0, "TSIH assigned");
    let pairs = pairs_of(&r);
    assert_eq!(
        get(&pairs, "MaxRecvDataSegmentLength").as_deref(),
        Some("262144")
    );
    assert_eq!(get(&pairs, "MaxBurstLength").as_deref(), Some("131072"));
    assert_eq!(get(&pairs, "InitialR2T").as_deref(), Some("No"));
    assert_eq!(get(&pairs, "MaxOutstandingR2T").as_deref(), Some("4"));
    assert_eq!(o.initiator_name, INITIATOR);
    assert_eq!(o.target_name.as_deref(), Some(TARGET));
    assert_eq!(o.tsih, r.get16(14));
    assert_eq!(o.isid, 0x8000_1234_0001);
    assert_eq!(o.cid, 1);
    assert_eq!(o.exp_cmd_sn, 7);
    assert_eq!(o.stat_sn, 502);
    assert_eq!(o.params.initiator_max_recv, 65536);
    assert_eq!(o.params.target_max_recv, 262_144);
    assert_eq!(o.params.max_burst, 131_072);
    assert_eq!(o.params.first_burst, 65536);
    assert!(!o.params.initial_r2t);
    assert_eq!(o.params.max_outstanding_r2t, 4);
}

#[test]
fn straight_to_operational() {
    let dir = TestDir::standard();
    let mut l = new_login();
    let pairs = [
        ("InitiatorName", INITIATOR),
        ("TargetName", TARGET),
        ("MaxRecvDataSegmentLength", "8192"),
    ];
    let (r, o) = done(l.step(&login(OPERATIONAL, FULL_FEATURE, true, 1, &pairs), &dir));
    assert_eq!(login_status(&r), 0);
    assert_eq!((csg(&r), nsg(&r)), (OPERATIONAL, FULL_FEATURE));
    let answers = pairs_of(&r);
    assert_eq!(get(&answers, "TargetPortalGroupTag").as_deref(), Some("7"));
    assert!(get(&answers, "MaxRecvDataSegmentLength").is_some());
    assert_eq!(o.target_name.as_deref(), Some(TARGET));
}

#[test]
fn operational_stage_without_transit_stays() {
    let dir = TestDir::standard();
    let mut l = new_login();
    let first = [("InitiatorName", INITIATOR), ("TargetName", TARGET)];
    let r = cont(l.step(&login(OPERATIONAL, 0, false, 1, &first), &dir));
    assert!(!transit(&r));
    assert_eq!(csg(&r), OPERATIONAL);
    let (r, _) = done(l.step(
        &login(
            OPERATIONAL,
            FULL_FEATURE,
            true,
            1,
            &[("DataDigest", "None")],
        ),
        &dir,
    ));
    assert_eq!(get(&pairs_of(&r), "DataDigest").as_deref(), Some("None"));
}

#[test]
fn discovery_session() {
    // No targets at all: discovery does not look one up.
    let dir = TestDir::new();
    let mut l = new_login();
    let first = [
        ("InitiatorName", INITIATOR),
        ("SessionType", "Discovery"),
        ("AuthMethod", "None"),
    ];
    let r = cont(l.step(&login(SECURITY, OPERATIONAL, true, 1, &first), &dir));
    assert_eq!(login_status(&r), 0);
    assert!(get(&pairs_of(&r), "TargetPortalGroupTag").is_none());
    let op = [("MaxBurstLength", "512"), ("HeaderDigest", "None")];
    let (r, o) = done(l.step(&login(OPERATIONAL, FULL_FEATURE, true, 1, &op), &dir));
    let answers = pairs_of(&r);
    assert_eq!(
        get(&answers, "MaxBurstLength").as_deref(),
        Some("Irrelevant")
    );
    assert_eq!(get(&answers, "HeaderDigest").as_deref(), Some("None"));
    assert!(o.target_name.is_none());
}

/// Drive a CHAP exchange up to the point of the initiator's response.
fn chap_challenge(l: &mut Login, dir: &TestDir) -> (u8, Vec<u8>) {
    let first = [
        ("InitiatorName", INITIATOR),
        ("TargetName", TARGET),
        ("AuthMethod", "CHAP,None"),
    ];
    let r = cont(l.step(&login(SECURITY, OPERATIONAL, true, 1, &first), dir));
    assert_eq!(login_status(&r), 0);
    assert!(!transit(&r), "no transit until CHAP is done");
    assert_eq!(get(&pairs_of(&r), "AuthMethod").as_deref(), Some("CHAP"));
    let r = cont(l.step(
        &login(SECURITY, OPERATIONAL, false, 1, &[("CHAP_A", "7,5")]),
        dir,
    ));
    let p = pairs_of(&r);
    assert_eq!(get(&p, "CHAP_A").as_deref(), Some("5"));
    let id: u8 = get(&p, "CHAP_I").unwrap().parse().unwrap();
    let c = text::parse_binary(&get(&p, "CHAP_C").unwrap()).unwrap();
    assert_eq!(c.len(), chap::CHALLENGE_LEN);
    (id, c)
}

fn chap_dir(mutual: bool) -> TestDir {
    TestDir::new().serve(
        TARGET,
        Some(ChapSecrets {
            user: "alice".into(),
            secret: b"initiator-secret".to_vec(),
            target: mutual.then(|| ("haven".to_string(), b"target-secret-1".to_vec())),
        }),
    )
}

#[test]
fn chap_one_way() {
    let dir = chap_dir(false);
    let mut l = new_login();
    let (id, c) = chap_challenge(&mut l, &dir);
    let resp = text::hex(&chap::response(id, b"initiator-secret", &c));
    let r = cont(l.step(
        &login(
            SECURITY,
            OPERATIONAL,
            true,
            1,
            &[("CHAP_N", "alice"), ("CHAP_R", &resp)],
        ),
        &dir,
    ));
    assert_eq!(login_status(&r), 0);
    assert!(transit(&r));
    assert_eq!(nsg(&r), OPERATIONAL);
    assert!(get(&pairs_of(&r), "CHAP_R").is_none());
    let (r, _) = done(l.step(&login(OPERATIONAL, FULL_FEATURE, true, 1, &[]), &dir));
    assert_eq!(login_status(&r), 0);
}

#[test]
fn chap_mutual() {
    let dir = chap_dir(true);
    let mut l = new_login();
    let (id, c) = chap_challenge(&mut l, &dir);
    let resp = text::hex(&chap::response(id, b"initiator-secret", &c));
    let my_challenge = [0x42u8; 16];
    let pairs = [
        ("CHAP_N", "alice"),
        ("CHAP_R", resp.as_str()),
        ("CHAP_I", "77"),
        ("CHAP_C", &text::hex(&my_challenge)),
    ];
    let r = cont(l.step(&login(SECURITY, OPERATIONAL, true, 1, &pairs), &dir));
    assert_eq!(login_status(&r), 0);
    assert!(transit(&r));
    let p = pairs_of(&r);
    assert_eq!(get(&p, "CHAP_N").as_deref(), Some("haven"));
    let tr = text::parse_binary(&get(&p, "CHAP_R").unwrap()).unwrap();
    assert_eq!(tr, chap::response(77, b"target-secret-1", &my_challenge));
    done(l.step(&login(OPERATIONAL, FULL_FEATURE, true, 1, &[]), &dir));
}

#[test]
fn chap_mutual_reflected_challenge_refused() {
    let dir = chap_dir(true);
    let mut l = new_login();
    let (id, c) = chap_challenge(&mut l, &dir);
    let resp = text::hex(&chap::response(id, b"initiator-secret", &c));
    let pairs = [
        ("CHAP_N", "alice"),
        ("CHAP_R", resp.as_str()),
        ("CHAP_I", &id.to_string()),
        ("CHAP_C", &text::hex(&c)),
    ];
    let r = fail(l.step(&login(SECURITY, OPERATIONAL, true, 1, &pairs), &dir));
    assert_eq!(login_status(&r), status::AUTH_FAILURE);
}

#[test]
fn chap_wrong_secret_or_user_refused() {
    let dir = chap_dir(false);
    for (user, secret) in [
        ("alice", &b"wrong-secret"[..]),
        ("mallory", &b"initiator-secret"[..]),
    ] {
        let mut l = new_login();
        let (id, c) = chap_challenge(&mut l, &dir);
        let resp = text::hex(&chap::response(id, secret, &c));
        let r = fail(l.step(
            &login(
                SECURITY,
                OPERATIONAL,
                true,
                1,
                &[("CHAP_N", user), ("CHAP_R", &resp)],
            ),
            &dir,
        ));
        assert_eq!(login_status(&r), status::AUTH_FAILURE, "{user}");
        assert!(!transit(&r));
        assert!(r.data.is_empty());
    }
}

#[test]
fn chap_response_with_non_ascii_hex_refused() {
    // Found by the text_keys fuzz target: parse_binary panicked on this value.
    let dir = chap_dir(false);
    let mut l = new_login();
    chap_challenge(&mut l, &dir);
    let r = fail(l.step(
        &login(
            SECURITY,
            OPERATIONAL,
            true,
            1,
            &[("CHAP_N", "alice"), ("CHAP_R", "0x\u{20ac}")],
        ),
        &dir,
    ));
    assert_eq!(login_status(&r), status::AUTH_FAILURE);
}

#[test]
fn missing_chap_refused() {
    let dir = chap_dir(false);
    // Only AuthMethod=None offered.
    let mut l = new_login();
    let r = fail(l.step(&login(SECURITY, OPERATIONAL, true, 1, &FIRST), &dir));
    assert_eq!(login_status(&r), status::AUTH_FAILURE);
    // No AuthMethod at all.
    let mut l = new_login();
    let first = [("InitiatorName", INITIATOR), ("TargetName", TARGET)];
    let r = fail(l.step(&login(SECURITY, OPERATIONAL, true, 1, &first), &dir));
    assert_eq!(login_status(&r), status::AUTH_FAILURE);
    // Skipping the security stage.
    let mut l = new_login();
    let r = fail(l.step(&login(OPERATIONAL, FULL_FEATURE, true, 1, &first), &dir));
    assert_eq!(login_status(&r), status::AUTH_FAILURE);
    // CHAP agreed, then the response is missing.
    let mut l = new_login();
    chap_challenge(&mut l, &dir);
    let r = fail(l.step(
        &login(SECURITY, OPERATIONAL, true, 1, &[("CHAP_N", "alice")]),
        &dir,
    ));
    assert_eq!(login_status(&r), status::AUTH_FAILURE);
}

#[test]
fn chap_offered_to_a_target_without_secrets_refused() {
    let dir = TestDir::standard();
    let mut l = new_login();
    let first = [
        ("InitiatorName", INITIATOR),
        ("TargetName", TARGET),
        ("AuthMethod", "CHAP"),
    ];
    let r = fail(l.step(&login(SECURITY, OPERATIONAL, true, 1, &first), &dir));
    assert_eq!(login_status(&r), status::AUTH_FAILURE);
}

#[test]
fn acl_denied() {
    let dir = TestDir::standard().acl(TARGET, &["iqn.2024-01.test:other"]);
    let mut l = new_login();
    let r = fail(l.step(&login(SECURITY, OPERATIONAL, true, 1, &FIRST), &dir));
    assert_eq!(login_status(&r), status::AUTHORIZATION_FAILURE);
    // The listed initiator gets in.
    let dir = TestDir::standard().acl(TARGET, &[INITIATOR]);
    let mut l = new_login();
    cont(l.step(&login(SECURITY, OPERATIONAL, true, 1, &FIRST), &dir));
}

#[test]
fn unknown_target() {
    let dir = TestDir::new().serve("iqn.2024-01.dev.haven:other", None);
    let mut l = new_login();
    let r = fail(l.step(&login(SECURITY, OPERATIONAL, true, 1, &FIRST), &dir));
    assert_eq!(login_status(&r), status::NOT_FOUND);
}

#[test]
fn redirect_carries_target_address() {
    let dir = TestDir::new().redirect(TARGET, "192.0.2.9:3260,2");
    let mut l = new_login();
    let r = fail(l.step(&login(SECURITY, OPERATIONAL, true, 1, &FIRST), &dir));
    assert_eq!(login_status(&r), status::MOVED_TEMPORARILY);
    assert_eq!(
        get(&pairs_of(&r), "TargetAddress").as_deref(),
        Some("192.0.2.9:3260,2")
    );
}

#[test]
fn missing_names() {
    let dir = TestDir::standard();
    let mut l = new_login();
    let r = fail(l.step(
        &login(SECURITY, OPERATIONAL, true, 1, &[("TargetName", TARGET)]),
        &dir,
    ));
    assert_eq!(login_status(&r), status::MISSING_PARAMETER);
    let mut l = new_login();
    let r = fail(l.step(
        &login(
            SECURITY,
            OPERATIONAL,
            true,
            1,
            &[("InitiatorName", ""), ("TargetName", TARGET)],
        ),
        &dir,
    ));
    assert_eq!(login_status(&r), status::MISSING_PARAMETER);
    // A Normal session needs a TargetName.
    let mut l = new_login();
    let r = fail(l.step(
        &login(
            SECURITY,
            OPERATIONAL,
            true,
            1,
            &[("InitiatorName", INITIATOR)],
        ),
        &dir,
    ));
    assert_eq!(login_status(&r), status::MISSING_PARAMETER);
}

#[test]
fn duplicate_key_refused() {
    let dir = TestDir::standard();
    let mut l = new_login();
    let pairs = [
        ("InitiatorName", INITIATOR),
        ("TargetName", TARGET),
        ("MaxBurstLength", "8192"),
        ("MaxBurstLength", "16384"),
    ];
    let r = fail(l.step(&login(OPERATIONAL, FULL_FEATURE, true, 1, &pairs), &dir));
    assert_eq!(login_status(&r) >> 8, 2, "initiator error class");
    // Offered again in a later PDU of the same login.
    let mut l = new_login();
    let first = [
        ("InitiatorName", INITIATOR),
        ("TargetName", TARGET),
        ("MaxBurstLength", "8192"),
    ];
    cont(l.step(&login(OPERATIONAL, 0, false, 1, &first), &dir));
    let r = fail(l.step(
        &login(
            OPERATIONAL,
            FULL_FEATURE,
            true,
            1,
            &[("MaxBurstLength", "8192")],
        ),
        &dir,
    ));
    assert_eq!(login_status(&r), status::INITIATOR_ERROR);
}

#[test]
fn transit_and_continue_together_refused() {
    let dir = TestDir::standard();
    let mut l = new_login();
    let r = fail(l.step(
        &login_raw(SECURITY, OPERATIONAL, true, true, 1, kv(&FIRST)),
        &dir,
    ));
    assert_eq!(login_status(&r), status::INITIATOR_ERROR);
}

#[test]
fn bad_stage_transitions_refused() {
    let dir = TestDir::standard();
    for (c, n) in [
        (OPERATIONAL, SECURITY),
        (SECURITY, 2),
        (FULL_FEATURE, FULL_FEATURE),
        (OPERATIONAL, OPERATIONAL),
    ] {
        let mut l = new_login();
        let r = fail(l.step(&login(c, n, true, 1, &FIRST), &dir));
        assert_eq!(login_status(&r), status::INITIATOR_ERROR, "{c}->{n}");
    }
}

#[test]
fn non_login_pdu_during_login_refused() {
    let dir = TestDir::standard();
    let mut l = new_login();
    let r = fail(l.step(&nop_out(1, NO_TAG, 1, true, &[]), &dir));
    assert_eq!(login_status(&r), status::INVALID_REQUEST_DURING_LOGIN);
}

#[test]
fn unsupported_version_refused() {
    let dir = TestDir::standard();
    let mut l = new_login();
    let mut req = login(SECURITY, OPERATIONAL, true, 1, &FIRST);
    req.bhs[3] = 1; // version-min
    let r = fail(l.step(&req, &dir));
    assert_eq!(login_status(&r), status::UNSUPPORTED_VERSION);
}

#[test]
fn text_spanning_several_pdus() {
    let dir = TestDir::standard();
    let mut l = new_login();
    let all = kv(&[
        ("InitiatorName", INITIATOR),
        ("TargetName", TARGET),
        ("AuthMethod", "None"),
        ("HeaderDigest", "CRC32C"),
    ]);
    // Split in the middle of a key and in the middle of a value.
    let (a, rest) = all.split_at(9);
    let (b, c) = rest.split_at(30);
    let r = cont(l.step(&login_raw(SECURITY, 0, false, true, 1, a.to_vec()), &dir));
    assert_eq!(login_status(&r), 0);
    assert!(r.data.is_empty(), "an empty acknowledgement");
    assert!(!transit(&r));
    let r = cont(l.step(&login_raw(SECURITY, 0, false, true, 1, b.to_vec()), &dir));
    assert!(r.data.is_empty());
    let r = cont(l.step(
        &login_raw(SECURITY, OPERATIONAL, true, false, 1, c.to_vec()),
        &dir,
    ));
    assert_eq!(login_status(&r), 0);
    assert!(transit(&r));
    let p = pairs_of(&r);
    assert_eq!(get(&p, "AuthMethod").as_deref(), Some("None"));
    assert_eq!(get(&p, "HeaderDigest").as_deref(), Some("CRC32C"));
    let (_, o) = done(l.step(&login(OPERATIONAL, FULL_FEATURE, true, 1, &[]), &dir));
    assert!(o.params.header_digest);
    assert_eq!(o.target_name.as_deref(), Some(TARGET));
}

#[test]
fn digest_negotiation() {
    let dir = TestDir::standard();
    let mut l = new_login();
    let pairs = [
        ("InitiatorName", INITIATOR),
        ("TargetName", TARGET),
        ("HeaderDigest", "None,CRC32C"),
        ("DataDigest", "CRC32C,None"),
    ];
    let (r, o) = done(l.step(&login(OPERATIONAL, FULL_FEATURE, true, 1, &pairs), &dir));
    let p = pairs_of(&r);
    assert_eq!(get(&p, "HeaderDigest").as_deref(), Some("CRC32C"));
    assert_eq!(get(&p, "DataDigest").as_deref(), Some("CRC32C"));
    assert!(o.params.header_digest && o.params.data_digest);

    // A target configured without digests answers None.
    let limits = TargetLimits {
        digests: false,
        ..TargetLimits::default()
    };
    let mut l = Login::new(limits, 0);
    let (r, o) = done(l.step(&login(OPERATIONAL, FULL_FEATURE, true, 1, &pairs), &dir));
    let p = pairs_of(&r);
    assert_eq!(get(&p, "HeaderDigest").as_deref(), Some("None"));
    assert!(!o.params.header_digest && !o.params.data_digest);

    // Only an unsupported digest: Reject.
    let mut l = new_login();
    let pairs = [
        ("InitiatorName", INITIATOR),
        ("TargetName", TARGET),
        ("DataDigest", "MD5"),
    ];
    let (r, o) = done(l.step(&login(OPERATIONAL, FULL_FEATURE, true, 1, &pairs), &dir));
    assert_eq!(get(&pairs_of(&r), "DataDigest").as_deref(), Some("Reject"));
    assert!(!o.params.data_digest);
}

#[test]
fn malformed_text_refused() {
    let dir = TestDir::standard();
    let mut l = new_login();
    let r = fail(l.step(
        &login_raw(
            SECURITY,
            OPERATIONAL,
            true,
            false,
            1,
            b"InitiatorName\0".to_vec(),
        ),
        &dir,
    ));
    assert_eq!(login_status(&r), status::INITIATOR_ERROR);
}

#[test]
fn isid_change_mid_login_refused() {
    let dir = TestDir::standard();
    let mut l = new_login();
    cont(l.step(&login(SECURITY, OPERATIONAL, true, 1, &FIRST), &dir));
    let mut req = login(OPERATIONAL, FULL_FEATURE, true, 1, &[]);
    req.bhs[13] ^= 1;
    let r = fail(l.step(&req, &dir));
    assert_eq!(login_status(&r), status::INITIATOR_ERROR);
}

#[test]
fn login_response_fits_the_initiators_max_recv() {
    let dir = TestDir::standard();
    let mut l = new_login();
    let mut data = kv(&[("InitiatorName", INITIATOR), ("TargetName", TARGET)]);
    for i in 0..1500 {
        data.extend_from_slice(format!("X-k{i:05}=1\0").as_bytes());
    }
    // The long answer comes in pieces of at most 8192 bytes, each with the C bit, until the
    // last one completes the login.
    let mut text = Vec::new();
    let mut step = l.step(
        &login_raw(OPERATIONAL, FULL_FEATURE, true, false, 1, data),
        &dir,
    );
    let mut pieces = 0;
    loop {
        match step {
            LoginStep::Continue(r) => {
                assert!(
                    r.data.len() <= 8192,
                    "login response of {} bytes",
                    r.data.len()
                );
                assert!(
                    r.flags() & 0x40 != 0,
                    "a partial response must carry the C bit"
                );
                assert!(r.flags() & 0x80 == 0, "a partial response must not transit");
                text.extend_from_slice(&r.data);
                pieces += 1;
                step = l.step(
                    &login_raw(OPERATIONAL, FULL_FEATURE, true, false, 1, vec![]),
                    &dir,
                );
            }
            LoginStep::Done(r, _) => {
                assert!(r.data.len() <= 8192);
                text.extend_from_slice(&r.data);
                break;
            }
            LoginStep::Fail(r) => panic!("login failed: {:#06x}", login_status(&r)),
        }
    }
    assert!(
        pieces >= 4,
        "expected the answer in several pieces, got {pieces}"
    );
    let answers = pairs_of_bytes(&text);
    assert_eq!(
        answers.iter().filter(|(_, v)| v == "NotUnderstood").count(),
        1500
    );
}

fn pairs_of_bytes(b: &[u8]) -> Vec<(String, String)> {
    iscsi::text::parse(b).expect("the pieces join into valid text")
}
