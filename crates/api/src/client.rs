//! A small HTTP/1.1 JSON client that tries each of the group's API URLs in turn.

use crate::types::ErrorBody;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client as HyperClient};
use hyper_util::rt::TokioExecutor;
use serde::{de::DeserializeOwned, Serialize};
use std::time::Duration;

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No API URL answered.
    #[error("no haven API answered at {urls}: {last}")]
    Unreachable { urls: String, last: String },
    /// The API answered with an error.
    #[error("{message}")]
    Api {
        status: u16,
        kind: String,
        message: String,
    },
    /// The answer was not the JSON expected.
    #[error("unexpected answer from {url}: {detail}")]
    Decode { url: String, detail: String },
}

impl ClientError {
    /// The API error kind, when the API answered.
    pub fn kind(&self) -> Option<&str> {
        match self {
            ClientError::Api { kind, .. } => Some(kind),
            _ => None,
        }
    }
}

/// A client for one group.
#[derive(Clone)]
pub struct Client {
    urls: Vec<String>,
    http: HyperClient<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl Client {
    /// `urls` like `http://127.0.0.1:7001` (a scheme-less `host:port` is accepted).
    pub fn new(urls: Vec<String>) -> Self {
        let urls = urls
            .into_iter()
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .map(|u| {
                if u.contains("://") {
                    u
                } else {
                    format!("http://{u}")
                }
            })
            .collect();
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(Duration::from_secs(2)));
        Client {
            urls,
            http: HyperClient::builder(TokioExecutor::new()).build(conn),
            timeout: Duration::from_secs(30),
        }
    }

    /// The same client with another per-request timeout (30 s by default).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None::<&()>).await
    }
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call(Method::POST, path, Some(body)).await
    }
    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call(Method::PUT, path, Some(body)).await
    }
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::DELETE, path, None::<&()>).await
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let payload = match body {
            Some(b) => Bytes::from(serde_json::to_vec(b).expect("request bodies serialize")),
            None => Bytes::new(),
        };
        let mut last = String::from("no URL configured");
        for base in &self.urls {
            let url = format!("{base}{path}");
            let req = Request::builder()
                .method(method.clone())
                .uri(&url)
                .header("content-type", "application/json")
                .body(Full::new(payload.clone()))
                .map_err(|e| ClientError::Decode {
                    url: url.clone(),
                    detail: e.to_string(),
                })?;
            let resp = match tokio::time::timeout(self.timeout, self.http.request(req)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    last = format!("{url}: {e}");
                    continue;
                }
                Err(_) => {
                    last = format!("{url}: timed out");
                    continue;
                }
            };
            let status = resp.status();
            let bytes = match resp.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    last = format!("{url}: {e}");
                    continue;
                }
            };
            if status == StatusCode::SERVICE_UNAVAILABLE {
                // That member cannot serve now (no leader reachable); try the next one.
                last = error_message(&bytes).unwrap_or_else(|| format!("{url}: unavailable"));
                continue;
            }
            if !status.is_success() {
                let body: Option<ErrorBody> = serde_json::from_slice(&bytes).ok();
                return Err(match body {
                    Some(b) => ClientError::Api {
                        status: status.as_u16(),
                        kind: b.kind,
                        message: b.error,
                    },
                    None => ClientError::Api {
                        status: status.as_u16(),
                        kind: "internal".into(),
                        message: format!("{url} answered {status}"),
                    },
                });
            }
            return serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
                url,
                detail: e.to_string(),
            });
        }
        Err(ClientError::Unreachable {
            urls: self.urls.join(","),
            last,
        })
    }
}

fn error_message(bytes: &[u8]) -> Option<String> {
    serde_json::from_slice::<ErrorBody>(bytes)
        .ok()
        .map(|b| b.error)
}
