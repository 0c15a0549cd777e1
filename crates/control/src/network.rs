//! Raft RPCs between members: HTTP/1.1 POSTs with JSON bodies to the peer's API address,
//! through hyper-util's pooled legacy client. Every call is bounded by a timeout.
//!
//! Endpoints (served by [`crate::server`]): `/raft/append`, `/raft/vote`, `/raft/snapshot`.
//! A response body is the JSON of `Result<Response, RaftError<..>>` as returned by the peer's
//! `openraft::Raft`.

use std::error::Error as StdError;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::CONTENT_TYPE;
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::any_error;
use crate::types::{Node, NodeId, TypeConfig};

/// Path of the AppendEntries RPC.
pub const PATH_APPEND: &str = "/raft/append";
/// Path of the RequestVote RPC.
pub const PATH_VOTE: &str = "/raft/vote";
/// Path of the InstallSnapshot RPC (one chunk per call).
pub const PATH_SNAPSHOT: &str = "/raft/snapshot";

/// How long establishing a TCP connection to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The HTTP client shared by every outgoing call of a node.
pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Build an HTTP client with a bounded connect time.
///
/// `pooled`: keep idle connections for reuse (Raft RPCs). Without pooling (forwarded
/// writes) every request opens a fresh connection, so a dead peer shows as a connect error,
/// which proves the request was not delivered, rather than as a reused connection dying
/// mid-request, which proves nothing.
pub(crate) fn http_client(pooled: bool) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    let mut builder = Client::builder(TokioExecutor::new());
    if pooled {
        builder.pool_idle_timeout(Duration::from_secs(30));
    } else {
        builder.pool_max_idle_per_host(0);
    }
    builder.build(connector)
}

/// Why a POST failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PostError {
    /// The connection could not be established: the request was certainly not delivered.
    #[error("connecting to {addr}")]
    Connect {
        addr: String,
        source: hyper_util::client::legacy::Error,
    },
    /// No complete answer within the timeout; the request may have been processed.
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    /// The exchange failed after the connection was made; the request may have been processed.
    #[error("talking to {addr}")]
    Transport {
        addr: String,
        source: Box<dyn StdError + Send + Sync>,
    },
    /// The peer answered with a non-success status.
    #[error("{addr} answered {status}: {body}")]
    Status {
        addr: String,
        status: StatusCode,
        body: String,
    },
    /// The peer's answer was not the expected JSON.
    #[error("decoding the answer of {addr}")]
    Decode {
        addr: String,
        source: serde_json::Error,
    },
    /// The request could not be encoded.
    #[error("encoding a request")]
    Encode(serde_json::Error),
}

impl PostError {
    /// Whether the peer refused the request as such (a 4xx status: unknown route, bad body):
    /// it was not executed, and retrying will not help.
    pub(crate) fn rejected(&self) -> bool {
        matches!(self, PostError::Status { status, .. } if status.is_client_error())
    }

    /// Whether the request certainly never reached the peer's handler.
    pub(crate) fn not_delivered(&self) -> bool {
        matches!(self, PostError::Connect { .. } | PostError::Encode(_))
    }
}

/// POST `req` as JSON to `http://{addr}{path}` and decode the JSON answer, within `timeout`.
pub(crate) async fn post_json<Req, Resp>(
    client: &HttpClient,
    addr: &str,
    path: &str,
    req: &Req,
    timeout: Duration,
) -> Result<Resp, PostError>
where
    Req: Serialize + ?Sized,
    Resp: DeserializeOwned,
{
    let body = serde_json::to_vec(req).map_err(PostError::Encode)?;
    let request = Request::post(format!("http://{addr}{path}"))
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| PostError::Transport {
            addr: addr.to_string(),
            source: Box::new(e),
        })?;
    let exchange = async {
        let resp = client.request(request).await.map_err(|e| {
            if e.is_connect() {
                PostError::Connect {
                    addr: addr.to_string(),
                    source: e,
                }
            } else {
                PostError::Transport {
                    addr: addr.to_string(),
                    source: Box::new(e),
                }
            }
        })?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| PostError::Transport {
                addr: addr.to_string(),
                source: Box::new(e),
            })?
            .to_bytes();
        if !status.is_success() {
            return Err(PostError::Status {
                addr: addr.to_string(),
                status,
                body: String::from_utf8_lossy(&bytes).chars().take(512).collect(),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| PostError::Decode {
            addr: addr.to_string(),
            source: e,
        })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(PostError::Timeout {
            addr: addr.to_string(),
            timeout,
        }),
    }
}

/// Creates a [`PeerConnection`] per target; all share one HTTP client.
#[derive(Clone)]
pub struct NetworkFactory {
    id: NodeId,
    client: HttpClient,
}

impl NetworkFactory {
    /// A factory for the node `id`, using `client` for every RPC.
    pub(crate) fn new(id: NodeId, client: HttpClient) -> Self {
        Self { id, client }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerConnection {
        PeerConnection {
            id: self.id,
            target,
            node: node.clone(),
            client: self.client.clone(),
        }
    }
}

/// The RPC client towards one peer.
pub struct PeerConnection {
    id: NodeId,
    target: NodeId,
    node: Node,
    client: HttpClient,
}

impl PeerConnection {
    async fn call<Req, Resp, E>(
        &self,
        action: RPCTypes,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: StdError + DeserializeOwned,
    {
        let res: Result<Result<Resp, RaftError<NodeId, E>>, PostError> =
            post_json(&self.client, &self.node.addr, path, req, timeout).await;
        match res {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                remote,
            ))),
            Err(e @ PostError::Connect { .. }) => {
                Err(RPCError::Unreachable(Unreachable::from(any_error(&e))))
            }
            Err(PostError::Timeout { timeout, .. }) => Err(RPCError::Timeout(Timeout {
                action,
                id: self.id,
                target: self.target,
                timeout,
            })),
            Err(e) => Err(RPCError::Network(NetworkError::from(any_error(&e)))),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call(
            RPCTypes::AppendEntries,
            PATH_APPEND,
            &rpc,
            option.hard_ttl(),
        )
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(
            RPCTypes::InstallSnapshot,
            PATH_SNAPSHOT,
            &rpc,
            option.hard_ttl(),
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call(RPCTypes::Vote, PATH_VOTE, &rpc, option.hard_ttl())
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn closed_port_is_not_delivered_and_unknown_route_is_rejected() {
        let client = http_client(false);
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        let err = post_json::<_, ()>(
            &client,
            &closed_addr,
            PATH_VOTE,
            &(),
            Duration::from_secs(2),
        )
        .await
        .unwrap_err();
        assert!(err.not_delivered(), "{err}");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, axum::Router::new()).await;
        });
        let err = post_json::<_, ()>(&client, &addr, PATH_VOTE, &(), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(err.rejected() && !err.not_delivered(), "{err}");
        server.abort();
    }
}
