//! `MESH_*` environment variables over the parsed config file.

use super::{Config, ConfigError};

/// Overlays `MESH_<KEY>` variables on the parsed file, typed by the default's shape.
pub(super) fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let defaults = match toml::Value::try_from(Config::default()) {
        Ok(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    for (var, value) in env {
        let Some(key) = var.strip_prefix("MESH_") else {
            continue;
        };
        let key = key.to_ascii_lowercase();
        let shape = match defaults.get(&key) {
            Some(v) => v.clone(),
            None if key == "psk_file" => toml::Value::String(String::new()),
            // Not a config key (MESH_DATA_DIR and friends belong to the CLI).
            None => continue,
        };
        let env_err = |allowed: &str| ConfigError::Env {
            var: var.clone(),
            value: value.clone(),
            allowed: allowed.into(),
        };
        let parsed = match shape {
            toml::Value::Integer(_) => toml::Value::Integer(
                value
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| env_err("expected an integer"))?,
            ),
            toml::Value::Array(_) => toml::Value::Array(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_string()))
                    .collect(),
            ),
            toml::Value::Table(_) => {
                // MESH_ROLE_LIMITS=implement=1,review=3
                let mut t = toml::Table::new();
                for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    let (k, v) = pair
                        .split_once('=')
                        .ok_or_else(|| env_err("expected key=number pairs, comma-separated"))?;
                    let n = v
                        .trim()
                        .parse::<i64>()
                        .map_err(|_| env_err("expected key=number pairs, comma-separated"))?;
                    t.insert(k.trim().to_string(), toml::Value::Integer(n));
                }
                toml::Value::Table(t)
            }
            toml::Value::Float(_) => toml::Value::Float(
                value
                    .trim()
                    .parse::<f64>()
                    .map_err(|_| env_err("expected a number"))?,
            ),
            toml::Value::Boolean(_) => toml::Value::Boolean(
                value
                    .trim()
                    .parse::<bool>()
                    .map_err(|_| env_err("expected true or false"))?,
            ),
            _ => toml::Value::String(value.clone()),
        };
        table.insert(key, parsed);
    }
    Ok(())
}
