//! Waiting a little for the initiator's next PDU before going to sleep (busy polling).
//!
//! At queue depth 1 an initiator sends its next command a few tens of microseconds after it
//! got the last answer. A connection that sleeps in the meantime pays for a wake-up when
//! that command arrives: on a virtual machine whose idle cores halt, a wake-up from another
//! core is an inter-processor interrupt through the hypervisor, about 30 µs here (a loopback
//! ping-pong between two processes takes 68 µs on two cores, 6 µs on one). So after each
//! event the connection looks at its socket for up to `window` before it sleeps, as Linux's
//! `busy_read` does for a socket, giving its worker to the other tasks between looks:
//!
//! ```text
//!  answer sent ─► peek (MSG_PEEK | MSG_DONTWAIT) ─ data ─► read and execute at once
//!                   │ nothing yet: yield to the other tasks, look again
//!                   └ window over, output waiting or a command finished ─► sleep as before
//! ```
//!
//! The portal looks only after a batch of one command: with several at a time the
//! initiator is busy making more, and on a machine it shares the looks take the core it
//! needs. Measured on one member (tmpfs, `iscsi-perf`, 4 KiB random reads): at QD1
//! 12.6–14.9 k IOPS without looking, 24.3–25.8 k with a 30 µs window, 29.6–40.3 k with
//! 50 µs after single commands; QD32 reads and 1 MiB reads within the noise; 4 KiB
//! writes at QD32 (`qemu-img bench`) about 4 % fewer. The cost is CPU while commands come:
//! at QD1 the connection's worker stays busy between commands instead of sleeping. Off
//! unless member.toml sets `busy_poll_us` ([`DEFAULT_WINDOW`] says why).

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// The default window: none. Looking is for a member with cores to spare: where the
/// initiators share the member's cores, the looks take cycles they need (through
/// `qemu-nbd` on the member's own machine, QD1 latency rose from 0.91× to 1.06× tgtd's
/// at p50 and from 1.00× to 1.21× at p99 with a 50 µs window, while `iscsi-perf`'s QD1
/// reads went from 1.53× to 3.88×). 50 µs is the window measured.
pub const DEFAULT_WINDOW: Duration = Duration::ZERO;

/// Return once `stream` has something to read (or an error or end to report), once
/// `window` has passed, or as soon as `other_work` says something else is waiting for this
/// connection. Yields to the runtime between looks.
pub async fn next_input(
    stream: &TcpStream,
    window: Duration,
    mut other_work: impl FnMut() -> bool,
) {
    if window.is_zero() {
        return;
    }
    let since = Instant::now();
    let fd = stream.as_raw_fd();
    while since.elapsed() < window && !other_work() {
        if !nothing_to_read(fd) {
            return;
        }
        tokio::task::yield_now().await;
    }
}

/// Whether the socket has no byte waiting, no end and no error: a one-byte peek that would
/// block.
fn nothing_to_read(fd: std::os::fd::RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: `fd` is the open socket of a `TcpStream` borrowed for this call; the peek
    // writes at most one byte into `byte` and consumes nothing.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), server.unwrap().0)
    }

    #[tokio::test]
    async fn returns_when_data_arrives_and_leaves_it_unread() {
        let (mut client, server) = pair().await;
        client.write_all(b"x").await.unwrap();
        let t = Instant::now();
        // A window far longer than the test: only the byte can end the wait.
        next_input(&server, Duration::from_secs(30), || false).await;
        assert!(t.elapsed() < Duration::from_secs(10));
        let mut buf = [0u8; 4];
        server.readable().await.unwrap();
        assert_eq!(
            server.try_read(&mut buf).unwrap(),
            1,
            "the peek consumed the byte"
        );
    }

    #[tokio::test]
    async fn returns_when_the_window_ends_or_other_work_waits() {
        let (_client, server) = pair().await;
        let t = Instant::now();
        next_input(&server, Duration::from_millis(5), || false).await;
        assert!(t.elapsed() >= Duration::from_millis(5));
        let t = Instant::now();
        next_input(&server, Duration::from_secs(30), || true).await;
        assert!(t.elapsed() < Duration::from_secs(10));
        next_input(&server, Duration::ZERO, || false).await;
    }

    #[tokio::test]
    async fn returns_at_the_end_of_the_stream() {
        let (client, server) = pair().await;
        drop(client);
        let t = Instant::now();
        next_input(&server, Duration::from_secs(30), || false).await;
        assert!(t.elapsed() < Duration::from_secs(10));
    }
}
