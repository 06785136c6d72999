//! From [`raw`](super::raw) to [`Config`]: every default applied and every value checked,
//! with errors that name the field and the problem.

use super::*;

pub(super) fn default_limits() -> Limits {
    Limits {
        integration: DEFAULT_INTEGRATION_RATE,
        org: DEFAULT_ORG_RATE,
    }
}

pub(super) struct Validator<'a> {
    pub(super) path: &'a Path,
    /// Whether `*_file` secrets are read (see [`Config::load_without_secrets`]).
    pub(super) read_secrets: bool,
}

/// What stands for a secret that was not read.
pub(super) const UNREAD_URL: &str =
    "http://secret-file-not-read.invalid/integrations/v1/unknown/unread/";
pub(super) const UNREAD_TOKEN: &str = "auth-token-file-not-read";

impl Validator<'_> {
    fn err(&self, field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// Reads a secret from a file (systemd `LoadCredential=`), trimmed of surrounding space.
    fn read_secret(&self, field: &str, file: &Path) -> Result<String, ConfigError> {
        if !self.read_secrets {
            return Ok(if field.ends_with("url_file") {
                UNREAD_URL
            } else {
                UNREAD_TOKEN
            }
            .to_string());
        }
        let file = self.relative(file);
        let text = std::fs::read_to_string(&file)
            .map_err(|e| self.err(field, format!("cannot read {}: {e}", file.display())))?;
        let text = text.trim().to_string();
        if text.is_empty() {
            return Err(self.err(field, format!("{} is empty", file.display())));
        }
        Ok(text)
    }

    fn relative(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }

    pub(super) fn build(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let d = default_limits();
        let limits = Limits {
            integration: raw.limits.integration.unwrap_or(d.integration),
            org: raw.limits.org.unwrap_or(d.org),
        };
        let delivery = self.delivery(raw.delivery)?;
        let queue = self.queue(raw.queue)?;
        let listen = self.listen(raw.listen)?;
        let api = raw.api.map(|a| self.api(a)).transpose()?;
        let fleet = raw.fleet.map(|f| self.fleet(f)).transpose()?;
        let mut seen = HashSet::new();
        let mut integrations = Vec::new();
        let mut unresolved = Vec::new();
        for (i, ri) in raw.integrations.into_iter().enumerate() {
            let field = |f: &str| format!("integration[{i}].{f}");
            if !seen.insert(ri.name.clone()) {
                return Err(self.err(field("name"), format!("{:?} is used twice", ri.name)));
            }
            match self.integration(i, ri, limits.integration, api.is_some())? {
                Ok(found) => integrations.push(found),
                Err(later) => unresolved.push(later),
            }
        }
        if let Some(name) = &raw.self_alert_integration
            && !seen.contains(name)
        {
            return Err(self.err(
                "self_alert_integration",
                format!("{name:?} is not a configured integration"),
            ));
        }
        if listen.unix.is_none() && listen.tcp.is_none() {
            return Err(self.err("listen", "set at least one of listen.unix and listen.tcp"));
        }
        Ok(Config {
            path: self.path.to_owned(),
            sources: self.sources(raw.sources, &seen, &queue)?,
            state_dir: self.relative(&raw.state_dir),
            log_level: self.log_level(raw.log.level)?,
            shutdown_timeout: self.shutdown_timeout(raw.shutdown_timeout)?,
            listen,
            limits,
            delivery,
            queue,
            self_alert_integration: raw.self_alert_integration,
            integrations,
            api,
            unresolved,
            fleet,
        })
    }

    /// `[[integration]]` number `i`: with its URL (`Ok`), or to be looked up through the API
    /// by id or name (`Err`).
    fn integration(
        &self,
        i: usize,
        ri: RawIntegration,
        default_rate: Rate,
        has_api: bool,
    ) -> Result<Result<Integration, UnresolvedIntegration>, ConfigError> {
        let field = |f: &str| format!("integration[{i}].{f}");
        if !valid_name(&ri.name) {
            return Err(self.err(
                field("name"),
                format!(
                    "{:?} must be 1-64 characters of letters, digits, '-', '_' or '.'",
                    ri.name
                ),
            ));
        }
        let heartbeat = ri.heartbeat.map(|h| h.0);
        if let Some(h) = heartbeat
            && !(Duration::from_secs(10)..=Duration::from_secs(86_400)).contains(&h)
        {
            return Err(self.err(
                field("heartbeat"),
                "must be between 10s and 24h (OnCall's heartbeat timeout is 60s to 24h; hit it well within)",
            ));
        }
        let rate = ri.rate_limit.unwrap_or(default_rate);
        if let Some(by) = self.api_ref(&field, ri.id, ri.api_name)? {
            if ri.url.is_some() || ri.url_file.is_some() {
                return Err(self.err(
                    field("url"),
                    format!("set either url/url_file or {by}, not both"),
                ));
            }
            if !has_api {
                return Err(self.err(
                    field(if matches!(by, ApiRef::Id(_)) {
                        "id"
                    } else {
                        "api_name"
                    }),
                    "needs an [api] section: the inbound URL is looked up through the OnCall API",
                ));
            }
            return Ok(Err(UnresolvedIntegration {
                position: i,
                name: ri.name,
                by,
                rate,
                heartbeat,
            }));
        }
        let url_text = match (ri.url, ri.url_file) {
            (Some(u), None) => u,
            (None, Some(f)) => self.read_secret(&field("url_file"), &f)?,
            (Some(_), Some(_)) => {
                return Err(self.err(field("url"), "set either url or url_file, not both"));
            }
            (None, None) => {
                return Err(self.err(field("url"), "missing (or set url_file, id or api_name)"));
            }
        };
        // The parse error of `url` never quotes the input: it holds a token.
        let url = reqwest::Url::parse(&url_text)
            .map_err(|e| self.err(field("url"), format!("not a valid URL ({e})")))?;
        if url.scheme() != "https" && url.scheme() != "http" {
            return Err(self.err(field("url"), "must be an http:// or https:// URL"));
        }
        Ok(Ok(Integration {
            name: ri.name,
            kind: integration_kind(&url),
            url: Secret::new(url),
            rate,
            heartbeat,
        }))
    }

    fn log_level(&self, level: Option<String>) -> Result<String, ConfigError> {
        let level = level.unwrap_or_else(|| "info".to_string());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
            return Err(self.err(
                "log.level",
                format!("{level:?} is not a level or filter such as \"info\" or \"oncall_agent=debug\" ({e})"),
            ));
        }
        Ok(level)
    }

    fn shutdown_timeout(&self, t: Option<HumanDuration>) -> Result<Duration, ConfigError> {
        let t = t.map_or(Duration::from_secs(10), |d| d.0);
        if t > MAX_SHUTDOWN_TIMEOUT {
            return Err(self.err(
                "shutdown_timeout",
                format!(
                    "{} is longer than the systemd unit can wait: its TimeoutStopSec=45s must also hold the final sync and exit, so at most {}",
                    humantime::format_duration(t),
                    humantime::format_duration(MAX_SHUTDOWN_TIMEOUT)
                ),
            ));
        }
        Ok(t)
    }

    /// `[fleet]`: checked in `config::fleet`, its errors placed in this file.
    fn fleet(&self, raw: RawFleet) -> Result<FleetConfig, ConfigError> {
        FleetConfig::from_raw(
            raw,
            |p| {
                self.read_secret("fleet.password_file", p)
                    .map_err(|e| match e {
                        ConfigError::Invalid { problem, .. } => problem,
                        other => other.to_string(),
                    })
            },
            super::fleet::hostname,
        )
        .map_err(|e| self.err(e.field, e.problem))
    }

    /// `id` / `api_name` of one `[[integration]]`.
    fn api_ref(
        &self,
        field: &dyn Fn(&str) -> String,
        id: Option<String>,
        api_name: Option<String>,
    ) -> Result<Option<ApiRef>, ConfigError> {
        match (id, api_name) {
            (None, None) => Ok(None),
            (Some(_), Some(_)) => Err(self.err(field("id"), "set either id or api_name, not both")),
            (Some(id), None) => {
                // It becomes a path segment of an API URL.
                if !(1..=64).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(self.err(
                        field("id"),
                        format!("{id:?} is not an OnCall integration id (letters and digits, like \"CFRPV98RPR1U8\")"),
                    ));
                }
                Ok(Some(ApiRef::Id(id)))
            }
            (None, Some(name)) => {
                if name.trim().is_empty() || name.len() > 1024 {
                    return Err(self.err(field("api_name"), "must be 1-1024 characters"));
                }
                Ok(Some(ApiRef::Name(name)))
            }
        }
    }

    fn api(&self, r: RawApi) -> Result<ApiConfig, ConfigError> {
        let url = self.http_url("api.url", &r.url)?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(self.err("api.url", "must not have a query or fragment"));
        }
        // Accept the API's own URL too: ".../oncall/api/v1/" means ".../oncall".
        let mut url = url;
        let path = url.path().trim_end_matches('/').to_string();
        if let Some(base) = path.strip_suffix("/api/v1") {
            url.set_path(&format!("{base}/"));
        }
        let token = match (r.token, r.token_file) {
            (Some(t), None) => ApiToken::Inline(Secret::new(t)),
            (None, Some(f)) => ApiToken::File(self.relative(&f)),
            (None, None) => ApiToken::Env,
            (Some(_), Some(_)) => {
                return Err(self.err("api.token", "set either token or token_file, not both"));
            }
        };
        let grafana_url = r
            .grafana_url
            .map(|g| self.http_url("api.grafana_url", &g))
            .transpose()?;
        Ok(ApiConfig {
            url,
            token,
            grafana_url,
            rate: r.rate_limit.unwrap_or(DEFAULT_INTEGRATION_RATE),
        })
    }

    /// An http(s) URL that holds no credentials (it is printed in messages).
    fn http_url(&self, field: &str, text: &str) -> Result<reqwest::Url, ConfigError> {
        let url = reqwest::Url::parse(text.trim())
            .map_err(|e| self.err(field, format!("not a valid URL ({e})")))?;
        if url.scheme() != "https" && url.scheme() != "http" {
            return Err(self.err(field, "must be an http:// or https:// URL"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(self.err(field, "must not hold a user name or password"));
        }
        Ok(url)
    }

    fn sources(
        &self,
        raw: Vec<RawSource>,
        integrations: &HashSet<String>,
        queue: &QueueConfig,
    ) -> Result<Vec<Source>, ConfigError> {
        let mut out = Vec::new();
        for (i, rs) in raw.into_iter().enumerate() {
            let at = SourceAt {
                v: self,
                i,
                integrations,
                queue,
            };
            let source = match rs {
                RawSource::File(f) => Source::File(at.file(f)?),
                RawSource::Spool(s) => Source::Spool(at.spool(s)?),
                RawSource::Journal(j) => Source::Journal(at.journal(j)?),
            };
            at.unique(&source, &out)?;
            out.push(source);
        }
        Ok(out)
    }

    fn delivery(&self, r: RawDelivery) -> Result<Delivery, ConfigError> {
        let d = Delivery {
            timeout: r.timeout.map_or(Duration::from_secs(10), |d| d.0),
            retry_initial: r.retry_initial.map_or(Duration::from_secs(1), |d| d.0),
            retry_max: r.retry_max.map_or(Duration::from_secs(300), |d| d.0),
            probe_interval: r.probe_interval.map_or(Duration::from_secs(15), |d| d.0),
            max_retry_after: r.max_retry_after.map_or(Duration::from_secs(600), |d| d.0),
            learn: r.learn.unwrap_or(true),
            concurrency: r.concurrency.unwrap_or(4),
        };
        if d.timeout.is_zero() {
            return Err(self.err("delivery.timeout", "must be above zero"));
        }
        if d.retry_initial.is_zero() {
            return Err(self.err("delivery.retry_initial", "must be above zero"));
        }
        if d.retry_max < d.retry_initial {
            return Err(self.err(
                "delivery.retry_max",
                "must be at least delivery.retry_initial",
            ));
        }
        if d.probe_interval < Duration::from_secs(1) {
            return Err(self.err("delivery.probe_interval", "must be at least 1s"));
        }
        if d.max_retry_after < Duration::from_secs(1) {
            return Err(self.err("delivery.max_retry_after", "must be at least 1s"));
        }
        if !(1..=64).contains(&d.concurrency) {
            return Err(self.err("delivery.concurrency", "must be between 1 and 64"));
        }
        Ok(d)
    }

    fn queue(&self, r: RawQueue) -> Result<QueueConfig, ConfigError> {
        let q = QueueConfig {
            max_bytes: r.max_bytes.map_or(256 * 1024 * 1024, |b| b.0),
            max_body: r.max_body.map_or(1024 * 1024, |b| b.0 as usize),
            cache_capacity: r.cache_capacity.map_or(32 * 1024 * 1024, |b| b.0),
            channel_capacity: r.channel_capacity.unwrap_or(8192),
            batch_max: r.batch_max.unwrap_or(1024),
            min_free_space: r.min_free_space.map_or(32 * 1024 * 1024, |b| b.0),
        };
        if q.max_body == 0 || q.max_body > MAX_BODY_LIMIT {
            return Err(self.err(
                "queue.max_body",
                format!("must be between 1 and {MAX_BODY_LIMIT} bytes"),
            ));
        }
        if q.max_bytes < q.max_body as u64 {
            return Err(self.err("queue.max_bytes", "must be at least queue.max_body"));
        }
        if q.cache_capacity < 1024 * 1024 {
            return Err(self.err("queue.cache_capacity", "must be at least 1MiB"));
        }
        if q.channel_capacity == 0 {
            return Err(self.err("queue.channel_capacity", "must be at least 1"));
        }
        if q.min_free_space < 16 * 1024 * 1024 {
            return Err(self.err(
                "queue.min_free_space",
                "must be at least 16MiB (sled grows its file by 8 MiB segments)",
            ));
        }
        if q.batch_max == 0 {
            return Err(self.err("queue.batch_max", "must be at least 1"));
        }
        Ok(q)
    }

    fn listen(&self, r: RawListen) -> Result<Listen, ConfigError> {
        let unix_mode = match &r.unix_mode {
            None => 0o660,
            Some(s) => u32::from_str_radix(s.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| {
                    self.err(
                        "listen.unix_mode",
                        format!("{s:?} is not an octal mode like \"0660\""),
                    )
                })?,
        };
        if unix_mode & 0o007 != 0 {
            return Err(self.err(
                "listen.unix_mode",
                "must not grant access to others (the socket's mode is its access control)",
            ));
        }
        let tcp = match &r.tcp {
            None => None,
            Some(s) => Some(s.parse::<SocketAddr>().map_err(|e| {
                self.err(
                    "listen.tcp",
                    format!("{s:?} is not an address like 127.0.0.1:9753 ({e})"),
                )
            })?),
        };
        let auth_token = match (r.auth_token, r.auth_token_file) {
            (Some(t), None) => Some(Secret::new(t)),
            (None, Some(f)) => Some(Secret::new(self.read_secret("listen.auth_token_file", &f)?)),
            (None, None) => None,
            (Some(_), Some(_)) => {
                return Err(self.err(
                    "listen.auth_token",
                    "set either auth_token or auth_token_file, not both",
                ));
            }
        };
        if let Some(addr) = tcp
            && !addr.ip().is_loopback()
        {
            if !r.allow_remote.unwrap_or(false) {
                return Err(self.err(
                    "listen.tcp",
                    format!(
                        "{addr} is not a loopback address; set allow_remote = true and auth_token to listen beyond this host"
                    ),
                ));
            }
            if auth_token.is_none() {
                return Err(self.err(
                    "listen.auth_token",
                    "required when allow_remote = true (every TCP request must carry it)",
                ));
            }
        }
        if let Some(t) = &auth_token
            && t.expose().len() < 16
        {
            return Err(self.err("listen.auth_token", "must be at least 16 characters"));
        }
        let max_connections = r.max_connections.unwrap_or(1024);
        if max_connections == 0 {
            return Err(self.err("listen.max_connections", "must be at least 1"));
        }
        Ok(Listen {
            unix: r.unix.map(|p| self.relative(&p)),
            unix_mode,
            unix_group: r.unix_group,
            tcp,
            auth_token,
            max_connections,
            header_timeout: r.header_timeout.map_or(Duration::from_secs(10), |d| d.0),
            body_timeout: r.body_timeout.map_or(Duration::from_secs(30), |d| d.0),
        })
    }
}

/// Things that work but deserve the operator's attention (printed by `check-config`, logged
/// at start).
pub fn warnings(c: &Config) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut w = Vec::new();
    // URLs that only point at this host (the quick start, a local test OnCall) hold no token
    // worth hiding.
    let remote_url = c.integrations.iter().any(|i| {
        let host = i.url.expose().host_str().unwrap_or("");
        let loopback = host == "localhost"
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        !loopback
    });
    if remote_url
        && let Ok(m) = std::fs::metadata(&c.path)
        && m.permissions().mode() & 0o004 != 0
    {
        w.push(format!(
            "{} is readable by every user and holds integration URLs (tokens): chmod 640 it, or use url_file",
            c.path.display()
        ));
    }
    for i in &c.integrations {
        if let Some(kind) = &i.kind
            && kind.starts_with("legacy_")
        {
            w.push(format!(
                "integration {:?} uses the {kind} kind: OnCall counts every alert inside its payloads and silently drops the excess while answering 200; prefer the non-legacy kind",
                i.name
            ));
        }
    }
    w
}

/// "line L, column C: what is wrong", on one line, without the excerpt of the file that toml
/// adds: that excerpt can hold an integration URL (a token), and this message reaches the
/// journal through `check-config` in ExecStartPre/ExecReload and the reload error log.
pub(super) fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            // The key (never a value) and its table, so the message names the field.
            let this_line = text.lines().nth(line - 1).unwrap_or_default();
            let key = this_line
                .split_once('=')
                .map(|(k, _)| k.trim())
                .filter(|k| !k.is_empty() && !k.starts_with('#'));
            let table = before
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| l.starts_with('['))
                .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim());
            let field = match (table, key) {
                (Some(t), Some(k)) => format!(" ({t}.{k})"),
                (None, Some(k)) => format!(" ({k})"),
                _ => String::new(),
            };
            format!("line {line}, column {column}{field}: {msg}")
        }
        None => msg,
    }
}

/// Local names appear in URLs and sled keys: keep them to a safe alphabet.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Splits a tailed path into its folder (no wildcards: it is what is watched) and the
/// pattern its files' names must match.
/// A value a journal match can hold on the `journalctl` command line: journalctl would read
/// `+` as "or", and globs or an `=` as something else than the name.
pub(super) fn journal_value(v: &str) -> Result<(), &'static str> {
    if v.is_empty() || v.len() > 256 {
        return Err("must be 1 to 256 characters");
    }
    if v == "+"
        || v.chars()
            .any(|c| c.is_whitespace() || c.is_control() || "=*?[]".contains(c))
    {
        return Err(
            "must not be \"+\" nor hold spaces, control characters, \"=\" or a glob (*?[]): list each name",
        );
    }
    Ok(())
}

/// A journal field name as journald allows them (`journalctl --output-fields` takes it).
pub(super) fn journal_field_name(f: &str) -> bool {
    !f.is_empty()
        && f.len() <= 64
        && !f.starts_with(|c: char| c.is_ascii_digit())
        && f.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

pub(super) fn split_file_pattern(path: &Path) -> Result<(PathBuf, glob::Pattern), String> {
    let wild = |s: &str| s.contains(['*', '?', '[']);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{} does not end in a file name", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    if wild(&dir.to_string_lossy()) {
        return Err(format!(
            "{}: wildcards are allowed in the file name only, not in folders",
            path.display()
        ));
    }
    let pattern = glob::Pattern::new(name).map_err(|e| format!("{name:?}: {e}"))?;
    Ok((dir.to_owned(), pattern))
}

/// The `<kind>` of `.../integrations/v1/<kind>/<token>/`.
pub(super) fn integration_kind(url: &reqwest::Url) -> Option<String> {
    let segs: Vec<&str> = url.path_segments()?.collect();
    let i = segs.windows(2).position(|w| w == ["integrations", "v1"])?;
    segs.get(i + 2).map(|s| s.to_string())
}

/// One `[[source]]` being checked: where it is (`source[i]`) and what it may refer to.
struct SourceAt<'a> {
    v: &'a Validator<'a>,
    i: usize,
    integrations: &'a HashSet<String>,
    queue: &'a QueueConfig,
}

impl SourceAt<'_> {
    fn err(&self, f: &str, problem: impl Into<String>) -> ConfigError {
        self.v.err(format!("source[{}].{f}", self.i), problem)
    }

    fn poll(&self, p: Option<HumanDuration>) -> Result<Duration, ConfigError> {
        let d = p.map_or(DEFAULT_SOURCE_POLL, |d| d.0);
        if d < Duration::from_millis(10) {
            return Err(self.err("poll_interval", "must be at least 10ms"));
        }
        Ok(d)
    }

    fn integration(&self, name: &str) -> Result<(), ConfigError> {
        if !self.integrations.contains(name) {
            return Err(self.err(
                "integration",
                format!("{name:?} is not a configured integration"),
            ));
        }
        Ok(())
    }

    /// `max_line`, at least `min` and at most `queue.max_body`.
    fn max_line(&self, b: Option<ByteSize>, min: u64, shown: &str) -> Result<usize, ConfigError> {
        let max_line = b.map_or(DEFAULT_MAX_LINE as u64, |b| b.0);
        let max_body = self.queue.max_body;
        if max_line < min || max_line > max_body as u64 {
            let problem = format!("must be between {shown} and queue.max_body ({max_body} bytes)");
            return Err(self.err("max_line", problem));
        }
        Ok(max_line as usize)
    }

    /// What must differ between sources: the tailed path, one spool, the journal names.
    fn unique(&self, s: &Source, before: &[Source]) -> Result<(), ConfigError> {
        for b in before {
            match (s, b) {
                (Source::File(a), Source::File(b)) if a.path == b.path => {
                    let problem = format!("{} is tailed twice", a.path.display());
                    return Err(self.err("path", problem));
                }
                (Source::Spool(_), Source::Spool(_)) => {
                    return Err(self.err(
                        "type",
                        "only one spool source may be configured (send writes to it)",
                    ));
                }
                (Source::Journal(a), Source::Journal(b)) if a.name == b.name => {
                    return Err(self.err(
                        "name",
                        format!(
                            "{:?} names another journal source too (it keys the saved cursor): give each journal source its own name",
                            a.name
                        ),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn file(&self, r: RawFileSource) -> Result<FileSource, ConfigError> {
        let path = self.v.relative(&r.path);
        let (dir, name_pattern) =
            split_file_pattern(&path).map_err(|problem| self.err("path", problem))?;
        self.integration(&r.integration)?;
        let format = match (r.format.unwrap_or(RawLineFormat::Json), r.uid_fields) {
            (RawLineFormat::Json, None) => LineFormat::Json,
            (RawLineFormat::Json, Some(_)) => {
                return Err(self.err("uid_fields", "only applies to format = \"text\""));
            }
            (RawLineFormat::Text, f) => {
                let uid_fields = f.unwrap_or_default();
                if uid_fields.len() > 16 || uid_fields.contains(&0) {
                    return Err(self.err(
                        "uid_fields",
                        "at most 16 field numbers, each 1 or more (1 = first field)",
                    ));
                }
                LineFormat::Text { uid_fields }
            }
        };
        Ok(FileSource {
            path,
            dir,
            name_pattern,
            integration: r.integration,
            format,
            start_at: match r.start_at {
                Some(RawStartAt::End) => StartAt::End,
                _ => StartAt::Beginning,
            },
            max_line: self.max_line(r.max_line, 1, "1")?,
            poll_interval: self.poll(r.poll_interval)?,
        })
    }

    fn spool(&self, r: RawSpoolSource) -> Result<SpoolSource, ConfigError> {
        Ok(SpoolSource {
            path: self.v.relative(&r.path),
            poll_interval: self.poll(r.poll_interval)?,
        })
    }

    fn journal(&self, r: RawJournalSource) -> Result<JournalSource, ConfigError> {
        self.integration(&r.integration)?;
        let name = r.name.unwrap_or_else(|| r.integration.clone());
        if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
            return Err(self.err(
                "name",
                "must be 1 to 100 characters, none of them a control character",
            ));
        }
        let units = r
            .units
            .unwrap_or_default()
            .into_iter()
            .map(|u| {
                journal_value(&u)
                    .map_err(|p| self.err("units", format!("{u:?}: {p}")))
                    .map(|()| {
                        if u.contains('.') {
                            u
                        } else {
                            format!("{u}.service")
                        }
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let identifiers = r.identifiers.unwrap_or_default();
        for t in &identifiers {
            journal_value(t).map_err(|p| self.err("identifiers", format!("{t:?}: {p}")))?;
        }
        let uid_fields = r.uid_fields.unwrap_or_default();
        if uid_fields.len() > 16 || uid_fields.iter().any(|f| !journal_field_name(f)) {
            return Err(self.err(
                "uid_fields",
                "at most 16 journal field names, each of upper-case letters, digits and _ (such as \"MESSAGE\" or \"_EXE\")",
            ));
        }
        if r.journal_directory.is_some() && r.journal_file.is_some() {
            return Err(self.err(
                "journal_file",
                "give journal_directory or journal_file, not both",
            ));
        }
        Ok(JournalSource {
            name,
            integration: r.integration,
            units,
            identifiers,
            priority: self.priority(r.priority)?,
            uid_fields,
            start_at: match r.start_at {
                Some(RawStartAt::Beginning) => StartAt::Beginning,
                _ => StartAt::End,
            },
            max_line: self.max_line(r.max_line, 1024, "1 KiB")?,
            journal_directory: r.journal_directory.map(|p| self.v.relative(&p)),
            journal_file: r.journal_file.map(|p| self.v.relative(&p)),
            journalctl: r.journalctl.unwrap_or_else(|| PathBuf::from("journalctl")),
            poll_interval: r.poll_interval.map(|p| self.poll(Some(p))).transpose()?,
        })
    }

    fn priority(&self, p: Option<RawPriority>) -> Result<u8, ConfigError> {
        match p {
            None => Ok(3),
            Some(RawPriority::Number(n)) if (0..=7).contains(&n) => Ok(n as u8),
            Some(RawPriority::Name(n)) if PRIORITY_NAMES.contains(&n.as_str()) => {
                Ok(PRIORITY_NAMES.iter().position(|p| *p == n).unwrap_or(3) as u8)
            }
            Some(_) => Err(self.err(
                "priority",
                "must be 0 to 7 or one of emerg, alert, crit, err, warning, notice, info, debug",
            )),
        }
    }
}
