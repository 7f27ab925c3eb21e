//! `ringlog read`: where a read starts (`--from`), the read loop, and how records
//! print.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;

use super::{CliError, stop_on_signals, with_client};
use crate::client::Client;
use crate::engine::Index;
use crate::transport::ReadRequest;

/// Where `ringlog read --from` starts. All but `Index` are resolved against the
/// partition's leader, whose commit index is the end a reader can see (records
/// past it are not committed and reads never return them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFrom {
    /// The partition's log start: the oldest record still retained.
    Earliest,
    /// Just past the leader's commit index: only records committed from now on.
    Latest,
    /// The last N indexes up to the leader's commit index, from the log start at
    /// the earliest. Leader no-ops take indexes too (reads skip them), so fewer
    /// than N records may print.
    Back(u64),
    /// This index, as given.
    Index(Index),
}

/// What `--from` accepts, for error messages.
const READ_FROM_FORMS: &str =
    "use `earliest`, `latest`, `-N` (the last N records) or an index (1 or more)";

impl ReadFrom {
    /// Parses `earliest`, `latest`, `-N` (N at least 1) or an index (at least 1).
    pub fn parse(text: &str) -> Result<ReadFrom, String> {
        match text {
            "earliest" => return Ok(ReadFrom::Earliest),
            "latest" => return Ok(ReadFrom::Latest),
            _ => {}
        }
        match text.strip_prefix('-') {
            Some(count) => match parse_number(count, text)? {
                0 => Err(format!(
                    "{text:?} asks for no records: use `latest` to read only new records"
                )),
                n => Ok(ReadFrom::Back(n)),
            },
            None => match parse_number(text, text)? {
                0 => Err(format!(
                    "indexes start at 1 (`earliest` is the oldest record retained): {READ_FROM_FORMS}"
                )),
                index => Ok(ReadFrom::Index(index)),
            },
        }
    }

    /// The index to read from, given the partition's log start and its leader's
    /// commit index.
    pub fn resolve(self, log_start: Index, commit_index: Index) -> Index {
        let end = commit_index.saturating_add(1);
        match self {
            ReadFrom::Earliest => log_start,
            ReadFrom::Latest => end,
            ReadFrom::Back(count) => end.saturating_sub(count).max(log_start),
            ReadFrom::Index(index) => index,
        }
    }
}

/// The decimal digits of `digits` (part of `text`, the whole argument) as a number.
/// Only digits are taken: `u64::from_str` would also take a leading `+`.
fn parse_number(digits: &str, text: &str) -> Result<u64, String> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{text:?} is not a read position: {READ_FROM_FORMS}"
        ));
    }
    digits
        .parse()
        .map_err(|_| format!("{text:?} is too large: indexes go up to {}", u64::MAX))
}

/// Parses one `read --from` for clap.
pub fn parse_read_from(text: &str) -> Result<ReadFrom, String> {
    ReadFrom::parse(text)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFormat {
    Text,
    Json,
}

/// Prints records from `from` on; with `follow`, keeps waiting for new ones until
/// Ctrl-C, like `tail -f`.
pub fn read(
    addr: &str,
    partition: u32,
    from: ReadFrom,
    follow: bool,
    format: ReadFormat,
    timeout: Duration,
) -> Result<(), CliError> {
    let stop = stop_on_signals()?;
    with_client(addr, timeout, async |client| {
        // Learn the leaders first: the leader's reads are linearizable and so see
        // every append acknowledged before; a follower's may lag by a heartbeat.
        let _ = client.metadata().await;
        let mut next = match from {
            ReadFrom::Index(index) => index,
            _ => {
                let (log_start, commit_index) = log_bounds(client, partition).await?;
                from.resolve(log_start, commit_index)
            }
        };
        if from == ReadFrom::Latest && !follow {
            eprintln!(
                "nothing to read: partition {partition} has nothing committed past index {}; --follow waits for new records",
                next - 1
            );
            return Ok(());
        }
        loop {
            let request = ReadRequest {
                partition,
                from_index: next,
                max_records: 1000,
                max_bytes: 1 << 20,
                wait_timeout_ms: if follow { 1000 } else { 0 },
                any_replica: false,
            };
            let ok = client.read(request).await?;
            let mut out = std::io::stdout().lock();
            for record in &ok.records {
                writeln!(
                    out,
                    "{}",
                    format_record(partition, record.index, &record.payload, format)
                )?;
            }
            out.flush()?;
            next = ok.next_from(next);
            let caught_up = next > ok.commit_index;
            if (caught_up && !follow) || stop.load(Ordering::Relaxed) {
                return Ok(());
            }
        }
    })
}

/// The log start and commit index of `partition` on its leader. A read past every
/// index answers with no records but both; the leader serves it after a read-index
/// round, so its commit index covers every append acknowledged before.
async fn log_bounds(client: &Client, partition: u32) -> Result<(Index, Index), CliError> {
    let request = ReadRequest {
        partition,
        from_index: Index::MAX,
        max_records: 0,
        max_bytes: 0,
        wait_timeout_ms: 0,
        any_replica: false,
    };
    let ok = client.read(request).await?;
    Ok((ok.log_start, ok.commit_index))
}

/// One record as `read` prints it: the text itself, or one JSON object per line
/// (base64 when the record is not UTF-8, said by `"encoding"`).
pub fn format_record(partition: u32, index: u64, payload: &[u8], format: ReadFormat) -> String {
    match (format, std::str::from_utf8(payload)) {
        (ReadFormat::Text, Ok(text)) => text.to_string(),
        (ReadFormat::Text, Err(_)) => base64::engine::general_purpose::STANDARD.encode(payload),
        (ReadFormat::Json, Ok(text)) => {
            serde_json::json!({"partition": partition, "index": index, "record": text, "encoding": "utf-8"}).to_string()
        }
        (ReadFormat::Json, Err(_)) => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(payload);
            serde_json::json!({"partition": partition, "index": index, "record": encoded, "encoding": "base64"})
                .to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_print_as_text_or_json_with_encoding() {
        assert_eq!(format_record(0, 5, b"hello", ReadFormat::Text), "hello");
        let json = format_record(2, 7, b"say \"hi\"", ReadFormat::Json);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["record"], "say \"hi\"");
        assert_eq!(
            (value["partition"].as_u64(), value["index"].as_u64()),
            (Some(2), Some(7))
        );
        let binary: serde_json::Value =
            serde_json::from_str(&format_record(0, 1, &[0xff, 0], ReadFormat::Json)).unwrap();
        assert_eq!(
            (binary["encoding"].as_str(), binary["record"].as_str()),
            (Some("base64"), Some("/wA="))
        );
    }

    #[test]
    fn read_from_takes_names_counts_back_and_indexes() {
        let parsed = |text: &str| ReadFrom::parse(text).unwrap();
        assert_eq!(parsed("earliest"), ReadFrom::Earliest);
        assert_eq!(parsed("latest"), ReadFrom::Latest);
        assert_eq!(parsed("-3"), ReadFrom::Back(3));
        assert_eq!(parsed("1"), ReadFrom::Index(1));
        assert_eq!(parsed("812"), ReadFrom::Index(812));
        let max = u64::MAX.to_string();
        assert_eq!(parsed(&max), ReadFrom::Index(u64::MAX));
        assert_eq!(parsed(&format!("-{max}")), ReadFrom::Back(u64::MAX));
    }

    #[test]
    fn read_from_refuses_what_is_no_position_saying_why() {
        let refused = |text: &str| ReadFrom::parse(text).unwrap_err();
        assert!(refused("-0").contains("use `latest`"), "{}", refused("-0"));
        assert!(
            refused("0").contains("indexes start at 1"),
            "{}",
            refused("0")
        );
        let too_large = "18446744073709551616";
        assert!(refused(too_large).contains("too large"));
        assert!(refused(&format!("-{too_large}")).contains("too large"));
        for garbage in [
            "-x", "", "-", "x", "+5", "--3", "-3x", " 3", "Earliest", "1.5",
        ] {
            assert!(
                refused(garbage).contains("not a read position"),
                "{garbage:?}: {}",
                refused(garbage)
            );
        }
    }

    #[test]
    fn read_from_resolves_against_the_log_start_and_commit_index() {
        // Records 5..=20 retained and committed.
        let at = |from: ReadFrom| from.resolve(5, 20);
        assert_eq!(at(ReadFrom::Earliest), 5);
        assert_eq!(at(ReadFrom::Latest), 21);
        assert_eq!(at(ReadFrom::Back(3)), 18);
        assert_eq!(at(ReadFrom::Back(16)), 5);
        // More than is retained: clamped to the log start.
        assert_eq!(at(ReadFrom::Back(100)), 5);
        assert_eq!(at(ReadFrom::Back(u64::MAX)), 5);
        assert_eq!(at(ReadFrom::Index(2)), 2);
        // An empty partition: everything starts at 1.
        let empty = |from: ReadFrom| from.resolve(1, 0);
        assert_eq!(
            [ReadFrom::Earliest, ReadFrom::Latest, ReadFrom::Back(3)].map(empty),
            [1, 1, 1]
        );
    }
}
