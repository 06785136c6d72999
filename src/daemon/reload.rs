//! What a reload changes: one [`ConfigDiff`], computed once from the old and the new config,
//! which each part of the daemon then applies (see `Daemon::reload` in the parent module).
//!
//! The settings a running daemon cannot take (the sockets, the queue's sizes, `state_dir`)
//! are [`RestartOnly`] variants, so a new such setting cannot be forgotten in a hand-kept list
//! of strings: `restart_only` matches every field of the sections it covers.

use std::fmt;

use crate::config::{Config, Listen, QueueConfig};

/// What changed between two configs, as the running parts see it.
#[derive(Debug, Default, PartialEq)]
pub struct ConfigDiff {
    /// Integrations by name that are new, gone, or have a new URL, budget or heartbeat.
    /// Unresolved integrations (`id`/`api_name` not yet looked up) count as configured: their
    /// alerts are accepted and kept.
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    /// Anything the dispatcher applies: the integrations, `[limits]`, `[delivery]`.
    pub sender: bool,
    /// `[[source]]` changed (the spool folder included): the sources restart. A change of the
    /// integrations alone does not restart them; the spool follows the queue's names itself.
    pub sources: bool,
    /// The listeners' per-request settings (auth token, body size and deadline): new
    /// connections take them, open ones finish as they began.
    pub listeners: bool,
    /// The new `queue.min_free_space`, when it changed (the writer reads it per batch).
    pub min_free_space: Option<u64>,
    /// The new `log.level`, when it changed.
    pub log_level: Option<String>,
    /// Settings that take effect at the next restart only (a WARN names them).
    pub restart_only: Vec<RestartOnly>,
}

/// A setting a running daemon keeps until it restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartOnly {
    ListenUnix,
    ListenTcp,
    UnixMode,
    UnixGroup,
    MaxConnections,
    HeaderTimeout,
    StateDir,
    QueueMaxBytes,
    CacheCapacity,
    ChannelCapacity,
    BatchMax,
    Fleet,
}

impl fmt::Display for RestartOnly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RestartOnly::ListenUnix => "listen.unix",
            RestartOnly::ListenTcp => "listen.tcp",
            RestartOnly::UnixMode => "listen.unix_mode",
            RestartOnly::UnixGroup => "listen.unix_group",
            RestartOnly::MaxConnections => "listen.max_connections",
            RestartOnly::HeaderTimeout => "listen.header_timeout",
            RestartOnly::StateDir => "state_dir",
            RestartOnly::QueueMaxBytes => "queue.max_bytes",
            RestartOnly::CacheCapacity => "queue.cache_capacity",
            RestartOnly::ChannelCapacity => "queue.channel_capacity",
            RestartOnly::BatchMax => "queue.batch_max",
            RestartOnly::Fleet => "[fleet]",
        })
    }
}

impl ConfigDiff {
    pub fn between(old: &Config, new: &Config) -> ConfigDiff {
        let (old_names, new_names) = (old.integration_names(), new.integration_names());
        let changed = new
            .integrations
            .iter()
            .filter(|n| old.integrations.iter().any(|o| o.name == n.name && o != *n))
            .map(|n| n.name.clone())
            .collect();
        ConfigDiff {
            added: without(&new_names, &old_names),
            removed: without(&old_names, &new_names),
            changed,
            sender: old.integrations != new.integrations
                || old.limits != new.limits
                || old.delivery != new.delivery,
            sources: old.sources != new.sources,
            listeners: old.listen.auth_token != new.listen.auth_token
                || old.listen.body_timeout != new.listen.body_timeout
                || old.queue.max_body != new.queue.max_body,
            min_free_space: (old.queue.min_free_space != new.queue.min_free_space)
                .then_some(new.queue.min_free_space),
            log_level: (old.log_level != new.log_level).then(|| new.log_level.clone()),
            restart_only: restart_only(old, new),
        }
    }

    /// True when the integrations the queue accepts changed.
    pub fn integrations(&self) -> bool {
        !(self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty())
    }
}

fn without(a: &[String], b: &[String]) -> Vec<String> {
    a.iter().filter(|n| !b.contains(n)).cloned().collect()
}

fn restart_only(old: &Config, new: &Config) -> Vec<RestartOnly> {
    // Destructured so that a new field is a compile error here until it is placed: live
    // (applied by a part) or restart-only.
    let Listen {
        unix,
        unix_mode,
        unix_group,
        tcp,
        auth_token: _,
        max_connections,
        header_timeout,
        body_timeout: _,
    } = &old.listen;
    let QueueConfig {
        max_bytes,
        max_body: _,
        cache_capacity,
        channel_capacity,
        batch_max,
        min_free_space: _,
    } = &old.queue;
    let (n, q) = (&new.listen, &new.queue);
    [
        (*unix != n.unix, RestartOnly::ListenUnix),
        (*tcp != n.tcp, RestartOnly::ListenTcp),
        (*unix_mode != n.unix_mode, RestartOnly::UnixMode),
        (*unix_group != n.unix_group, RestartOnly::UnixGroup),
        (
            *max_connections != n.max_connections,
            RestartOnly::MaxConnections,
        ),
        (
            *header_timeout != n.header_timeout,
            RestartOnly::HeaderTimeout,
        ),
        (old.state_dir != new.state_dir, RestartOnly::StateDir),
        (*max_bytes != q.max_bytes, RestartOnly::QueueMaxBytes),
        (
            *cache_capacity != q.cache_capacity,
            RestartOnly::CacheCapacity,
        ),
        (
            *channel_capacity != q.channel_capacity,
            RestartOnly::ChannelCapacity,
        ),
        (*batch_max != q.batch_max, RestartOnly::BatchMax),
        (old.fleet != new.fleet, RestartOnly::Fleet),
    ]
    .into_iter()
    .filter_map(|(changed, what)| changed.then_some(what))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = r#"
[[integration]]
name = "a"
url = "https://oncall.example.com/integrations/v1/formatted_webhook/TOKENA/"

[[integration]]
name = "b"
url = "https://oncall.example.com/integrations/v1/formatted_webhook/TOKENB/"
"#;

    /// A valid config with `extra` (top-level keys first, then tables) before the
    /// integrations; `state_dir` and `[listen]` are added unless `extra` sets them.
    fn config(extra: &str) -> Config {
        let mut text = String::new();
        if !extra.starts_with("state_dir") {
            text.push_str("state_dir = \"/var/lib/oncall-agent\"\n");
        }
        if !extra.contains("[listen]") {
            text.push_str("[listen]\ntcp = \"127.0.0.1:9753\"\n");
        }
        text.push_str(extra);
        text.push_str(BASE);
        Config::parse(Path::new("/etc/oncall-agent.toml"), &text).unwrap()
    }

    fn diff(old: &str, new: &str) -> ConfigDiff {
        ConfigDiff::between(&config(old), &config(new))
    }

    #[test]
    fn the_same_config_changes_nothing() {
        assert_eq!(diff("", ""), ConfigDiff::default());
    }

    #[test]
    fn an_added_and_a_removed_integration_reach_the_queue_and_the_sender() {
        let old = config("");
        let mut new = config("");
        new.integrations.remove(1);
        let mut c = new.integrations[0].clone();
        c.name = "c".into();
        new.integrations.push(c);
        let d = ConfigDiff::between(&old, &new);
        assert_eq!((d.added, d.removed), (vec!["c".into()], vec!["b".into()]));
        assert!(d.sender);
        assert!(!d.sources && !d.listeners && d.restart_only.is_empty());
    }

    #[test]
    fn a_changed_integration_is_named_and_restarts_nothing() {
        let old = config("");
        let mut new = config("");
        new.integrations[1].rate = "10/1m".parse().unwrap();
        let d = ConfigDiff::between(&old, &new);
        assert_eq!(d.changed, vec!["b".to_string()]);
        assert!(d.integrations() && d.sender && !d.sources);
    }

    #[test]
    fn limits_and_delivery_reach_the_sender_only() {
        let d = diff("", "[limits]\norg = \"100/5m\"\n");
        assert!(d.sender && !d.integrations());
        let d = diff("", "[delivery]\nretry_max = \"1m\"\n");
        assert!(d.sender && !d.integrations() && !d.sources);
    }

    #[test]
    fn sources_restart_when_a_source_or_the_spool_changes() {
        let spool = "[[source]]\ntype = \"spool\"\npath = \"/var/spool/a\"\n";
        let moved = "[[source]]\ntype = \"spool\"\npath = \"/var/spool/b\"\n";
        let d = ConfigDiff::between(&config_sources(spool), &config_sources(moved));
        assert!(d.sources && !d.sender);
        let d = ConfigDiff::between(&config_sources(""), &config_sources(spool));
        assert!(d.sources);
        // The spool follows a change of the integrations by itself.
        let old = config_sources(spool);
        let mut new = config_sources(spool);
        new.integrations.pop();
        assert!(!ConfigDiff::between(&old, &new).sources);
    }

    fn config_sources(sources: &str) -> Config {
        config(sources)
    }

    #[test]
    fn the_listeners_live_settings_apply_without_a_restart() {
        let d = diff(
            "[listen]\ntcp = \"127.0.0.1:7777\"\n",
            "[listen]\ntcp = \"127.0.0.1:7777\"\nauth_token = \"s3cret-s3cret-s3cret\"\nbody_timeout = \"2s\"\n",
        );
        assert!(d.listeners);
        assert!(d.restart_only.is_empty(), "{:?}", d.restart_only);
        assert!(diff("", "[queue]\nmax_body = \"64KiB\"\n").listeners);
    }

    #[test]
    fn restart_only_settings_are_named_for_the_warning() {
        let d = diff(
            "",
            "state_dir = \"/tmp/elsewhere\"\n[listen]\ntcp = \"127.0.0.1:7001\"\nmax_connections = 7\n[queue]\nbatch_max = 8\n",
        );
        let names: Vec<String> = d.restart_only.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            names,
            [
                "listen.tcp",
                "listen.max_connections",
                "state_dir",
                "queue.batch_max"
            ]
        );
        assert!(!d.sender && !d.sources && !d.listeners);
    }

    #[test]
    fn the_free_space_floor_is_applied_live() {
        let d = diff("", "[queue]\nmin_free_space = \"64MiB\"\n");
        assert_eq!(d.min_free_space, Some(64 << 20));
        assert!(d.restart_only.is_empty());
    }

    #[test]
    fn the_log_level_is_applied_live() {
        let d = diff("", "[log]\nlevel = \"debug\"\n");
        assert_eq!(d.log_level.as_deref(), Some("debug"));
        assert!(d.restart_only.is_empty());
    }
}
