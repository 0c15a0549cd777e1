//! The connection engines, without I/O: frames in, frames and events out.
//!
//! [`ClientEngine`] is the side that connected: it sends Hello, allocates request ids and
//! matches responses to requests. [`ServerEngine`] is the side that accepted: it answers
//! Hello, refuses stale epochs itself and hands every other request to the member, then
//! turns the member's answer into a response frame. Both detect a peer that breaks the
//! protocol (unknown or duplicate ids, too many requests in flight, wrong group, wrong
//! version) and report it as a [`ProtocolError`]: the driver then closes the connection.

use crate::error::{Error, ProtocolError};
use crate::message::{ErrorCode, ErrorReply, Hello, HelloAck, MemberId, Message};
use crate::wire::{Frame, MAX_PAYLOAD, MAX_VERSION, MIN_VERSION};
use std::collections::{HashMap, HashSet};

/// Handshake frames use request id 0 and travel in version 1 framing.
pub const HANDSHAKE_ID: u64 = 0;
const HANDSHAKE_VERSION: u8 = 1;

/// What one side of a connection is and what it accepts.
#[derive(Debug, Clone)]
pub struct Config {
    pub member: MemberId,
    pub group: u128,
    pub min_version: u8,
    pub max_version: u8,
    /// Requests one connection may have in flight (the client asks, the server caps).
    pub max_in_flight: u32,
}

impl Config {
    pub fn new(member: MemberId, group: u128) -> Self {
        Config {
            member,
            group,
            min_version: MIN_VERSION,
            max_version: MAX_VERSION,
            max_in_flight: 256,
        }
    }
}

/// The outcome of a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Established {
    pub version: u8,
    pub peer: MemberId,
    pub max_in_flight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Handshaking,
    Established(Established),
    Closed,
}

/// What a frame from the server meant to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The handshake completed.
    Established(Established),
    /// The answer to a request this side sent (never a request kind).
    Response {
        request_id: u64,
        epoch: u64,
        message: Message,
    },
    /// The answer to a request the caller gave up on; nothing to do.
    Abandoned { request_id: u64 },
}

/// The connecting side of a connection.
#[derive(Debug)]
pub struct ClientEngine {
    config: Config,
    phase: Phase,
    next_id: u64,
    /// Ids sent and not yet answered; `true` once the caller gave up waiting.
    in_flight: HashMap<u64, bool>,
}

impl ClientEngine {
    pub fn new(config: Config) -> Self {
        ClientEngine {
            config,
            phase: Phase::Handshaking,
            next_id: 1,
            in_flight: HashMap::new(),
        }
    }

    /// The Hello to send first.
    pub fn hello(&self) -> Frame {
        Frame::new(
            HANDSHAKE_VERSION,
            HANDSHAKE_ID,
            0,
            Message::Hello(Hello {
                min_version: self.config.min_version,
                max_version: self.config.max_version,
                member: self.config.member,
                group: self.config.group,
                max_in_flight: self.config.max_in_flight,
            }),
        )
    }

    pub fn established(&self) -> Option<Established> {
        match self.phase {
            Phase::Established(e) => Some(e),
            _ => None,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// A frame for `message`, made under `epoch`, with a fresh request id.
    pub fn request(&mut self, epoch: u64, message: Message) -> Result<Frame, Error> {
        let established = match self.phase {
            Phase::Established(e) => e,
            Phase::Handshaking => return Err(Error::NotEstablished),
            Phase::Closed => return Err(Error::Disconnected("connection closed".into())),
        };
        if message.is_response() || matches!(message, Message::Hello(_)) {
            return Err(Error::NotARequest {
                kind: message.kind(),
            });
        }
        if message.payload_len() > MAX_PAYLOAD {
            return Err(Error::TooLarge {
                len: message.payload_len(),
            });
        }
        if self.in_flight.len() >= established.max_in_flight as usize {
            return Err(Error::InFlightLimit {
                limit: established.max_in_flight,
            });
        }
        let request_id = self.allocate_id();
        self.in_flight.insert(request_id, false);
        Ok(Frame::new(established.version, request_id, epoch, message))
    }

    fn allocate_id(&mut self) -> u64 {
        // Ids are never reused while in flight; after 2^64 requests they wrap past 0.
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if id != HANDSHAKE_ID && !self.in_flight.contains_key(&id) {
                return id;
            }
        }
    }

    /// The caller stopped waiting for `request_id`. It stays in flight (the server still
    /// works on it) until its answer arrives, which is then dropped quietly.
    pub fn abandon(&mut self, request_id: u64) {
        if let Some(abandoned) = self.in_flight.get_mut(&request_id) {
            *abandoned = true;
        }
    }

    /// A frame arrived from the server.
    pub fn on_frame(&mut self, frame: Frame) -> Result<ClientEvent, ProtocolError> {
        let result = self.handle(frame);
        if result.is_err() {
            self.phase = Phase::Closed;
        }
        result
    }

    fn handle(&mut self, frame: Frame) -> Result<ClientEvent, ProtocolError> {
        let kind = frame.message.kind();
        match &self.phase {
            Phase::Closed => Err(ProtocolError::UnexpectedKind { kind }),
            Phase::Handshaking => {
                if frame.request_id != HANDSHAKE_ID {
                    return Err(ProtocolError::Handshake {
                        expected: "HelloAck",
                        got: kind,
                    });
                }
                match frame.message {
                    Message::HelloAck(ack) => {
                        let (min, max) = (self.config.min_version, self.config.max_version);
                        if !(min..=max).contains(&ack.version) {
                            return Err(ProtocolError::BadVersionChoice {
                                chosen: ack.version,
                                min,
                                max,
                            });
                        }
                        let established = Established {
                            version: ack.version,
                            peer: ack.member,
                            max_in_flight: ack.max_in_flight.min(self.config.max_in_flight),
                        };
                        self.phase = Phase::Established(established);
                        Ok(ClientEvent::Established(established))
                    }
                    Message::Error(reply) => Err(ProtocolError::Refused(reply)),
                    _ => Err(ProtocolError::Handshake {
                        expected: "HelloAck",
                        got: kind,
                    }),
                }
            }
            Phase::Established(e) => {
                if frame.version != e.version {
                    return Err(ProtocolError::WrongVersion {
                        expected: e.version,
                        got: frame.version,
                    });
                }
                if !frame.message.is_response() || matches!(frame.message, Message::HelloAck(_)) {
                    return Err(ProtocolError::UnexpectedKind { kind });
                }
                match self.in_flight.remove(&frame.request_id) {
                    None => Err(ProtocolError::UnknownResponse {
                        request_id: frame.request_id,
                    }),
                    Some(true) => Ok(ClientEvent::Abandoned {
                        request_id: frame.request_id,
                    }),
                    Some(false) => Ok(ClientEvent::Response {
                        request_id: frame.request_id,
                        epoch: frame.epoch,
                        message: frame.message,
                    }),
                }
            }
        }
    }

    /// A response to `request_id` arrived with a payload that could not be parsed: the
    /// request is over (failed). Returns whether it was in flight.
    pub fn on_malformed_response(&mut self, request_id: u64) -> bool {
        self.in_flight.remove(&request_id).is_some()
    }

    /// The connection is gone: every request still awaited (not abandoned) has failed.
    pub fn close(&mut self) -> Vec<u64> {
        self.phase = Phase::Closed;
        let mut failed: Vec<u64> = self
            .in_flight
            .drain()
            .filter(|(_, abandoned)| !abandoned)
            .map(|(id, _)| id)
            .collect();
        failed.sort_unstable();
        failed
    }
}

/// A request the member must answer through [`ServerEngine::respond`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The member that sent it.
    pub peer: MemberId,
    pub request_id: u64,
    /// The epoch it was made under (equal to the server's, for data-path requests).
    pub epoch: u64,
    pub message: Message,
}

/// What the server's driver must do after a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAction {
    /// Send this frame.
    Send(Frame),
    /// The handshake completed.
    Established(Established),
    /// Hand the request to the member; answer it with [`ServerEngine::respond`].
    Handle(Request),
    /// The peer acts under a newer map epoch than this member: fetch the map.
    PeerAhead { epoch: u64 },
    /// Send the frames before this, then close the connection.
    Close,
}

/// The accepting side of a connection.
#[derive(Debug)]
pub struct ServerEngine {
    config: Config,
    phase: Phase,
    in_flight: HashSet<u64>,
}

impl ServerEngine {
    pub fn new(config: Config) -> Self {
        ServerEngine {
            config,
            phase: Phase::Handshaking,
            in_flight: HashSet::new(),
        }
    }

    pub fn established(&self) -> Option<Established> {
        match self.phase {
            Phase::Established(e) => Some(e),
            _ => None,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// A frame arrived from the client; `current_epoch` is this member's map epoch.
    pub fn on_frame(
        &mut self,
        frame: Frame,
        current_epoch: u64,
    ) -> Result<Vec<ServerAction>, ProtocolError> {
        let result = self.handle(frame, current_epoch);
        if result.is_err() {
            self.phase = Phase::Closed;
        }
        result
    }

    fn handle(
        &mut self,
        frame: Frame,
        current_epoch: u64,
    ) -> Result<Vec<ServerAction>, ProtocolError> {
        let kind = frame.message.kind();
        let established = match &self.phase {
            Phase::Closed => return Err(ProtocolError::UnexpectedKind { kind }),
            Phase::Handshaking => return self.on_hello(frame),
            Phase::Established(e) => *e,
        };
        if frame.version != established.version {
            return Err(ProtocolError::WrongVersion {
                expected: established.version,
                got: frame.version,
            });
        }
        if frame.message.is_response() || matches!(frame.message, Message::Hello(_)) {
            return Err(ProtocolError::UnexpectedKind { kind });
        }
        if frame.request_id == HANDSHAKE_ID {
            return Err(ProtocolError::ReservedRequestId);
        }
        if self.in_flight.contains(&frame.request_id) {
            return Err(ProtocolError::DuplicateRequest {
                request_id: frame.request_id,
            });
        }
        if self.in_flight.len() >= established.max_in_flight as usize {
            return Err(ProtocolError::TooManyInFlight {
                limit: established.max_in_flight,
            });
        }
        let reply = |message| {
            ServerAction::Send(Frame::new(
                established.version,
                frame.request_id,
                current_epoch,
                message,
            ))
        };
        if let Message::Ping { nonce } = frame.message {
            return Ok(vec![reply(Message::Pong { nonce })]);
        }
        if frame.message.is_data_path() && frame.epoch != current_epoch {
            // Both directions are refused: an older sender must re-route under the new
            // map; a newer sender must wait until this member has caught up with it.
            let refusal = reply(Message::Error(ErrorReply::new(
                ErrorCode::StaleEpoch {
                    current: current_epoch,
                },
                format!(
                    "request made under epoch {}, this member is at {current_epoch}",
                    frame.epoch
                ),
            )));
            return Ok(if frame.epoch > current_epoch {
                vec![ServerAction::PeerAhead { epoch: frame.epoch }, refusal]
            } else {
                vec![refusal]
            });
        }
        self.in_flight.insert(frame.request_id);
        Ok(vec![ServerAction::Handle(Request {
            peer: established.peer,
            request_id: frame.request_id,
            epoch: frame.epoch,
            message: frame.message,
        })])
    }

    fn on_hello(&mut self, frame: Frame) -> Result<Vec<ServerAction>, ProtocolError> {
        let kind = frame.message.kind();
        let Message::Hello(hello) = frame.message else {
            return Err(ProtocolError::Handshake {
                expected: "Hello",
                got: kind,
            });
        };
        if frame.request_id != HANDSHAKE_ID {
            return Err(ProtocolError::Handshake {
                expected: "Hello with request id 0",
                got: kind,
            });
        }
        let refuse = |code, text: String| {
            vec![
                ServerAction::Send(Frame::new(
                    HANDSHAKE_VERSION,
                    HANDSHAKE_ID,
                    0,
                    Message::Error(ErrorReply::new(code, text)),
                )),
                ServerAction::Close,
            ]
        };
        if hello.group != self.config.group {
            self.phase = Phase::Closed;
            return Ok(refuse(
                ErrorCode::WrongGroup,
                format!(
                    "member {} belongs to group {:#x}, this member to group {:#x}",
                    hello.member, hello.group, self.config.group
                ),
            ));
        }
        let version = hello.max_version.min(self.config.max_version);
        if version < hello.min_version.max(self.config.min_version) {
            self.phase = Phase::Closed;
            let (min, max) = (self.config.min_version, self.config.max_version);
            return Ok(refuse(
                ErrorCode::VersionMismatch { min, max },
                format!(
                    "no common version: this member speaks {min}..={max}, the peer {}..={}",
                    hello.min_version, hello.max_version
                ),
            ));
        }
        let established = Established {
            version,
            peer: hello.member,
            max_in_flight: hello.max_in_flight.min(self.config.max_in_flight).max(1),
        };
        self.phase = Phase::Established(established);
        Ok(vec![
            ServerAction::Send(Frame::new(
                HANDSHAKE_VERSION,
                HANDSHAKE_ID,
                0,
                Message::HelloAck(HelloAck {
                    version,
                    member: self.config.member,
                    max_in_flight: established.max_in_flight,
                }),
            )),
            ServerAction::Established(established),
        ])
    }

    /// The member's answer to a request it was handed; `current_epoch` is stamped on it.
    pub fn respond(
        &mut self,
        request_id: u64,
        current_epoch: u64,
        message: Message,
    ) -> Result<Frame, Error> {
        let Phase::Established(established) = self.phase else {
            return Err(Error::NotEstablished);
        };
        if !message.is_response() || matches!(message, Message::HelloAck(_)) {
            return Err(Error::NotAResponse {
                kind: message.kind(),
            });
        }
        if !self.in_flight.remove(&request_id) {
            return Err(Error::NotInFlight { request_id });
        }
        Ok(Frame::new(
            established.version,
            request_id,
            current_epoch,
            message,
        ))
    }

    /// A request frame whose payload could not be parsed: the answer to send, if the
    /// connection is established and the id is usable.
    pub fn on_malformed_request(
        &mut self,
        request_id: u64,
        current_epoch: u64,
        why: &str,
    ) -> Option<Frame> {
        let established = self.established()?;
        if request_id == HANDSHAKE_ID || self.in_flight.contains(&request_id) {
            return None;
        }
        Some(Frame::new(
            established.version,
            request_id,
            current_epoch,
            Message::Error(ErrorReply::new(ErrorCode::Invalid, why)),
        ))
    }

    /// The connection is gone; answers to requests still being handled are dropped.
    pub fn close(&mut self) {
        self.phase = Phase::Closed;
        self.in_flight.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{FlushOp, ReadOp};

    const GROUP: u128 = 0xfeed;

    fn pair() -> (ClientEngine, ServerEngine) {
        let mut client = ClientEngine::new(Config::new(1, GROUP));
        let mut server = ServerEngine::new(Config {
            max_in_flight: 4,
            ..Config::new(2, GROUP)
        });
        let actions = server.on_frame(client.hello(), 0).unwrap();
        let ServerAction::Send(ack) = actions[0].clone() else {
            panic!("{actions:?}")
        };
        assert_eq!(
            actions[1],
            ServerAction::Established(Established {
                version: MAX_VERSION,
                peer: 1,
                max_in_flight: 4
            })
        );
        let event = client.on_frame(ack).unwrap();
        assert_eq!(
            event,
            ClientEvent::Established(Established {
                version: MAX_VERSION,
                peer: 2,
                max_in_flight: 4
            })
        );
        (client, server)
    }

    fn read(len: u32) -> Message {
        Message::Read(ReadOp {
            volume: 1,
            pg: 0,
            offset: 0,
            len,
        })
    }

    fn handled(actions: Vec<ServerAction>) -> Request {
        match actions.as_slice() {
            [ServerAction::Handle(r)] => r.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn responses_may_come_back_in_any_order() {
        let (mut client, mut server) = pair();
        let frames: Vec<Frame> = (0..4)
            .map(|i| client.request(7, read(i)).unwrap())
            .collect();
        let ids: Vec<u64> = frames.iter().map(|f| f.request_id).collect();
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 4, "distinct ids");
        for f in frames {
            handled(server.on_frame(f, 7).unwrap());
        }
        for &id in ids.iter().rev() {
            let answer = server.respond(id, 7, Message::Ok).unwrap();
            assert_eq!(
                client.on_frame(answer).unwrap(),
                ClientEvent::Response {
                    request_id: id,
                    epoch: 7,
                    message: Message::Ok
                }
            );
        }
        assert_eq!(client.in_flight(), 0);
        assert_eq!(server.in_flight(), 0);
    }

    #[test]
    fn the_in_flight_limit_is_the_smaller_of_both_sides() {
        let (mut client, _) = pair();
        for _ in 0..4 {
            client.request(0, read(1)).unwrap();
        }
        assert!(matches!(
            client.request(0, read(1)),
            Err(Error::InFlightLimit { limit: 4 })
        ));
    }

    #[test]
    fn a_server_refuses_more_than_the_limit_and_duplicate_ids() {
        let (_, mut server) = pair();
        let frame = |id| Frame::new(MAX_VERSION, id, 0, read(1));
        handled(server.on_frame(frame(1), 0).unwrap());
        assert_eq!(
            server.on_frame(frame(1), 0),
            Err(ProtocolError::DuplicateRequest { request_id: 1 })
        );

        let (_, mut server) = pair();
        for id in 1..=4 {
            handled(server.on_frame(frame(id), 0).unwrap());
        }
        assert_eq!(
            server.on_frame(frame(5), 0),
            Err(ProtocolError::TooManyInFlight { limit: 4 })
        );
        // Once closed, the engine accepts nothing more.
        assert!(server.on_frame(frame(6), 0).is_err());
    }

    #[test]
    fn an_unknown_response_id_is_a_protocol_error() {
        let (mut client, _) = pair();
        assert_eq!(
            client.on_frame(Frame::new(MAX_VERSION, 99, 0, Message::Ok)),
            Err(ProtocolError::UnknownResponse { request_id: 99 })
        );
        assert!(matches!(
            client.request(0, read(1)),
            Err(Error::Disconnected(_))
        ));
    }

    #[test]
    fn an_abandoned_request_is_answered_quietly_and_then_unknown() {
        let (mut client, mut server) = pair();
        let f = client.request(0, read(1)).unwrap();
        let id = f.request_id;
        handled(server.on_frame(f, 0).unwrap());
        client.abandon(id);
        assert_eq!(client.in_flight(), 1, "still counted until answered");
        let answer = server.respond(id, 0, Message::Ok).unwrap();
        assert_eq!(
            client.on_frame(answer.clone()).unwrap(),
            ClientEvent::Abandoned { request_id: id }
        );
        assert_eq!(
            client.on_frame(answer),
            Err(ProtocolError::UnknownResponse { request_id: id })
        );
    }

    #[test]
    fn stale_and_newer_epochs_are_refused_by_the_engine() {
        let (mut client, mut server) = pair();
        let old = client.request(4, read(1)).unwrap();
        let actions = server.on_frame(old.clone(), 5).unwrap();
        let [ServerAction::Send(refusal)] = actions.as_slice() else {
            panic!("{actions:?}")
        };
        assert_eq!(refusal.request_id, old.request_id);
        assert!(matches!(
            &refusal.message,
            Message::Error(ErrorReply {
                code: ErrorCode::StaleEpoch { current: 5 },
                ..
            })
        ));
        assert_eq!(server.in_flight(), 0);
        assert!(matches!(
            client.on_frame(refusal.clone()).unwrap(),
            ClientEvent::Response { .. }
        ));

        let newer = client
            .request(9, Message::Flush(FlushOp { volume: 1 }))
            .unwrap();
        let actions = server.on_frame(newer, 5).unwrap();
        assert_eq!(actions[0], ServerAction::PeerAhead { epoch: 9 });
        assert!(matches!(actions[1], ServerAction::Send(_)));

        // A ping is not data path: any epoch will do, and the engine answers it.
        let ping = client.request(1, Message::Ping { nonce: 3 }).unwrap();
        let actions = server.on_frame(ping, 5).unwrap();
        let [ServerAction::Send(pong)] = actions.as_slice() else {
            panic!("{actions:?}")
        };
        assert_eq!(pong.message, Message::Pong { nonce: 3 });
    }

    #[test]
    fn another_group_is_refused() {
        let client = ClientEngine::new(Config::new(1, GROUP + 1));
        let mut server = ServerEngine::new(Config::new(2, GROUP));
        let actions = server.on_frame(client.hello(), 0).unwrap();
        assert_eq!(actions.len(), 2);
        assert_eq!(actions[1], ServerAction::Close);
        let ServerAction::Send(refusal) = &actions[0] else {
            panic!()
        };
        let mut client = client;
        assert!(matches!(
            client.on_frame(refusal.clone()),
            Err(ProtocolError::Refused(ErrorReply {
                code: ErrorCode::WrongGroup,
                ..
            }))
        ));
        assert!(server.established().is_none());
    }

    #[test]
    fn versions_are_negotiated_to_the_highest_common_one() {
        let mut client = ClientEngine::new(Config {
            min_version: 1,
            max_version: 5,
            ..Config::new(1, GROUP)
        });
        let mut server = ServerEngine::new(Config {
            min_version: 1,
            max_version: 3,
            ..Config::new(2, GROUP)
        });
        let actions = server.on_frame(client.hello(), 0).unwrap();
        let ServerAction::Send(ack) = actions[0].clone() else {
            panic!()
        };
        let ClientEvent::Established(e) = client.on_frame(ack).unwrap() else {
            panic!()
        };
        assert_eq!(e.version, 3);

        let client = ClientEngine::new(Config {
            min_version: 4,
            max_version: 5,
            ..Config::new(1, GROUP)
        });
        let mut server = ServerEngine::new(Config {
            min_version: 1,
            max_version: 3,
            ..Config::new(2, GROUP)
        });
        let actions = server.on_frame(client.hello(), 0).unwrap();
        let ServerAction::Send(refusal) = &actions[0] else {
            panic!()
        };
        assert!(matches!(
            &refusal.message,
            Message::Error(ErrorReply {
                code: ErrorCode::VersionMismatch { min: 1, max: 3 },
                ..
            })
        ));
    }

    #[test]
    fn requests_before_the_handshake_are_refused() {
        let mut server = ServerEngine::new(Config::new(2, GROUP));
        assert!(matches!(
            server.on_frame(Frame::new(MAX_VERSION, 1, 0, read(1)), 0),
            Err(ProtocolError::Handshake { .. })
        ));
        let mut client = ClientEngine::new(Config::new(1, GROUP));
        assert!(matches!(
            client.request(0, read(1)),
            Err(Error::NotEstablished)
        ));
    }

    #[test]
    fn responses_and_hellos_are_not_requests() {
        let (mut client, mut server) = pair();
        assert!(matches!(
            client.request(0, Message::Ok),
            Err(Error::NotARequest { .. })
        ));
        assert!(matches!(
            client.request(0, client.hello().message),
            Err(Error::NotARequest { .. })
        ));
        assert!(matches!(
            server.on_frame(Frame::new(MAX_VERSION, 1, 0, Message::Ok), 0),
            Err(ProtocolError::UnexpectedKind { .. })
        ));
    }

    #[test]
    fn respond_only_to_what_is_in_flight_and_only_with_responses() {
        let (mut client, mut server) = pair();
        let f = client.request(0, read(1)).unwrap();
        let id = f.request_id;
        handled(server.on_frame(f, 0).unwrap());
        assert!(matches!(
            server.respond(id, 0, read(1)),
            Err(Error::NotAResponse { .. })
        ));
        server
            .respond(id, 0, Message::Data(vec![1].into()))
            .unwrap();
        assert!(matches!(
            server.respond(id, 0, Message::Ok),
            Err(Error::NotInFlight { .. })
        ));
    }

    #[test]
    fn closing_fails_what_is_awaited_but_not_what_was_abandoned() {
        let (mut client, _) = pair();
        let a = client.request(0, read(1)).unwrap().request_id;
        let b = client.request(0, read(1)).unwrap().request_id;
        client.abandon(b);
        assert_eq!(client.close(), vec![a]);
    }

    #[test]
    fn a_malformed_request_is_answered_invalid() {
        let (_, mut server) = pair();
        let answer = server.on_malformed_request(5, 0, "bad").unwrap();
        assert_eq!(answer.request_id, 5);
        assert!(server.on_malformed_request(0, 0, "bad").is_none());
    }

    proptest::proptest! {
        /// Any number of requests (up to the limit), answered in any order, some abandoned
        /// by the caller: each answer reaches the client once, as a response or as
        /// abandoned, and both sides end with nothing in flight.
        #[test]
        fn answers_in_any_order_reach_the_client_once(
            keys in proptest::collection::vec(proptest::prelude::any::<u64>(), 1..=4),
            abandon in proptest::collection::vec(proptest::prelude::any::<bool>(), 4),
        ) {
            let (mut client, mut server) = pair();
            let ids: Vec<u64> = (0..keys.len() as u32)
                .map(|i| {
                    let f = client.request(0, read(i)).unwrap();
                    handled(server.on_frame(f.clone(), 0).unwrap());
                    f.request_id
                })
                .collect();
            for (id, &gone) in ids.iter().zip(&abandon) {
                if gone {
                    client.abandon(*id);
                }
            }
            // The answers go out in the order of the random keys.
            let mut answer_order: Vec<(u64, usize)> =
                keys.iter().copied().zip(0..ids.len()).collect();
            answer_order.sort();
            for (_, index) in answer_order {
                let id = ids[index];
                let frame = server.respond(id, 0, Message::Ok).unwrap();
                let event = client.on_frame(frame).unwrap();
                if abandon[index] {
                    proptest::prop_assert_eq!(event, ClientEvent::Abandoned { request_id: id });
                } else {
                    let answered = matches!(
                        event,
                        ClientEvent::Response { request_id, .. } if request_id == id
                    );
                    proptest::prop_assert!(answered);
                }
            }
            proptest::prop_assert_eq!(client.in_flight(), 0);
            proptest::prop_assert_eq!(server.in_flight(), 0);
        }
    }
}
