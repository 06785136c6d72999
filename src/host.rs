//! This machine's name, as the agent's own alerts and the fleet name it.

/// The host's name, from gethostname(2): /proc/sys is hidden under the unit's ProcSubset=pid.
pub fn name() -> Option<String> {
    let mut buf = [0u8; 256];
    // The buffer outlives the call and its length is passed; the name is NUL-terminated when
    // it fits, and a name that does not fit is cut at the first NUL or the end.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    (!name.is_empty()).then_some(name)
}
