//! Ports for the listeners of a lab or a test on one machine.
//!
//! A port the kernel hands out for `bind(:0)` comes from the ephemeral range, the same
//! range it takes source ports from for outgoing connections. A lab picks every member's
//! ports first and starts the members one by one, so a port chosen that way could be
//! taken by an early member's connection to a peer before the later member listened on
//! it ("Address already in use", seen in CI when a lab came up or a killed member came
//! back). Ports below the ephemeral range are never used as source ports.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where the kernel's ephemeral range starts (Linux's default when it cannot be read).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// Ports this process has handed out. A lab picks every member's ports before it starts
/// any, so a port picked twice passes both bind checks and the second member to bind it
/// fails ("Address already in use", seen once in CI when three members came up at once).
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A port on 127.0.0.1 that nothing listens on, that outgoing connections never take and
/// that this process has not handed out before: a random one below the ephemeral range,
/// checked by binding it. Falls back to a port the kernel chooses when the range below
/// is too small or full.
pub fn free_local_port() -> std::io::Result<u16> {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let top = ephemeral_start();
    let bottom = 10_000u16;
    if top > bottom + 1000 {
        let span = u64::from(top - bottom);
        // Different processes picking at once start at different places.
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ (u64::from(std::process::id()) << 20);
        let mut x = seed | 1;
        for _ in 0..256 {
            // xorshift: cheap and good enough to spread the picks.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let port = bottom + (x % span) as u16;
            if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
                handed_out.insert(port);
                return Ok(port);
            }
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_never_gets_the_same_port_twice() {
        let mut seen = BTreeSet::new();
        for _ in 0..500 {
            let p = free_local_port().unwrap();
            assert!(seen.insert(p), "port {p} handed out twice");
        }
    }

    #[test]
    fn ports_are_free_and_below_the_ephemeral_range() {
        let top = ephemeral_start();
        for _ in 0..20 {
            let p = free_local_port().unwrap();
            assert!(p < top || top <= 11_000, "port {p}, ephemeral from {top}");
            TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
    }
}
