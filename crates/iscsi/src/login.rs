//! The target side of the login phase (RFC 7143 §6, §11.12–11.13).
//!
//! ```text
//!  initiator                                  target
//!   Login CSG=0 NSG=1 T=1 InitiatorName,       ─►  lookup target (redirect / deny / serve)
//!         TargetName, AuthMethod=…                 pick AuthMethod
//!                                          ◄─  CSG=0 NSG=1 T=1 AuthMethod=None   (or CHAP steps)
//!   Login CSG=1 NSG=3 T=1 HeaderDigest=…   ─►  negotiate keys (keys.rs)
//!                                          ◄─  CSG=1 NSG=3 T=1 TSIH=n, answers   → full feature
//! ```
//! The engine consumes Login Request PDUs and yields Login Response PDUs; it does no I/O.

use crate::chap;
use crate::directory::{ChapSecrets, Directory, Lookup};
use crate::keys::{self, Answer, SessionParams, TargetLimits};
use crate::pdu::{flags, Opcode, Pdu};
use crate::text;
use bytes::Bytes;
use std::collections::HashSet;

/// Login stages (CSG/NSG values).
pub const SECURITY: u8 = 0;
pub const OPERATIONAL: u8 = 1;
pub const FULL_FEATURE: u8 = 3;

/// Login status class/detail pairs used by the target (RFC 7143 §11.13.5).
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    pub const MOVED_TEMPORARILY: u16 = 0x0101;
    pub const INITIATOR_ERROR: u16 = 0x0200;
    pub const AUTH_FAILURE: u16 = 0x0201;
    pub const AUTHORIZATION_FAILURE: u16 = 0x0202;
    pub const NOT_FOUND: u16 = 0x0203;
    pub const UNSUPPORTED_VERSION: u16 = 0x0205;
    pub const MISSING_PARAMETER: u16 = 0x0207;
    pub const SESSION_DOES_NOT_EXIST: u16 = 0x020a;
    pub const INVALID_REQUEST_DURING_LOGIN: u16 = 0x020b;
    pub const TARGET_ERROR: u16 = 0x0300;
}

/// The largest data segment an initiator accepts during login (the RFC 7143 default).
const LOGIN_MAX_RECV: usize = 8192;

/// The rest of a long Login Response.
struct PendingOut {
    rest: Bytes,
    /// The response as built (header, flags), whose data is being sent in pieces.
    template: Pdu,
    /// Set when the last piece completes the login.
    outcome: Option<LoginOutcome>,
}

/// The session a completed login opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginOutcome {
    pub initiator_name: String,
    /// None for a discovery session.
    pub target_name: Option<String>,
    pub isid: u64,
    pub tsih: u16,
    pub cid: u16,
    pub params: SessionParams,
    /// CmdSN the first full-feature command will carry.
    pub exp_cmd_sn: u32,
    /// StatSN of the next response.
    pub stat_sn: u32,
}

/// What a login step produced.
#[derive(Debug)]
pub enum LoginStep {
    /// Send this response and wait for the next request.
    Continue(Pdu),
    /// Send this final response; the connection is now in full feature phase.
    Done(Pdu, LoginOutcome),
    /// Send this response (an error or a redirect), then close the connection.
    Fail(Pdu),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Auth {
    /// No AuthMethod agreed yet.
    Start,
    /// AuthMethod=None agreed, or CHAP finished.
    Done,
    /// AuthMethod=CHAP agreed; waiting for CHAP_A.
    WantAlgorithm,
    /// Challenge sent; waiting for CHAP_N / CHAP_R.
    WantResponse { id: u8, challenge: Vec<u8> },
}

/// Login state of one connection.
pub struct Login {
    limits: TargetLimits,
    stage: Option<u8>,
    first: bool,
    itt: u32,
    isid: u64,
    tsih: u16,
    cid: u16,
    cmd_sn: u32,
    stat_sn: u32,
    initiator_name: Option<String>,
    target_name: Option<String>,
    discovery: bool,
    params: SessionParams,
    seen: HashSet<String>,
    auth: Auth,
    required: Option<ChapSecrets>,
    pending: Vec<u8>,
    /// A response too long for one PDU: the rest, sent one chunk per (empty) request.
    pending_out: Option<Box<PendingOut>>,
    declared_limits: bool,
}

impl Login {
    pub fn new(limits: TargetLimits, initial_stat_sn: u32) -> Self {
        Login {
            limits,
            stage: None,
            first: true,
            itt: 0,
            isid: 0,
            tsih: 0,
            cid: 0,
            cmd_sn: 0,
            stat_sn: initial_stat_sn,
            initiator_name: None,
            target_name: None,
            discovery: false,
            params: SessionParams::default(),
            seen: HashSet::new(),
            auth: Auth::Start,
            required: None,
            pending: Vec::new(),
            pending_out: None,
            declared_limits: false,
        }
    }

    /// The initiator's name once the first request named it (for logs).
    pub fn initiator_name(&self) -> Option<&str> {
        self.initiator_name.as_deref()
    }

    fn response(
        &mut self,
        req: &Pdu,
        transit: bool,
        csg: u8,
        nsg: u8,
        status: u16,
        pairs: &[(String, String)],
    ) -> Pdu {
        let mut p = Pdu::new(Opcode::LoginResponse);
        let mut f = (csg << 2) & 0x0c;
        if transit {
            f |= flags::TRANSIT | (nsg & 0x03);
        }
        p.set_flags(f);
        p.bhs[2] = 0; // version-max
        p.bhs[3] = 0; // version-active
        p.bhs[8..14].copy_from_slice(&req.bhs[8..14]); // ISID
        p.put16(14, self.tsih);
        p.set_itt(req.itt());
        p.set_stat_sn(self.stat_sn);
        self.stat_sn = self.stat_sn.wrapping_add(1);
        p.set_exp_cmd_sn(self.cmd_sn);
        p.set_max_cmd_sn(self.cmd_sn.wrapping_add(crate::session::QUEUE_DEPTH - 1));
        p.bhs[36] = (status >> 8) as u8;
        p.bhs[37] = status as u8;
        p.data = Bytes::from(text::encode(pairs));
        p
    }

    fn fail(&mut self, req: &Pdu, status: u16, pairs: &[(String, String)]) -> LoginStep {
        let csg = self.stage.unwrap_or(SECURITY);
        LoginStep::Fail(self.response(req, false, csg, 0, status, pairs))
    }

    /// Consume one Login Request.
    pub fn step(&mut self, req: &Pdu, dir: &dyn Directory) -> LoginStep {
        if self.pending_out.is_some() {
            return self.next_chunk(req);
        }
        let step = self.step_inner(req, dir);
        self.split(step)
    }

    /// A response longer than the initiator accepts during login (8192 bytes) goes out in
    /// pieces with the C bit; the initiator asks for each next piece with an empty request.
    fn split(&mut self, step: LoginStep) -> LoginStep {
        let (p, outcome) = match step {
            LoginStep::Continue(p) if p.data.len() > LOGIN_MAX_RECV => (p, None),
            LoginStep::Done(p, o) if p.data.len() > LOGIN_MAX_RECV => (p, Some(o)),
            s => return s,
        };
        let mut first = p.clone();
        first.data = p.data.slice(..LOGIN_MAX_RECV);
        first.set_flags((p.flags() & 0x0c) | flags::CONTINUE);
        self.pending_out = Some(Box::new(PendingOut {
            rest: p.data.slice(LOGIN_MAX_RECV..),
            template: p,
            outcome,
        }));
        LoginStep::Continue(first)
    }

    fn next_chunk(&mut self, req: &Pdu) -> LoginStep {
        let Some(mut po) = self.pending_out.take() else {
            return self.fail(req, status::INITIATOR_ERROR, &[]);
        };
        if req.opcode() != Some(Opcode::LoginRequest) || !req.data.is_empty() {
            // While the target's text continues, the initiator sends empty requests only.
            return self.fail(req, status::INITIATOR_ERROR, &[]);
        }
        let n = po.rest.len().min(LOGIN_MAX_RECV);
        let mut p = po.template.clone();
        p.set_itt(req.itt());
        p.set_stat_sn(self.stat_sn);
        self.stat_sn = self.stat_sn.wrapping_add(1);
        p.data = po.rest.slice(..n);
        po.rest = po.rest.slice(n..);
        if !po.rest.is_empty() {
            p.set_flags((po.template.flags() & 0x0c) | flags::CONTINUE);
            self.pending_out = Some(po);
            return LoginStep::Continue(p);
        }
        // The last piece carries the original T bit and stage.
        match po.outcome {
            Some(mut o) => {
                o.stat_sn = self.stat_sn;
                LoginStep::Done(p, o)
            }
            None => LoginStep::Continue(p),
        }
    }

    fn step_inner(&mut self, req: &Pdu, dir: &dyn Directory) -> LoginStep {
        if req.opcode() != Some(Opcode::LoginRequest) {
            // Anything but a Login Request during login ends it.
            return self.fail(req, status::INVALID_REQUEST_DURING_LOGIN, &[]);
        }
        let f = req.flags();
        let transit = f & flags::TRANSIT != 0;
        let cont = f & flags::CONTINUE != 0;
        let csg = (f >> 2) & 0x03;
        let nsg = f & 0x03;
        let isid = u64::from_be_bytes([
            0,
            0,
            req.bhs[8],
            req.bhs[9],
            req.bhs[10],
            req.bhs[11],
            req.bhs[12],
            req.bhs[13],
        ]);
        if self.first {
            self.first = false;
            self.itt = req.itt();
            self.isid = isid;
            self.tsih = req.get16(14);
            self.cid = req.get16(20);
            self.cmd_sn = req.cmd_sn();
            // Version-min above 0 asks for a protocol this target does not speak.
            if req.bhs[3] > 0 {
                return self.fail(req, status::UNSUPPORTED_VERSION, &[]);
            }
        } else if isid != self.isid {
            return self.fail(req, status::INITIATOR_ERROR, &[]);
        }
        if transit && cont {
            // T and C together are a protocol error.
            return self.fail(req, status::INITIATOR_ERROR, &[]);
        }
        if csg == 2 || csg == FULL_FEATURE || (transit && (nsg == 2 || nsg <= csg)) {
            return self.fail(req, status::INITIATOR_ERROR, &[]);
        }
        match self.stage {
            None => self.stage = Some(csg),
            Some(s) if s != csg => return self.fail(req, status::INITIATOR_ERROR, &[]),
            _ => {}
        }
        self.pending.extend_from_slice(&req.data);
        if self.pending.len() > 64 * 1024 {
            return self.fail(req, status::INITIATOR_ERROR, &[]);
        }
        if cont {
            // Text continues in the next PDU: acknowledge with an empty response.
            return LoginStep::Continue(self.response(req, false, csg, 0, status::SUCCESS, &[]));
        }
        let data = std::mem::take(&mut self.pending);
        let pairs = match text::parse(&data) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "malformed login text");
                return self.fail(req, status::INITIATOR_ERROR, &[]);
            }
        };
        for (k, _) in &pairs {
            if !self.seen.insert(k.clone()) {
                tracing::debug!(key = %k, "key offered twice during login");
                return self.fail(req, status::INITIATOR_ERROR, &[]);
            }
        }
        let mut answers: Vec<(String, String)> = Vec::new();

        if let Some(step) = self.declarations(req, &pairs, dir, &mut answers) {
            return step;
        }

        for (k, v) in &pairs {
            match k.as_str() {
                "InitiatorName" | "TargetName" | "SessionType" => {}
                "AuthMethod" | "CHAP_A" | "CHAP_N" | "CHAP_R" | "CHAP_I" | "CHAP_C" => {
                    if csg != SECURITY {
                        return self.fail(req, status::INITIATOR_ERROR, &[]);
                    }
                }
                _ => match keys::negotiate(&mut self.params, &self.limits, self.discovery, k, v) {
                    Answer::Silent => {}
                    a => answers.push((k.clone(), a.text().unwrap_or_default())),
                },
            }
        }

        if csg == SECURITY {
            if let Some(step) = self.security(req, &pairs, &mut answers) {
                return step;
            }
        } else if self.required.is_some() && self.auth != Auth::Done {
            // Skipping the security stage is not allowed when the target requires CHAP.
            return self.fail(req, status::AUTH_FAILURE, &[]);
        }

        if csg == OPERATIONAL && !self.declared_limits {
            self.declared_limits = true;
            answers.push((
                "MaxRecvDataSegmentLength".into(),
                self.limits.max_recv_data_segment_length.to_string(),
            ));
        }

        // Decide whether to transit.
        let mut go = transit;
        if csg == SECURITY && self.auth != Auth::Done {
            go = false;
        }
        if go && nsg == FULL_FEATURE {
            if !self.declared_limits {
                // The target never declared its limits: RFC defaults apply to what it accepts.
                self.params.target_max_recv = 8192;
            } else {
                keys::finish(&mut self.params, &self.limits);
            }
            if self.tsih == 0 {
                self.tsih = dir_tsih();
            }
            let resp = self.response(req, true, csg, nsg, status::SUCCESS, &answers);
            let outcome = LoginOutcome {
                initiator_name: self.initiator_name.clone().unwrap_or_default(),
                target_name: self.target_name.clone(),
                isid: self.isid,
                tsih: self.tsih,
                cid: self.cid,
                params: self.params.clone(),
                exp_cmd_sn: self.cmd_sn,
                stat_sn: self.stat_sn,
            };
            return LoginStep::Done(resp, outcome);
        }
        if go {
            self.stage = Some(nsg);
        }
        LoginStep::Continue(self.response(req, go, csg, nsg, status::SUCCESS, &answers))
    }

    /// Handle the declarative keys of the first request: who, to what, what kind.
    fn declarations(
        &mut self,
        req: &Pdu,
        pairs: &[(String, String)],
        dir: &dyn Directory,
        answers: &mut Vec<(String, String)>,
    ) -> Option<LoginStep> {
        let get = |k: &str| pairs.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
        if self.initiator_name.is_none() {
            let Some(name) = get("InitiatorName").filter(|n| !n.is_empty()) else {
                return Some(self.fail(req, status::MISSING_PARAMETER, &[]));
            };
            self.initiator_name = Some(name);
            match get("SessionType").as_deref() {
                None | Some("Normal") => self.discovery = false,
                Some("Discovery") => self.discovery = true,
                Some(_) => return Some(self.fail(req, status::INITIATOR_ERROR, &[])),
            }
            if self.discovery {
                return None;
            }
            let Some(target) = get("TargetName").filter(|n| !n.is_empty()) else {
                return Some(self.fail(req, status::MISSING_PARAMETER, &[]));
            };
            let initiator = self.initiator_name.clone().unwrap_or_default();
            match dir.lookup(&target, &initiator) {
                Lookup::Serve { auth } => self.required = auth,
                Lookup::Redirect { address } => {
                    let pairs = [("TargetAddress".to_string(), address)];
                    return Some(self.fail(req, status::MOVED_TEMPORARILY, &pairs));
                }
                Lookup::NotFound => return Some(self.fail(req, status::NOT_FOUND, &[])),
                Lookup::Denied => {
                    tracing::info!(%initiator, %target, "login refused by the target's ACL");
                    return Some(self.fail(req, status::AUTHORIZATION_FAILURE, &[]));
                }
            }
            self.target_name = Some(target);
            answers.push((
                "TargetPortalGroupTag".into(),
                dir.portal_group_tag().to_string(),
            ));
        } else if get("InitiatorName").is_some()
            || get("TargetName").is_some()
            || get("SessionType").is_some()
        {
            // Declared once per login (caught by the duplicate check too).
            return Some(self.fail(req, status::INITIATOR_ERROR, &[]));
        }
        None
    }

    /// The security stage: AuthMethod, then the CHAP exchange.
    fn security(
        &mut self,
        req: &Pdu,
        pairs: &[(String, String)],
        answers: &mut Vec<(String, String)>,
    ) -> Option<LoginStep> {
        let get = |k: &str| pairs.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
        if self.auth == Auth::Start {
            let Some(methods) = get("AuthMethod") else {
                if self.required.is_some() {
                    return Some(self.fail(req, status::AUTH_FAILURE, &[]));
                }
                // No AuthMethod offered: nothing to authenticate.
                self.auth = Auth::Done;
                return None;
            };
            let offered: Vec<&str> = methods.split(',').collect();
            if self.required.is_some() {
                if !offered.contains(&"CHAP") {
                    return Some(self.fail(req, status::AUTH_FAILURE, &[]));
                }
                answers.push(("AuthMethod".into(), "CHAP".into()));
                self.auth = Auth::WantAlgorithm;
                return Some(LoginStep::Continue(self.response(
                    req,
                    false,
                    SECURITY,
                    0,
                    status::SUCCESS,
                    answers,
                )));
            }
            if offered.contains(&"None") {
                answers.push(("AuthMethod".into(), "None".into()));
                self.auth = Auth::Done;
                return None;
            }
            if offered.contains(&"CHAP") {
                // The target has no secret to check against: authentication cannot succeed.
                return Some(self.fail(req, status::AUTH_FAILURE, &[]));
            }
            answers.push(("AuthMethod".into(), "Reject".into()));
            return Some(self.fail(req, status::AUTH_FAILURE, answers));
        }
        match self.auth.clone() {
            Auth::WantAlgorithm => {
                let Some(algs) = get("CHAP_A") else {
                    return Some(self.fail(req, status::AUTH_FAILURE, &[]));
                };
                if !algs.split(',').any(|a| a == chap::ALGORITHM_MD5) {
                    return Some(self.fail(req, status::AUTH_FAILURE, &[]));
                }
                let (id, challenge) = chap::new_challenge();
                answers.push(("CHAP_A".into(), chap::ALGORITHM_MD5.into()));
                answers.push(("CHAP_I".into(), id.to_string()));
                answers.push(("CHAP_C".into(), text::hex(&challenge)));
                self.auth = Auth::WantResponse { id, challenge };
                Some(LoginStep::Continue(self.response(
                    req,
                    false,
                    SECURITY,
                    0,
                    status::SUCCESS,
                    answers,
                )))
            }
            Auth::WantResponse { id, challenge } => {
                let secrets = self.required.clone().unwrap_or_default();
                let name = get("CHAP_N");
                let resp = get("CHAP_R").and_then(|r| text::parse_binary(&r));
                let (Some(name), Some(resp)) = (name, resp) else {
                    return Some(self.fail(req, status::AUTH_FAILURE, &[]));
                };
                let expected = chap::response(id, &secrets.secret, &challenge);
                if name != secrets.user || !chap::verify(&expected, &resp) {
                    tracing::info!(user = %name, "CHAP response refused");
                    return Some(self.fail(req, status::AUTH_FAILURE, &[]));
                }
                // Mutual CHAP: the initiator challenges the target.
                match (get("CHAP_I"), get("CHAP_C")) {
                    (Some(i), Some(c)) => {
                        let Some((tuser, tsecret)) = secrets.target.clone() else {
                            return Some(self.fail(req, status::AUTH_FAILURE, &[]));
                        };
                        let Some(i) = text::parse_number(&i).filter(|i| *i <= 255) else {
                            return Some(self.fail(req, status::AUTH_FAILURE, &[]));
                        };
                        let Some(c) = text::parse_binary(&c) else {
                            return Some(self.fail(req, status::AUTH_FAILURE, &[]));
                        };
                        if c == challenge || c.is_empty() {
                            // A reflected challenge would let the initiator replay our answer.
                            return Some(self.fail(req, status::AUTH_FAILURE, &[]));
                        }
                        let r = chap::response(i as u8, &tsecret, &c);
                        answers.push(("CHAP_N".into(), tuser));
                        answers.push(("CHAP_R".into(), text::hex(&r)));
                    }
                    (None, None) => {
                        if secrets.target.is_some() {
                            tracing::debug!(
                                "target has mutual CHAP secrets; initiator did not ask for them"
                            );
                        }
                    }
                    _ => return Some(self.fail(req, status::AUTH_FAILURE, &[])),
                }
                self.auth = Auth::Done;
                None
            }
            _ => None,
        }
    }
}

/// TSIHs are unique per target; a process-wide counter keeps them unique per member.
fn dir_tsih() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(1);
    loop {
        let t = NEXT.fetch_add(1, Ordering::Relaxed);
        if t != 0 {
            return t;
        }
    }
}
