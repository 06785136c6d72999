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
/// path up to its kind with the token replaced: `https://host/integrations/v1/webhook/***/`.
/// Anything else shows only `scheme://host/***`: user info, other paths and queries may hold
/// secrets too.
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
        let prefix = segs[..i + 3].join("/");
        return format!("{origin}/{prefix}/***/");
    }
    format!("{origin}/***")
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
