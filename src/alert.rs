//! One alert as the agent takes it, from any source: one JSON object, forwarded verbatim,
//! grouped (for per-key order) by its `alert_uid`, else Alertmanager's `groupKey`, else its
//! whole body.

use serde::Deserialize;

use crate::queue::envelope::key_hash;

/// The fields that group alerts; everything else is skipped (but still checked as JSON).
#[derive(Deserialize)]
struct GroupingFields {
    #[serde(default)]
    alert_uid: Option<serde_json::Value>,
    #[serde(default, rename = "groupKey")]
    group_key: Option<serde_json::Value>,
}

/// Why bytes are not an alert.
#[derive(Debug)]
pub enum AlertError {
    NotAnObject,
    /// serde_json's words, with line and column.
    NotJson(serde_json::Error),
}

impl AlertError {
    /// In words, naming what was read: "the body", "the line", "the file".
    pub fn describe(&self, what: &str) -> String {
        match self {
            AlertError::NotAnObject => format!("{what} must be one JSON object ({{...}})"),
            AlertError::NotJson(e) => format!("{what} is not valid JSON: {e}"),
        }
    }
}

/// Checks that `body` is one JSON object and returns its grouping key hash.
pub fn parse_alert(body: &[u8]) -> Result<u64, AlertError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(AlertError::NotAnObject);
    }
    let g: GroupingFields = serde_json::from_slice(body).map_err(AlertError::NotJson)?;
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone().into_bytes()),
        serde_json::Value::Null => None,
        other => Some(other.to_string().into_bytes()),
    };
    let uid = g
        .alert_uid
        .as_ref()
        .and_then(text)
        .or_else(|| g.group_key.as_ref().and_then(text));
    Ok(key_hash(uid.as_deref(), body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn grouping_key_prefers_alert_uid_then_group_key() {
        let a = parse_alert(br#"{"alert_uid":"x","title":"1"}"#).unwrap();
        let b = parse_alert(br#"{"alert_uid":"x","title":"2"}"#).unwrap();
        assert_eq!(a, b);
        let c = parse_alert(br#"{"groupKey":"x","status":"firing"}"#).unwrap();
        assert_eq!(a, c);
        let d = parse_alert(br#"{"title":"1"}"#).unwrap();
        let e = parse_alert(br#"{"title":"2"}"#).unwrap();
        assert_ne!(d, e);
    }

    #[test]
    fn non_objects_are_refused_with_a_reason() {
        assert!(
            parse_alert(b"[1,2]")
                .unwrap_err()
                .describe("the body")
                .contains("JSON object")
        );
        assert!(
            parse_alert(b"")
                .unwrap_err()
                .describe("the body")
                .contains("JSON object")
        );
        assert!(
            parse_alert(b"{\"a\":")
                .unwrap_err()
                .describe("the body")
                .contains("not valid JSON")
        );
        // Skipped fields are checked without recursion: even the deepest nesting that fits in
        // max_body neither overflows the stack nor is refused (it is valid JSON).
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(500_000), "]".repeat(500_000));
        assert!(parse_alert(deep.as_bytes()).is_ok());
        let deep_uid = format!(
            "{{\"alert_uid\":{}{}}}",
            "[".repeat(500_000),
            "]".repeat(500_000)
        );
        assert!(
            parse_alert(deep_uid.as_bytes())
                .unwrap_err()
                .describe("the body")
                .contains("recursion")
        );
    }

    proptest! {
        #[test]
        fn parse_alert_never_panics(bytes: Vec<u8>) {
            let _ = parse_alert(&bytes);
        }

        #[test]
        fn any_json_object_is_accepted(m in proptest::collection::btree_map("[a-z_]{1,8}", any::<i64>(), 0..8)) {
            let body = serde_json::to_vec(&m).unwrap();
            prop_assert!(parse_alert(&body).is_ok());
        }
    }
}
