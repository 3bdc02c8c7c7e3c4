//! Fault ids.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A fault's id: `f-` and 8 hex digits (the low 24 bits also name its IFB device).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FaultId(u32);

impl FaultId {
    /// A fresh random id (never 0).
    #[must_use]
    pub fn random() -> Self {
        use std::io::Read as _;
        let mut b = [0u8; 4];
        if std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut b))
            .is_err()
        {
            // No /dev/urandom (odd chroot): time and pid are unique enough for ids.
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            b = (t.subsec_nanos() ^ std::process::id().rotate_left(16)).to_ne_bytes();
        }
        Self(u32::from_ne_bytes(b).max(1))
    }
    /// From a raw number.
    #[must_use]
    pub fn from_raw(v: u32) -> Self {
        Self(v)
    }
    /// The raw number.
    #[must_use]
    pub fn raw(self) -> u32 {
        self.0
    }
}

impl fmt::Display for FaultId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "f-{:08x}", self.0)
    }
}

impl std::str::FromStr for FaultId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let hex = s.strip_prefix("f-").unwrap_or(s);
        if hex.len() != 8 {
            return Err(format!("bad fault id {s:?}: expected f-XXXXXXXX"));
        }
        u32::from_str_radix(hex, 16)
            .map(Self)
            .map_err(|_| format!("bad fault id {s:?}: expected f-XXXXXXXX"))
    }
}

impl TryFrom<String> for FaultId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<FaultId> for String {
    fn from(id: FaultId) -> Self {
        id.to_string()
    }
}
