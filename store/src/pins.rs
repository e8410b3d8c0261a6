//! Pins (what GC keeps), their on-disk encoding in `pins_v1`, the in-memory
//! registry of temporary pins held by write sessions, and the DAG walk that
//! both the pin completeness check and the GC mark phase use.

use crate::links::DagLinks;
use crate::store::StoreError;
use cid::Cid;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};

/// How much of a DAG a pin keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PinMode {
    /// The block and everything it links to, transitively.
    Recursive,
    /// Only the block itself.
    Direct,
}

impl PinMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PinMode::Recursive => "recursive",
            PinMode::Direct => "direct",
        }
    }
}

impl fmt::Display for PinMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PinMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "recursive" => Ok(PinMode::Recursive),
            "direct" => Ok(PinMode::Direct),
            other => Err(format!(
                "unknown pin mode {other:?} (expected recursive or direct)"
            )),
        }
    }
}

/// A stored pin. At most one per CID: pinning again replaces mode and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub cid: Cid,
    pub mode: PinMode,
    pub name: Option<String>,
}

const MODE_RECURSIVE: u8 = 1;
const MODE_DIRECT: u8 = 2;
const NO_NAME: u8 = 0;
const HAS_NAME: u8 = 1;

/// `pins_v1` value: mode byte, name-present byte, UTF-8 name.
pub(crate) fn encode_pin(mode: PinMode, name: Option<&str>) -> Vec<u8> {
    let mode = match mode {
        PinMode::Recursive => MODE_RECURSIVE,
        PinMode::Direct => MODE_DIRECT,
    };
    let mut out = vec![mode, if name.is_some() { HAS_NAME } else { NO_NAME }];
    out.extend_from_slice(name.unwrap_or_default().as_bytes());
    out
}

pub(crate) fn decode_pin(key: &[u8], value: &[u8]) -> Result<Pin, StoreError> {
    let bad = |why: &str| StoreError::Db(format!("malformed entry in pins_v1: {why}"));
    let cid = Cid::try_from(key).map_err(|e| bad(&format!("key is not a CID: {e}")))?;
    let mode = match value.first() {
        Some(&MODE_RECURSIVE) => PinMode::Recursive,
        Some(&MODE_DIRECT) => PinMode::Direct,
        _ => return Err(bad("unknown mode")),
    };
    let name = match value.get(1) {
        Some(&NO_NAME) => None,
        Some(&HAS_NAME) => {
            Some(String::from_utf8(value[2..].to_vec()).map_err(|_| bad("name is not UTF-8"))?)
        }
        _ => return Err(bad("bad name flag")),
    };
    Ok(Pin { cid, mode, name })
}

/// Temporary pins of live sessions, shared by the whole store: a CID may be
/// held by several sessions at once, so each entry counts its holders.
#[derive(Debug, Default)]
pub(crate) struct TempPins {
    holders: Mutex<HashMap<Cid, u32>>,
}

impl TempPins {
    pub(crate) fn add(&self, cid: Cid) {
        let mut holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
        *holders.entry(cid).or_insert(0) += 1;
    }

    pub(crate) fn release<'a>(&self, cids: impl IntoIterator<Item = &'a Cid>) {
        let mut holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
        for cid in cids {
            if let Some(count) = holders.get_mut(cid) {
                *count -= 1;
                if *count == 0 {
                    holders.remove(cid);
                }
            }
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<Cid> {
        let holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
        holders.keys().copied().collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.holders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Visits every block reachable from `roots` exactly once (`visited` keeps
/// what was seen, also across calls). `links_of` returns a block's links;
/// it decides what a missing block means (an error for a pin check, a leaf
/// for GC marking).
pub(crate) fn walk(
    roots: impl IntoIterator<Item = Cid>,
    visited: &mut HashSet<Cid>,
    mut links_of: impl FnMut(&Cid) -> Result<DagLinks, StoreError>,
) -> Result<(), StoreError> {
    let mut stack: Vec<Cid> = roots.into_iter().filter(|c| visited.insert(*c)).collect();
    while let Some(cid) = stack.pop() {
        let DagLinks { children, covered } = links_of(&cid)?;
        // Covered CIDs have no block of their own: never look for them.
        visited.extend(covered.into_iter().map(crate::store::normalize));
        for link in children {
            let link = crate::store::normalize(link);
            if visited.insert(link) {
                stack.push(link);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{cid_for, RAW};

    #[test]
    fn pin_encoding_round_trips() {
        let cid = cid_for(RAW, b"x");
        for (mode, name) in [
            (PinMode::Recursive, None),
            (PinMode::Direct, Some("")),
            (PinMode::Recursive, Some("nixpkgs sources")),
        ] {
            let pin = decode_pin(&cid.to_bytes(), &encode_pin(mode, name)).expect("decode");
            assert_eq!(pin.mode, mode);
            assert_eq!(pin.name.as_deref(), name);
            assert_eq!(pin.cid, cid);
        }
        assert!(decode_pin(&cid.to_bytes(), &[9, 0]).is_err());
        assert_eq!("direct".parse::<PinMode>(), Ok(PinMode::Direct));
    }

    #[test]
    fn temp_pins_count_holders() {
        let pins = TempPins::default();
        let cid = cid_for(RAW, b"y");
        pins.add(cid);
        pins.add(cid);
        pins.release([&cid]);
        assert_eq!(pins.snapshot(), vec![cid]);
        pins.release([&cid]);
        assert_eq!(pins.len(), 0);
    }
}
