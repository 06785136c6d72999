//! `[fleet]`: where the fleet's shared budget lives (see the `fleet` module) and what this host
//! may do alone. Parsed (serde, `deny_unknown_fields`), then validated into [`FleetConfig`]
//! with errors that name the field.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::redact::Secret;

/// How long one round trip to Redis may take before this host falls back to its local share.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(200);
/// The organization's name when `fleet.org` is not set.
pub const DEFAULT_ORG: &str = "default";

/// `[fleet]` as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    /// `redis://host:6379/0`, or `rediss://` for TLS. Required. No password in it: see
    /// `password_file`.
    pub redis: String,
    /// A file holding Redis's password (`AUTH`), e.g. a systemd credential. Never logged.
    pub password_file: Option<PathBuf>,
    /// This host's name in the fleet (letters, digits, `.`, `_`, `-`; at most 64). Default: the
    /// machine's hostname.
    pub host: Option<String>,
    /// The OnCall organization whose budget the fleet shares: hosts with the same `org` on the
    /// same Redis share one org budget. Default: "default".
    pub org: Option<String>,
    /// The fraction of each budget this host may use alone while Redis is unreachable, in
    /// (0, 1]. Give this or `hosts`, not both. Default: 1 / `hosts`.
    pub local_share: Option<f64>,
    /// The fleet's size: while Redis is unreachable this host uses 1/hosts of each budget.
    pub hosts: Option<u32>,
    /// One round trip's limit before falling back to the local share ("200ms" by default).
    pub timeout: Option<String>,
}

/// `[fleet]`, validated.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Where to connect (may carry a username; never a password).
    pub redis: redis::ConnectionInfo,
    /// The URL fit to print: scheme, host, port, database.
    pub redacted: String,
    pub password: Option<Secret<String>>,
    pub host: String,
    pub org: String,
    /// The fraction of each budget this host uses alone while Redis is away.
    pub local_share: f64,
    pub timeout: Duration,
}

/// Equal when a running daemon would connect and share the same way (the reload's test).
impl PartialEq for FleetConfig {
    fn eq(&self, o: &FleetConfig) -> bool {
        self.redacted == o.redacted
            && self.redis.redis_settings().username() == o.redis.redis_settings().username()
            && self.password == o.password
            && self.host == o.host
            && self.org == o.org
            && self.local_share == o.local_share
            && self.timeout == o.timeout
    }
}

/// A problem with one field of `[fleet]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FleetConfigError {
    /// The field, as written in the file (`fleet.redis`).
    pub field: &'static str,
    pub problem: String,
}

fn err(field: &'static str, problem: impl Into<String>) -> FleetConfigError {
    FleetConfigError {
        field,
        problem: problem.into(),
    }
}

/// Names that go into Redis keys and members: no `:` (it separates a member's parts), no `{}`
/// (the keys' cluster hash tag), nothing to quote.
fn is_plain_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl FleetConfig {
    /// Validates `raw`. `read_secret` reads `password_file` (the caller resolves relative paths
    /// and names the file in its errors); `hostname` is the machine's name, used when
    /// `fleet.host` is not set.
    pub fn from_raw(
        raw: RawFleet,
        read_secret: impl FnOnce(&Path) -> Result<String, String>,
        hostname: impl FnOnce() -> Option<String>,
    ) -> Result<FleetConfig, FleetConfigError> {
        let (redis, redacted) = redis_url(&raw.redis)?;
        let password = match &raw.password_file {
            Some(p) => Some(Secret::new(
                read_secret(p).map_err(|e| err("fleet.password_file", e))?,
            )),
            None => None,
        };
        let host = match raw.host {
            Some(h) => h,
            None => hostname().ok_or_else(|| {
                err(
                    "fleet.host",
                    "not set, and the machine's hostname cannot be read: set it",
                )
            })?,
        };
        if !is_plain_name(&host) {
            return Err(err(
                "fleet.host",
                format!(
                    "{host:?} must be 1 to 64 letters, digits, '.', '_' or '-' (set fleet.host when the hostname is not)"
                ),
            ));
        }
        let org = raw.org.unwrap_or_else(|| DEFAULT_ORG.to_string());
        if !is_plain_name(&org) {
            return Err(err(
                "fleet.org",
                format!("{org:?} must be 1 to 64 letters, digits, '.', '_' or '-'"),
            ));
        }
        Ok(FleetConfig {
            redis,
            redacted,
            password,
            host,
            org,
            local_share: local_share(raw.local_share, raw.hosts)?,
            timeout: timeout(raw.timeout)?,
        })
    }
}

/// The Redis URL, checked (no password in it: URLs get printed), and as it may be shown.
fn redis_url(text: &str) -> Result<(redis::ConnectionInfo, String), FleetConfigError> {
    let url =
        reqwest::Url::parse(text).map_err(|e| err("fleet.redis", format!("not a URL ({e})")))?;
    if !matches!(url.scheme(), "redis" | "rediss") {
        return Err(err(
            "fleet.redis",
            format!(
                "the scheme must be redis:// or rediss:// (TLS), not {}://",
                url.scheme()
            ),
        ));
    }
    if url.password().is_some() {
        return Err(err(
            "fleet.redis",
            "holds a password: put it in fleet.password_file instead (URLs get printed)",
        ));
    }
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        return Err(err("fleet.redis", "names no host"));
    };
    let db = url.path().trim_matches('/');
    if !db.is_empty() && db.parse::<u16>().is_err() {
        return Err(err(
            "fleet.redis",
            format!("the path must be a database number such as /0, not /{db}"),
        ));
    }
    let redacted = format!(
        "{}://{}:{}/{}",
        url.scheme(),
        host,
        url.port().unwrap_or(6379),
        if db.is_empty() { "0" } else { db }
    );
    let info = redis::IntoConnectionInfo::into_connection_info(url)
        .map_err(|e| err("fleet.redis", format!("not a Redis URL ({e})")))?;
    Ok((info, redacted))
}

/// What this host may send alone while Redis is unreachable: `local_share`, or 1/`hosts`.
fn local_share(share: Option<f64>, hosts: Option<u32>) -> Result<f64, FleetConfigError> {
    match (share, hosts) {
        (Some(_), Some(_)) => Err(err(
            "fleet.local_share",
            "give either local_share or hosts, not both",
        )),
        (Some(s), None) if s > 0.0 && s <= 1.0 => Ok(s),
        (Some(s), None) => Err(err(
            "fleet.local_share",
            format!("{s} must be above 0 and at most 1 (a fraction of each budget)"),
        )),
        (None, Some(n)) if n >= 1 => Ok(1.0 / f64::from(n)),
        (None, Some(_)) => Err(err("fleet.hosts", "must be at least 1")),
        (None, None) => Err(err(
            "fleet.hosts",
            "set hosts (the fleet's size) or local_share: what this host may send alone while Redis is unreachable (never the whole budget)",
        )),
    }
}

fn timeout(text: Option<String>) -> Result<Duration, FleetConfigError> {
    let timeout = match text {
        Some(t) => humantime::parse_duration(&t)
            .map_err(|e| err("fleet.timeout", format!("{t:?}: {e}")))?,
        None => DEFAULT_TIMEOUT,
    };
    if !(Duration::from_millis(10)..=Duration::from_secs(5)).contains(&timeout) {
        return Err(err("fleet.timeout", "must be between 10ms and 5s"));
    }
    Ok(timeout)
}

/// The host's name in the fleet: the first label of its hostname.
pub(super) fn hostname() -> Option<String> {
    let name = crate::host::name()?;
    Some(name.split('.').next().unwrap_or(&name).to_string()).filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(redis: &str) -> RawFleet {
        RawFleet {
            redis: redis.to_string(),
            password_file: None,
            host: Some("web-01".into()),
            org: None,
            local_share: None,
            hosts: Some(20),
            timeout: None,
        }
    }

    fn check(r: RawFleet) -> Result<FleetConfig, FleetConfigError> {
        FleetConfig::from_raw(r, |_| Ok("pw".into()), || Some("box".into()))
    }

    #[test]
    fn a_minimal_fleet_takes_defaults() {
        let c = check(raw("redis://10.0.0.5/0")).unwrap();
        assert_eq!(c.redacted, "redis://10.0.0.5:6379/0");
        assert_eq!(c.org, "default");
        assert_eq!(c.local_share, 0.05);
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert!(c.password.is_none());
    }

    #[test]
    fn errors_name_the_field() {
        let e = check(raw("http://x/")).unwrap_err();
        assert_eq!(e.field, "fleet.redis");
        let e = check(raw("redis://:hunter2@x/")).unwrap_err();
        assert_eq!(e.field, "fleet.redis");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let mut r = raw("redis://x/");
        r.hosts = None;
        assert_eq!(check(r).unwrap_err().field, "fleet.hosts");
        let mut r = raw("redis://x/");
        r.local_share = Some(1.5);
        r.hosts = None;
        assert_eq!(check(r).unwrap_err().field, "fleet.local_share");
        let mut r = raw("redis://x/");
        r.local_share = Some(0.5);
        assert_eq!(check(r).unwrap_err().field, "fleet.local_share");
        let mut r = raw("redis://x/");
        r.host = Some("a:b".into());
        assert_eq!(check(r).unwrap_err().field, "fleet.host");
        let mut r = raw("redis://x/");
        r.org = Some("{x}".into());
        assert_eq!(check(r).unwrap_err().field, "fleet.org");
        let mut r = raw("redis://x/");
        r.timeout = Some("1h".into());
        assert_eq!(check(r).unwrap_err().field, "fleet.timeout");
        let mut r = raw("redis://x/");
        r.password_file = Some("/nope".into());
        let e = FleetConfig::from_raw(r, |_| Err("cannot read /nope".into()), || None).unwrap_err();
        assert_eq!(e.field, "fleet.password_file");
    }

    #[test]
    fn the_password_is_redacted_in_debug() {
        let mut r = raw("rediss://cache.example:6380/2");
        r.password_file = Some("/run/credentials/pw".into());
        let c = FleetConfig::from_raw(r, |_| Ok("s3cret".into()), || None).unwrap();
        assert_eq!(c.redacted, "rediss://cache.example:6380/2");
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = toml::from_str::<RawFleet>("redis = \"redis://x/\"\nhots = 3\n").unwrap_err();
        assert!(e.to_string().contains("hots"), "{e}");
    }
}
