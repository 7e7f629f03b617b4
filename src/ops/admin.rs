//! The admin socket: the daemon answers `overlayd status`, `diagnose`, `pods`, `leave`,
//! `rmpeer` and `rotate-key` on a unix socket in `--run-dir` (mode 0600), and the CLI
//! asks through the typed client functions here ([`status`], [`diagnose`], [`pods`],
//! [`leave`], [`rmpeer`], [`rotate_key`]).
//!
//! The protocol is one JSON [`Request`] line and one JSON [`Reply`] line, then the
//! daemon closes the connection. Both ends are this binary.
//!
//! Left out: what the report holds ([`crate::ops::status`]), how a diagnosis is made
//! ([`crate::ops::diagnose`]) and where the numbers come from ([`crate::ops::live`]).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::ops::diagnose::Diagnosis;
use crate::ops::live::StatusSource;
use crate::ops::status::StatusReport;
use crate::pods::PodsReport;

/// File name of the admin socket inside `--run-dir`.
pub(crate) const SOCKET_FILE: &str = "overlayd.sock";

/// Longest request line the daemon reads.
const MAX_REQUEST: u64 = 1024;

/// What the CLI asks the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "lowercase")]
pub(crate) enum Request {
    /// The status report, with the control plane asked now.
    Status,
    /// Why this node can or cannot reach `target`.
    Diagnose {
        /// The pod address asked about.
        target: IpAddr,
    },
    /// Release this node's subnet, leave the cluster and stop.
    Leave,
    /// Take over the subnets of node `name` now.
    Rmpeer {
        /// The node that is gone.
        name: String,
    },
    /// Make a new WireGuard key pair, use it and publish it.
    #[serde(rename = "rotate-key")]
    RotateKey,
    /// The pods on this node (the CNI plugin's store, scanned now).
    Pods,
}

/// What the daemon answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "lowercase")]
pub(crate) enum Reply {
    /// The answer to [`Request::Status`].
    Status(Box<StatusReport>),
    /// The answer to [`Request::Diagnose`].
    Diagnosis(Diagnosis),
    /// The answer to [`Request::Leave`]: what the daemon did.
    Left {
        /// A sentence for the operator.
        message: String,
    },
    /// The answer to [`Request::Rmpeer`]: the subnets taken over (none if the node
    /// held nothing this node could reclaim).
    Reclaimed {
        /// The subnets.
        subnets: Vec<IpNet>,
    },
    /// The answer to [`Request::RotateKey`]: the new public key, base64.
    Rotated {
        /// The new public key.
        public_key: String,
    },
    /// The answer to [`Request::Pods`].
    Pods(Box<PodsReport>),
    /// The request was refused or failed.
    Error {
        /// Why.
        message: String,
    },
}

impl Reply {
    fn error(message: impl Into<String>) -> Reply {
        Reply::Error {
            message: message.into(),
        }
    }
}

/// Binds the admin socket at `path` with mode 0600, replacing a stale one.
pub(crate) fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        // A live daemon answers; a dead one left a stale socket behind.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another overlayd is answering on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// How long a connection may take to ask and be answered: as long as the longest
/// wait of a client (`leave` and `rmpeer`, 30 s), so that a slow `leave` (up to 10 s)
/// is answered and carried out, not cut off halfway.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);
/// The pause before accepting again after `accept` failed.
pub(crate) const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Serves admin requests until the task is dropped.
pub(crate) async fn serve(listener: UnixListener, source: Arc<StatusSource>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: retrying at once would spin a core.
                tracing::warn!("admin socket: cannot accept a connection: {e}");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let source = source.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(ANSWER_WITHIN, answer(stream, &source)).await;
        });
    }
}

/// Reads one request from `stream`, answers it and closes the connection.
async fn answer(stream: UnixStream, source: &StatusSource) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    reader.read_line(&mut line).await?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(request) => handle(request, source).await,
        Err(e) => Reply::error(format!("unknown request '{}': {e}", line.trim())),
    };
    let mut json = serde_json::to_vec(&reply)
        .unwrap_or_else(|e| serde_json::to_vec(&Reply::error(e.to_string())).unwrap_or_default());
    json.push(b'\n');
    write.write_all(&json).await?;
    write.shutdown().await
}

/// The daemon's answer to one request.
async fn handle(request: Request, source: &StatusSource) -> Reply {
    match request {
        Request::Status => Reply::Status(Box::new(source.fresh_report().await)),
        Request::Diagnose { target } => match &source.netlink {
            Some(netlink) => {
                let report = source.fresh_report().await;
                Reply::Diagnosis(crate::ops::diagnose::diagnose(target, &report, netlink).await)
            }
            None => Reply::error("diagnose is not available on this daemon"),
        },
        Request::Leave => match &source.control {
            None => Reply::error("this node has a fixed --subnet: there is no lease to release"),
            Some(c) => {
                match c.handle.leave().await {
                    Ok(()) => {
                        let _ = source.stop.send(true);
                        Reply::Left {
                        message: "released this node's subnet and left the cluster; the daemon stops now".into(),
                    }
                    }
                    Err(e) => Reply::error(e.to_string()),
                }
            }
        },
        Request::RotateKey => handle_rotate_key(source).await,
        Request::Pods => match &source.pods {
            Some(pods) => Reply::Pods(Box::new(pods.scan().await)),
            None => Reply::error(
                "this daemon does not know the CNI plugin's store: start it with --install-cni \
                 or --cni-data-dir (the plugin's dataDir)",
            ),
        },
        Request::Rmpeer { name } => match &source.control {
            None => Reply::error("this node has a fixed --subnet: it takes no part in leases"),
            Some(c) => match c.handle.rmpeer(&name).await {
                Ok(subnets) => Reply::Reclaimed { subnets },
                Err(e) => Reply::error(e.to_string()),
            },
        },
    }
}

/// `overlayd rotate-key`: a new key pair, kept in the state dir, used by the
/// dataplane at once (every tunnel hands shakes again) and published in gossip.
async fn handle_rotate_key(source: &StatusSource) -> Reply {
    use crate::dataplane::wg::key;
    let Some(wg) = source.dataplane.encryption() else {
        return Reply::error(
            "this node does not encrypt (no --encrypt): there is no WireGuard key to rotate",
        );
    };
    let pair = key::KeyPair::generate();
    if let Err(e) = key::store(&source.state_dir, &pair) {
        return Reply::error(format!("{e}; the old key stays in use"));
    }
    let public = pair.public_bytes();
    if !wg.rotate(pair).await {
        return Reply::error("the encrypted dataplane has stopped");
    }
    if let Some(c) = &source.control {
        let identity = crate::control::WgIdentity {
            port: wg.port(),
            key: public,
        };
        if let Err(e) = c.handle.set_wg(identity).await {
            return Reply::error(format!(
                "the dataplane uses the new key, but publishing it failed: {e}"
            ));
        }
    }
    Reply::Rotated {
        public_key: key::encode(&public),
    }
}

/// Why the client got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers on the socket.
    #[error("overlayd is not running: nothing answers on {path} ({source})")]
    NotRunning {
        /// The socket path.
        path: PathBuf,
        /// The connect error.
        source: std::io::Error,
    },
    /// The daemon refused the request.
    #[error("overlayd: {0}")]
    Refused(String),
    /// The daemon's reply could not be read.
    #[error("bad reply from overlayd on {path}: {why}")]
    BadReply {
        /// The socket path.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
}

/// Sends `request` to the daemon whose run dir is `run_dir` and returns its reply;
/// [`Reply::Error`] becomes [`ClientError::Refused`].
pub(crate) async fn call(
    run_dir: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<Reply, ClientError> {
    let path = run_dir.join(SOCKET_FILE);
    let bad = |why: String| ClientError::BadReply {
        path: path.clone(),
        why,
    };
    let mut stream =
        UnixStream::connect(&path)
            .await
            .map_err(|source| ClientError::NotRunning {
                path: path.clone(),
                source,
            })?;
    let mut line = serde_json::to_vec(request).map_err(|e| bad(e.to_string()))?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .await
        .map_err(|e| bad(e.to_string()))?;
    let mut reply = String::new();
    let read = stream.read_to_string(&mut reply);
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| bad("timed out".into()))?
        .map_err(|e| bad(e.to_string()))?;
    match serde_json::from_str(&reply).map_err(|e| bad(format!("{e}: {}", reply.trim())))? {
        Reply::Error { message } => Err(ClientError::Refused(message)),
        reply => Ok(reply),
    }
}

/// A reply of another kind than the request asks for.
fn unexpected(run_dir: &Path, reply: &Reply) -> ClientError {
    ClientError::BadReply {
        path: run_dir.join(SOCKET_FILE),
        why: format!("unexpected reply {reply:?}"),
    }
}

/// Asks the daemon whose run dir is `run_dir` for its status.
pub async fn status(run_dir: &Path) -> Result<StatusReport, ClientError> {
    match call(run_dir, &Request::Status, Duration::from_secs(5)).await? {
        Reply::Status(report) => Ok(*report),
        other => Err(unexpected(run_dir, &other)),
    }
}

/// Asks the daemon whose run dir is `run_dir` why it can or cannot reach `target`.
pub async fn diagnose(run_dir: &Path, target: IpAddr) -> Result<Diagnosis, ClientError> {
    let request = Request::Diagnose { target };
    match call(run_dir, &request, Duration::from_secs(10)).await? {
        Reply::Diagnosis(d) => Ok(d),
        other => Err(unexpected(run_dir, &other)),
    }
}

/// Asks the daemon whose run dir is `run_dir` to release its subnet and leave; returns
/// what it did.
pub async fn leave(run_dir: &Path) -> Result<String, ClientError> {
    match call(run_dir, &Request::Leave, Duration::from_secs(30)).await? {
        Reply::Left { message } => Ok(message),
        other => Err(unexpected(run_dir, &other)),
    }
}

/// Asks the daemon whose run dir is `run_dir` for a new WireGuard key pair; returns
/// the new public key.
pub async fn rotate_key(run_dir: &Path) -> Result<String, ClientError> {
    match call(run_dir, &Request::RotateKey, Duration::from_secs(10)).await? {
        Reply::Rotated { public_key } => Ok(public_key),
        other => Err(unexpected(run_dir, &other)),
    }
}

/// The pods on this node.
pub async fn pods(run_dir: &Path) -> Result<PodsReport, ClientError> {
    match call(run_dir, &Request::Pods, Duration::from_secs(10)).await? {
        Reply::Pods(report) => Ok(*report),
        other => Err(unexpected(run_dir, &other)),
    }
}

/// Asks the daemon whose run dir is `run_dir` to take over `name`'s subnets now;
/// returns the subnets taken.
pub async fn rmpeer(run_dir: &Path, name: &str) -> Result<Vec<IpNet>, ClientError> {
    let request = Request::Rmpeer { name: name.into() };
    match call(run_dir, &request, Duration::from_secs(30)).await? {
        Reply::Reclaimed { subnets } => Ok(subnets),
        other => Err(unexpected(run_dir, &other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_are_one_json_object_each() {
        let r = Request::Diagnose {
            target: "10.244.1.2".parse().unwrap(),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#"{"request":"diagnose","target":"10.244.1.2"}"#);
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), r);
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"request":"status"}"#
        );
        let reply = Reply::Reclaimed {
            subnets: vec!["10.244.3.0/24".parse().unwrap()],
        };
        let json = serde_json::to_string(&reply).unwrap();
        assert_eq!(json, r#"{"reply":"reclaimed","subnets":["10.244.3.0/24"]}"#);
        assert_eq!(serde_json::from_str::<Reply>(&json).unwrap(), reply);
    }

    #[test]
    fn a_status_reply_carries_the_whole_report() {
        use crate::ops::status::ControlReport;
        let mut report = StatusReport {
            node: crate::ops::status::test_node(),
            control: Some(ControlReport {
                lease: Some("10.244.1.0/24".parse().unwrap()),
                witnesses: vec!["n2".into()],
                ..Default::default()
            }),
            peers: vec![crate::ops::status::test_peer(
                crate::dataplane::PeerState::Suspect,
            )],
            dataplane: Default::default(),
            path: crate::ops::status::PathReport {
                mode: crate::dataplane::DataplaneMode::Kernel,
                device: "ovlvx0".into(),
                reason: "auto: a vxlan device could be created".into(),
                device_errors: [("rx_dropped".to_string(), 1)].into_iter().collect(),
                wg: None,
            },
        };
        report.dataplane.drops.insert("peer_dead".into(), 9);
        let reply = Reply::Status(Box::new(report));
        let json = serde_json::to_string(&reply).unwrap();
        assert_eq!(serde_json::from_str::<Reply>(&json).unwrap(), reply);
    }
}
