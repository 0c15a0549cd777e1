//! The tokio transport over loopback: pipelining, out-of-order answers, lost connections,
//! refusals, timeouts.

use bytes::{Bytes, BytesMut};
use peer::message::{ErrorCode, ReadOp};
use peer::{
    serve, ClientConfig, Config, Decoder, Error, ErrorKind, Message, PeerClient, Request,
    ServerAction, ServerConfig, ServerEngine,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const GROUP: u128 = 0x0048_4156_454e;
const EPOCH: u64 = 3;

fn read(offset: u64) -> Message {
    Message::Read(ReadOp {
        volume: 1,
        pg: 0,
        offset,
        len: 8,
    })
}

/// A server on an ephemeral loopback port answering with `handler`.
async fn start<H, F>(handler: H) -> std::net::SocketAddr
where
    H: Fn(Request) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = Message> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ServerConfig::new(Config::new(100, GROUP), Arc::new(AtomicU64::new(EPOCH)));
    tokio::spawn(serve(listener, config, handler));
    addr
}

async fn client(addr: std::net::SocketAddr, member: u64) -> PeerClient {
    PeerClient::connect(addr, ClientConfig::new(Config::new(member, GROUP)))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_pipelined_calls_get_their_own_answers_out_of_order() {
    let arrived = Arc::new(Mutex::new(Vec::new()));
    let finished = Arc::new(Mutex::new(Vec::new()));
    let (a, f) = (arrived.clone(), finished.clone());
    let addr = start(move |request: Request| {
        let (arrived, finished) = (a.clone(), f.clone());
        async move {
            let Message::Read(op) = request.message else {
                return Message::Ok;
            };
            arrived.lock().unwrap().push(op.offset);
            // Later requests tend to finish first.
            tokio::time::sleep(Duration::from_millis(7 - op.offset % 7)).await;
            finished.lock().unwrap().push(op.offset);
            Message::Data(Bytes::copy_from_slice(&op.offset.to_be_bytes()))
        }
    })
    .await;
    let client = client(addr, 1).await;
    assert_eq!(client.established().peer, 100);

    let calls: Vec<_> = (0..1000u64)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { (i, client.call(EPOCH, read(i)).await) })
        })
        .collect();
    for call in calls {
        let (i, answer) = call.await.unwrap();
        assert_eq!(
            answer.unwrap(),
            Message::Data(Bytes::copy_from_slice(&i.to_be_bytes()))
        );
    }
    let arrived = arrived.lock().unwrap().clone();
    let finished = finished.lock().unwrap().clone();
    assert_eq!(arrived.len(), 1000);
    assert_ne!(
        arrived, finished,
        "answers went out in another order than requests came in"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_drops_the_connection_fails_every_pending_call() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // A server that completes the handshake, takes 50 requests, answers 10 and hangs up.
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut engine = ServerEngine::new(Config::new(100, GROUP));
        let mut buf = BytesMut::new();
        let mut handled = Vec::new();
        while handled.len() < 50 {
            while let Some(frame) = Decoder::default().decode(&mut buf).unwrap() {
                for action in engine.on_frame(frame, EPOCH).unwrap() {
                    match action {
                        ServerAction::Send(f) => {
                            stream.write_all(&f.to_bytes().unwrap()).await.unwrap()
                        }
                        ServerAction::Handle(r) => handled.push(r.request_id),
                        _ => {}
                    }
                }
            }
            if stream.read_buf(&mut buf).await.unwrap() == 0 {
                return;
            }
        }
        for &id in &handled[..10] {
            let answer = engine.respond(id, EPOCH, Message::Ok).unwrap();
            stream.write_all(&answer.to_bytes().unwrap()).await.unwrap();
        }
        drop(stream);
    });

    let client = client(addr, 1).await;
    let calls: Vec<_> = (0..200u64)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.call(EPOCH, read(i)).await })
        })
        .collect();
    let outcomes = tokio::time::timeout(Duration::from_secs(10), async {
        let mut outcomes = Vec::new();
        for call in calls {
            outcomes.push(call.await.unwrap());
        }
        outcomes
    })
    .await
    .expect("no call hangs");
    // Closing a socket with unread requests in it resets the connection, which may discard
    // answers already sent: at most the 10 answered calls succeed.
    let ok = outcomes.iter().filter(|o| o.is_ok()).count();
    assert!(ok <= 10, "{ok}");
    for outcome in outcomes.iter().filter(|o| o.is_err()) {
        let e = outcome.as_ref().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Disconnected, "{e}");
    }
    assert!(client.is_closed());
    let later = client.call(EPOCH, read(0)).await.unwrap_err();
    assert_eq!(later.kind(), ErrorKind::Disconnected);
}

#[tokio::test]
async fn a_member_of_another_group_is_refused() {
    let addr = start(|_| async { Message::Ok }).await;
    let err = PeerClient::connect(addr, ClientConfig::new(Config::new(1, GROUP + 1)))
        .await
        .unwrap_err();
    let reply = err.remote().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(reply.code, ErrorCode::WrongGroup);
}

#[tokio::test]
async fn a_stale_epoch_is_refused_before_the_handler_sees_it() {
    let seen = Arc::new(AtomicU64::new(0));
    let s = seen.clone();
    let addr = start(move |_| {
        s.fetch_add(1, Ordering::SeqCst);
        async { Message::Ok }
    })
    .await;
    let client = client(addr, 1).await;
    let err = client.call(EPOCH - 1, read(0)).await.unwrap_err();
    assert_eq!(
        err.remote().map(|r| r.code.clone()),
        Some(ErrorCode::StaleEpoch { current: EPOCH })
    );
    assert_eq!(seen.load(Ordering::SeqCst), 0);
    client.call(EPOCH, read(0)).await.unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    // Pings need no epoch.
    assert_eq!(
        client.call(0, Message::Ping { nonce: 9 }).await.unwrap(),
        Message::Pong { nonce: 9 }
    );
}

#[tokio::test]
async fn a_newer_epoch_is_refused_and_announced() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ServerConfig::new(Config::new(100, GROUP), Arc::new(AtomicU64::new(EPOCH)));
    let mut ahead = config.peer_ahead.subscribe();
    tokio::spawn(serve(listener, config, |_| async { Message::Ok }));
    let client = client(addr, 1).await;
    let err = client.call(EPOCH + 2, read(0)).await.unwrap_err();
    assert_eq!(
        err.remote().map(|r| r.code.clone()),
        Some(ErrorCode::StaleEpoch { current: EPOCH })
    );
    ahead.changed().await.unwrap();
    assert_eq!(*ahead.borrow(), EPOCH + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_call_leaves_the_connection_usable() {
    let addr = start(|request: Request| async move {
        if let Message::Read(op) = &request.message {
            if op.offset == 666 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Message::Ok
    })
    .await;
    let client = client(addr, 1).await;
    let err = client
        .call_within(Duration::from_millis(50), EPOCH, read(666))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err}");
    client.call(EPOCH, read(1)).await.unwrap();
    // The late answer arrives and is dropped without upsetting the connection.
    tokio::time::sleep(Duration::from_millis(600)).await;
    client.call(EPOCH, read(2)).await.unwrap();
    assert!(!client.is_closed());
}

#[tokio::test]
async fn a_panicking_handler_is_an_io_error_not_a_hang() {
    let addr = start(|request: Request| async move {
        if let Message::Read(op) = &request.message {
            assert!(op.offset != 13, "handler bug");
        }
        Message::Ok
    })
    .await;
    let client = client(addr, 1).await;
    let err = client.call(EPOCH, read(13)).await.unwrap_err();
    assert_eq!(err.remote().map(|r| r.code.clone()), Some(ErrorCode::Io));
    client.call(EPOCH, read(1)).await.unwrap();
}

#[tokio::test]
async fn requests_and_large_answers_cross_intact() {
    let addr = start(|request: Request| async move {
        match request.message {
            Message::Write(w) => Message::Data(w.data),
            _ => Message::Ok,
        }
    })
    .await;
    let client = client(addr, 1).await;
    let data = Bytes::from((0..4 << 20).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let answer = client
        .call(
            EPOCH,
            Message::Write(peer::WriteOp {
                volume: 1,
                pg: 2,
                offset: 0,
                fua: true,
                data: data.clone(),
            }),
        )
        .await
        .unwrap();
    assert_eq!(answer, Message::Data(data));
}
