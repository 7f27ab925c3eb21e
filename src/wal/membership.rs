//! The shard's saved configurations (`Command::SaveMembership`), in their own file
//! beside the log: retention and log resets remove the entries that carried them.
//!
//! The file is replaced whole and atomically: the new list goes to a temporary file,
//! which is synced, renamed over the old one, and the directory synced. A crash
//! leaves the old file or the new one, never a mix; a leftover temporary file is an
//! unfinished save, never acknowledged, and is removed at open. The layout is a
//! fixed-width little-endian header and one record per configuration, zero-padded to
//! the block size (offset table in docs/wal-format.md); a crc32 covers every byte
//! after its own field, padding included, so any damage is caught.

use super::error::{WalError, WalResult, io_err};
use super::storage::{Storage, StorageFile, remove_durably};
use crate::engine::{KnownConfig, Membership};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The membership file's name inside the WAL directory.
pub const MEMBERSHIP_FILE_NAME: &str = "membership";
/// Where a save writes before it renames over [`MEMBERSHIP_FILE_NAME`].
pub const MEMBERSHIP_TMP_FILE_NAME: &str = "membership.tmp";
/// The first eight bytes of the membership file.
pub const MEMBERSHIP_MAGIC: [u8; 8] = *b"RLMEMBER";
/// The membership file's format version.
pub const MEMBERSHIP_FILE_VERSION: u32 = 1;
/// Configuration flag: known committed when saved.
const CONFIG_FLAG_COMMITTED: u8 = 1;
/// A larger file is damaged: a list holds a few configurations of at most 34 KiB
/// each, and recovery must never allocate what a damaged length claims.
const MEMBERSHIP_FILE_BYTES_MAX: u64 = 4 << 20;

/// The header at offset 0 of the membership file.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct FileHeader {
    magic: [u8; 8],
    version: U32,
    /// The number of configuration records that follow.
    count: U32,
    /// crc32 of every byte of the file after this field, padding included.
    crc: U32,
}
const FILE_HEADER_BYTES: usize = 20;
const _: () = assert!(size_of::<FileHeader>() == FILE_HEADER_BYTES);
/// Where the checksummed bytes start.
const CRC_END: usize = 20;

/// The fixed part of one configuration record; `membership_len` bytes of
/// `Membership::encode()` follow it.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct ConfigHeader {
    index: U64,
    term: U64,
    flags: u8,
    reserved: [u8; 3],
    membership_len: U32,
}
const CONFIG_HEADER_BYTES: usize = 24;
const _: () = assert!(size_of::<ConfigHeader>() == CONFIG_HEADER_BYTES);

/// Encodes `configs` as a whole membership file, zero-padded to a multiple of
/// `block_bytes`. Asserts that the reader accepts what it wrote.
pub fn encode_membership_file(configs: &[KnownConfig], block_bytes: usize) -> Vec<u8> {
    let mut out = vec![0u8; FILE_HEADER_BYTES];
    for config in configs {
        let membership = config.membership.encode();
        let header = ConfigHeader {
            index: U64::new(config.index),
            term: U64::new(config.term),
            flags: if config.committed {
                CONFIG_FLAG_COMMITTED
            } else {
                0
            },
            reserved: [0; 3],
            membership_len: U32::new(membership.len() as u32),
        };
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&membership);
    }
    out.resize(out.len().div_ceil(block_bytes).max(1) * block_bytes, 0);
    let mut header = FileHeader {
        magic: MEMBERSHIP_MAGIC,
        version: U32::new(MEMBERSHIP_FILE_VERSION),
        count: U32::new(configs.len() as u32),
        crc: U32::new(0),
    };
    header.crc = U32::new(crc32fast::hash(&out[CRC_END..]));
    out[..FILE_HEADER_BYTES].copy_from_slice(header.as_bytes());
    // The writer must never produce what the reader rejects.
    assert_eq!(
        decode_membership_file(&out).as_deref(),
        Ok(configs),
        "membership file encoding"
    );
    out
}

/// Decodes a whole membership file; the error says what is wrong with it.
pub fn decode_membership_file(bytes: &[u8]) -> Result<Vec<KnownConfig>, String> {
    let (header, mut rest) = FileHeader::read_from_prefix(bytes)
        .map_err(|_| format!("{} bytes, shorter than its header", bytes.len()))?;
    if header.magic != MEMBERSHIP_MAGIC {
        return Err("bad magic".into());
    }
    if crc32fast::hash(&bytes[CRC_END..]) != header.crc.get() {
        return Err("checksum mismatch".into());
    }
    if header.version.get() != MEMBERSHIP_FILE_VERSION {
        return Err(format!("unknown version {}", header.version.get()));
    }
    let count = header.count.get() as usize;
    // Each record takes at least its header: a count beyond that is damage, and
    // bounds the allocation below.
    if count > rest.len() / CONFIG_HEADER_BYTES {
        return Err(format!("{count} configurations do not fit in the file"));
    }
    let mut configs = Vec::with_capacity(count);
    for i in 0..count {
        let (config, tail) = decode_config(rest).map_err(|e| format!("configuration {i}: {e}"))?;
        configs.push(config);
        rest = tail;
    }
    if rest.iter().any(|b| *b != 0) {
        return Err("padding after the last configuration is not zero".into());
    }
    Ok(configs)
}

/// The configuration record at the front of `bytes`, and what follows it.
fn decode_config(bytes: &[u8]) -> Result<(KnownConfig, &[u8]), String> {
    let (header, rest) =
        ConfigHeader::read_from_prefix(bytes).map_err(|_| "cut short".to_string())?;
    if header.flags & !CONFIG_FLAG_COMMITTED != 0 || header.reserved != [0; 3] {
        return Err(format!("unknown flags {:#x}", header.flags));
    }
    let len = header.membership_len.get() as usize;
    if rest.len() < len {
        return Err("membership cut short".into());
    }
    let membership = Membership::decode(&rest[..len]).map_err(|e| e.to_string())?;
    let config = KnownConfig {
        index: header.index.get(),
        term: header.term.get(),
        committed: header.flags & CONFIG_FLAG_COMMITTED != 0,
        membership,
    };
    Ok((config, &rest[len..]))
}

/// The error for a membership file that cannot be used as it is.
fn unusable(reason: impl Into<String>) -> WalError {
    WalError::Membership {
        file: MEMBERSHIP_FILE_NAME.to_string(),
        reason: reason.into(),
    }
}

/// Reads the saved configurations at open: none when no save ever completed. A
/// leftover temporary file (a save a crash interrupted, never reported durable) is
/// removed first.
pub async fn read_membership<S: Storage>(storage: &S) -> WalResult<Vec<KnownConfig>> {
    let names = storage
        .list()
        .await
        .map_err(io_err("listing the WAL directory"))?;
    if names.iter().any(|n| n == MEMBERSHIP_TMP_FILE_NAME) {
        remove_durably(storage, MEMBERSHIP_TMP_FILE_NAME).await?;
    }
    if !names.iter().any(|n| n == MEMBERSHIP_FILE_NAME) {
        return Ok(Vec::new());
    }
    let context = || format!("reading {MEMBERSHIP_FILE_NAME}");
    let file = storage
        .open(MEMBERSHIP_FILE_NAME, false)
        .await
        .map_err(io_err(context()))?;
    let size = file.size().await.map_err(io_err(context()))?;
    if size > MEMBERSHIP_FILE_BYTES_MAX {
        return Err(unusable(format!(
            "{size} bytes, more than a membership file holds"
        )));
    }
    let bytes = file
        .read_at(0, size as usize)
        .await
        .map_err(io_err(context()))?;
    decode_membership_file(&bytes).map_err(unusable)
}

/// Replaces the membership file with `bytes` (an encoded file): written to the
/// temporary file and synced, renamed over the old file, and the directory synced.
pub async fn write_membership<S: Storage>(storage: &S, bytes: &[u8]) -> WalResult<()> {
    let tmp = MEMBERSHIP_TMP_FILE_NAME;
    // A temporary file left by a failed save may be longer than this one; the
    // checksum covers the whole file, so start from an empty one.
    match storage.remove(tmp).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io_err(format!("removing {tmp}"))(e));
        }
        _ => {}
    }
    let file = storage
        .open(tmp, true)
        .await
        .map_err(io_err(format!("creating {tmp}")))?;
    file.write_at(0, bytes)
        .await
        .map_err(io_err(format!("writing {tmp}")))?;
    file.sync()
        .await
        .map_err(io_err(format!("syncing {tmp}")))?;
    drop(file);
    storage
        .rename(tmp, MEMBERSHIP_FILE_NAME)
        .await
        .map_err(io_err(format!("renaming {tmp}")))?;
    storage
        .sync_dir()
        .await
        .map_err(io_err("syncing the WAL directory"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Member;

    fn sample() -> Vec<KnownConfig> {
        let member = |id, voter| Member {
            id,
            voter,
            peer_address: format!("10.0.0.{id}:7000"),
            client_address: format!("10.0.0.{id}:8000"),
        };
        vec![
            KnownConfig {
                index: 7,
                term: 2,
                committed: true,
                membership: Membership::new(vec![member(1, true), member(2, true)]),
            },
            KnownConfig {
                index: 12,
                term: 3,
                committed: false,
                membership: Membership::new(vec![
                    member(1, true),
                    member(2, true),
                    member(3, false),
                ]),
            },
        ]
    }

    #[test]
    fn a_file_round_trips_padded_to_the_block() {
        for configs in [Vec::new(), sample()] {
            let bytes = encode_membership_file(&configs, 512);
            assert_eq!(bytes.len() % 512, 0);
            assert_eq!(&bytes[..8], b"RLMEMBER");
            assert_eq!(decode_membership_file(&bytes), Ok(configs));
        }
    }

    #[test]
    fn every_damaged_byte_is_caught() {
        let bytes = encode_membership_file(&sample(), 512);
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut damaged = bytes.clone();
                damaged[i] ^= flip;
                assert!(
                    decode_membership_file(&damaged).is_err(),
                    "byte {i} ^ {flip:#x} not caught"
                );
            }
        }
    }

    #[test]
    fn cut_or_extended_files_are_caught() {
        let bytes = encode_membership_file(&sample(), 512);
        for len in 0..bytes.len() {
            assert!(
                decode_membership_file(&bytes[..len]).is_err(),
                "cut at {len}"
            );
        }
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0; 512]);
        assert!(decode_membership_file(&longer).is_err());
    }

    #[test]
    fn a_huge_count_is_refused_without_allocating() {
        let mut bytes = encode_membership_file(&[], 512);
        bytes[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        let crc = crc32fast::hash(&bytes[CRC_END..]);
        bytes[16..20].copy_from_slice(&crc.to_le_bytes());
        let err = decode_membership_file(&bytes).expect_err("refused");
        assert!(err.contains("do not fit"), "{err}");
    }
}
