//! The hard state (current term and vote) in its own small file of two slots, one
//! block each. A write goes to the slot that does not hold the current state and is
//! followed by fdatasync, so a crash during the write leaves the other, older slot
//! valid; recovery takes the valid slot with the higher write counter.

use super::error::{WalError, WalResult, io_err};
use super::format::{HARD_STATE_SLOT_BYTES, decode_hard_state, encode_hard_state};
use super::storage::{Storage, StorageFile};
use crate::engine::HardState;

/// The hard-state file's name inside the WAL directory.
pub const HARD_STATE_FILE_NAME: &str = "hardstate";

/// The open hard-state file.
pub struct HardStateFile<F> {
    file: F,
    block_bytes: usize,
    /// The write counter of the slot holding the current state.
    seq: u64,
}

impl<F: StorageFile> HardStateFile<F> {
    /// Opens (creating if needed) the hard-state file and reads the current state;
    /// also returns the offset of a damaged slot, if one was skipped.
    pub async fn open<S: Storage<File = F>>(
        storage: &S,
    ) -> WalResult<(HardStateFile<F>, HardState, Option<u64>)> {
        let block_bytes = storage.block_bytes();
        let exists = storage
            .list()
            .await
            .map_err(io_err("listing the WAL directory"))?
            .iter()
            .any(|n| n == HARD_STATE_FILE_NAME);
        let file = storage
            .open(HARD_STATE_FILE_NAME, !exists)
            .await
            .map_err(io_err("opening the hard-state file"))?;
        let bytes = file
            .read_at(0, 2 * block_bytes)
            .await
            .map_err(io_err("reading the hard-state file"))?;
        let slot = |i: usize| -> &[u8] {
            let start = (i * block_bytes).min(bytes.len());
            &bytes[start..((i + 1) * block_bytes).min(bytes.len())]
        };
        // A slot is valid only if its checksum holds and the rest of its block is zero,
        // so that every byte of the file is checked.
        let decode = |bytes: &[u8]| {
            let rest_clean = bytes
                .get(HARD_STATE_SLOT_BYTES..)
                .is_none_or(|rest| rest.iter().all(|b| *b == 0));
            decode_hard_state(bytes).filter(|_| rest_clean)
        };
        let slots = [decode(slot(0)), decode(slot(1))];
        // A slot that is neither valid nor empty was torn by a crash during its write
        // (which was then never acknowledged) or damaged later; the two cannot be told
        // apart, so recovery uses the other slot and reports it.
        let damaged_slot = (0..2).find(|i| slots[*i].is_none() && slot(*i).iter().any(|b| *b != 0));
        let best = slots.iter().flatten().max_by_key(|(seq, _)| *seq).copied();
        let mut hs = HardStateFile {
            file,
            block_bytes,
            seq: 0,
        };
        match best {
            Some((seq, state)) => {
                hs.seq = seq;
                let offset = damaged_slot.map(|i| (i * block_bytes) as u64);
                Ok((hs, state, offset))
            }
            None if bytes.iter().all(|b| *b == 0) => {
                // A new file, or one whose creation never completed: no state was
                // ever acknowledged from it, so start from the default and make the
                // file and its name durable before anything relies on it.
                let state = HardState::default();
                hs.write(&state).await?;
                storage
                    .sync_dir()
                    .await
                    .map_err(io_err("syncing the WAL directory"))?;
                Ok((hs, state, None))
            }
            None => Err(WalError::Corrupt {
                file: HARD_STATE_FILE_NAME.to_string(),
                offset: 0,
                index: 0,
                reason: "both hard-state slots fail their checksum".to_string(),
            }),
        }
    }

    /// Writes `state` durably (write to the other slot, then fdatasync).
    pub async fn write(&mut self, state: &HardState) -> WalResult<()> {
        let seq = self.seq + 1;
        let mut block = vec![0u8; self.block_bytes];
        encode_hard_state(&mut block, seq, state);
        let pos = (seq % 2) * self.block_bytes as u64;
        self.file
            .write_at(pos, &block)
            .await
            .map_err(io_err("writing the hard-state file"))?;
        self.file
            .sync()
            .await
            .map_err(io_err("syncing the hard-state file"))?;
        self.seq = seq;
        Ok(())
    }
}
