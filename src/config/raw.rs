//! The file as serde reads it (`deny_unknown_fields`: a misspelt key is an error naming it).
//! Every field is optional here; `validate` gives each its default and checks it.

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) state_dir: PathBuf,
    #[serde(default)]
    pub(super) listen: RawListen,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) delivery: RawDelivery,
    #[serde(default)]
    pub(super) queue: RawQueue,
    #[serde(default)]
    pub(super) log: RawLog,
    pub(super) shutdown_timeout: Option<HumanDuration>,
    pub(super) self_alert_integration: Option<String>,
    pub(super) api: Option<RawApi>,
    #[serde(default, rename = "integration")]
    pub(super) integrations: Vec<RawIntegration>,
    #[serde(default, rename = "source")]
    pub(super) sources: Vec<RawSource>,
    pub(super) fleet: Option<RawFleet>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApi {
    pub(super) url: String,
    pub(super) token: Option<String>,
    pub(super) token_file: Option<PathBuf>,
    pub(super) grafana_url: Option<String>,
    pub(super) rate_limit: Option<Rate>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    pub(super) unix: Option<PathBuf>,
    pub(super) unix_mode: Option<String>,
    pub(super) unix_group: Option<String>,
    pub(super) tcp: Option<String>,
    pub(super) allow_remote: Option<bool>,
    pub(super) auth_token: Option<String>,
    pub(super) auth_token_file: Option<PathBuf>,
    pub(super) max_connections: Option<usize>,
    pub(super) header_timeout: Option<HumanDuration>,
    pub(super) body_timeout: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) integration: Option<Rate>,
    pub(super) org: Option<Rate>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDelivery {
    pub(super) timeout: Option<HumanDuration>,
    pub(super) retry_initial: Option<HumanDuration>,
    pub(super) retry_max: Option<HumanDuration>,
    pub(super) probe_interval: Option<HumanDuration>,
    pub(super) max_retry_after: Option<HumanDuration>,
    pub(super) learn: Option<bool>,
    pub(super) concurrency: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQueue {
    pub(super) max_bytes: Option<ByteSize>,
    pub(super) max_body: Option<ByteSize>,
    pub(super) cache_capacity: Option<ByteSize>,
    pub(super) channel_capacity: Option<usize>,
    pub(super) batch_max: Option<usize>,
    pub(super) min_free_space: Option<ByteSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) level: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIntegration {
    pub(super) name: String,
    pub(super) url: Option<String>,
    pub(super) url_file: Option<PathBuf>,
    pub(super) id: Option<String>,
    pub(super) api_name: Option<String>,
    pub(super) rate_limit: Option<Rate>,
    pub(super) heartbeat: Option<HumanDuration>,
}

/// `[[source]]`: where alerts come from besides the local HTTP API, chosen by `type`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub(super) enum RawSource {
    File(RawFileSource),
    Spool(RawSpoolSource),
    Journal(RawJournalSource),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFileSource {
    pub(super) path: PathBuf,
    pub(super) integration: String,
    pub(super) format: Option<RawLineFormat>,
    pub(super) start_at: Option<RawStartAt>,
    pub(super) max_line: Option<ByteSize>,
    pub(super) uid_fields: Option<Vec<usize>>,
    pub(super) poll_interval: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpoolSource {
    pub(super) path: PathBuf,
    pub(super) poll_interval: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJournalSource {
    pub(super) integration: String,
    pub(super) name: Option<String>,
    pub(super) units: Option<Vec<String>>,
    pub(super) identifiers: Option<Vec<String>>,
    pub(super) priority: Option<RawPriority>,
    pub(super) uid_fields: Option<Vec<String>>,
    pub(super) start_at: Option<RawStartAt>,
    pub(super) max_line: Option<ByteSize>,
    pub(super) journal_directory: Option<PathBuf>,
    pub(super) journal_file: Option<PathBuf>,
    pub(super) journalctl: Option<PathBuf>,
    pub(super) poll_interval: Option<HumanDuration>,
}

/// A syslog priority: its number (0-7) or its name ("err").
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum RawPriority {
    Number(i64),
    Name(String),
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawLineFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawStartAt {
    Beginning,
    End,
}

// ---------------------------------------------------------------------------------------------
// What the agent uses.
