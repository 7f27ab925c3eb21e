//! Appending a given number of bytes of recognisable records, and checking what a
//! node retained of them.

use std::collections::BTreeMap;

use bytes::Bytes;
use ringlog::client::Client;

use super::observe::Retained;

/// Record `seq` of a load tagged `tag`: the tag and number, then bytes that depend
/// on the number, so that a record read back at the wrong index or with damaged
/// contents never compares equal.
pub fn payload(tag: &str, seq: u64, bytes: usize) -> Bytes {
    let mut body = format!("{tag}-{seq}-").into_bytes();
    let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while body.len() < bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        body.push(x as u8);
    }
    Bytes::from(body)
}

/// How much to append: `bytes_total` of payload in records of `record_bytes`, in
/// appends of `batch` records.
#[derive(Clone, Copy, Debug)]
pub struct Load<'a> {
    pub tag: &'a str,
    pub partition: u32,
    pub bytes_total: u64,
    pub record_bytes: usize,
    pub batch: usize,
}

/// Appends `load` one batch at a time, calling `after_each` after every append;
/// returns every acknowledged record by index. An append whose outcome is unknown
/// is not counted (its records may or may not be in the log).
pub async fn append_load(
    client: &Client,
    load: Load<'_>,
    mut after_each: impl FnMut(),
) -> BTreeMap<u64, Bytes> {
    let records_total = load.bytes_total.div_ceil(load.record_bytes as u64);
    let mut acked = BTreeMap::new();
    let mut seq = 0;
    while seq < records_total {
        let end = (seq + load.batch as u64).min(records_total);
        let records: Vec<Bytes> = (seq..end)
            .map(|s| payload(load.tag, s, load.record_bytes))
            .collect();
        seq = end;
        if let Ok(ok) = client.append(load.partition, records.clone()).await {
            acked.extend((ok.first_index..=ok.last_index).zip(records));
        }
        after_each();
    }
    assert!(
        acked.len() as u64 * 10 >= records_total * 9,
        "only {} of {records_total} records acknowledged",
        acked.len()
    );
    acked
}

/// What node `node` retained is intact: every acknowledged record at or above its
/// log start is there with its payload, and every record it holds that the test
/// knows is at its acknowledged index. Returns how many acknowledged records were
/// checked.
pub fn assert_retained_intact(
    node: &str,
    retained: &Retained,
    acked: &BTreeMap<u64, Bytes>,
) -> usize {
    let held: BTreeMap<u64, &Bytes> = retained.records.iter().map(|(i, r)| (*i, r)).collect();
    assert!(
        held.keys().all(|&i| i >= retained.start),
        "{node} returned records below its log start {}",
        retained.start
    );
    let mut checked = 0;
    for (index, record) in acked.range(retained.start..) {
        let found = held.get(index).copied();
        assert!(
            found == Some(record),
            "{node}: acknowledged record at index {index} (log start {}) is {}",
            retained.start,
            found.map_or("missing".to_string(), |r| format!(
                "different ({} bytes)",
                r.len()
            ))
        );
        checked += 1;
    }
    let by_payload: BTreeMap<&Bytes, u64> = acked.iter().map(|(i, r)| (r, *i)).collect();
    for (index, record) in &retained.records {
        if let Some(&at) = by_payload.get(record) {
            assert_eq!(
                at, *index,
                "{node} holds a record at {index} acknowledged at {at}"
            );
        }
    }
    checked
}
