//! Loading: defaults, then the TOML file, then `SYNCBACK_*` environment variables.

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;

use super::{ConfigError, Settings};

impl Settings {
    /// Load defaults, then the TOML file (if it exists, or is required), then `SYNCBACK_*` env.
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        if required && !path.exists() {
            return Err(ConfigError::Invalid(vec![format!(
                "config file {} does not exist",
                path.display()
            )]));
        }
        Self::figment(path)
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))
    }

    pub fn figment(path: &Path) -> Figment {
        Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::file(path))
            // SYNCBACK_CONFIG names the file (the CLI's --config), it is not a key.
            .merge(
                Env::prefixed("SYNCBACK_")
                    .filter(|k| k != "config")
                    .split("__"),
            )
    }

    /// Parse settings from a TOML string (tests, demo).
    pub fn from_toml(s: &str) -> Result<Self, ConfigError> {
        Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::string(s))
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))
    }
}
