//! The identity file of a data directory: the node id, cluster id and shard count
//! whose data it holds (issue 17). Written on the first start, compared with the
//! configuration on every later one: a node pointed at another node's directory, or
//! started with a different shard count (which would put records in other shards
//! than those holding them), refuses to start.
//!
//! Fixed-width little-endian, replaced atomically (temporary file, sync, rename,
//! directory sync) and checksummed; offsets in docs/wal-format.md.

use std::io::Write;
use std::path::{Path, PathBuf};

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::preflight::PreflightError;
use crate::engine::NodeId;
use crate::wal::dir::sync_dir;

/// The identity file in a data directory.
pub const IDENTITY_FILE: &str = "identity";
/// The text file earlier versions wrote (cluster and node id only); read once, when
/// no identity file exists yet, then superseded by one.
pub const LEGACY_IDENTITY_FILE: &str = "ringlog-node-id";
/// The first eight bytes of the identity file.
pub const IDENTITY_MAGIC: [u8; 8] = *b"RLIDENTY";
/// The identity file's format version.
pub const IDENTITY_VERSION: u32 = 1;

/// Identity flag: the node joined a running cluster (`serve --join`) rather than
/// founding it from `[[nodes]]`, so its groups start with no members until a
/// leader sends them their membership.
pub const IDENTITY_FLAG_JOINED: u32 = 1;

/// Whose data a directory holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub cluster_id: u64,
    pub node_id: NodeId,
    pub shards: u32,
    /// Whether the node joined a running cluster (recorded on the first start).
    pub joined: bool,
}

impl Identity {
    /// Whether `other` names the same cluster, node and shard count; how the
    /// node came to be a member is recorded once and not configured again.
    fn same_node(&self, other: &Identity) -> bool {
        (self.cluster_id, self.node_id, self.shards)
            == (other.cluster_id, other.node_id, other.shards)
    }
}

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct IdentityHeader {
    magic: [u8; 8],
    version: U32,
    node_id: U32,
    shards: U32,
    flags: U32,
    cluster_id: U64,
    /// crc32 of bytes 0..32.
    crc: U32,
}
/// The identity file's exact length.
pub const IDENTITY_BYTES: usize = 36;
const _: () = assert!(size_of::<IdentityHeader>() == IDENTITY_BYTES);

/// The identity file's bytes. Asserts that the reader accepts them.
pub fn encode_identity(identity: &Identity) -> [u8; IDENTITY_BYTES] {
    let mut header = IdentityHeader {
        magic: IDENTITY_MAGIC,
        version: U32::new(IDENTITY_VERSION),
        node_id: U32::new(identity.node_id),
        shards: U32::new(identity.shards),
        flags: U32::new(if identity.joined {
            IDENTITY_FLAG_JOINED
        } else {
            0
        }),
        cluster_id: U64::new(identity.cluster_id),
        crc: U32::new(0),
    };
    header.crc = U32::new(crc32fast::hash(&header.as_bytes()[..32]));
    let bytes: [u8; IDENTITY_BYTES] = header.as_bytes().try_into().expect("fixed size");
    // The writer must never produce what the reader rejects.
    assert_eq!(decode_identity(&bytes), Ok(*identity));
    bytes
}

/// Decodes an identity file; the error says what is wrong with it.
pub fn decode_identity(bytes: &[u8]) -> Result<Identity, String> {
    let header = IdentityHeader::read_from_bytes(bytes)
        .map_err(|_| format!("{} bytes instead of {IDENTITY_BYTES}", bytes.len()))?;
    if header.magic != IDENTITY_MAGIC {
        return Err("bad magic".into());
    }
    if crc32fast::hash(&header.as_bytes()[..32]) != header.crc.get() {
        return Err("checksum mismatch".into());
    }
    if header.version.get() != IDENTITY_VERSION {
        return Err(format!("unknown version {}", header.version.get()));
    }
    let flags = header.flags.get();
    if flags & !IDENTITY_FLAG_JOINED != 0 {
        return Err(format!("unknown flags {flags:#x}"));
    }
    Ok(Identity {
        cluster_id: header.cluster_id.get(),
        node_id: header.node_id.get(),
        shards: header.shards.get(),
        joined: flags & IDENTITY_FLAG_JOINED != 0,
    })
}

/// Checks that data directory `dir` (which exists) belongs to `configured`; the
/// first time, records that it does. A directory from before the identity file
/// gets one, after its legacy file (if any) is checked for cluster and node.
/// Returns the identity in force: whether the node joined is the first start's.
pub fn check_identity(dir: &Path, configured: &Identity) -> Result<Identity, PreflightError> {
    let path = dir.join(IDENTITY_FILE);
    let unusable = |reason: String| PreflightError::DataDirUnusable {
        path: dir.to_path_buf(),
        reason,
    };
    let found = match std::fs::read(&path) {
        Ok(bytes) => decode_identity(&bytes).map_err(|e| {
            unusable(format!(
                "its identity file {} is damaged ({e}); restore it from a backup, or \
                 remove it to have this node claim the directory again",
                path.display()
            ))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            check_legacy(dir, configured)?;
            write_identity(dir, configured)
                .map_err(|e| unusable(format!("cannot write {}: {e}", path.display())))?;
            return Ok(*configured);
        }
        Err(e) => return Err(unusable(format!("cannot read {}: {e}", path.display()))),
    };
    if !found.same_node(configured) {
        return Err(foreign(path, found, *configured));
    }
    Ok(found)
}

/// The refusal of a directory whose identity file at `path` says `found`.
fn foreign(path: PathBuf, found: Identity, configured: Identity) -> PreflightError {
    let mut fix = Vec::new();
    if found.cluster_id != configured.cluster_id {
        fix.push("cluster_id");
    }
    if found.node_id != configured.node_id {
        fix.push("node_id");
    }
    if found.shards != configured.shards {
        fix.push("shards (a node's shard count cannot change while it holds data)");
    }
    PreflightError::DataDirForeign {
        path,
        found,
        configured,
        fix: fix.join(" and "),
    }
}

/// Compares the legacy text file, if any, with the configured cluster and node (it
/// recorded no shard count).
fn check_legacy(dir: &Path, configured: &Identity) -> Result<(), PreflightError> {
    let path = dir.join(LEGACY_IDENTITY_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(PreflightError::DataDirUnusable {
                path: dir.to_path_buf(),
                reason: format!("cannot read {}: {e}", path.display()),
            });
        }
    };
    let (cluster_id, node_id) =
        parse_legacy(&text).ok_or_else(|| PreflightError::DataDirUnusable {
            path: dir.to_path_buf(),
            reason: format!("{} is damaged: {text:?}", path.display()),
        })?;
    let found = Identity {
        cluster_id,
        node_id,
        ..*configured
    };
    if !found.same_node(configured) {
        return Err(foreign(path, found, *configured));
    }
    Ok(())
}

fn parse_legacy(text: &str) -> Option<(u64, NodeId)> {
    let mut cluster = None;
    let mut node = None;
    for line in text.lines() {
        match line.split_once('=') {
            Some(("cluster_id", value)) => cluster = value.trim().parse().ok(),
            Some(("node_id", value)) => node = value.trim().parse().ok(),
            _ => {}
        }
    }
    Some((cluster?, node?))
}

/// Written to a temporary name, synced, renamed, and the directory synced, so that
/// a crash leaves either no identity or a whole one.
fn write_identity(dir: &Path, identity: &Identity) -> std::io::Result<()> {
    let temporary = dir.join(format!("{IDENTITY_FILE}.tmp"));
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(&encode_identity(identity))?;
    file.sync_all()?;
    std::fs::rename(&temporary, dir.join(IDENTITY_FILE))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Identity = Identity {
        cluster_id: 0x42,
        node_id: 1,
        shards: 4,
        joined: false,
    };

    #[test]
    fn an_identity_round_trips_and_every_damaged_byte_is_caught() {
        let bytes = encode_identity(&ME);
        assert_eq!(&bytes[..8], b"RLIDENTY");
        assert_eq!(decode_identity(&bytes), Ok(ME));
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut damaged = bytes;
                damaged[i] ^= flip;
                assert!(decode_identity(&damaged).is_err(), "byte {i} ^ {flip:#x}");
            }
        }
        for len in 0..bytes.len() {
            assert!(decode_identity(&bytes[..len]).is_err(), "cut at {len}");
        }
        assert!(decode_identity(&[&bytes[..], &[0]].concat()).is_err());
    }

    #[test]
    fn a_directory_is_claimed_once_and_refused_to_others_in_words() {
        let dir = tempfile::tempdir().unwrap();
        check_identity(dir.path(), &ME).expect("claimed");
        check_identity(dir.path(), &ME).expect("same node again");
        let other = Identity { node_id: 2, ..ME };
        let text = check_identity(dir.path(), &other).unwrap_err().to_string();
        assert!(
            text.contains(&dir.path().join("identity").display().to_string()),
            "{text}"
        );
        assert!(
            text.contains("belongs to node 1 of cluster 66 with 4 shards"),
            "{text}"
        );
        assert!(
            text.contains("configured as node 2 of cluster 66 with 4 shards"),
            "{text}"
        );
        assert!(
            text.contains("point data_dir elsewhere, or fix node_id"),
            "{text}"
        );
        let resharded = Identity { shards: 8, ..ME };
        let text = check_identity(dir.path(), &resharded)
            .unwrap_err()
            .to_string();
        assert!(text.contains("fix shards"), "{text}");
    }

    #[test]
    fn how_a_node_became_a_member_is_recorded_once() {
        let dir = tempfile::tempdir().unwrap();
        let joiner = Identity { joined: true, ..ME };
        assert_eq!(check_identity(dir.path(), &joiner).expect("joined"), joiner);
        // A later start without --join is still the joined node's.
        assert_eq!(check_identity(dir.path(), &ME).expect("again"), joiner);
        let founded = tempfile::tempdir().unwrap();
        check_identity(founded.path(), &ME).expect("claimed");
        // --join on a directory that holds a founding member's data changes nothing.
        assert_eq!(check_identity(founded.path(), &joiner).expect("ok"), ME);
        let mut bytes = encode_identity(&joiner);
        bytes[20] = 3;
        let crc = crc32fast::hash(&bytes[..32]);
        bytes[32..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_identity(&bytes), Err("unknown flags 0x3".into()));
    }

    #[test]
    fn a_legacy_directory_is_checked_then_gets_an_identity() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join(LEGACY_IDENTITY_FILE);
        std::fs::write(&legacy, "cluster_id=66\nnode_id=1\n").unwrap();
        let other = Identity { node_id: 3, ..ME };
        let text = check_identity(dir.path(), &other).unwrap_err().to_string();
        assert!(
            text.contains("ringlog-node-id") && text.contains("fix node_id"),
            "{text}"
        );
        assert!(!dir.path().join(IDENTITY_FILE).exists());
        check_identity(dir.path(), &ME).expect("the legacy owner starts");
        let bytes = std::fs::read(dir.path().join(IDENTITY_FILE)).unwrap();
        assert_eq!(decode_identity(&bytes), Ok(ME));
    }

    #[test]
    fn a_damaged_identity_file_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        check_identity(dir.path(), &ME).expect("claimed");
        let path = dir.path().join(IDENTITY_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[13] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let text = check_identity(dir.path(), &ME).unwrap_err().to_string();
        assert!(
            text.contains("damaged") && text.contains("checksum"),
            "{text}"
        );
    }
}
