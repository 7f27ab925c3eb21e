//! `--set KEY=VALUE` (of `ringlog dev` and `bench --local`): any setting of a node's
//! TOML by its dotted key, applied to a config through its TOML form, so that every
//! key the file takes is reachable and every rule of the file applies to it.

use super::config::{ConfigError, NodeConfig, invalid};

/// One `KEY=VALUE` override: the dotted key and the value as TOML.
#[derive(Clone, Debug, PartialEq)]
pub struct Setting {
    pub key: String,
    pub value: toml::Value,
}

impl Setting {
    /// Parses `KEY=VALUE`. The value is read as TOML (an integer, a boolean, a
    /// quoted string, an array); anything TOML cannot read is taken as a bare
    /// string, so `data_dir=/tmp/x` needs no quotes.
    pub fn parse(text: &str) -> Result<Setting, ConfigError> {
        let Some((key, value)) = text.split_once('=') else {
            return Err(invalid(
                text,
                "expected KEY=VALUE, e.g. retention.max_bytes=67108864",
            ));
        };
        let key = key.trim();
        if key.is_empty() || key.split('.').any(|part| part.trim().is_empty()) {
            return Err(invalid(
                key,
                "a key is dotted names, e.g. wal.min_free_bytes",
            ));
        }
        let value = value.trim();
        let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut table| table.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_string()));
        Ok(Setting {
            key: key.to_string(),
            value: parsed,
        })
    }
}

/// `config` with each setting applied in order, then validated as a whole. A key
/// the TOML does not take, or a value of the wrong kind, is refused naming the key.
pub fn apply(config: &NodeConfig, settings: &[Setting]) -> Result<NodeConfig, ConfigError> {
    let mut table: toml::Table =
        toml::from_str(&config.to_toml()).expect("a node config's own TOML parses");
    let mut applied = config.clone();
    for setting in settings {
        set_dotted(&mut table, setting)?;
        // Read back after each setting, so a refusal names the key that caused it.
        applied = table.clone().try_into().map_err(|e: toml::de::Error| {
            invalid(&setting.key, e.message().trim_end().replace('\n', " "))
        })?;
    }
    // Settings TOML never carries (`serde(skip)`) keep their values.
    applied.wal.truncate_corrupt_tail = config.wal.truncate_corrupt_tail;
    applied.validate()?;
    Ok(applied)
}

/// Puts `setting.value` at its dotted key, making the tables on the way.
fn set_dotted(table: &mut toml::Table, setting: &Setting) -> Result<(), ConfigError> {
    let parts: Vec<&str> = setting.key.split('.').map(str::trim).collect();
    let (last, path) = parts.split_last().expect("a key has at least one part");
    let mut at = table;
    for (depth, part) in path.iter().enumerate() {
        let entry = at
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = entry.as_table_mut().ok_or_else(|| {
            let prefix = parts[..=depth].join(".");
            invalid(
                &setting.key,
                format!("`{prefix}` is not a table, so it has no keys to set"),
            )
        })?;
    }
    at.insert(last.to_string(), setting.value.clone());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../examples/node.toml");

    fn example() -> NodeConfig {
        NodeConfig::from_toml(EXAMPLE, "examples/node.toml").unwrap()
    }

    fn set(texts: &[&str]) -> Result<NodeConfig, ConfigError> {
        let settings = texts
            .iter()
            .map(|t| Setting::parse(t))
            .collect::<Result<Vec<_>, _>>()?;
        apply(&example(), &settings)
    }

    fn refused_key(texts: &[&str]) -> String {
        match set(texts).unwrap_err() {
            ConfigError::Invalid { key, .. } => key,
            other => panic!("expected an invalid setting, got {other}"),
        }
    }

    #[test]
    fn dotted_keys_set_integers_booleans_and_strings() {
        let config = set(&[
            "wal.segment_size_bytes=8388608",
            "retention.max_bytes=67108864",
            "retention.max_age_ms = 2000",
            "wal.min_free_bytes=0",
            "pin=true",
            "data_dir=/tmp/elsewhere",
        ])
        .unwrap();
        assert_eq!(config.wal.segment_size_bytes, 8 << 20);
        assert_eq!(config.retention.max_bytes, Some(64 << 20));
        assert_eq!(config.retention.max_age_ms, Some(2000));
        assert_eq!(config.wal.min_free_bytes, 0);
        assert!(config.pin);
        assert_eq!(config.data_dir, std::path::PathBuf::from("/tmp/elsewhere"));
        let untouched = example();
        assert_eq!(config.raft, untouched.raft);
        assert_eq!(config.nodes, untouched.nodes);
    }

    #[test]
    fn later_settings_win_and_none_is_the_config_itself() {
        assert_eq!(set(&[]).unwrap(), example());
        let config = set(&["raft.tick_ms=5", "raft.tick_ms=10"]).unwrap();
        assert_eq!(config.raft.tick_ms, 10);
    }

    #[test]
    fn bad_keys_and_values_are_refused_naming_the_key() {
        assert_eq!(refused_key(&["wal.no_such_key=1"]), "wal.no_such_key");
        assert_eq!(
            refused_key(&["retention.max_bytes=lots"]),
            "retention.max_bytes"
        );
        assert_eq!(refused_key(&["node_id.x=1"]), "node_id.x");
        assert_eq!(refused_key(&["retention"]), "retention");
        assert_eq!(refused_key(&["wal..x=1"]), "wal..x");
        // Validation after the set: the rule that refuses it names its own key.
        assert_eq!(
            refused_key(&["retention.max_bytes=1048576"]),
            "retention.max_bytes"
        );
        let error = set(&["wal.no_such_key=1"]).unwrap_err().to_string();
        assert!(error.contains("no_such_key"), "{error}");
    }
}
