//! The plugin's error type and its mapping to CNI error codes.
//!
//! Every failure the plugin can report is one [`Error`] variant; [`Error::code`] is the
//! single place that maps them to the codes of the CNI spec ("Error" section of SPEC.md):
//! 1 incompatible version, 4 bad environment, 6 undecodable stdin, 7 invalid config,
//! 11 try again later, 50 plugin not available (STATUS), 100+ plugin-specific.

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

/// Plugin-specific error codes (100 and up), as the spec reserves them for plugins.
pub mod codes {
    /// A netlink request failed.
    pub const NETLINK: u32 = 100;
    /// The requested address is already reserved for another attachment.
    pub const ADDRESS_TAKEN: u32 = 101;
    /// The requested address is outside the node subnet or is reserved.
    pub const ADDRESS_OUTSIDE_SUBNET: u32 = 102;
    /// Every host address of the subnet is allocated.
    pub const SUBNET_FULL: u32 = 103;
    /// The IPAM store under `dataDir` could not be read or written.
    pub const STORE: u32 = 104;
    /// The delegated IPAM plugin could not be run or gave an unusable answer.
    pub const DELEGATE: u32 = 105;
    /// Installing the masquerade rule failed.
    pub const MASQ: u32 = 106;
    /// CHECK found the container's network different from `prevResult`.
    pub const CHECK_FAILED: u32 = 107;
    /// `node.json` exists but cannot be used.
    pub const NODE_FILE: u32 = 108;
}

/// Everything that can go wrong in the plugin.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config's `cniVersion` (or the command) is not supported at that version.
    #[error("incompatible CNI version: {0}")]
    IncompatibleVersion(String),
    /// A required `CNI_*` variable is missing.
    #[error("bad environment: {0} is not set")]
    MissingEnv(&'static str),
    /// A `CNI_*` variable has an unusable value.
    #[error("bad environment: {var}={value:?}: {reason}")]
    InvalidEnv {
        /// The variable name.
        var: &'static str,
        /// Its value.
        value: String,
        /// Why it is unusable.
        reason: String,
    },
    /// stdin is not a JSON document.
    #[error("cannot decode the network configuration on stdin: {0}")]
    Decode(String),
    /// stdin is JSON but not a valid configuration for this plugin.
    #[error("invalid network configuration: {0}")]
    InvalidConfig(String),
    /// The daemon has not written `node.json` yet.
    #[error("overlayd is not ready on this node: {} does not exist (is overlayd running and does it hold a subnet lease?)", path.display())]
    NotReady {
        /// The node file the plugin looked for.
        path: PathBuf,
    },
    /// `node.json` exists but the node bridge it names does not (yet).
    #[error("overlayd is not ready on this node: bridge {bridge} named in {} does not exist", path.display())]
    BridgeMissing {
        /// The bridge name.
        bridge: String,
        /// The node file naming it.
        path: PathBuf,
    },
    /// `node.json` exists but is unreadable or malformed.
    #[error("cannot use overlayd node file {}: {reason}", path.display())]
    NodeFile {
        /// The node file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// STATUS: the plugin cannot serve ADDs now.
    #[error("overlayd-cni is not available: {0}")]
    NotAvailable(String),
    /// A netlink request failed.
    #[error("netlink: {op}: {source}")]
    Netlink {
        /// What the plugin was doing.
        op: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// A requested address is already reserved.
    #[error("address {ip} is already allocated to container {owner}")]
    AddressTaken {
        /// The requested address.
        ip: IpAddr,
        /// The container holding it.
        owner: String,
    },
    /// A requested address is not a usable host address of the subnet.
    #[error("requested address {ip} {reason} (node subnet {subnet})")]
    AddressNotUsable {
        /// The requested address.
        ip: String,
        /// The subnet allocations come from.
        subnet: IpNet,
        /// Why it is unusable.
        reason: &'static str,
    },
    /// No free address is left.
    #[error("no free address left in node subnet {subnet}")]
    SubnetFull {
        /// The exhausted subnet.
        subnet: IpNet,
    },
    /// The IPAM store failed.
    #[error("IPAM store {}: {source}", path.display())]
    Store {
        /// The file or directory involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A reservation file of the IPAM store does not parse, or an owner cannot be
    /// written in the store's format.
    #[error("IPAM store {}: {source}", path.display())]
    StoreRecord {
        /// The reservation file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: overlayd_node_info::pods::RecordError,
    },
    /// The delegated IPAM plugin returned a CNI error; its code is passed through.
    #[error("IPAM plugin {plugin} failed: {msg}")]
    Delegate {
        /// The delegated plugin type.
        plugin: String,
        /// The code it returned.
        code: u32,
        /// Its message (and details).
        msg: String,
    },
    /// The delegated IPAM plugin could not be run or answered nonsense.
    #[error("IPAM plugin {plugin}: {reason}")]
    DelegateExec {
        /// The delegated plugin type.
        plugin: String,
        /// What went wrong.
        reason: String,
    },
    /// Installing the masquerade rule failed.
    #[error("ipMasq: {0}")]
    Masq(String),
    /// CHECK found a mismatch.
    #[error("CHECK failed: {0}")]
    CheckFailed(String),
}

impl Error {
    /// The CNI error code for this error.
    pub fn code(&self) -> u32 {
        match self {
            Error::IncompatibleVersion(_) => 1,
            Error::MissingEnv(_) | Error::InvalidEnv { .. } => 4,
            Error::Decode(_) => 6,
            Error::InvalidConfig(_) => 7,
            Error::NotReady { .. } | Error::BridgeMissing { .. } => 11,
            Error::NotAvailable(_) => 50,
            Error::Netlink { .. } => codes::NETLINK,
            Error::AddressTaken { .. } => codes::ADDRESS_TAKEN,
            Error::AddressNotUsable { .. } => codes::ADDRESS_OUTSIDE_SUBNET,
            Error::SubnetFull { .. } => codes::SUBNET_FULL,
            Error::Store { .. } | Error::StoreRecord { .. } => codes::STORE,
            Error::Delegate { code, .. } => *code,
            Error::DelegateExec { .. } => codes::DELEGATE,
            Error::Masq(_) => codes::MASQ,
            Error::CheckFailed(_) => codes::CHECK_FAILED,
            Error::NodeFile { .. } => codes::NODE_FILE,
        }
    }

    /// The error reply the spec defines, as JSON.
    pub fn to_reply(&self, cni_version: &str) -> serde_json::Value {
        let mut reply = serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code(),
            "msg": self.to_string(),
        });
        if let Some(source) = std::error::Error::source(self) {
            reply["details"] = serde_json::Value::String(source.to_string());
        }
        reply
    }

    /// Wraps a netlink failure with what the plugin was doing.
    pub(crate) fn netlink(op: impl Into<String>, source: io::Error) -> Self {
        Error::Netlink {
            op: op.into(),
            source,
        }
    }

    /// Wraps an IPAM store failure with the path involved.
    pub(crate) fn store(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Store {
            path: path.into(),
            source,
        }
    }
}

/// Result alias for the plugin.
pub type Result<T, E = Error> = std::result::Result<T, E>;
