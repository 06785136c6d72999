//! Exit codes: sysexits.h, so that Nagios, cron and systemd can tell a bad config from a
//! stopped daemon, and a refused alert from a moment to try again.

/// How a command ended, other than well (0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// 64: the command line is wrong.
    Usage = 64,
    /// 65: the alert or request was refused as it is.
    DataErr = 65,
    /// 69: the daemon (or the OnCall API) cannot be reached.
    Unavailable = 69,
    /// 70: a fault of the agent itself.
    Software = 70,
    /// 75: try again later (the daemon is busy, the disk nearly full).
    TempFail = 75,
    /// 76: the OnCall API answered something unusable.
    Protocol = 76,
    /// 77: OnCall refused the credential.
    NoPerm = 77,
    /// 78: the config is wrong.
    Config = 78,
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e as u8)
    }
}

/// A failed command: how it exits and the message for stderr.
#[derive(Debug)]
pub struct CliError {
    pub code: Exit,
    pub message: String,
}

impl CliError {
    pub fn new(code: Exit, message: impl Into<String>) -> CliError {
        CliError {
            code,
            message: message.into(),
        }
    }
}
