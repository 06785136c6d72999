//! Secrets and their redaction: integration URLs carry tokens, so they never reach a log line,
//! an error, the status output or a metric label in the clear.

use std::fmt;

/// A value that must not be printed. `Debug` and `Display` show `***`; `expose` is the only way
/// to the inside, so every use of the secret is easy to find.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(v: T) -> Self {
        Secret(v)
    }
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// An OnCall URL fit to print: scheme, host and port, and for an inbound integration URL the
/// path up to its kind with the token replaced: `https://host/integrations/v1/webhook/***/`,
/// with whatever path comes before (`/oncall` on Grafana Cloud IRM, a reverse proxy's
/// sub-path when self-hosted). Anything else shows only `scheme://host/***`: user info, other
/// paths and queries may hold secrets too.
pub fn redact_url(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("?");
    let origin = match url.port() {
        Some(p) => format!("{}://{host}:{p}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    };
    let segs: Vec<&str> = url.path_segments().map(|s| s.collect()).unwrap_or_default();
    if let Some(i) = segs.windows(2).position(|w| w == ["integrations", "v1"])
        && segs.len() > i + 2
    {
        // The segment after `v1` is shown only when it looks like a kind and a token follows
        // it: in `.../integrations/v1/<token>/` (the kind left out by mistake) it is the token.
        let kind = segs[i + 2];
        let token_follows = segs.get(i + 3).is_some_and(|t| !t.is_empty());
        let upto = if token_follows && looks_like_kind(kind) {
            i + 3
        } else {
            i + 2
        };
        let prefix = segs[..upto].join("/");
        return format!("{origin}/{prefix}/***/");
    }
    format!("{origin}/***")
}

/// OnCall's integration kinds are short lower-case words with underscores
/// (`formatted_webhook`, `legacy_alertmanager`); its tokens are mixed-case letters and digits.
fn looks_like_kind(segment: &str) -> bool {
    (1..=40).contains(&segment.len())
        && segment.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

/// A reqwest error in words, without its URL: reqwest puts the URL (and so an integration's
/// token) in its errors' `Display`. The causes are kept, since they say what went wrong.
pub fn reqwest_error(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut detail = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        src = s.source();
    }
    detail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_url_keeps_kind_hides_token() {
        let u = reqwest::Url::parse(
            "https://oncall.example.com/oncall/integrations/v1/alertmanager/TOK123/",
        )
        .unwrap();
        let r = redact_url(&u);
        assert_eq!(
            r,
            "https://oncall.example.com/oncall/integrations/v1/alertmanager/***/"
        );
    }

    #[test]
    fn cloud_and_sub_path_urls_keep_their_prefix_and_hide_the_token() {
        let cases = [
            (
                "https://oncall-prod-us-central-0.grafana.net/oncall/integrations/v1/formatted_webhook/mReAoNwDm0eMwKo1mTeTwYo/",
                "https://oncall-prod-us-central-0.grafana.net/oncall/integrations/v1/formatted_webhook/***/",
            ),
            (
                "https://ops.example.com:8443/tools/grafana-oncall/integrations/v1/alertmanager/TOK123/",
                "https://ops.example.com:8443/tools/grafana-oncall/integrations/v1/alertmanager/***/",
            ),
            // The heartbeat URL below an inbound URL.
            (
                "https://oncall-prod-eu-west-0.grafana.net/oncall/integrations/v1/webhook/TOK123/heartbeat/",
                "https://oncall-prod-eu-west-0.grafana.net/oncall/integrations/v1/webhook/***/",
            ),
            // The API under the cloud prefix: nothing of its path or query is shown.
            (
                "https://oncall-prod-us-central-0.grafana.net/oncall/api/v1/integrations/?page=2",
                "https://oncall-prod-us-central-0.grafana.net/***",
            ),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(&reqwest::Url::parse(url).unwrap()), shown);
        }
    }

    /// `.../integrations/v1/<token>/`: a URL with its kind left out printed the token in the
    /// place of the kind.
    #[test]
    fn a_url_without_its_kind_does_not_show_the_token_as_the_kind() {
        for url in [
            "https://h/oncall/integrations/v1/mReAoNwDm0eMwKo1mTeTwYo/",
            "https://h/oncall/integrations/v1/mReAoNwDm0eMwKo1mTeTwYo",
            "https://h/integrations/v1/secrettoken/",
        ] {
            let r = redact_url(&reqwest::Url::parse(url).unwrap());
            assert!(r.ends_with("/integrations/v1/***/"), "{url} -> {r}");
            assert!(!r.to_lowercase().contains("token"), "{url} -> {r}");
        }
    }

    proptest::proptest! {
        /// Whatever the prefix, kind and path below it, the token never shows.
        #[test]
        fn the_token_never_shows_under_any_prefix(
            prefix in proptest::sample::select(vec!["", "/oncall", "/a/b-c/oncall", "/integrations"]),
            kind in "[a-z_]{1,20}",
            // OnCall's tokens are random mixed-case: at least one capital or digit.
            token in "[A-Za-z0-9]{7,31}[A-Z0-9]",
            tail in proptest::sample::select(vec!["/", "", "/heartbeat/", "/x?y=1"]),
            with_kind in proptest::bool::ANY,
        ) {
            let path = if with_kind { format!("{kind}/{token}") } else { token.clone() };
            let url = format!("https://h.example{prefix}/integrations/v1/{path}{tail}");
            let r = redact_url(&reqwest::Url::parse(&url).unwrap());
            proptest::prop_assert!(!r.contains(&token), "{} -> {}", url, r);
        }
    }

    #[test]
    fn other_urls_hide_path_query_and_userinfo() {
        let u = reqwest::Url::parse("http://user:pw@h:8080/x/TOKEN?k=SECRET").unwrap();
        let r = redact_url(&u);
        assert_eq!(r, "http://h:8080/***");
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("TOKEN".to_string());
        assert_eq!(format!("{s} {s:?}"), "*** ***");
    }
}
