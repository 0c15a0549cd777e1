//! CHAP (RFC 1994) as iSCSI uses it (RFC 7143 §12.1.3), MD5 only.
//!
//! ```text
//! initiator                          target
//!   AuthMethod=CHAP,None       ->
//!                              <-    AuthMethod=CHAP
//!   CHAP_A=5                   ->
//!                              <-    CHAP_A=5 CHAP_I=<id> CHAP_C=<challenge>
//!   CHAP_N=<user> CHAP_R=<md5(id|secret|challenge)>
//!   [CHAP_I=<id'> CHAP_C=<c'>] ->    (mutual: the target proves itself)
//!                              <-    [CHAP_N=<tuser> CHAP_R=<md5(id'|tsecret|c')>]
//! ```

use md5::{Digest, Md5};
use rand::RngCore;

/// CHAP algorithm number for MD5.
pub const ALGORITHM_MD5: &str = "5";
/// Length of the challenges the target sends.
pub const CHALLENGE_LEN: usize = 16;

/// The response to a challenge: MD5(id || secret || challenge).
pub fn response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

/// A fresh challenge (identifier, challenge bytes).
pub fn new_challenge() -> (u8, Vec<u8>) {
    let mut rng = rand::thread_rng();
    let mut c = vec![0u8; CHALLENGE_LEN];
    rng.fill_bytes(&mut c);
    (rng.next_u32() as u8, c)
}

/// Constant-time comparison, so a response's timing reveals nothing.
pub fn verify(expected: &[u8], got: &[u8]) -> bool {
    expected.len() == got.len()
        && expected
            .iter()
            .zip(got)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_matches_rfc1994_construction() {
        // MD5 of 0x01 || "secret" || 0x00..0x0f computed independently.
        let challenge: Vec<u8> = (0..16).collect();
        let r = response(1, b"secret", &challenge);
        let mut h = Md5::new();
        let mut all = vec![1u8];
        all.extend_from_slice(b"secret");
        all.extend_from_slice(&challenge);
        h.update(&all);
        let expect: [u8; 16] = h.finalize().into();
        assert_eq!(r, expect);
        assert!(verify(&r, &expect));
        assert!(!verify(&r, &expect[..15]));
    }

    #[test]
    fn challenges_differ() {
        assert_ne!(new_challenge().1, new_challenge().1);
    }
}
