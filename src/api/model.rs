//! The API's JSON, parsed defensively: every answer is network input. Bodies are bounded before
//! they get here ([`MAX_PAGE_BYTES`]); parsing never panics (a proptest feeds it random bytes),
//! and a parse error never quotes the input, which may hold an inbound URL and so a token.

use serde::Deserialize;

use crate::redact::Secret;

/// The most of one API answer read. A page of 100 integrations, templates included, is well
/// under 1 MiB.
pub const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// One integration as the API describes it.
#[derive(Debug, Clone)]
pub struct ApiIntegration {
    /// Public id (`CFRPV98RPR1U8`), what `id =` in the config refers to.
    pub id: String,
    /// Name in OnCall, what `api_name =` refers to.
    pub name: String,
    /// OnCall's type (`formatted_webhook`, `alertmanager`, ...).
    pub kind: String,
    /// Inbound URL (holds the token). None for types without one, or a link that is not a URL.
    pub link: Option<Secret<reqwest::Url>>,
    /// Whether a heartbeat is set up (OnCall then gives its URL).
    pub heartbeat: bool,
}

/// One page of a paginated listing.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub results: Vec<T>,
    /// The next page's URL, or None on the last page.
    pub next: Option<String>,
    /// Total across all pages, if the server said.
    pub count: Option<u64>,
}

/// An answer that is not the JSON OnCall sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not the JSON the OnCall API sends ({0})")]
pub struct ParseError(String);

impl ParseError {
    /// serde_json's message quotes offending values (a link, a token): keep only where it broke.
    fn from_json(e: &serde_json::Error) -> ParseError {
        let what = match e.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "malformed JSON",
            serde_json::error::Category::Data => "unexpected fields or types",
            serde_json::error::Category::Eof => "the answer ends early",
        };
        ParseError(format!("{what} at line {} column {}", e.line(), e.column()))
    }
}

#[derive(Deserialize)]
struct RawPage {
    #[serde(default)]
    next: Option<String>,
    #[serde(default)]
    count: Option<u64>,
    results: Vec<RawIntegration>,
}

#[derive(Deserialize)]
struct RawIntegration {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    link: Option<String>,
    #[serde(default)]
    heartbeat: Option<RawHeartbeat>,
}

#[derive(Deserialize)]
struct RawHeartbeat {
    #[serde(default)]
    link: Option<String>,
}

impl From<RawIntegration> for ApiIntegration {
    fn from(r: RawIntegration) -> ApiIntegration {
        let link = r
            .link
            .and_then(|l| reqwest::Url::parse(&l).ok())
            .filter(|u| u.scheme() == "https" || u.scheme() == "http")
            .map(Secret::new);
        ApiIntegration {
            id: r.id,
            name: r.name.unwrap_or_default(),
            kind: r.kind.unwrap_or_default(),
            link,
            heartbeat: r.heartbeat.is_some_and(|h| h.link.is_some()),
        }
    }
}

/// `GET /api/v1/integrations/`: `{"count", "next", "previous", "results": [...]}`.
pub fn parse_integrations_page(body: &[u8]) -> Result<Page<ApiIntegration>, ParseError> {
    let raw: RawPage = serde_json::from_slice(body).map_err(|e| ParseError::from_json(&e))?;
    Ok(Page {
        results: raw.results.into_iter().map(ApiIntegration::from).collect(),
        next: raw.next.filter(|n| !n.is_empty()),
        count: raw.count,
    })
}

/// `GET /api/v1/integrations/<id>/`: one integration.
pub fn parse_integration(body: &[u8]) -> Result<ApiIntegration, ParseError> {
    let raw: RawIntegration =
        serde_json::from_slice(body).map_err(|e| ParseError::from_json(&e))?;
    Ok(raw.into())
}

/// `{"detail": "..."}`, the API's error body, cut to a length fit for a message.
pub fn error_detail(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Detail {
        detail: String,
    }
    let d: Detail = serde_json::from_slice(body).ok()?;
    Some(printable(&d.detail, 200))
}

/// Text from the network made fit for a terminal or a log line: control characters (escape
/// sequences) replaced, at most `max` characters.
pub fn printable(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PAGE: &str = r#"{"count":2,"next":"https://h/oncall/api/v1/integrations/?page=2","previous":null,
        "page_size":1,"current_page_number":1,"total_pages":2,
        "results":[{"id":"CFRPV98RPR1U8","name":"db prod","type":"formatted_webhook",
        "link":"https://h/oncall/integrations/v1/formatted_webhook/SECRETTOKEN/",
        "heartbeat":{"link":"https://h/oncall/integrations/v1/formatted_webhook/SECRETTOKEN/heartbeat/"},
        "templates":{"web":{"title":null}},"maintenance_mode":null}]}"#;

    #[test]
    fn a_page_as_oncall_sends_it() {
        let p = parse_integrations_page(PAGE.as_bytes()).unwrap();
        assert_eq!(p.count, Some(2));
        assert_eq!(
            p.next.as_deref(),
            Some("https://h/oncall/api/v1/integrations/?page=2")
        );
        let i = &p.results[0];
        assert_eq!(
            (i.id.as_str(), i.name.as_str(), i.kind.as_str()),
            ("CFRPV98RPR1U8", "db prod", "formatted_webhook")
        );
        assert!(i.heartbeat);
        assert!(
            i.link
                .as_ref()
                .unwrap()
                .expose()
                .path()
                .contains("SECRETTOKEN")
        );
        // The Debug of a parsed integration never shows the link.
        assert!(!format!("{i:?}").contains("SECRETTOKEN"));
    }

    #[test]
    fn missing_heartbeat_and_link_are_not_errors() {
        let p = parse_integrations_page(
            br#"{"next":null,"results":[{"id":"A1","name":"m","type":"manual","link":null,"heartbeat":null}]}"#,
        )
        .unwrap();
        assert!(p.next.is_none());
        assert!(!p.results[0].heartbeat);
        assert!(p.results[0].link.is_none());
    }

    #[test]
    fn parse_errors_never_quote_the_input() {
        // A link where an object belongs: serde_json would quote it in its message.
        let body = br#"{"next":null,"results":[{"id":"A","heartbeat":"https://h/integrations/v1/webhook/SECRETTOKEN/"}]}"#;
        let e = parse_integrations_page(body).unwrap_err().to_string();
        assert!(!e.contains("SECRETTOKEN"), "{e}");
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn error_detail_is_read_and_made_printable() {
        assert_eq!(
            error_detail(br#"{"detail":"Invalid token."}"#).as_deref(),
            Some("Invalid token.")
        );
        assert_eq!(
            error_detail(b"{\"detail\":\"a\\u001b[31mb\"}").as_deref(),
            Some("a?[31mb")
        );
        assert_eq!(error_detail(b"<html>"), None);
    }

    proptest! {
        /// Random bytes never panic the parsers.
        #[test]
        fn random_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_integrations_page(&body);
            let _ = parse_integration(&body);
            let _ = error_detail(&body);
        }

        /// Valid JSON of random shape, and mutations of a real page, never panic either.
        #[test]
        fn mutated_pages_never_panic(cut in 0usize..PAGE.len(), byte in any::<u8>(), at in 0usize..PAGE.len()) {
            let mut b = PAGE.as_bytes().to_vec();
            b[at] = byte;
            let _ = parse_integrations_page(&b);
            let _ = parse_integrations_page(&PAGE.as_bytes()[..cut]);
        }

        #[test]
        fn json_values_never_panic(v in json_value()) {
            let body = serde_json::to_vec(&serde_json::json!({"next": null, "results": [v.clone()]})).unwrap();
            let _ = parse_integrations_page(&body);
            let _ = parse_integration(&serde_json::to_vec(&v).unwrap());
        }
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "[a-z:/.]{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("id".to_string()),
                        Just("name".to_string()),
                        Just("type".to_string()),
                        Just("link".to_string()),
                        Just("heartbeat".to_string()),
                        "[a-z]{1,6}"
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
