//! Tokio around the engines: [`PeerClient`] (one pipelined TCP connection to a peer) and
//! [`serve`] (accept peers, hand their requests to a handler).
//!
//! The client writes frames through a writer task and matches responses in a reader task:
//! any number of callers share one connection, each waiting only for its own answer. When
//! the connection goes, every waiting call fails with [`ErrorKind::Disconnected`] at once;
//! the client is then dead for good and the caller connects again (its policy, not ours).
//!
//! [`ErrorKind::Disconnected`]: crate::ErrorKind::Disconnected

use crate::engine::{
    ClientEngine, ClientEvent, Config, Established, Request, ServerAction, ServerEngine,
};
use crate::error::{Error, ProtocolError, WireError};
use crate::message::{ErrorCode, ErrorReply, Message};
use crate::wire::{Decoder, Encoded, Frame, MAX_PAYLOAD};
use bytes::{Buf, Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

const READ_CHUNK: usize = 64 * 1024;
/// Frames the writer task coalesces into one flush.
const WRITE_BATCH: usize = 64;
/// Bytes the writer task gathers before it writes without waiting for the rest of a batch.
const WRITE_EARLY: usize = 256 * 1024;
/// Pieces per `writev`.
const IOV: usize = 128;
/// Answers a server queues for its writer before it stops reading the connection.
const SERVER_QUEUE: usize = 1024;

/// How a client connects and how long it waits.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub engine: Config,
    /// For the TCP connect and the handshake, each.
    pub connect_timeout: Duration,
    /// For one call, from the moment it is made (including waiting for an in-flight slot).
    pub request_timeout: Duration,
}

impl ClientConfig {
    pub fn new(engine: Config) -> Self {
        ClientConfig {
            engine,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        }
    }
}

type Reply = Result<Message, Error>;

/// One request awaited by a caller; the permit is its in-flight slot, held until the
/// answer arrives even if the caller gave up (the server is still working on it).
struct Waiter {
    reply: Option<oneshot::Sender<Reply>>,
    _permit: OwnedSemaphorePermit,
}

struct ClientState {
    engine: ClientEngine,
    waiters: HashMap<u64, Waiter>,
    /// Why the connection is gone, once it is.
    closed: Option<String>,
}

type Shared = Arc<Mutex<ClientState>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, ClientState> {
    // A panic while holding the lock leaves plain maps behind; they stay usable.
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Inner {
    shared: Shared,
    /// Encoded frames to the writer task; dropping it (with the last client) closes the
    /// connection.
    writer: mpsc::UnboundedSender<Encoded>,
    slots: Arc<Semaphore>,
    established: Established,
    request_timeout: Duration,
    reader: JoinHandle<()>,
    peer_addr: SocketAddr,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A connection to one peer member, shared by any number of concurrent callers.
#[derive(Clone)]
pub struct PeerClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerClient")
            .field("peer", &self.inner.established.peer)
            .field("addr", &self.inner.peer_addr)
            .finish()
    }
}

impl PeerClient {
    /// Connect and complete the handshake. A refusal by the peer (another group, no
    /// common version) is an [`Error::Remote`] with the peer's reason.
    pub async fn connect(addr: impl ToSocketAddrs, config: ClientConfig) -> Result<Self, Error> {
        let limit = config.connect_timeout;
        let stream = tokio::time::timeout(limit, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::Timeout(limit))??;
        stream.set_nodelay(true)?;
        let peer_addr = stream.peer_addr()?;
        let (mut read, mut write) = stream.into_split();
        let mut engine = ClientEngine::new(config.engine.clone());
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let established = tokio::time::timeout(limit, async {
            write.write_all(&engine.hello().to_bytes()?).await?;
            loop {
                if let Some(frame) = Decoder::default().decode(&mut buf)? {
                    return match engine.on_frame(frame) {
                        Ok(ClientEvent::Established(e)) => Ok(e),
                        Ok(other) => Err(Error::Disconnected(format!(
                            "unexpected {other:?} during the handshake"
                        ))),
                        Err(ProtocolError::Refused(reply)) => Err(Error::Remote(reply)),
                        Err(e) => Err(e.into()),
                    };
                }
                if read.read_buf(&mut buf).await? == 0 {
                    return Err(Error::Disconnected(
                        "peer closed the connection during the handshake".into(),
                    ));
                }
            }
        })
        .await
        .map_err(|_| Error::Timeout(limit))??;

        let shared: Shared = Arc::new(Mutex::new(ClientState {
            engine,
            waiters: HashMap::new(),
            closed: None,
        }));
        let slots = Arc::new(Semaphore::new(established.max_in_flight as usize));
        let (writer, frames) = mpsc::unbounded_channel();
        tokio::spawn(write_frames(write, frames));
        let reader = tokio::spawn(read_responses(read, buf, shared.clone(), slots.clone()));
        Ok(PeerClient {
            inner: Arc::new(Inner {
                shared,
                writer,
                slots,
                established,
                request_timeout: config.request_timeout,
                reader,
                peer_addr,
            }),
        })
    }

    /// The handshake's outcome: the peer's member id, the version, the in-flight limit.
    pub fn established(&self) -> Established {
        self.inner.established
    }

    /// Whether the connection is gone (every further call fails).
    pub fn is_closed(&self) -> bool {
        lock(&self.inner.shared).closed.is_some()
    }

    /// Send a request made under map `epoch` and wait for its answer, at most the
    /// configured request timeout. An Error message from the peer is [`Error::Remote`].
    pub async fn call(&self, epoch: u64, message: Message) -> Result<Message, Error> {
        self.call_within(self.inner.request_timeout, epoch, message)
            .await
    }

    /// [`call`](Self::call) with its own time limit.
    pub async fn call_within(
        &self,
        limit: Duration,
        epoch: u64,
        message: Message,
    ) -> Result<Message, Error> {
        match tokio::time::timeout(limit, self.call_unbounded(epoch, message)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout(limit)),
        }
    }

    async fn call_unbounded(&self, epoch: u64, message: Message) -> Result<Message, Error> {
        let inner = &self.inner;
        let permit = match inner.slots.clone().acquire_owned().await {
            Ok(permit) => permit,
            Err(_) => return Err(self.disconnected()),
        };
        let (reply, answer) = oneshot::channel();
        let frame = {
            let mut state = lock(&inner.shared);
            if let Some(why) = &state.closed {
                return Err(Error::Disconnected(why.clone()));
            }
            let frame = state.engine.request(epoch, message)?;
            state.waiters.insert(
                frame.request_id,
                Waiter {
                    reply: Some(reply),
                    _permit: permit,
                },
            );
            frame
        };
        // From here on, a caller that stops waiting (timeout, dropped future) abandons the
        // request instead of leaving a waiter behind.
        let mut pending = Pending {
            shared: &inner.shared,
            request_id: frame.request_id,
            answered: false,
        };
        let encoded = frame.encode_parts()?;
        if inner.writer.send(encoded).is_err() {
            return Err(self.disconnected());
        }
        let result = answer.await;
        pending.answered = true;
        result.unwrap_or_else(|_| Err(self.disconnected()))
    }

    fn disconnected(&self) -> Error {
        let why = lock(&self.inner.shared).closed.clone();
        Error::Disconnected(why.unwrap_or_else(|| "connection closed".into()))
    }
}

/// Abandons its request when dropped before the answer came.
struct Pending<'a> {
    shared: &'a Shared,
    request_id: u64,
    answered: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let mut state = lock(self.shared);
        if let Some(waiter) = state.waiters.get_mut(&self.request_id) {
            waiter.reply = None;
        }
        state.engine.abandon(self.request_id);
    }
}

/// Where a writer task takes its frames from: the client's unbounded queue (bounded in
/// practice by the in-flight slots) or the server's bounded one (so that a peer that sends
/// faster than it reads answers stops being read).
trait FrameQueue: Send + 'static {
    fn recv(&mut self) -> impl Future<Output = Option<Encoded>> + Send;
    fn try_recv(&mut self) -> Option<Encoded>;
}

impl FrameQueue for mpsc::UnboundedReceiver<Encoded> {
    fn recv(&mut self) -> impl Future<Output = Option<Encoded>> + Send {
        mpsc::UnboundedReceiver::recv(self)
    }
    fn try_recv(&mut self) -> Option<Encoded> {
        mpsc::UnboundedReceiver::try_recv(self).ok()
    }
}

impl FrameQueue for mpsc::Receiver<Encoded> {
    fn recv(&mut self) -> impl Future<Output = Option<Encoded>> + Send {
        mpsc::Receiver::recv(self)
    }
    fn try_recv(&mut self) -> Option<Encoded> {
        mpsc::Receiver::try_recv(self).ok()
    }
}

async fn write_frames(mut write: OwnedWriteHalf, mut frames: impl FrameQueue) {
    // The frames' pieces waiting for a `writev`: a write's data goes from the buffer it
    // arrived in to the socket without a copy of ours.
    let mut pending = VecDeque::new();
    let mut pending_bytes = 0;
    while let Some(first) = frames.recv().await {
        let mut next = Some(first);
        let mut written = 0;
        let mut drained = false;
        loop {
            while let Some(frame) = next.take() {
                pending_bytes += frame.len();
                pending.extend(frame.into_parts().into_iter().filter(|p| !p.is_empty()));
                written += 1;
                if pending_bytes >= WRITE_EARLY {
                    if let Err(e) = write_out(&mut write, &mut pending).await {
                        tracing::debug!(error = %e, "peer connection: write failed");
                        return;
                    }
                    pending_bytes = 0;
                }
                if written < WRITE_BATCH {
                    next = frames.try_recv();
                }
            }
            // Let the tasks that are ready run before sending, again while that brought
            // more: under load they queue frames for this connection too, and those leave
            // with the same system call. (Without this every frame was one `send` of its
            // own, and one wake-up and `recv` at the other end: a replicated write cost
            // 3–4 of each.) Idle, it is one yield.
            if drained || written >= WRITE_BATCH {
                break;
            }
            tokio::task::yield_now().await;
            next = frames.try_recv();
            drained = next.is_none();
        }
        if let Err(e) = write_out(&mut write, &mut pending).await {
            tracing::debug!(error = %e, "peer connection: write failed");
            return;
        }
        pending_bytes = 0;
    }
    let _ = write.shutdown().await;
}

/// Write every piece of `pending`, as few `writev`s as the socket allows.
async fn write_out(
    write: &mut OwnedWriteHalf,
    pending: &mut VecDeque<Bytes>,
) -> std::io::Result<()> {
    while !pending.is_empty() {
        let mut slices = [IoSlice::new(&[]); IOV];
        let count = pending
            .iter()
            .zip(slices.iter_mut())
            .map(|(piece, slice)| *slice = IoSlice::new(piece))
            .count();
        let mut sent = write.write_vectored(&slices[..count]).await?;
        if sent == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while sent > 0 {
            let Some(front) = pending.front_mut() else {
                break;
            };
            if front.len() <= sent {
                sent -= front.len();
                pending.pop_front();
            } else {
                front.advance(sent);
                sent = 0;
            }
        }
    }
    Ok(())
}

async fn read_responses(
    mut read: OwnedReadHalf,
    mut buf: BytesMut,
    shared: Shared,
    slots: Arc<Semaphore>,
) {
    let decoder = Decoder::default();
    let why = 'connection: loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    if let Err(e) = deliver(&shared, frame) {
                        break 'connection format!("protocol: {e}");
                    }
                }
                Ok(None) => break,
                Err(WireError::Payload {
                    request_id,
                    kind,
                    error,
                }) => {
                    let mut state = lock(&shared);
                    if !state.engine.on_malformed_response(request_id) {
                        break 'connection format!(
                            "malformed response to request {request_id}, which is not in flight"
                        );
                    }
                    if let Some(reply) = state.waiters.remove(&request_id).and_then(|w| w.reply) {
                        let _ = reply.send(Err(Error::Wire(WireError::Payload {
                            request_id,
                            kind,
                            error,
                        })));
                    }
                }
                Err(e) => break 'connection format!("wire: {e}"),
            }
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        match read.read_buf(&mut buf).await {
            Ok(0) => break "peer closed the connection".to_string(),
            Ok(_) => {}
            Err(e) => break format!("read: {e}"),
        }
    };
    tracing::debug!(reason = %why, "peer connection closed");
    let mut state = lock(&shared);
    state.engine.close();
    for (_, waiter) in state.waiters.drain() {
        if let Some(reply) = waiter.reply {
            let _ = reply.send(Err(Error::Disconnected(why.clone())));
        }
    }
    state.closed = Some(why);
    // Callers waiting for a slot wake up and see the connection is gone.
    slots.close();
}

fn deliver(shared: &Shared, frame: Frame) -> Result<(), ProtocolError> {
    let mut state = lock(shared);
    match state.engine.on_frame(frame)? {
        ClientEvent::Response {
            request_id,
            message,
            ..
        } => {
            let waiter = state.waiters.remove(&request_id);
            if let Some(reply) = waiter.and_then(|w| w.reply) {
                let _ = reply.send(match message {
                    Message::Error(e) => Err(Error::Remote(e)),
                    other => Ok(other),
                });
            }
        }
        ClientEvent::Abandoned { request_id } => {
            state.waiters.remove(&request_id);
        }
        ClientEvent::Established(_) => {}
    }
    Ok(())
}

/// How a server answers and what it believes the current map epoch is.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub engine: Config,
    /// A connection that has not said Hello by then is closed.
    pub handshake_timeout: Duration,
    /// This member's placement map epoch; the member updates it as the map changes.
    pub epoch: Arc<AtomicU64>,
    /// The highest epoch a peer acted under that is newer than `epoch`: the member watches
    /// it to fetch the newer map without waiting for the control plane to push it.
    pub peer_ahead: Arc<tokio::sync::watch::Sender<u64>>,
}

impl ServerConfig {
    pub fn new(engine: Config, epoch: Arc<AtomicU64>) -> Self {
        ServerConfig {
            engine,
            handshake_timeout: Duration::from_secs(5),
            epoch,
            peer_ahead: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }
}

/// Accept peers on `listener` for ever, each connection on its own task, every request
/// answered by `handler` (concurrently: answers go out as they complete, in any order).
///
/// A handler future that panics is answered with an `Io` error. A handler that is running
/// when its connection closes still runs to completion; its answer is dropped.
pub async fn serve<H, F>(listener: TcpListener, config: ServerConfig, handler: H)
where
    H: Fn(Request) -> F + Send + Sync + 'static,
    F: Future<Output = Message> + Send + 'static,
{
    let handler = Arc::new(handler);
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let config = config.clone();
                let handler = handler.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_connection(stream, config, handler).await {
                        tracing::debug!(peer = %addr, error = %e, "peer connection ended");
                    }
                });
            }
            Err(e) => {
                // Out of descriptors and the like: transient, keep serving.
                tracing::warn!(error = %e, "accepting a peer connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serve one accepted connection until it closes.
pub async fn serve_connection<H, F>(
    stream: TcpStream,
    config: ServerConfig,
    handler: Arc<H>,
) -> Result<(), Error>
where
    H: Fn(Request) -> F + Send + Sync + 'static,
    F: Future<Output = Message> + Send + 'static,
{
    stream.set_nodelay(true)?;
    let (mut read, write) = stream.into_split();
    let (out, frames) = mpsc::channel(SERVER_QUEUE);
    tokio::spawn(write_frames(write, frames));
    let (done, mut answers) = mpsc::unbounded_channel::<(u64, Message)>();
    let mut engine = ServerEngine::new(config.engine.clone());
    let decoder = Decoder::default();
    let handshake_deadline = tokio::time::Instant::now() + config.handshake_timeout;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let send = |frame: Frame| {
        let out = out.clone();
        async move {
            out.send(frame.encode_parts()?)
                .await
                .map_err(|_| Error::Disconnected("writer gone".into()))
        }
    };
    loop {
        loop {
            let epoch = config.epoch.load(Ordering::Acquire);
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    for action in engine.on_frame(frame, epoch)? {
                        match action {
                            ServerAction::Send(frame) => send(frame).await?,
                            ServerAction::Established(e) => {
                                tracing::debug!(
                                    peer = e.peer,
                                    version = e.version,
                                    "peer connected"
                                )
                            }
                            ServerAction::Handle(request) => {
                                if let Some((id, answer)) =
                                    spawn_handler(&handler, request, done.clone())
                                {
                                    let epoch = config.epoch.load(Ordering::Acquire);
                                    send(answer_frame(&mut engine, id, epoch, answer)?).await?;
                                }
                            }
                            ServerAction::PeerAhead { epoch } => {
                                config.peer_ahead.send_if_modified(|highest| {
                                    let newer = epoch > *highest;
                                    if newer {
                                        tracing::info!(epoch, "a peer acts under a newer map");
                                        *highest = epoch;
                                    }
                                    newer
                                });
                            }
                            ServerAction::Close => return Ok(()),
                        }
                    }
                }
                Ok(None) => break,
                Err(WireError::Payload {
                    request_id,
                    kind,
                    error,
                }) => match engine.on_malformed_request(request_id, epoch, &error.to_string()) {
                    Some(answer) => send(answer).await?,
                    None => {
                        return Err(WireError::Payload {
                            request_id,
                            kind,
                            error,
                        }
                        .into())
                    }
                },
                Err(e) => return Err(e.into()),
            }
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        let handshaking = engine.established().is_none();
        tokio::select! {
            read = read.read_buf(&mut buf) => {
                if read? == 0 {
                    return Ok(());
                }
            }
            Some((request_id, message)) = answers.recv() => {
                let epoch = config.epoch.load(Ordering::Acquire);
                send(answer_frame(&mut engine, request_id, epoch, message)?).await?;
            }
            _ = tokio::time::sleep_until(handshake_deadline), if handshaking => {
                return Err(Error::Timeout(config.handshake_timeout));
            }
        }
    }
}

/// The response frame for a handler's answer, replacing answers that cannot be sent
/// (a request kind, too large) with an error the client can see.
fn answer_frame(
    engine: &mut ServerEngine,
    request_id: u64,
    epoch: u64,
    message: Message,
) -> Result<Frame, Error> {
    let message = if message.payload_len() > MAX_PAYLOAD {
        Message::Error(ErrorReply::new(
            ErrorCode::Io,
            format!(
                "answer of {} bytes exceeds the payload limit",
                message.payload_len()
            ),
        ))
    } else if !message.is_response() || matches!(message, Message::HelloAck(_)) {
        Message::Error(ErrorReply::new(
            ErrorCode::Io,
            format!("handler answered with kind {:#04x}", message.kind()),
        ))
    } else {
        message
    };
    engine.respond(request_id, epoch, message)
}

/// Start the handler of `request`: polled once here, a handler with nothing to wait for
/// (a replica's journal append, a ping) answers at once, and the answer is returned;
/// otherwise it goes on in a task of its own, which sends its answer to `done`.
fn spawn_handler<H, F>(
    handler: &Arc<H>,
    request: Request,
    done: mpsc::UnboundedSender<(u64, Message)>,
) -> Option<(u64, Message)>
where
    H: Fn(Request) -> F + Send + Sync + 'static,
    F: Future<Output = Message> + Send + 'static,
{
    let request_id = request.request_id;
    // The handler runs with its panics caught, in this task first, then in one task of its
    // own (a task per handler and a second one awaiting it cost a spawn and a wake-up per
    // request; a task for a handler that was done at once, another spawn and the hop of
    // its answer back to this task).
    let mut work = CatchUnwind(Box::pin(handler(request)));
    // A waker that does nothing is enough for one poll: the task polls the handler again
    // with its own waker before it waits, and futures wait on the last waker they got.
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    if let std::task::Poll::Ready(r) = std::pin::Pin::new(&mut work).poll(&mut cx) {
        return Some((request_id, answer_of(r)));
    }
    tokio::spawn(async move {
        let answer = answer_of(work.await);
        // The connection may be gone by now; then nobody wants the answer.
        let _ = done.send((request_id, answer));
    });
    None
}

fn answer_of(r: Result<Message, ()>) -> Message {
    r.unwrap_or_else(|_| {
        Message::Error(ErrorReply::new(
            ErrorCode::Io,
            "handler failed: it panicked",
        ))
    })
}

/// A future that turns a panic while polling `F` into `Err`.
struct CatchUnwind<F>(std::pin::Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, ()>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(_) => std::task::Poll::Ready(Err(())),
        }
    }
}
