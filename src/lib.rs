//! oncall-agent: a host daemon that makes sure no alert on its way to Grafana OnCall is lost
//! or throttled away.
//!
//! The path of one alert, and the module that owns each step:
//!
//! ```text
//!  tools ──HTTP (unix/tcp)── server ─────────┐
//!  scripts ── `send` CLI ─── (cli, local) ───┤
//!  files, spool, journal ─── sources ────────┴─> queue::Ingest ─> queue::writer ─> sled
//!                                                 (bounded)        (group commit,  (queue::store)
//!                                                                   one fsync)          │
//!  OnCall <── sender::client <── sender::dispatcher <── ratelimit::limiter ─────────────┘
//!             (HTTP only, no     (order per key, retry,  (N per window, counted
//!              redirects)         pause on 429, acks)     where OnCall counts)
//!                                        ├── ratelimit::learn (OnCall's real windows,
//!                                        │   learned from its 429s)
//!                                        └── fleet (with `[fleet]`: the budgets every
//!                                            host shares, in Redis)
//! ```
//!
//! - An alert is answered `202` only once it is in sled and the db file is fsynced.
//! - It leaves the queue only after OnCall answered 2xx (at-least-once); a 4xx other than
//!   408/429 makes it a dead letter, kept until an operator acts.
//! - Every request (alerts, retries, probes) spends the integration's and the org's budget,
//!   which persist across restarts.
//! - [`config`] turns TOML into validated types once; [`daemon`] starts the parts, applies a
//!   reload as one typed [`daemon::ConfigDiff`], and stops them in order under one deadline;
//!   [`cli`] is the command line; [`observe`] builds the status and the metrics from what the
//!   parts publish (nothing imports it back); [`redact`] keeps tokens out of everything printed.
//! - [`api`] is the OnCall HTTP API (not on an alert's path): `integrations`, `check-config
//!   --online`, and integrations configured by `id`/`api_name`, resolved before the sender
//!   starts and kept in sled for when the API is down.
//! - [`oncall`] builds the one HTTP client all of them use toward OnCall: it follows no
//!   redirect, since a followed 301 turns an alert's POST into a GET that OnCall answers 200.
//! - [`fleet`] (with `[fleet]`) shares the budgets with the agents on other hosts through
//!   Redis: the dispatcher asks its handle beside the local limiter, never waiting on the
//!   network; Redis away means this host's local share.
//!
//! The layers import downward only: `cli` → `daemon` → `server`, `sources` → `sender` →
//! `fleet` → `ratelimit`, `queue` → `config`, `clock`, `redact`; `observe` reads `queue`,
//! `sender`, `fleet` and `sources`. No two modules import each other.
//!
//! Conventions: `expect` on a mutex only fires if a thread panicked while holding it, and a
//! panic aborts the release build (`panic = "abort"`: systemd restarts a whole daemon rather
//! than leave a half-alive one), so lock poisoning is not handled further. Every other
//! `expect` says why it cannot fail.

pub mod alert;
pub mod api;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod fleet;
pub mod host;
pub mod local;
pub mod observe;
pub mod oncall;
pub mod queue;
pub mod ratelimit;
pub mod redact;
pub mod sender;
pub mod server;
pub mod sources;
