//! The history checker of the chaos tests: given every operation clients performed
//! (with what they were told) and every node's final log, it finds what a replicated
//! log must never do: lose, duplicate, reorder or invent an acknowledged record, let
//! nodes disagree, or serve a read that goes backwards or differs from the log.
//!
//! Records must be unique (the chaos workload writes a unique id in each), so a
//! record names one append.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use crate::engine::NodeId;

pub type ClientId = u32;
pub type Partition = u32;
pub type Index = u64;

/// What a client was told about an append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Acknowledged: the records are at `first_index`, `first_index + 1`, ….
    Acked { first_index: Index },
    /// Refused before anything was appended (NotLeader, Overloaded, InvalidRequest…).
    Refused,
    /// No answer, a timeout, or an error that leaves the outcome open.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendOp {
    pub client: ClientId,
    pub partition: Partition,
    pub records: Vec<Bytes>,
    pub outcome: AppendOutcome,
}

/// A successful read, in the order its client invoked it (clients issue one
/// operation at a time, so a client's reads never overlap).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadOp {
    pub client: ClientId,
    pub partition: Partition,
    /// The records returned, with their indexes.
    pub records: Vec<(Index, Bytes)>,
    /// The commit index the server reported with them.
    pub commit_index: Index,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    pub appends: Vec<AppendOp>,
    pub reads: Vec<ReadOp>,
}

/// Each node's log at the end, per partition: (index, record), in index order.
pub type FinalLogs = BTreeMap<NodeId, BTreeMap<Partition, Vec<(Index, Bytes)>>>;

/// Each node's log start per partition as the final read observed it: every index
/// below it had been removed (by retention or a trim) when it was asked for. A
/// missing entry means nothing was removed.
pub type LogStarts = BTreeMap<NodeId, BTreeMap<Partition, Index>>;

/// Every violation found, each a sentence naming partition, index and record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub acked_records: u64,
    /// Acknowledged records missing from a node's final log because their index is
    /// below that node's log start, counted once per (record, node).
    pub removed_records: u64,
    /// Records returned by reads whose index every node has since removed: they
    /// are checked against the appends instead of the final logs.
    pub removed_reads: u64,
    pub unknown_records_present: u64,
    pub lost: Vec<String>,
    pub duplicated: Vec<String>,
    pub misplaced: Vec<String>,
    pub divergent: Vec<String>,
    pub phantom: Vec<String>,
    pub refused_present: Vec<String>,
    pub read_mismatch: Vec<String>,
    pub stale_reads: Vec<String>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        [
            &self.lost,
            &self.duplicated,
            &self.misplaced,
            &self.divergent,
            &self.phantom,
            &self.refused_present,
            &self.read_mismatch,
            &self.stale_reads,
        ]
        .iter()
        .all(|v| v.is_empty())
    }

    /// One line of counts, for test output and notes.
    pub fn summary(&self) -> String {
        format!(
            "{} acknowledged records checked ({} record copies removed below a node's log start); lost {}, duplicated {}, misplaced {}, divergent {}, phantom {}, refused-but-present {}, read mismatches {} ({} reads of removed records checked against the appends), stale reads {}; {} unknown-outcome records present once",
            self.acked_records,
            self.removed_records,
            self.lost.len(),
            self.duplicated.len(),
            self.misplaced.len(),
            self.divergent.len(),
            self.phantom.len(),
            self.refused_present.len(),
            self.read_mismatch.len(),
            self.removed_reads,
            self.stale_reads.len(),
            self.unknown_records_present
        )
    }
}

/// Where each record was appended from: (append number, position in its batch).
type Origins<'h> = HashMap<&'h Bytes, (usize, usize)>;

/// Checks a history against final logs from which nothing was removed.
pub fn check(history: &History, finals: &FinalLogs) -> Report {
    check_retained(history, finals, &LogStarts::new())
}

/// Checks a history against final logs read from each node's log start `starts`:
/// an acknowledged record is excused from a node's log only when its index is below
/// that node's start, and a read record only when every node removed its index.
pub fn check_retained(history: &History, finals: &FinalLogs, starts: &LogStarts) -> Report {
    let mut report = Report::default();
    let origins: Origins = history
        .appends
        .iter()
        .enumerate()
        .flat_map(|(a, op)| op.records.iter().enumerate().map(move |(k, r)| (r, (a, k))))
        .collect();
    let agreed = check_agreement(finals, &mut report);
    for (&partition, log) in &agreed {
        check_final_log(history, &origins, partition, log, &mut report);
    }
    check_acknowledged(history, finals, starts, &mut report);
    check_reads(
        history,
        &origins,
        &agreed,
        &removed_below(finals, starts),
        &mut report,
    );
    report
}

/// Merges the nodes' logs per partition, reporting every index where two differ.
fn check_agreement(
    finals: &FinalLogs,
    report: &mut Report,
) -> BTreeMap<Partition, BTreeMap<Index, Bytes>> {
    let mut agreed: BTreeMap<Partition, BTreeMap<Index, (NodeId, Bytes)>> = BTreeMap::new();
    for (&node, partitions) in finals {
        for (&partition, log) in partitions {
            let merged = agreed.entry(partition).or_default();
            for (index, record) in log {
                match merged.get(index) {
                    Some((other, known)) if known != record => report.divergent.push(format!(
                        "partition {partition} index {index}: node {other} has {known:?}, node {node} has {record:?}"
                    )),
                    Some(_) => {}
                    None => {
                        merged.insert(*index, (node, record.clone()));
                    }
                }
            }
        }
    }
    let strip =
        |log: BTreeMap<Index, (NodeId, Bytes)>| log.into_iter().map(|(i, (_, r))| (i, r)).collect();
    agreed.into_iter().map(|(p, log)| (p, strip(log))).collect()
}

/// Every record in the agreed log was appended once, to this partition, and not refused.
fn check_final_log(
    history: &History,
    origins: &Origins,
    partition: Partition,
    log: &BTreeMap<Index, Bytes>,
    report: &mut Report,
) {
    let mut seen: HashMap<&Bytes, Index> = HashMap::new();
    for (index, record) in log {
        if let Some(first) = seen.insert(record, *index) {
            report.duplicated.push(format!(
                "partition {partition}: record {record:?} at {first} and {index}"
            ));
        }
        let Some(&(a, _)) = origins.get(record) else {
            report.phantom.push(format!(
                "partition {partition} index {index}: {record:?} was never appended"
            ));
            continue;
        };
        let op = &history.appends[a];
        match op.outcome {
            _ if op.partition != partition => report.phantom.push(format!(
                "partition {partition} index {index}: {record:?} was appended to partition {}",
                op.partition
            )),
            AppendOutcome::Refused => report.refused_present.push(format!(
                "partition {partition} index {index}: refused record {record:?}"
            )),
            AppendOutcome::Unknown => report.unknown_records_present += 1,
            AppendOutcome::Acked { .. } => {}
        }
    }
}

/// Node `node`'s log start of `partition` (1: nothing removed).
fn start_of(starts: &LogStarts, node: NodeId, partition: Partition) -> Index {
    starts
        .get(&node)
        .and_then(|p| p.get(&partition))
        .copied()
        .unwrap_or(1)
}

/// Per partition, the index below which every node has removed its log.
fn removed_below(finals: &FinalLogs, starts: &LogStarts) -> BTreeMap<Partition, Index> {
    let mut lowest: BTreeMap<Partition, Index> = BTreeMap::new();
    for (&node, partitions) in finals {
        for &partition in partitions.keys() {
            let start = start_of(starts, node, partition);
            lowest
                .entry(partition)
                .and_modify(|s| *s = (*s).min(start))
                .or_insert(start);
        }
    }
    lowest
}

/// Every acknowledged record is on every node, exactly at its acknowledged index,
/// unless that index is below the node's log start.
fn check_acknowledged(
    history: &History,
    finals: &FinalLogs,
    starts: &LogStarts,
    report: &mut Report,
) {
    let positions: BTreeMap<(NodeId, Partition), HashMap<&Bytes, Index>> = finals
        .iter()
        .flat_map(|(&node, partitions)| {
            partitions
                .iter()
                .map(move |(&p, log)| ((node, p), log.iter().map(|(i, r)| (r, *i)).collect()))
        })
        .collect();
    for op in &history.appends {
        let AppendOutcome::Acked { first_index } = op.outcome else {
            continue;
        };
        for (k, record) in op.records.iter().enumerate() {
            report.acked_records += 1;
            let expected = first_index + k as Index;
            for &node in finals.keys() {
                let found = positions
                    .get(&(node, op.partition))
                    .and_then(|p| p.get(record));
                match found {
                    None if expected < start_of(starts, node, op.partition) => {
                        report.removed_records += 1
                    }
                    None => report.lost.push(format!(
                        "partition {} node {node}: acknowledged {record:?} (index {expected}) is missing",
                        op.partition
                    )),
                    Some(&at) if at != expected => report.misplaced.push(format!(
                        "partition {} node {node}: {record:?} acknowledged at {expected} but found at {at}",
                        op.partition
                    )),
                    Some(_) => {}
                }
            }
        }
    }
}

/// Reads return what the log holds (or, for an index every node has removed since,
/// what was appended there), and a client never sees the commit index fall.
fn check_reads(
    history: &History,
    origins: &Origins,
    agreed: &BTreeMap<Partition, BTreeMap<Index, Bytes>>,
    removed_below: &BTreeMap<Partition, Index>,
    report: &mut Report,
) {
    let mut last_commit: HashMap<(ClientId, Partition), Index> = HashMap::new();
    for read in &history.reads {
        let key = (read.client, read.partition);
        let previous = last_commit.insert(key, read.commit_index).unwrap_or(0);
        if read.commit_index < previous {
            report.stale_reads.push(format!(
                "client {} partition {}: commit index went from {previous} to {}",
                read.client, read.partition, read.commit_index
            ));
            last_commit.insert(key, previous);
        }
        let log = agreed.get(&read.partition);
        let removed = removed_below.get(&read.partition).copied().unwrap_or(1);
        for (index, record) in &read.records {
            let held = log.and_then(|l| l.get(index));
            if held.is_none() && *index < removed {
                report.removed_reads += 1;
                if let Some(wrong) = removed_read_mismatch(history, origins, read, *index, record) {
                    report.read_mismatch.push(wrong);
                }
            } else if held != Some(record) {
                report.read_mismatch.push(format!(
                    "client {} partition {} index {index}: read {record:?}, the log holds {:?}",
                    read.client,
                    read.partition,
                    log.and_then(|l| l.get(index))
                ));
            }
        }
    }
}

/// A read returned `record` at `index`, which every node has removed since: it must
/// have been appended to this partition and, if acknowledged, at this index.
fn removed_read_mismatch(
    history: &History,
    origins: &Origins,
    read: &ReadOp,
    index: Index,
    record: &Bytes,
) -> Option<String> {
    let what = format!(
        "client {} partition {} index {index} (since removed): read {record:?}",
        read.client, read.partition
    );
    let Some(&(a, k)) = origins.get(record) else {
        return Some(format!("{what}, which was never appended"));
    };
    let op = &history.appends[a];
    match op.outcome {
        _ if op.partition != read.partition => Some(format!(
            "{what}, which was appended to partition {}",
            op.partition
        )),
        AppendOutcome::Acked { first_index } if first_index + k as Index != index => Some(format!(
            "{what}, which was acknowledged at {}",
            first_index + k as Index
        )),
        AppendOutcome::Refused => Some(format!("{what}, which was refused")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(s: &str) -> Bytes {
        Bytes::from(s.to_string())
    }

    fn append(records: &[&str], outcome: AppendOutcome) -> AppendOp {
        AppendOp {
            client: 1,
            partition: 0,
            records: records.iter().map(|r| rec(r)).collect(),
            outcome,
        }
    }

    fn acked(first_index: Index) -> AppendOutcome {
        AppendOutcome::Acked { first_index }
    }

    fn log(entries: &[(Index, &str)]) -> BTreeMap<Partition, Vec<(Index, Bytes)>> {
        BTreeMap::from([(0, entries.iter().map(|&(i, r)| (i, rec(r))).collect())])
    }

    fn three_nodes(entries: &[(Index, &str)]) -> FinalLogs {
        (1..=3).map(|n| (n, log(entries))).collect()
    }

    fn good_history() -> History {
        History {
            appends: vec![
                append(&["a", "b"], acked(2)),
                append(&["c"], AppendOutcome::Unknown),
                append(&["d"], AppendOutcome::Refused),
            ],
            reads: vec![ReadOp {
                client: 2,
                partition: 0,
                records: vec![(2, rec("a"))],
                commit_index: 3,
            }],
        }
    }

    #[test]
    fn a_correct_history_is_clean() {
        let report = check(
            &good_history(),
            &three_nodes(&[(2, "a"), (3, "b"), (5, "c")]),
        );
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(
            (report.acked_records, report.unknown_records_present),
            (2, 1)
        );
    }

    #[test]
    fn lost_write_is_caught() {
        let report = check(&good_history(), &three_nodes(&[(2, "a")]));
        assert_eq!(
            report.lost.len(),
            3,
            "b is missing on each of three nodes: {report:?}"
        );
    }

    #[test]
    fn duplicate_is_caught() {
        let report = check(
            &good_history(),
            &three_nodes(&[(2, "a"), (3, "b"), (4, "c"), (5, "c")]),
        );
        assert_eq!(report.duplicated.len(), 1, "{report:?}");
    }

    #[test]
    fn reorder_is_caught() {
        let report = check(&good_history(), &three_nodes(&[(2, "b"), (3, "a")]));
        assert_eq!(report.misplaced.len(), 6, "{report:?}");
    }

    #[test]
    fn divergence_is_caught() {
        let mut finals = three_nodes(&[(2, "a"), (3, "b"), (4, "c")]);
        finals.insert(3, log(&[(2, "a"), (3, "b"), (4, "x")]));
        let report = check(&good_history(), &finals);
        assert_eq!(report.divergent.len(), 1, "{report:?}");
        assert_eq!(
            report.phantom.len(),
            0,
            "x lost the merge to c, so only divergence shows"
        );
    }

    #[test]
    fn invented_and_refused_records_are_caught() {
        let report = check(
            &good_history(),
            &three_nodes(&[(2, "a"), (3, "b"), (4, "d"), (6, "zz")]),
        );
        assert_eq!(
            (report.refused_present.len(), report.phantom.len()),
            (1, 1),
            "{report:?}"
        );
    }

    fn starts(start: Index, nodes: &[NodeId]) -> LogStarts {
        nodes
            .iter()
            .map(|&n| (n, BTreeMap::from([(0, start)])))
            .collect()
    }

    #[test]
    fn records_below_the_log_start_are_removed_not_lost() {
        // Every node starts at 3: "a" (index 2) was removed, "b" must still be there.
        let finals = three_nodes(&[(3, "b"), (5, "c")]);
        let report = check_retained(&good_history(), &finals, &starts(3, &[1, 2, 3]));
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(
            (report.removed_records, report.removed_reads),
            (3, 1),
            "a is removed on three nodes, and the read of it is checked against the appends"
        );
    }

    #[test]
    fn a_start_excuses_only_its_own_node_and_only_below_it() {
        // Node 1 starts at 3 and lacks "a" (removed); node 2 starts at 1 and lacks
        // "a" (lost); node 3 starts at 3 and lacks "b" at 3 (lost).
        let mut finals = three_nodes(&[(3, "b")]);
        finals.insert(2, log(&[(3, "b")]));
        finals.insert(3, log(&[]));
        let mut log_starts = starts(3, &[1, 3]);
        log_starts.insert(2, BTreeMap::from([(0, 1)]));
        let report = check_retained(&good_history(), &finals, &log_starts);
        assert_eq!(report.removed_records, 2, "{report:?}");
        assert_eq!(report.lost.len(), 2, "{report:?}");
    }

    #[test]
    fn a_wrong_read_of_a_removed_index_is_caught() {
        let mut history = good_history();
        history.reads[0].records = vec![(2, rec("b"))];
        let report = check_retained(&history, &three_nodes(&[(3, "b")]), &starts(3, &[1, 2, 3]));
        assert_eq!(report.read_mismatch.len(), 1, "{report:?}");
    }

    #[test]
    fn stale_and_wrong_reads_are_caught() {
        let mut history = good_history();
        history.reads.push(ReadOp {
            client: 2,
            partition: 0,
            records: vec![(3, rec("c"))],
            commit_index: 2,
        });
        let report = check(&history, &three_nodes(&[(2, "a"), (3, "b")]));
        assert_eq!(
            (report.stale_reads.len(), report.read_mismatch.len()),
            (1, 1),
            "{report:?}"
        );
    }
}
