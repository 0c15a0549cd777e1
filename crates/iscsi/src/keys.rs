//! Operational key negotiation on the target side (RFC 7143 §13).
//!
//! Each key has a rule: declarative (each side states its own), a list (the responder
//! picks the first it supports), min / max of the two numbers, or the boolean AND / OR.
//! The target answers each offered key with its result, `Irrelevant`, `NotUnderstood` or
//! `Reject`, as the RFC says.

use crate::text::parse_number;

/// The values in force for a session after login (RFC 7143 defaults until negotiated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams {
    pub header_digest: bool,
    pub data_digest: bool,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    /// The largest data segment the *initiator* accepts: the target's Data-In limit.
    pub initiator_max_recv: u32,
    /// The largest data segment the *target* accepts (declared by the target).
    pub target_max_recv: u32,
    pub max_burst: u32,
    pub first_burst: u32,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u32,
}

impl Default for SessionParams {
    fn default() -> Self {
        SessionParams {
            header_digest: false,
            data_digest: false,
            initial_r2t: true,
            immediate_data: true,
            initiator_max_recv: 8192,
            target_max_recv: 8192,
            max_burst: 262_144,
            first_burst: 65_536,
            default_time2wait: 2,
            default_time2retain: 20,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
        }
    }
}

/// What the target is willing to accept; the upper bounds of every min/max negotiation.
#[derive(Debug, Clone)]
pub struct TargetLimits {
    pub max_recv_data_segment_length: u32,
    pub max_burst: u32,
    pub first_burst: u32,
    pub max_outstanding_r2t: u32,
    /// Accept digests when an initiator offers them.
    pub digests: bool,
}

impl Default for TargetLimits {
    fn default() -> Self {
        TargetLimits {
            max_recv_data_segment_length: 262_144,
            max_burst: 1 << 20,
            first_burst: 262_144,
            max_outstanding_r2t: 16,
            digests: true,
        }
    }
}

/// The answer to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Respond with this value.
    Value(String),
    /// Respond `Irrelevant`.
    Irrelevant,
    /// Respond `NotUnderstood`.
    NotUnderstood,
    /// Respond `Reject` (a value outside the key's range or set).
    Reject,
    /// Declarative key the target takes note of and does not answer.
    Silent,
}

impl Answer {
    pub fn text(&self) -> Option<String> {
        match self {
            Answer::Value(v) => Some(v.clone()),
            Answer::Irrelevant => Some("Irrelevant".into()),
            Answer::NotUnderstood => Some("NotUnderstood".into()),
            Answer::Reject => Some("Reject".into()),
            Answer::Silent => None,
        }
    }
}

fn yes_no(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yn(b: bool) -> String {
    if b { "Yes" } else { "No" }.into()
}

fn number_in(v: &str, lo: u64, hi: u64) -> Option<u32> {
    parse_number(v)
        .filter(|n| (lo..=hi).contains(n))
        .map(|n| n as u32)
}

/// Keys that only mean something in a Normal session.
fn normal_only(key: &str) -> bool {
    matches!(
        key,
        "InitialR2T"
            | "ImmediateData"
            | "MaxBurstLength"
            | "FirstBurstLength"
            | "MaxOutstandingR2T"
            | "DataPDUInOrder"
            | "DataSequenceInOrder"
            | "MaxConnections"
            | "DefaultTime2Wait"
            | "DefaultTime2Retain"
            | "ErrorRecoveryLevel"
    )
}

/// Negotiate one operational key offered by the initiator, updating `p`.
pub fn negotiate(
    p: &mut SessionParams,
    limits: &TargetLimits,
    discovery: bool,
    key: &str,
    value: &str,
) -> Answer {
    if discovery && normal_only(key) {
        return Answer::Irrelevant;
    }
    match key {
        "HeaderDigest" | "DataDigest" => {
            let offered: Vec<&str> = value.split(',').collect();
            let pick = if limits.digests && offered.contains(&"CRC32C") {
                Some(true)
            } else if offered.contains(&"None") {
                Some(false)
            } else {
                None
            };
            match pick {
                Some(on) => {
                    if key == "HeaderDigest" {
                        p.header_digest = on;
                    } else {
                        p.data_digest = on;
                    }
                    Answer::Value(if on { "CRC32C" } else { "None" }.into())
                }
                None => Answer::Reject,
            }
        }
        "MaxConnections" => match number_in(value, 1, 65535) {
            Some(_) => Answer::Value("1".into()),
            None => Answer::Reject,
        },
        "InitialR2T" => match yes_no(value) {
            // OR: the target would do without R2T, so the initiator's value stands.
            Some(v) => {
                p.initial_r2t = v;
                Answer::Value(yn(v))
            }
            None => Answer::Reject,
        },
        "ImmediateData" => match yes_no(value) {
            // AND: the target accepts immediate data, so the initiator's value stands.
            Some(v) => {
                p.immediate_data = v;
                Answer::Value(yn(v))
            }
            None => Answer::Reject,
        },
        "MaxRecvDataSegmentLength" => match number_in(value, 512, (1 << 24) - 1) {
            Some(v) => {
                p.initiator_max_recv = v;
                Answer::Silent
            }
            None => Answer::Reject,
        },
        "MaxBurstLength" => match number_in(value, 512, (1 << 24) - 1) {
            Some(v) => {
                p.max_burst = v.min(limits.max_burst);
                Answer::Value(p.max_burst.to_string())
            }
            None => Answer::Reject,
        },
        "FirstBurstLength" => match number_in(value, 512, (1 << 24) - 1) {
            Some(v) => {
                p.first_burst = v.min(limits.first_burst);
                Answer::Value(p.first_burst.to_string())
            }
            None => Answer::Reject,
        },
        "DefaultTime2Wait" => match number_in(value, 0, 3600) {
            Some(v) => {
                p.default_time2wait = v.max(2);
                Answer::Value(p.default_time2wait.to_string())
            }
            None => Answer::Reject,
        },
        "DefaultTime2Retain" => match number_in(value, 0, 3600) {
            Some(v) => {
                p.default_time2retain = v.min(20);
                Answer::Value(p.default_time2retain.to_string())
            }
            None => Answer::Reject,
        },
        "MaxOutstandingR2T" => match number_in(value, 1, 65535) {
            Some(v) => {
                p.max_outstanding_r2t = v.min(limits.max_outstanding_r2t);
                Answer::Value(p.max_outstanding_r2t.to_string())
            }
            None => Answer::Reject,
        },
        "DataPDUInOrder" | "DataSequenceInOrder" => match yes_no(value) {
            // OR with the target's Yes.
            Some(_) => Answer::Value("Yes".into()),
            None => Answer::Reject,
        },
        "ErrorRecoveryLevel" => match number_in(value, 0, 2) {
            Some(_) => {
                p.error_recovery_level = 0;
                Answer::Value("0".into())
            }
            None => Answer::Reject,
        },
        "IFMarker" | "OFMarker" => match yes_no(value) {
            Some(_) => Answer::Value("No".into()),
            None => Answer::Reject,
        },
        "IFMarkInt" | "OFMarkInt" => Answer::Irrelevant,
        "TaskReporting" => {
            if value.split(',').any(|v| v == "RFC3720") {
                Answer::Value("RFC3720".into())
            } else {
                Answer::Reject
            }
        }
        "iSCSIProtocolLevel" => match number_in(value, 0, 31) {
            Some(v) => Answer::Value(v.min(1).to_string()),
            None => Answer::Reject,
        },
        "InitiatorAlias" => Answer::Silent,
        // Keys only a target may send.
        "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" => Answer::Reject,
        _ => Answer::NotUnderstood,
    }
}

/// Make the negotiated values consistent with each other (RFC 7143 §13.14).
pub fn finish(p: &mut SessionParams, limits: &TargetLimits) {
    p.target_max_recv = limits.max_recv_data_segment_length;
    if p.first_burst > p.max_burst {
        p.first_burst = p.max_burst;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neg(key: &str, value: &str) -> (Answer, SessionParams) {
        let mut p = SessionParams::default();
        let a = negotiate(&mut p, &TargetLimits::default(), false, key, value);
        (a, p)
    }

    #[test]
    fn digests_prefer_crc32c_when_offered() {
        let (a, p) = neg("HeaderDigest", "None,CRC32C");
        assert_eq!(a, Answer::Value("CRC32C".into()));
        assert!(p.header_digest);
        let (a, p) = neg("DataDigest", "None");
        assert_eq!(a, Answer::Value("None".into()));
        assert!(!p.data_digest);
        assert_eq!(neg("DataDigest", "MD5").0, Answer::Reject);
    }

    #[test]
    fn min_and_max_rules() {
        assert_eq!(neg("MaxBurstLength", "99999999").0, Answer::Reject);
        let (a, p) = neg("MaxBurstLength", "16776192");
        assert_eq!(a, Answer::Value((1 << 20).to_string()));
        assert_eq!(p.max_burst, 1 << 20);
        assert_eq!(neg("DefaultTime2Wait", "0").0, Answer::Value("2".into()));
        assert_eq!(neg("ErrorRecoveryLevel", "2").0, Answer::Value("0".into()));
        assert_eq!(neg("MaxConnections", "8").0, Answer::Value("1".into()));
    }

    #[test]
    fn booleans_and_unknowns() {
        let (a, p) = neg("InitialR2T", "No");
        assert_eq!(a, Answer::Value("No".into()));
        assert!(!p.initial_r2t);
        assert_eq!(neg("ImmediateData", "maybe").0, Answer::Reject);
        assert_eq!(neg("X-com.example.Thing", "1").0, Answer::NotUnderstood);
        assert_eq!(
            neg("MaxRecvDataSegmentLength", "65536")
                .1
                .initiator_max_recv,
            65536
        );
    }

    #[test]
    fn discovery_sessions_ignore_normal_only_keys() {
        let mut p = SessionParams::default();
        let a = negotiate(
            &mut p,
            &TargetLimits::default(),
            true,
            "MaxBurstLength",
            "512",
        );
        assert_eq!(a, Answer::Irrelevant);
        assert_eq!(p.max_burst, SessionParams::default().max_burst);
    }
}
