//! A small async client of QEMU's machine protocol (QMP) over a unix socket.
//!
//! QMP is one JSON object per line. On connect QEMU sends a greeting (`{"QMP": …}`); the
//! client must negotiate with `qmp_capabilities` before anything else. Each command may
//! carry an `id`, echoed in its reply (`{"return": …}` or `{"error": …}`); asynchronous
//! events (`{"event": …, "data": …, "timestamp": …}`) may arrive at any time, also between
//! a command and its reply.
//!
//! [`QmpClient`] sends commands from any task, matches replies to commands by id, and
//! broadcasts events to every [`QmpClient::subscribe`]r. When the connection is lost,
//! pending and later commands fail with [`ErrorKind::Disconnected`], event receivers see
//! their channel closed, and [`QmpClient::closed`] resolves.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;

use crate::error::{Error, ErrorKind, QmpError, Result};

/// How long [`QmpClient::execute`] waits for a reply unless told otherwise.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// How many events a slow subscriber may fall behind before it misses some.
const EVENT_BACKLOG: usize = 1024;

/// An asynchronous QMP event (`STOP`, `RESUME`, `SHUTDOWN`, `DEVICE_DELETED`, …).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event's name, e.g. `"STOP"`.
    pub name: String,
    /// Its data (`Value::Null` when it has none).
    pub data: Value,
    /// When QEMU emitted it, in microseconds since the epoch (0 when absent).
    pub timestamp_us: u64,
}

type Pending = HashMap<u64, oneshot::Sender<Result<Value>>>;

struct Shared {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Mutex<Pending>,
    /// `None` once the connection is lost: new subscribers get a closed channel.
    events: Mutex<Option<broadcast::Sender<Event>>>,
    /// Why the connection was lost, once it is.
    closed: watch::Sender<Option<String>>,
    next_id: AtomicU64,
    socket: PathBuf,
}

/// A connected, negotiated QMP client. Dropping it closes the connection.
pub struct QmpClient {
    shared: Arc<Shared>,
    reader: JoinHandle<()>,
    greeting: Value,
    command_timeout: Duration,
}

impl std::fmt::Debug for QmpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QmpClient")
            .field("socket", &self.shared.socket)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl QmpClient {
    /// Connects to the QMP socket at `path`, retrying until `timeout` while the socket does
    /// not exist yet or refuses (QEMU creates it shortly after starting), reads the greeting
    /// and negotiates capabilities.
    pub async fn connect(path: impl AsRef<Path>, timeout: Duration) -> Result<QmpClient> {
        let path = path.as_ref();
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    tracing::trace!(socket = %path.display(), error = %e, "QMP socket not ready");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    return Err(Error::with(
                        ErrorKind::Connect,
                        format!("connecting to {}", path.display()),
                        e,
                    ))
                }
            }
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let remaining = remaining.max(Duration::from_secs(1));
        match tokio::time::timeout(remaining, Self::handshake(stream, path)).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!("QMP handshake on {}", path.display()),
            )),
        }
    }

    async fn handshake(stream: UnixStream, path: &Path) -> Result<QmpClient> {
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read);
        let mut line = String::new();
        let n = lines
            .read_line(&mut line)
            .await
            .map_err(|e| Error::with(ErrorKind::Disconnected, "reading the QMP greeting", e))?;
        if n == 0 {
            return Err(Error::new(
                ErrorKind::Disconnected,
                format!("{} closed before its QMP greeting", path.display()),
            ));
        }
        let greeting: Value = serde_json::from_str(line.trim())
            .map_err(|e| Error::with(ErrorKind::Protocol, "parsing the QMP greeting", e))?;
        let greeting = match greeting.get("QMP") {
            Some(g) => g.clone(),
            None => {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    format!("expected a QMP greeting, got {}", line.trim()),
                ))
            }
        };
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        let (closed, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            writer: tokio::sync::Mutex::new(write),
            pending: Mutex::new(HashMap::new()),
            events: Mutex::new(Some(events)),
            closed,
            next_id: AtomicU64::new(1),
            socket: path.to_path_buf(),
        });
        let reader = tokio::spawn(read_loop(lines, Arc::clone(&shared)));
        let client = QmpClient {
            shared,
            reader,
            greeting,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
        };
        client.execute("qmp_capabilities", Value::Null).await?;
        Ok(client)
    }

    /// QEMU's greeting (`{"version": …, "capabilities": […]}`).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// The socket this client is connected to.
    pub fn socket(&self) -> &Path {
        &self.shared.socket
    }

    /// Sets how long [`execute`](Self::execute) waits for a reply.
    pub fn set_command_timeout(&mut self, timeout: Duration) {
        self.command_timeout = timeout;
    }

    /// A receiver of every event from now on. After the connection is lost, the receiver
    /// reports its channel closed.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        match &*self.shared.events.lock().unwrap() {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    /// Whether the connection is still up.
    pub fn is_connected(&self) -> bool {
        self.shared.closed.borrow().is_none()
    }

    /// Resolves when the connection is lost, with the reason.
    pub async fn closed(&self) -> String {
        let mut rx = self.shared.closed.subscribe();
        loop {
            if let Some(reason) = rx.borrow_and_update().clone() {
                return reason;
            }
            if rx.changed().await.is_err() {
                return "the QMP client is gone".into();
            }
        }
    }

    /// Runs `command` with `arguments` (an object, or `Value::Null` for none) and returns
    /// the `return` value of its reply.
    pub async fn execute(&self, command: &str, arguments: Value) -> Result<Value> {
        self.execute_timeout(command, arguments, self.command_timeout)
            .await
    }

    /// [`execute`](Self::execute) with an explicit timeout.
    pub async fn execute_timeout(
        &self,
        command: &str,
        arguments: Value,
        timeout: Duration,
    ) -> Result<Value> {
        if let Some(reason) = self.shared.closed.borrow().clone() {
            return Err(Error::new(
                ErrorKind::Disconnected,
                format!("{command}: {reason}"),
            ));
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "execute": command, "id": id });
        match arguments {
            Value::Null => {}
            Value::Object(_) => {
                msg["arguments"] = arguments;
            }
            other => {
                return Err(Error::new(
                    ErrorKind::Invalid,
                    format!("{command}: arguments must be an object, not {other}"),
                ))
            }
        }
        let (tx, rx) = oneshot::channel();
        self.shared.pending.lock().unwrap().insert(id, tx);
        let mut line = msg.to_string();
        line.push('\n');
        tracing::trace!(socket = %self.shared.socket.display(), %line, "QMP send");
        let sent = {
            let mut w = self.shared.writer.lock().await;
            match w.write_all(line.as_bytes()).await {
                Ok(()) => w.flush().await,
                Err(e) => Err(e),
            }
        };
        if let Err(e) = sent {
            self.shared.pending.lock().unwrap().remove(&id);
            return Err(Error::with(
                ErrorKind::Disconnected,
                format!("sending {command}"),
                e,
            ));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => reply.map_err(|mut e| {
                e.context = format!("{command}: {}", e.context);
                e
            }),
            Ok(Err(_)) => Err(Error::new(
                ErrorKind::Disconnected,
                format!("{command}: the connection was lost before the reply"),
            )),
            Err(_) => {
                self.shared.pending.lock().unwrap().remove(&id);
                Err(Error::new(
                    ErrorKind::Timeout,
                    format!("{command}: no reply within {timeout:?}"),
                ))
            }
        }
    }
}

impl Drop for QmpClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read_loop(mut lines: BufReader<OwnedReadHalf>, shared: Arc<Shared>) {
    let mut line = String::new();
    let reason = loop {
        line.clear();
        match lines.read_line(&mut line).await {
            Ok(0) => break "QEMU closed the QMP connection".to_string(),
            Ok(_) => {}
            Err(e) => break format!("reading from QMP: {e}"),
        }
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        tracing::trace!(socket = %shared.socket.display(), %text, "QMP receive");
        let msg: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(socket = %shared.socket.display(), error = %e, %text, "not JSON on QMP");
                continue;
            }
        };
        dispatch(&shared, msg);
    };
    tracing::debug!(socket = %shared.socket.display(), %reason, "QMP connection lost");
    // Order: mark closed first so that no new command registers after we drained.
    shared.closed.send_replace(Some(reason.clone()));
    shared.events.lock().unwrap().take();
    let pending: Vec<_> = shared.pending.lock().unwrap().drain().collect();
    for (_, tx) in pending {
        let _ = tx.send(Err(Error::new(ErrorKind::Disconnected, reason.clone())));
    }
}

fn dispatch(shared: &Shared, msg: Value) {
    if let Some(name) = msg.get("event").and_then(Value::as_str) {
        let timestamp_us = msg
            .get("timestamp")
            .map(|t| {
                let s = t.get("seconds").and_then(Value::as_u64).unwrap_or(0);
                let us = t.get("microseconds").and_then(Value::as_u64).unwrap_or(0);
                s * 1_000_000 + us
            })
            .unwrap_or(0);
        let event = Event {
            name: name.to_string(),
            data: msg.get("data").cloned().unwrap_or(Value::Null),
            timestamp_us,
        };
        tracing::debug!(socket = %shared.socket.display(), event = %event.name, data = %event.data, "QMP event");
        if let Some(tx) = &*shared.events.lock().unwrap() {
            let _ = tx.send(event);
        }
        return;
    }
    let Some(id) = msg.get("id").and_then(Value::as_u64) else {
        tracing::warn!(socket = %shared.socket.display(), %msg, "QMP reply without a known id");
        return;
    };
    let Some(tx) = shared.pending.lock().unwrap().remove(&id) else {
        tracing::debug!(socket = %shared.socket.display(), id, "QMP reply to a command no one waits for");
        return;
    };
    let result = if let Some(ret) = msg.get("return") {
        Ok(ret.clone())
    } else if let Some(err) = msg.get("error") {
        let e = QmpError {
            class: err
                .get("class")
                .and_then(Value::as_str)
                .unwrap_or("GenericError")
                .to_string(),
            desc: err
                .get("desc")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        };
        Err(Error::with(ErrorKind::Command, e.desc.clone(), e))
    } else {
        Err(Error::new(
            ErrorKind::Protocol,
            format!("a reply with neither return nor error: {msg}"),
        ))
    };
    let _ = tx.send(result);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::UnixListener;

    /// A fake QEMU: greets, accepts `qmp_capabilities`, then hands each command to `script`,
    /// which returns the lines to send back (events and/or replies).
    async fn fake_qemu<F>(listener: UnixListener, mut script: F)
    where
        F: FnMut(&Value) -> Vec<Value> + Send + 'static,
    {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting = json!({"QMP": {"version": {"qemu": {"major": 10, "minor": 0, "micro": 2}, "package": ""}, "capabilities": ["oob"]}});
        write
            .write_all(format!("{greeting}\r\n").as_bytes())
            .await
            .unwrap();
        while let Ok(Some(line)) = lines.next_line().await {
            let cmd: Value = serde_json::from_str(&line).unwrap();
            let out = if cmd["execute"] == "qmp_capabilities" {
                vec![json!({"return": {}, "id": cmd["id"]})]
            } else {
                script(&cmd)
            };
            for v in out {
                if v == json!("hangup") {
                    return;
                }
                write
                    .write_all(format!("{v}\r\n").as_bytes())
                    .await
                    .unwrap();
            }
        }
    }

    fn socket() -> (tempfile::TempDir, PathBuf, UnixListener) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        (dir, path, listener)
    }

    fn event(name: &str, data: Value) -> Value {
        json!({"event": name, "data": data, "timestamp": {"seconds": 1700000000, "microseconds": 5}})
    }

    #[tokio::test]
    async fn connects_negotiates_and_executes() {
        let (_dir, path, listener) = socket();
        tokio::spawn(fake_qemu(listener, |cmd| {
            assert_eq!(cmd["execute"], "query-status");
            vec![json!({"return": {"status": "running", "running": true}, "id": cmd["id"]})]
        }));
        let qmp = QmpClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(qmp.greeting()["version"]["qemu"]["major"], 10);
        let r = qmp.execute("query-status", Value::Null).await.unwrap();
        assert_eq!(r["status"], "running");
    }

    #[tokio::test]
    async fn an_event_between_a_command_and_its_reply_is_delivered_and_the_reply_matched() {
        let (_dir, path, listener) = socket();
        tokio::spawn(fake_qemu(listener, |cmd| {
            vec![
                event("STOP", Value::Null),
                event(
                    "DEVICE_DELETED",
                    json!({"device": "vd0", "path": "/machine/peripheral/vd0"}),
                ),
                json!({"return": {}, "id": cmd["id"]}),
            ]
        }));
        let qmp = QmpClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        let mut events = qmp.subscribe();
        qmp.execute("stop", Value::Null).await.unwrap();
        let e = events.recv().await.unwrap();
        assert_eq!(e.name, "STOP");
        assert_eq!(e.timestamp_us, 1_700_000_000_000_005);
        let e = events.recv().await.unwrap();
        assert_eq!(e.name, "DEVICE_DELETED");
        assert_eq!(e.data["device"], "vd0");
    }

    #[tokio::test]
    async fn concurrent_commands_get_their_own_replies_even_out_of_order() {
        let (_dir, path, listener) = socket();
        let mut held: Option<Value> = None;
        tokio::spawn(fake_qemu(listener, move |cmd| {
            // Hold the first command's reply back until the second arrives, then answer
            // the second first.
            match held.take() {
                None => {
                    held = Some(cmd.clone());
                    vec![]
                }
                Some(first) => vec![
                    json!({"return": {"name": cmd["arguments"]["n"]}, "id": cmd["id"]}),
                    json!({"return": {"name": first["arguments"]["n"]}, "id": first["id"]}),
                ],
            }
        }));
        let qmp = QmpClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        let (a, b) = tokio::join!(qmp.execute("echo", json!({"n": "a"})), async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            qmp.execute("echo", json!({"n": "b"})).await
        });
        assert_eq!(a.unwrap()["name"], "a");
        assert_eq!(b.unwrap()["name"], "b");
    }

    #[tokio::test]
    async fn an_error_reply_carries_class_and_description() {
        let (_dir, path, listener) = socket();
        tokio::spawn(fake_qemu(listener, |cmd| {
            vec![
                json!({"error": {"class": "DeviceNotFound", "desc": "Device 'x' not found"}, "id": cmd["id"]}),
            ]
        }));
        let qmp = QmpClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        let e = qmp
            .execute("device_del", json!({"id": "x"}))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Command);
        assert_eq!(e.qmp().unwrap().class, "DeviceNotFound");
        assert!(e.to_string().contains("device_del"), "{e}");
    }

    #[tokio::test]
    async fn connection_loss_fails_pending_commands_and_closes_events() {
        let (_dir, path, listener) = socket();
        tokio::spawn(fake_qemu(listener, |_| {
            vec![event("SHUTDOWN", json!({"guest": false})), json!("hangup")]
        }));
        let qmp = QmpClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        let mut events = qmp.subscribe();
        let e = qmp.execute("quit", Value::Null).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Disconnected, "{e}");
        assert_eq!(events.recv().await.unwrap().name, "SHUTDOWN");
        assert!(matches!(
            events.recv().await,
            Err(broadcast::error::RecvError::Closed)
        ));
        let reason = tokio::time::timeout(Duration::from_secs(5), qmp.closed())
            .await
            .unwrap();
        assert!(reason.contains("closed"), "{reason}");
        assert!(!qmp.is_connected());
        let e = qmp.execute("query-status", Value::Null).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Disconnected);
        assert!(matches!(
            qmp.subscribe().recv().await,
            Err(broadcast::error::RecvError::Closed)
        ));
    }

    #[tokio::test]
    async fn a_missing_socket_times_out_as_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let e = QmpClient::connect(dir.path().join("nope.sock"), Duration::from_millis(300))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Connect);
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn a_peer_that_is_not_qmp_is_a_protocol_error() {
        let (_dir, path, listener) = socket();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"{\"hello\": 1}\n").await.unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        let e = QmpClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Protocol);
    }

    #[tokio::test]
    async fn a_silent_command_times_out() {
        let (_dir, path, listener) = socket();
        tokio::spawn(fake_qemu(listener, |_| vec![]));
        let qmp = QmpClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        let e = qmp
            .execute_timeout("query-status", Value::Null, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Timeout);
        assert!(qmp.is_connected());
    }
}
