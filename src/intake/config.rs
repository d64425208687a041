//! The `[intake]` section of the node's config: `[intake.github]`, the GitHub issues
//! webhook (`POST /v1/hooks/github` on the control address, or the dashboard's). Without
//! a secret the hook answers 404: nothing comes in unsigned.

use crate::config::ConfigError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Largest secret file read.
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;
/// Largest webhook body a node may be configured to read (GitHub caps payloads at 25 MB).
pub const MAX_HOOK_BODY_BYTES: usize = 25 << 20;

/// `[intake]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntakeConfig {
    pub github: GithubConfig,
}

/// `[intake.github]`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GithubConfig {
    /// The webhook's secret, as typed in the repository's webhook settings. Prefer
    /// `secret_file`: a config file is read by more people than a 0600 secret.
    pub secret: Option<String>,
    /// A file holding the secret (relative paths are under the data dir).
    pub secret_file: Option<PathBuf>,
    /// An issue becomes a story only with this label (on `opened`, or when it is added:
    /// `labeled`).
    pub label: String,
    /// Bodies over this are refused (413) before they are read.
    pub max_body_bytes: usize,
    /// The listener the hook is on: `control` (the control address, loopback) or
    /// `dashboard` (the dashboard's address and its TLS: what GitHub can reach).
    pub serve_on: HookListener,
    /// An operator key file (relative paths under the data dir): with it, a closed
    /// issue cancels its story, signed by that operator; without, the hook says which
    /// `mesh-agent cancel` to run.
    pub operator_key: Option<PathBuf>,
}

/// Where the GitHub hook listens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookListener {
    #[default]
    Control,
    Dashboard,
}

impl Default for GithubConfig {
    fn default() -> Self {
        GithubConfig {
            secret: None,
            secret_file: None,
            label: "mesh".into(),
            max_body_bytes: 1 << 20,
            serve_on: HookListener::Control,
            operator_key: None,
        }
    }
}

// Never print the secret.
impl std::fmt::Debug for GithubConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubConfig")
            .field("secret", &self.secret.as_ref().map(|_| "(hidden)"))
            .field("secret_file", &self.secret_file)
            .field("label", &self.label)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("serve_on", &self.serve_on)
            .field("operator_key", &self.operator_key)
            .finish()
    }
}

fn invalid(key: &str, value: impl std::fmt::Display, allowed: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        value: value.to_string(),
        allowed: allowed.into(),
    }
}

impl IntakeConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let g = &self.github;
        if g.secret.is_some() && g.secret_file.is_some() {
            return Err(ConfigError::Rule(
                "intake.github: set secret or secret_file, not both".into(),
            ));
        }
        if g.secret.as_deref().is_some_and(|s| s.trim().is_empty()) {
            return Err(invalid(
                "intake.github.secret",
                "(empty)",
                "expected the webhook's secret; remove the key to turn the hook off",
            ));
        }
        let label = g.label.trim();
        if label.is_empty() || label.chars().count() > crate::core::model::MAX_LABEL_CHARS {
            return Err(invalid(
                "intake.github.label",
                format!("{:?}", g.label),
                "expected a GitHub label name of 1 to 64 characters",
            ));
        }
        if g.operator_key
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(invalid(
                "intake.github.operator_key",
                "(empty)",
                "expected an operator key file; remove the key to leave closed issues to a human",
            ));
        }
        if g.max_body_bytes == 0 || g.max_body_bytes > MAX_HOOK_BODY_BYTES {
            return Err(invalid(
                "intake.github.max_body_bytes",
                g.max_body_bytes,
                "allowed 1..=26214400",
            ));
        }
        Ok(())
    }
}

impl GithubConfig {
    /// The operator key closed issues are cancelled with, if one is configured.
    pub fn load_operator(
        &self,
        data_dir: &Path,
    ) -> Result<Option<crate::core::trust::Signer>, String> {
        let Some(file) = &self.operator_key else {
            return Ok(None);
        };
        let path = data_dir.join(file);
        crate::identity::load_operator_key(&path)
            .map(Some)
            .map_err(|e| format!("intake.github.operator_key: {e}"))
    }

    /// The secret's bytes, if the hook is on: `secret`, or the content of `secret_file`
    /// without its trailing newline.
    pub fn load_secret(&self, data_dir: &Path) -> Result<Option<Vec<u8>>, String> {
        if let Some(s) = &self.secret {
            return Ok(Some(s.trim().as_bytes().to_vec()));
        }
        let Some(file) = &self.secret_file else {
            return Ok(None);
        };
        let path = data_dir.join(file);
        let why = |e: String| format!("intake.github.secret_file {}: {e}", path.display());
        let mut bytes = Vec::new();
        use std::io::Read;
        std::fs::File::open(&path)
            .and_then(|f| f.take(MAX_SECRET_FILE_BYTES + 1).read_to_end(&mut bytes))
            .map_err(|e| why(e.to_string()))?;
        if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
            return Err(why(format!("larger than {MAX_SECRET_FILE_BYTES} bytes")));
        }
        let text = String::from_utf8(bytes).map_err(|_| why("not UTF-8 text".into()))?;
        let secret = text.trim();
        if secret.is_empty() {
            return Err(why("empty".into()));
        }
        Ok(Some(secret.as_bytes().to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    /// Each bad `[intake.github]` is one error naming the key; the hook on the dashboard
    /// needs a dashboard.
    #[test]
    fn bad_hook_settings_name_their_key() {
        for (toml, want) in [
            (
                "[intake.github]\nsecret = \"s\"\nsecret_file = \"f\"\n",
                "not both",
            ),
            ("[intake.github]\nlabel = \"\"\n", "intake.github.label"),
            (
                "[intake.github]\noperator_key = \"\"\n",
                "intake.github.operator_key",
            ),
            (
                "[intake.github]\nserve_on = \"dashboard\"\n",
                "set dashboard.addr",
            ),
            (
                "[intake.github]\nserve_on = \"moon\"\n",
                "expected `control` or `dashboard`",
            ),
        ] {
            let e = Config::parse(toml, "config.toml", [])
                .and_then(|c| c.validate())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{toml}: {e}");
        }
        let ok = Config::parse(
            "[dashboard]\naddr = \"127.0.0.1:0\"\n[intake.github]\nserve_on = \"dashboard\"\n",
            "config.toml",
            [],
        )
        .and_then(|c| c.validate());
        assert!(ok.is_ok(), "{ok:?}");
    }
}
