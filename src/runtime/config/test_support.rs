//! What the configuration's tests share: the example file, edited a line at a time.

use super::{ConfigError, NodeConfig};

pub(super) const EXAMPLE: &str = include_str!("../../../examples/node.toml");

pub(super) fn key_of(error: ConfigError) -> String {
    match error {
        ConfigError::Invalid { key, .. } => key,
        other => panic!("expected an invalid setting, got {other}"),
    }
}

pub(super) fn with(line_from: &str, line_to: &str) -> Result<NodeConfig, ConfigError> {
    assert!(EXAMPLE.contains(line_from), "example lacks {line_from:?}");
    NodeConfig::from_toml(&EXAMPLE.replacen(line_from, line_to, 1), "test.toml")
}

/// The example with `edits`, each replacing a line.
pub(super) fn edited(edits: &[(&str, &str)]) -> String {
    let mut text = EXAMPLE.to_string();
    for (from, to) in edits {
        assert!(text.contains(from), "example lacks {from:?}");
        text = text.replacen(from, to, 1);
    }
    text
}

/// The key a config with `edits` is refused for, and the reason.
pub(super) fn refusal(edits: &[(&str, &str)]) -> (String, String) {
    match NodeConfig::from_toml(&edited(edits), "test.toml") {
        Err(ConfigError::Invalid { key, reason }) => (key, reason),
        other => panic!("expected an invalid setting, got {other:?}"),
    }
}

pub(super) const RECORD: &str = "record_size_bytes_max = 1048576";
pub(super) const SEGMENT: &str = "segment_size_bytes = 67108864";
pub(super) const FLUSH: &str = "flush_bytes_max = 4194304";
pub(super) const CLIENT_FRAME: &str = "frame_body_bytes_max = 8388608";
pub(super) const READ_BYTES: &str = "bytes_max = 8257536";
pub(super) const MSG_BYTES: &str = "bytes_per_msg_max = 1048576";

/// `text` without the section `header` (its keys, up to the next comment or section).
pub(super) fn without_section(text: &str, header: &str) -> String {
    let start = 1 + text
        .find(&format!("\n{header}\n"))
        .expect("the section is there");
    let rest = &text[start + header.len()..];
    let end = ["\n[", "\n#"]
        .iter()
        .filter_map(|next| rest.find(next))
        .min()
        .map_or(text.len(), |at| start + header.len() + at + 1);
    format!("{}{}", &text[..start], &text[end..])
}
