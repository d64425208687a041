//! The `[dashboard]` table of the node's config: where the web dashboard listens, its TLS
//! files and the operator key its actions are signed with. Kept out of `config.rs` so
//! that file stays small; `Config` carries it as `dashboard`.

use crate::config::ConfigError;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// `[dashboard]`: off unless `addr` is set (or `run --dashboard ADDR`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardConfig {
    /// `ip:port` to serve the dashboard on, e.g. `127.0.0.1:8080`; empty: no dashboard.
    pub addr: String,
    /// PEM certificate chain and private key: serve HTTPS. Both or neither. Required for
    /// actions when `addr` is not a loopback address.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// The operator key actions are signed with (default: `$MESH_OPERATOR_KEY`, else
    /// `~/.config/mesh-agent/operator.key`). Without one the page offers no actions.
    pub operator_key: Option<PathBuf>,
}

impl DashboardConfig {
    /// Every problem, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.addr.is_empty() && self.addr.parse::<SocketAddr>().is_err() {
            out.push(format!(
                "dashboard.addr = {:?}: expected ip:port, e.g. 127.0.0.1:8080",
                self.addr
            ));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => out.push(
                "dashboard.tls_cert is set but dashboard.tls_key is not: give both, or neither"
                    .into(),
            ),
            (None, Some(_)) => out.push(
                "dashboard.tls_key is set but dashboard.tls_cert is not: give both, or neither"
                    .into(),
            ),
            _ => {}
        }
        for (k, v) in [
            ("tls_cert", &self.tls_cert),
            ("tls_key", &self.tls_key),
            ("operator_key", &self.operator_key),
        ] {
            if v.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                out.push(format!(
                    "dashboard.{k} is empty: give a file, or leave it out"
                ));
            }
        }
        out
    }

    /// Checks every value; all problems at once, one line each.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let p = self.problems();
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Rule(p.join("\n  ")))
        }
    }

    /// The address to serve on; `None` when the dashboard is off (or the address is bad:
    /// `validate` says so).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.addr.parse().ok()
    }

    /// Whether HTTPS is configured.
    pub fn tls(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_each_problem_on_its_own_line() {
        let c = DashboardConfig::default();
        assert!(c.validate().is_ok());
        assert_eq!(c.socket_addr(), None);
        let bad = DashboardConfig {
            addr: "localhost".into(),
            tls_cert: Some("c.pem".into()),
            tls_key: None,
            operator_key: Some(PathBuf::new()),
        };
        let p = bad.problems();
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].contains("dashboard.addr"), "{p:?}");
        assert!(p[1].contains("tls_key is not"), "{p:?}");
        assert!(p[2].contains("operator_key is empty"), "{p:?}");
        let good: DashboardConfig =
            toml::from_str("addr = \"127.0.0.1:0\"\ntls_cert = \"c\"\ntls_key = \"k\"").unwrap();
        assert!(good.validate().is_ok() && good.tls());
        assert!(toml::from_str::<DashboardConfig>("adr = \"x\"").is_err());
    }
}
