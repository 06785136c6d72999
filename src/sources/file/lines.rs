//! Line framing: reading a followed file from its committed position into a [`Chunk`] of
//! complete lines (long lines skipped, a finished file's unfinished last line recorded), and
//! moving the position once the chunk is committed.

use std::time::Instant;

use super::format::to_alert;
use super::track::fingerprint;
use super::{Chunk, FP_MAX, Pos, TailError, Tailer, io_err, read_full};
use crate::sources::commit::{DEAD_PREFIX, Refused, lossy_prefix};

impl Tailer {
    /// The next thing to commit: lines read from one file, a reset after truncation, or a
    /// finished file to forget. None when every file is read up to its last complete line.
    /// Retired files go first (an old file's end before its successor's start); the others
    /// take turns.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>, TailError> {
        let n = self.files.len();
        let mut order: Vec<usize> = (0..n)
            .filter(|&i| self.files[i].retired.is_some())
            .collect();
        let active: Vec<usize> = (0..n)
            .filter(|&i| self.files[i].retired.is_none())
            .collect();
        if !active.is_empty() {
            let start = self.cursor % active.len();
            order.extend(active[start..].iter().chain(&active[..start]));
        }
        for i in order {
            if let Some(c) = self.read_file(i)? {
                if self.files[i].retired.is_none() {
                    self.cursor = self.cursor.wrapping_add(1);
                }
                return Ok(Some(c));
            }
        }
        Ok(None)
    }

    fn empty_chunk(&self, i: usize, pos: Pos) -> Chunk {
        let t = &self.files[i];
        Chunk {
            id: t.id,
            alerts: Vec::new(),
            refused: Vec::new(),
            meta: vec![self.saved_entry(t.id, &t.path, pos)],
            pos,
            forget: false,
            adopt: None,
            dead_to: t.dead_done_to,
        }
    }

    fn read_file(&mut self, i: usize) -> Result<Option<Chunk>, TailError> {
        let (size, path, pos) = {
            let t = &self.files[i];
            let m = t.file.metadata().map_err(io_err(&t.path))?;
            (m.len(), t.path.clone(), t.pos)
        };
        let shrank = size < pos.offset;
        let replaced = !shrank
            && pos.fp_len > 0
            && fingerprint(&self.files[i].file, pos.fp_len).map_err(io_err(&path))? != Some(pos.fp);
        if shrank || replaced {
            return self.read_again(i).map(Some);
        }
        let retired_long_enough = self.files[i].retired.is_some_and(|r| Instant::now() >= r);
        if size == pos.offset {
            return Ok(retired_long_enough.then(|| self.forget_chunk(i, None)));
        }
        if let Some((start, scanned)) = self.files[i].long {
            return self.skip_long_line(i, start, scanned, size, retired_long_enough);
        }
        let want = ((size - pos.offset) as usize).min(self.buf.len());
        let n = read_full(&self.files[i].file, &mut self.buf[..want], pos.offset)
            .map_err(io_err(&path))?;
        let data = &self.buf[..n];
        let Some(last_nl) = data.iter().rposition(|&b| b == b'\n') else {
            if n > self.src.max_line {
                self.files[i].long = Some((pos.offset, pos.offset + n as u64));
                return self.skip_long_line(
                    i,
                    pos.offset,
                    pos.offset + n as u64,
                    size,
                    retired_long_enough,
                );
            }
            // The last line is not complete yet: it waits for its newline, unless the file
            // is finished, when it is recorded as incomplete.
            return Ok(retired_long_enough.then(|| {
                let line = &self.buf[..n];
                self.forget_chunk(
                    i,
                    Some(Refused {
                        reason: format!(
                            "line {} of {} had no newline when the file was rotated away or removed ({} bytes); not forwarded",
                            pos.line + 1,
                            path.display(),
                            n
                        ),
                        payload: lossy_prefix(line),
                    }),
                )
            }));
        };
        let mut c = self.parse_lines(i, last_nl + 1)?;
        c.pos = self.with_fingerprint(i, c.pos)?;
        c.meta = vec![self.saved_entry(self.files[i].id, &path, c.pos)];
        Ok(Some(c))
    }

    /// File `i` was truncated or replaced: it is read again from 0. Its unread end may be in a
    /// copy (copytruncate): that is followed from the old position, atomically with the reset.
    fn read_again(&mut self, i: usize) -> Result<Chunk, TailError> {
        let (path, pos) = (self.files[i].path.clone(), self.files[i].pos);
        let listing = self.list()?;
        let copy = self.find_copy(&listing, &pos, Some(self.files[i].id));
        match &copy {
            Some(c) => {
                tracing::info!(path = %path.display(), copy = %c.path.display(), line = pos.line, "A followed file was truncated; its copy is read from where reading stood, then the file again from its start.")
            }
            None => {
                tracing::warn!(path = %path.display(), line = pos.line, "A followed file shrank or its first bytes changed (truncated or replaced); it is read again from its start.")
            }
        }
        let mut c = self.empty_chunk(i, Pos::default());
        self.files[i].long = None;
        if let Some(copy) = copy {
            c.meta.push(self.saved_entry(copy.id, &copy.path, copy.pos));
            c.adopt = Some(copy);
        }
        Ok(c)
    }

    /// Turns the complete lines in `buf[..end]` (at most `max_lines` of them) into alerts and
    /// refusals; the chunk's position is the end of the last line taken.
    fn parse_lines(&mut self, i: usize, end: usize) -> Result<Chunk, TailError> {
        let t = &self.files[i];
        let (pos, path, dead_done_to) = (t.pos, t.path.clone(), t.dead_done_to);
        let mut alerts = Vec::new();
        let mut refused = Vec::new();
        let mut line_no = pos.line;
        let mut at = pos.offset;
        for raw in self.buf[..end]
            .split_inclusive(|&b| b == b'\n')
            .take(self.max_lines)
        {
            line_no += 1;
            let line_start = at;
            at += raw.len() as u64;
            let mut line = &raw[..raw.len() - 1];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            let refuse = |reason: String| Refused {
                reason,
                payload: lossy_prefix(line),
            };
            if line.len() > self.src.max_line {
                if line_start >= dead_done_to {
                    refused.push(refuse(format!(
                        "line {line_no} of {} is {} bytes, longer than max_line ({}); not forwarded",
                        path.display(),
                        line.len(),
                        self.src.max_line
                    )));
                }
                continue;
            }
            match to_alert(&self.src, &path, line_no, line, self.max_body) {
                Ok(a) => alerts.push(a),
                Err(why) => {
                    if line_start >= dead_done_to {
                        refused.push(refuse(format!(
                            "line {line_no} of {}: {why}; not forwarded",
                            path.display()
                        )));
                    }
                }
            }
        }
        Ok(Chunk {
            id: self.files[i].id,
            alerts,
            refused,
            meta: Vec::new(),
            pos: Pos {
                offset: at,
                line: line_no,
                ..pos
            },
            forget: false,
            adopt: None,
            dead_to: at,
        })
    }

    /// The queue refused a chunk of `lines` lines as too big for the room left: read at most
    /// half as many next time (down to one line, which fits once the sender makes room).
    pub fn shrink(&mut self, lines: usize) {
        self.max_lines = (lines / 2).max(1);
    }

    /// A chunk was queued: allow larger ones again.
    pub fn grow(&mut self) {
        self.max_lines = self.max_lines.saturating_mul(2);
    }

    /// Scans a line longer than `max_line` for its end without keeping it.
    fn skip_long_line(
        &mut self,
        i: usize,
        start: u64,
        mut scanned: u64,
        size: u64,
        finished: bool,
    ) -> Result<Option<Chunk>, TailError> {
        let path = self.files[i].path.clone();
        let pos = self.files[i].pos;
        while scanned < size {
            let want = ((size - scanned) as usize).min(self.buf.len());
            let n = read_full(&self.files[i].file, &mut self.buf[..want], scanned)
                .map_err(io_err(&path))?;
            if n == 0 {
                break;
            }
            if let Some(nl) = self.buf[..n].iter().position(|&b| b == b'\n') {
                let end = scanned + nl as u64;
                let mut head = vec![0u8; DEAD_PREFIX];
                let hn = read_full(&self.files[i].file, &mut head, start).map_err(io_err(&path))?;
                let refused = if start >= self.files[i].dead_done_to {
                    vec![Refused {
                        reason: format!(
                            "line {} of {} is {} bytes, longer than max_line ({}); not forwarded",
                            pos.line + 1,
                            path.display(),
                            end - start,
                            self.src.max_line
                        ),
                        payload: lossy_prefix(&head[..hn]),
                    }]
                } else {
                    Vec::new()
                };
                let new = self.with_fingerprint(
                    i,
                    Pos {
                        offset: end + 1,
                        line: pos.line + 1,
                        ..pos
                    },
                )?;
                return Ok(Some(Chunk {
                    id: self.files[i].id,
                    alerts: Vec::new(),
                    refused,
                    meta: vec![self.saved_entry(self.files[i].id, &path, new)],
                    pos: new,
                    forget: false,
                    adopt: None,
                    dead_to: end + 1,
                }));
            }
            scanned += n as u64;
        }
        self.files[i].long = Some((start, scanned));
        if !finished {
            return Ok(None);
        }
        let mut head = vec![0u8; DEAD_PREFIX];
        let hn = read_full(&self.files[i].file, &mut head, start).map_err(io_err(&path))?;
        Ok(Some(self.forget_chunk(
            i,
            Some(Refused {
                reason: format!(
                    "line {} of {} is {} bytes without a newline, longer than max_line ({}), and the file was rotated away or removed; not forwarded",
                    pos.line + 1,
                    path.display(),
                    scanned - start,
                    self.src.max_line
                ),
                payload: lossy_prefix(&head[..hn]),
            }),
        )))
    }

    /// Stops following file `i`; `last` records its unfinished last line (which starts at the
    /// saved position), unless a failed attempt already recorded it.
    fn forget_chunk(&self, i: usize, last: Option<Refused>) -> Chunk {
        let t = &self.files[i];
        let last = last.filter(|_| t.pos.offset >= t.dead_done_to);
        Chunk {
            id: t.id,
            alerts: Vec::new(),
            refused: last.into_iter().collect(),
            meta: vec![(self.key(t.id), Vec::new())],
            pos: t.pos,
            forget: true,
            adopt: None,
            dead_to: u64::MAX,
        }
    }

    /// Extends the fingerprint to cover up to [`FP_MAX`] bytes once the file has them.
    fn with_fingerprint(&self, i: usize, mut pos: Pos) -> Result<Pos, TailError> {
        let want = pos.offset.min(FP_MAX);
        if want > pos.fp_len {
            let t = &self.files[i];
            if let Some(fp) = fingerprint(&t.file, want).map_err(io_err(&t.path))? {
                pos.fp_len = want;
                pos.fp = fp;
            }
        }
        Ok(pos)
    }

    /// Records that `c` was committed: the position moves only now.
    pub fn committed(&mut self, c: Chunk) {
        let Some(i) = self.files.iter().position(|f| f.id == c.id) else {
            return;
        };
        if c.forget {
            let t = self.files.remove(i);
            tracing::debug!(path = %t.path.display(), line = t.pos.line, "A finished file is no longer followed.");
            return;
        }
        let t = &mut self.files[i];
        if c.pos.offset != t.pos.offset {
            t.long = None;
        }
        t.pos = c.pos;
        // Reading resumes at the new position (0 after a truncation): nothing beyond it is
        // recorded yet.
        t.dead_done_to = c.pos.offset;
        if let Some(a) = c.adopt {
            self.files.push(a);
        }
    }

    /// Records that the dead letters of `c` are written, so a retry of its commit does not
    /// write them again.
    pub fn dead_written(&mut self, c: &Chunk) {
        if let Some(t) = self.files.iter_mut().find(|f| f.id == c.id) {
            t.dead_done_to = t.dead_done_to.max(c.dead_to);
        }
    }
}
