//! `send`: one alert from a script, to the daemon, or to the spool when the daemon is away.

use std::io::Read;

use super::AlertState;
use super::SendArgs;
use super::client::load_client;
use super::exit::{CliError, Exit};
use crate::config::Config;
use crate::local;

/// The formatted_webhook body `send` builds from its flags, or the JSON it was given.
pub fn alert_body(args: &SendArgs, max_body: usize) -> Result<Vec<u8>, CliError> {
    if let Some(src) = &args.json {
        let mut buf = Vec::new();
        let limit = max_body as u64 + 1;
        let read = if src.as_os_str() == "-" {
            std::io::stdin().take(limit).read_to_end(&mut buf)
        } else {
            std::fs::File::open(src).and_then(|f| f.take(limit).read_to_end(&mut buf))
        };
        read.map_err(|e| {
            CliError::new(Exit::DataErr, format!("cannot read {}: {e}", src.display()))
        })?;
        if buf.len() > max_body {
            return Err(CliError::new(
                Exit::DataErr,
                format!(
                    "{} is larger than queue.max_body ({max_body} bytes)",
                    src.display()
                ),
            ));
        }
        crate::alert::parse_alert(&buf).map_err(|e| {
            let e = e.describe("the body");
            CliError::new(Exit::DataErr, format!("{}: {e}", src.display()))
        })?;
        return Ok(buf);
    }
    let Some(title) = &args.title else {
        return Err(CliError::new(Exit::Usage, "give --title (or --json FILE)"));
    };
    let mut m = serde_json::Map::new();
    m.insert("title".into(), title.clone().into());
    let mut put = |k: &str, v: Option<&String>| {
        if let Some(v) = v {
            m.insert(k.into(), v.clone().into());
        }
    };
    let from_file = match &args.message_file {
        Some(src) => Some(read_message(src).map_err(|e| {
            CliError::new(Exit::DataErr, format!("cannot read {}: {e}", src.display()))
        })?),
        None => None,
    };
    put("message", args.message.as_ref().or(from_file.as_ref()));
    put("alert_uid", args.uid.as_ref());
    put("link_to_upstream_details", args.link.as_ref());
    put("image_url", args.image_url.as_ref());
    let state = match args.state {
        Some(AlertState::Ok) => "ok",
        _ => "alerting",
    };
    m.insert("state".into(), state.into());
    Ok(serde_json::to_vec(&m).expect("a JSON map serializes"))
}

/// Most of a `--message-file` text kept (its end: the last lines of a log matter most).
pub const MESSAGE_FILE_MAX: usize = 16 * 1024;

/// Reads `--message-file` (`-`: standard input) to its end, keeping its last
/// [`MESSAGE_FILE_MAX`] bytes, from a line start when there is one, marked as cut.
fn read_message(src: &std::path::Path) -> std::io::Result<String> {
    let mut input: Box<dyn Read> = if src.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(src)?)
    };
    let mut kept: Vec<u8> = Vec::new();
    let mut cut = false;
    let mut buf = [0u8; 8192];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 2 * MESSAGE_FILE_MAX {
            kept.drain(..kept.len() - MESSAGE_FILE_MAX);
            cut = true;
        }
    }
    if kept.len() > MESSAGE_FILE_MAX {
        kept.drain(..kept.len() - MESSAGE_FILE_MAX);
        cut = true;
    }
    if cut && let Some(nl) = kept.iter().position(|&b| b == b'\n') {
        kept.drain(..=nl);
    }
    let text = String::from_utf8_lossy(&kept);
    let text = text.trim_end();
    Ok(if cut {
        format!("[earlier lines cut]\n{text}")
    } else {
        text.to_string()
    })
}

/// `send`.
pub async fn send(config_path: &std::path::Path, args: SendArgs) -> Result<(), CliError> {
    let config = load_client(config_path)?;
    if !config.integration_names().contains(&args.integration) {
        return Err(CliError::new(
            Exit::Usage,
            format!(
                "no integration named {:?} in {}",
                args.integration,
                config_path.display()
            ),
        ));
    }
    let body = alert_body(&args, config.queue.max_body)?;
    let path = format!("/v1/integrations/{}/alerts", args.integration);
    let answer = match local::request(
        &config,
        hyper::Method::POST,
        &path,
        body.clone(),
        args.timeout,
    )
    .await
    {
        Ok(a) => a,
        // Not running, not answering, or gone mid-request: the spool keeps the alert (a
        // request that did get through is then delivered twice, never zero times).
        Err(e) => {
            return spool_or_fail(
                &config,
                &args.integration,
                &body,
                &e.to_string(),
                Exit::Unavailable,
            );
        }
    };
    let text = String::from_utf8_lossy(&answer.body);
    let reason = serde_json::from_slice::<serde_json::Value>(&answer.body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| text.trim().to_string());
    match answer.status {
        202 => Ok(()),
        503 => spool_or_fail(
            &config,
            &args.integration,
            &body,
            &format!("the agent cannot take the alert now ({reason})"),
            Exit::TempFail,
        ),
        404 | 400 | 413 => Err(CliError::new(
            Exit::DataErr,
            format!("the agent refused the alert: {reason}"),
        )),
        s => Err(CliError::new(
            Exit::Software,
            format!("the agent answered {s}: {reason}"),
        )),
    }
}

/// The daemon did not take the alert (`why`): leave it in the spool folder, where the daemon
/// picks it up, and succeed; or, with no spool configured, fail with `code`.
fn spool_or_fail(
    config: &Config,
    integration: &str,
    body: &[u8],
    why: &str,
    code: Exit,
) -> Result<(), CliError> {
    let Some(spool) = config.spool() else {
        return Err(CliError::new(
            code,
            format!(
                "{why}; the alert was NOT queued (no spool folder is configured in {}: add a [[source]] with type = \"spool\" so that send can leave alerts there)",
                config.path.display()
            ),
        ));
    };
    match crate::sources::spool::write_spool(&spool.path, integration, body) {
        Ok(p) => {
            eprintln!(
                "oncall-agent: {why}; the alert was written to {} and is sent once the agent reads it",
                p.display()
            );
            Ok(())
        }
        Err(e) => Err(CliError::new(
            code,
            format!(
                "{why}, and writing to the spool folder {} failed too ({e}); the alert was NOT queued",
                spool.path.display()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_file_keeps_the_end_of_a_long_text_from_a_line_start() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m");
        std::fs::write(&p, b"short\xff text\n").unwrap();
        assert_eq!(read_message(&p).unwrap(), "short\u{fffd} text");
        let long: String = (0..5000).map(|n| format!("line {n}\n")).collect();
        std::fs::write(&p, &long).unwrap();
        let m = read_message(&p).unwrap();
        assert!(m.len() <= MESSAGE_FILE_MAX + 32, "{}", m.len());
        assert!(m.starts_with("[earlier lines cut]\nline "), "{}", &m[..40]);
        assert!(m.ends_with("line 4999"));
    }
}
