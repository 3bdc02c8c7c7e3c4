//! The API client the CLI uses: one HTTP/1.1 request per connection over the Unix socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{ErrorBody, ExtendRequest, FaultList, PauseState, Reverted, Status};
use crate::engine::{FaultId, FaultInfo, RevertReport};
use crate::faults::FaultSpec;

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No agent listens on the socket.
    #[error(
        "cannot reach the agent at {path}: {cause} (is `chaos-agent run` running? `inject --foreground` works without it)"
    )]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// The cause (not a `source`: the message already says it, and anyhow would repeat it).
        cause: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("talking to the agent: {0}")]
    Http(#[from] hyper::Error),
    /// Building the request failed.
    #[error("building the request: {0}")]
    Request(#[from] hyper::http::Error),
    /// The agent answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Stable code.
        code: String,
        /// The agent's message.
        message: String,
    },
    /// The agent's answer was not the expected JSON.
    #[error("unexpected answer from the agent (HTTP {status}): {why}")]
    Decode {
        /// HTTP status.
        status: u16,
        /// What went wrong.
        why: String,
    },
}

impl ClientError {
    /// Whether the agent answered 404: no such fault (it may have ended since it was listed).
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Api { status: 404, .. })
    }
}

/// A client of one agent.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client for the agent listening on `socket`.
    #[must_use]
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    /// The socket path.
    #[must_use]
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether something that looks like the agent's socket exists.
    #[must_use]
    pub fn agent_present(&self) -> bool {
        use std::os::unix::fs::FileTypeExt as _;
        std::fs::metadata(&self.socket).is_ok_and(|m| m.file_type().is_socket())
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|cause| ClientError::Connect {
                path: self.socket.clone(),
                cause,
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // The connection task ends when the response is read (one request per connection).
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://agent{path}"))
            .header("host", "agent");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if (200..300).contains(&status) {
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
                status,
                why: e.to_string(),
            })
        } else {
            match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(b) => Err(ClientError::Api {
                    status,
                    code: b.error.code,
                    message: b.error.message,
                }),
                Err(_) => Err(ClientError::Decode {
                    status,
                    why: String::from_utf8_lossy(&bytes).into_owned(),
                }),
            }
        }
    }

    fn json<T: Serialize>(v: &T) -> Option<Vec<u8>> {
        serde_json::to_vec(v).ok()
    }

    /// `POST /v1/faults`.
    pub async fn inject(&self, spec: &FaultSpec) -> Result<FaultInfo, ClientError> {
        self.call(Method::POST, "/v1/faults", Self::json(spec))
            .await
    }

    /// `GET /v1/faults`.
    pub async fn list(&self) -> Result<Vec<FaultInfo>, ClientError> {
        Ok(self
            .call::<FaultList>(Method::GET, "/v1/faults", None)
            .await?
            .faults)
    }

    /// `GET /v1/faults/{id}`.
    pub async fn show(&self, id: FaultId) -> Result<FaultInfo, ClientError> {
        self.call(Method::GET, &format!("/v1/faults/{id}"), None)
            .await
    }

    /// `DELETE /v1/faults/{id}`.
    pub async fn stop(&self, id: FaultId) -> Result<RevertReport, ClientError> {
        self.call(Method::DELETE, &format!("/v1/faults/{id}"), None)
            .await
    }

    /// `DELETE /v1/faults`.
    pub async fn stop_all(&self) -> Result<Vec<RevertReport>, ClientError> {
        Ok(self
            .call::<Reverted>(Method::DELETE, "/v1/faults", None)
            .await?
            .reverted)
    }

    /// `POST /v1/faults/{id}/extend`.
    pub async fn extend(&self, id: FaultId, by: Duration) -> Result<FaultInfo, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/faults/{id}/extend"),
            Self::json(&ExtendRequest { by }),
        )
        .await
    }

    /// `GET /v1/faults/{id}/wait`: blocks until the fault ends.
    pub async fn wait(&self, id: FaultId) -> Result<RevertReport, ClientError> {
        self.call(Method::GET, &format!("/v1/faults/{id}/wait"), None)
            .await
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.call(Method::GET, "/v1/status", None).await
    }

    /// `POST /v1/pause`.
    pub async fn pause(&self) -> Result<PauseState, ClientError> {
        self.call(Method::POST, "/v1/pause", None).await
    }

    /// `POST /v1/resume`.
    pub async fn resume(&self) -> Result<PauseState, ClientError> {
        self.call(Method::POST, "/v1/resume", None).await
    }

    /// `POST /v1/experiments` (the body is the experiment file).
    pub async fn experiment_start(
        &self,
        toml: &str,
    ) -> Result<crate::experiment::daemon::RunSummary, ClientError> {
        self.call(
            Method::POST,
            "/v1/experiments",
            Some(toml.as_bytes().to_vec()),
        )
        .await
    }

    /// `GET /v1/experiments`.
    pub async fn experiments(
        &self,
    ) -> Result<Vec<crate::experiment::daemon::RunSummary>, ClientError> {
        #[derive(serde::Deserialize)]
        struct List {
            experiments: Vec<crate::experiment::daemon::RunSummary>,
        }
        Ok(self
            .call::<List>(Method::GET, "/v1/experiments", None)
            .await?
            .experiments)
    }

    /// `GET /v1/experiments/{id}`: the report, or the summary of a run still running.
    pub async fn experiment(&self, id: &str) -> Result<serde_json::Value, ClientError> {
        self.call(Method::GET, &format!("/v1/experiments/{id}"), None)
            .await
    }

    /// `DELETE /v1/experiments/{id}`: stops it; its report.
    pub async fn experiment_stop(&self, id: &str) -> Result<serde_json::Value, ClientError> {
        self.call(Method::DELETE, &format!("/v1/experiments/{id}"), None)
            .await
    }
}
