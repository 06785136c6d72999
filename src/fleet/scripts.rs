//! The Lua scripts that keep the fleet's shared budgets in Redis, their keys, and the typed calls
//! around them. Every reply is checked against the shape and the bounds of the call that asked
//! for it before anything uses it.

use std::sync::LazyLock;

use aws_lc_rs::hmac;
use redis::aio::ConnectionLike;
use redis::{Script, Value};

/// One dispatcher turn: answers, releases and records, then grants (see turn.lua).
static TURN: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("turn.lua")));
/// The hosts seen in the last window (see hosts.lua).
static HOSTS: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("hosts.lua")));

/// At most this many grants, ops and groups in one call: a bound on what one round trip
/// carries and on what a reply may hold.
pub const MAX_PER_CALL: usize = 1024;

/// A budget's name in Redis. Integrations are known by a keyed hash of their inbound URL: the
/// token in it never reaches Redis. The key is derived
/// from the organization's name, so every host of one fleet computes the same names and a
/// table of hashes made for one organization is worth nothing for another.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScopeKey(String);

impl ScopeKey {
    /// The organization's own budget.
    pub fn org() -> ScopeKey {
        ScopeKey("org".into())
    }

    /// An integration, by its inbound URL (holding its token).
    pub fn integration(org: &str, url: &str) -> ScopeKey {
        ScopeKey(format!("i.{}", keyed_hash(org, "integration", url)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// HMAC-SHA256 of `value` under a key derived from the organization's name, 128 bits in hex.
fn keyed_hash(org: &str, what: &str, value: &str) -> String {
    let base = hmac::Key::new(hmac::HMAC_SHA256, b"oncall-agent fleet scope key v1");
    let derived = hmac::sign(&base, format!("{org}\n{what}").as_bytes());
    let key = hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref());
    let tag = hmac::sign(&key, value.as_bytes());
    tag.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where one organization's fleet state lives. Every key carries the org in a hash tag, so a
/// Redis Cluster keeps them in one slot (a script may touch only one slot).
#[derive(Debug, Clone)]
pub struct Keys {
    org: String,
}

impl Keys {
    pub fn new(org: &str) -> Keys {
        Keys {
            org: org.to_string(),
        }
    }
    pub fn hosts(&self) -> String {
        format!("oa:{{{}}}:hosts", self.org)
    }
    pub fn log(&self, scope: &ScopeKey) -> String {
        format!("oa:{{{}}}:log:{}", self.org, scope.as_str())
    }
    pub fn waiting(&self, scope: &ScopeKey) -> String {
        format!("oa:{{{}}}:want:{}", self.org, scope.as_str())
    }
}

/// One budget in a call.
#[derive(Debug, Clone)]
pub struct ScopeArg {
    pub key: ScopeKey,
    pub limit: u32,
    pub window_ms: u64,
}

/// What to do with a slot already in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// Answered: counted until `now + ms` (0 once answered; the timeout when no answer came).
    Settle,
    /// Never reached OnCall: counts nowhere.
    Release,
    /// Sent while Redis was away: counted until `now + ms` (negative: already in the past).
    Record,
}

/// A change to one slot, in the scopes (indices into [`TurnCall::scopes`]) it spent.
#[derive(Debug, Clone)]
pub struct Op {
    pub kind: OpKind,
    pub member: String,
    pub ms: i64,
    pub scopes: Vec<usize>,
}

/// Requests of one kind (one integration: its scope and the org's) that want slots.
#[derive(Debug, Clone)]
pub struct Group {
    /// Slots asked for now.
    pub want: u32,
    /// Requests waiting on this host (the backlog that makes it a waiting host).
    pub demand: u32,
    pub scopes: Vec<usize>,
}

/// One call of turn.lua.
#[derive(Debug, Clone)]
pub struct TurnCall {
    pub host: String,
    /// `<host>:<nonce>`: slot members are `<prefix>:<id>`.
    pub prefix: String,
    /// The id of the first slot granted.
    pub first_id: u64,
    /// How long an unsettled grant counts: the longest it may be held unused plus the request
    /// timeout.
    pub bound_ms: u64,
    /// How long this host's demand counts as waiting without a new report.
    pub want_ttl_ms: u64,
    /// When only fair share holds a group back: ask again after this long.
    pub fair_poll_ms: u64,
    pub scopes: Vec<ScopeArg>,
    pub ops: Vec<Op>,
    pub groups: Vec<Group>,
}

/// A budget's use as the call left it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScopeUse {
    /// Requests of the whole fleet that may still count in the window.
    pub live: u32,
    /// Hosts waiting on it, this one included while it has demand.
    pub waiting: u32,
    /// This host's part of `live`.
    pub mine: u32,
}

/// What turn.lua answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnReply {
    /// Redis's clock when the call ran (ms).
    pub now: u64,
    /// For slot ids `first_id, first_id + 1, ...`: the group each was granted to.
    pub grants: Vec<usize>,
    /// Per group: ms until it may be granted more (0: it got all it wanted).
    pub waits: Vec<u64>,
    pub scopes: Vec<ScopeUse>,
}

/// A reply that does not fit the call that asked for it.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the fleet script answered something unexpected: {0}")]
    Shape(&'static str),
    #[error("the call is too large: {0}")]
    TooLarge(&'static str),
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
}

impl TurnCall {
    fn check(&self) -> Result<(), FleetError> {
        if self.scopes.len() > MAX_PER_CALL
            || self.ops.len() > MAX_PER_CALL
            || self.groups.len() > MAX_PER_CALL
        {
            return Err(FleetError::TooLarge("scopes, ops or groups"));
        }
        let wanted: u64 = self.groups.iter().map(|g| u64::from(g.want)).sum();
        if wanted > MAX_PER_CALL as u64 {
            return Err(FleetError::TooLarge("slots wanted"));
        }
        let n = self.scopes.len();
        let in_range = |s: &Vec<usize>| s.iter().all(|&j| j < n);
        if !self.ops.iter().all(|o| in_range(&o.scopes))
            || !self.groups.iter().all(|g| in_range(&g.scopes))
        {
            return Err(FleetError::TooLarge("a scope index out of range"));
        }
        Ok(())
    }

    /// Runs the call: one round trip (two when Redis has lost the script, NOSCRIPT: redis-rs
    /// then loads it and runs it again).
    pub async fn run<C: ConnectionLike>(
        &self,
        con: &mut C,
        keys: &Keys,
    ) -> Result<TurnReply, FleetError> {
        self.check()?;
        let mut inv = TURN.prepare_invoke();
        inv.key(keys.hosts());
        for s in &self.scopes {
            inv.key(keys.log(&s.key)).key(keys.waiting(&s.key));
        }
        inv.arg(&self.host)
            .arg(&self.prefix)
            .arg(self.first_id)
            .arg(self.bound_ms)
            .arg(self.want_ttl_ms)
            .arg(self.fair_poll_ms)
            .arg(self.scopes.len());
        for s in &self.scopes {
            inv.arg(s.limit).arg(s.window_ms);
        }
        inv.arg(self.ops.len());
        for o in &self.ops {
            let kind = match o.kind {
                OpKind::Settle => "S",
                OpKind::Release => "R",
                OpKind::Record => "C",
            };
            inv.arg(kind).arg(&o.member).arg(o.ms).arg(o.scopes.len());
            for &j in &o.scopes {
                inv.arg(j + 1);
            }
        }
        inv.arg(self.groups.len());
        for g in &self.groups {
            inv.arg(g.want).arg(g.demand).arg(g.scopes.len());
            for &j in &g.scopes {
                inv.arg(j + 1);
            }
        }
        let v: Value = inv.invoke_async(con).await?;
        self.decode(v)
    }

    /// Checks a reply against this call: as many groups and scopes as asked, grants only to
    /// groups that wanted them and never more than they wanted, counts within the limits'
    /// reach.
    pub fn decode(&self, v: Value) -> Result<TurnReply, FleetError> {
        let parts = array(v, "the reply is not an array")?;
        let [now, grants, waits, uses]: [Value; 4] = parts
            .try_into()
            .map_err(|_| FleetError::Shape("the reply does not have 4 parts"))?;
        let now = uint(&now, "the time")?;
        let mut left: Vec<u64> = self.groups.iter().map(|g| u64::from(g.want)).collect();
        let mut granted = Vec::new();
        for g in array(grants, "grants not an array")? {
            let g = uint(&g, "a grant")?;
            let idx = usize::try_from(g)
                .ok()
                .and_then(|g| g.checked_sub(1))
                .filter(|&g| g < left.len())
                .ok_or(FleetError::Shape("a grant to a group not in the call"))?;
            if left[idx] == 0 {
                return Err(FleetError::Shape("more grants than wanted"));
            }
            left[idx] -= 1;
            granted.push(idx);
        }
        let waits = array(waits, "waits not an array")?
            .iter()
            .map(|w| uint(w, "a wait"))
            .collect::<Result<Vec<u64>, _>>()?;
        if waits.len() != self.groups.len() {
            return Err(FleetError::Shape("not one wait per group"));
        }
        let uses = array(uses, "uses not an array")?
            .iter()
            .map(|u| {
                uint(u, "a use").and_then(|u| {
                    u32::try_from(u).map_err(|_| FleetError::Shape("a use above u32"))
                })
            })
            .collect::<Result<Vec<u32>, _>>()?;
        if uses.len() != 3 * self.scopes.len() {
            return Err(FleetError::Shape("not three uses per scope"));
        }
        let scopes = uses
            .chunks(3)
            .map(|c| ScopeUse {
                live: c[0],
                waiting: c[1],
                mine: c[2],
            })
            .collect();
        Ok(TurnReply {
            now,
            grants: granted,
            waits,
            scopes,
        })
    }
}

/// One host in [`hosts`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostSeen {
    pub host: String,
    /// Milliseconds since it last called Redis.
    pub seen_ms_ago: u64,
    /// Its requests counted in the organization's log over the last window.
    pub requests: u64,
}

/// At most this many hosts are listed (a fleet larger than this is listed in part).
pub const MAX_HOSTS: usize = 10_000;

/// The hosts seen in the last `window_ms` with their requests in the org's budget.
pub async fn hosts<C: ConnectionLike>(
    con: &mut C,
    keys: &Keys,
    window_ms: u64,
) -> Result<Vec<HostSeen>, FleetError> {
    let v: Value = HOSTS
        .key(keys.hosts())
        .key(keys.log(&ScopeKey::org()))
        .arg(window_ms)
        .invoke_async(con)
        .await?;
    decode_hosts(v)
}

/// Checks hosts.lua's reply.
pub fn decode_hosts(v: Value) -> Result<Vec<HostSeen>, FleetError> {
    let parts = array(v, "the reply is not an array")?;
    let [_, list]: [Value; 2] = parts
        .try_into()
        .map_err(|_| FleetError::Shape("the reply does not have 2 parts"))?;
    let list = array(list, "hosts not an array")?;
    let mut out = Vec::with_capacity(list.len().min(MAX_HOSTS));
    for h in list.into_iter().take(MAX_HOSTS) {
        let [name, ago, requests]: [Value; 3] = array(h, "a host not an array")?
            .try_into()
            .map_err(|_| FleetError::Shape("a host without 3 fields"))?;
        let host = match name {
            Value::BulkString(b) if b.len() <= 64 => {
                String::from_utf8(b).map_err(|_| FleetError::Shape("a host name not UTF-8"))?
            }
            _ => return Err(FleetError::Shape("a host name not a short string")),
        };
        out.push(HostSeen {
            host,
            seen_ms_ago: uint(&ago, "ms since seen")?,
            requests: uint(&requests, "requests")?,
        });
    }
    out.sort_by(|a, b| a.host.cmp(&b.host));
    Ok(out)
}

fn array(v: Value, what: &'static str) -> Result<Vec<Value>, FleetError> {
    match v {
        Value::Array(a) if a.len() <= 4 * MAX_PER_CALL.max(MAX_HOSTS) => Ok(a),
        _ => Err(FleetError::Shape(what)),
    }
}

/// A non-negative integer below 2^53 (a time in ms, a count).
fn uint(v: &Value, what: &'static str) -> Result<u64, FleetError> {
    match v {
        Value::Int(i) if (0..(1i64 << 53)).contains(i) => Ok(*i as u64),
        _ => Err(FleetError::Shape(what)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn call(groups: &[u32], scopes: usize) -> TurnCall {
        TurnCall {
            host: "h".into(),
            prefix: "h:1".into(),
            first_id: 1,
            bound_ms: 1000,
            want_ttl_ms: 1000,
            fair_poll_ms: 100,
            scopes: (0..scopes)
                .map(|j| ScopeArg {
                    key: ScopeKey(format!("s{j}")),
                    limit: 10,
                    window_ms: 1000,
                })
                .collect(),
            ops: vec![],
            groups: groups
                .iter()
                .map(|&w| Group {
                    want: w,
                    demand: w,
                    scopes: (0..scopes).collect(),
                })
                .collect(),
        }
    }

    fn ints(v: &[i64]) -> Value {
        Value::Array(v.iter().map(|&i| Value::Int(i)).collect())
    }

    #[test]
    fn a_well_formed_reply_decodes() {
        let c = call(&[2, 1], 2);
        let v = Value::Array(vec![
            Value::Int(1_700_000_000_000),
            ints(&[1, 2, 1]),
            ints(&[0, 0]),
            ints(&[3, 1, 3, 5, 2, 3]),
        ]);
        let r = c.decode(v).unwrap();
        assert_eq!(r.grants, vec![0, 1, 0]);
        assert_eq!(
            r.scopes[1],
            ScopeUse {
                live: 5,
                waiting: 2,
                mine: 3
            }
        );
    }

    #[test]
    fn more_grants_than_wanted_are_refused() {
        let c = call(&[1], 1);
        let v = Value::Array(vec![
            Value::Int(1),
            ints(&[1, 1]),
            ints(&[0]),
            ints(&[1, 1, 1]),
        ]);
        assert!(c.decode(v).is_err());
    }

    #[test]
    fn scope_keys_never_hold_the_token() {
        let url = "https://oncall.example/integrations/v1/formatted_webhook/S3cr3tT0k3n/";
        let k = ScopeKey::integration("acme", url);
        assert!(!k.as_str().contains("S3cr3t"));
        assert_eq!(k, ScopeKey::integration("acme", url), "stable across hosts");
        assert_ne!(k, ScopeKey::integration("other", url), "keyed by the org");
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(Value::Int),
            (0i64..20).prop_map(Value::Int),
            proptest::collection::vec(any::<u8>(), 0..80).prop_map(Value::BulkString),
            Just(Value::Nil),
        ];
        leaf.prop_recursive(3, 40, 6, |inner| {
            proptest::collection::vec(inner, 0..6).prop_map(Value::Array)
        })
    }

    proptest! {
        /// Whatever comes back from the network, decoding never panics, and what it accepts
        /// never grants more than was asked nor to a group that was not in the call.
        #[test]
        fn any_reply_is_bounded_or_refused(v in arb_value(), wants in proptest::collection::vec(0u32..4, 0..4)) {
            let c = call(&wants, 2);
            if let Ok(r) = c.decode(v.clone()) {
                for (g, &w) in wants.iter().enumerate() {
                    prop_assert!(r.grants.iter().filter(|&&x| x == g).count() as u32 <= w);
                }
                prop_assert_eq!(r.waits.len(), wants.len());
                prop_assert_eq!(r.scopes.len(), 2);
            }
            let _ = decode_hosts(v);
        }
    }
}
