//! A guest's stdout and stderr, assembled into lines and logged under the filter's name.

/// Which standard stream a guest wrote to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// fd 1: logged at info.
    Stdout,
    /// fd 2: logged at error.
    Stderr,
}

/// Longest partial line kept waiting for its newline; longer is logged as it is.
const MAX_PENDING: usize = 16 * 1024;

/// A guest's stdout and stderr assembled into lines. The Rust standard library writes
/// one message in several `fd_write` calls (`"memory allocation of "`, `"1048576"`,
/// `" bytes failed\n"`), which would otherwise be three log lines.
#[derive(Debug, Default)]
pub struct GuestOutput {
    pending: [Vec<u8>; 2],
}

impl GuestOutput {
    /// Adds what the guest wrote to `stream` and hands each completed line to `emit`.
    pub fn write(&mut self, stream: Stream, bytes: &[u8], mut emit: impl FnMut(Stream, &str)) {
        let buf = &mut self.pending[stream as usize];
        buf.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
            emit(stream, &String::from_utf8_lossy(&buf[start..start + nl]));
            start += nl + 1;
        }
        buf.drain(..start);
        if buf.len() > MAX_PENDING {
            emit(stream, &String::from_utf8_lossy(buf));
            buf.clear();
        }
    }

    /// Whether a partial line is waiting.
    pub fn is_empty(&self) -> bool {
        self.pending.iter().all(Vec::is_empty)
    }

    /// Hands the partial lines to `emit` (a callback returned or failed: what it wrote
    /// is logged now, not with the next callback's output).
    pub fn flush(&mut self, mut emit: impl FnMut(Stream, &str)) {
        for (stream, buf) in [Stream::Stdout, Stream::Stderr]
            .into_iter()
            .zip(self.pending.iter_mut())
        {
            if !buf.is_empty() {
                emit(stream, &String::from_utf8_lossy(buf));
                buf.clear();
            }
        }
    }
}

/// Logs one line of guest output with the filter's name.
pub fn log_line(filter: &str, stream: Stream, line: &str) {
    match stream {
        Stream::Stdout => tracing::info!(filter = %filter, "{line}"),
        Stream::Stderr => tracing::error!(filter = %filter, "{line}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(out: &mut GuestOutput, stream: Stream, bytes: &[u8]) -> Vec<(Stream, String)> {
        let mut lines = Vec::new();
        out.write(stream, bytes, |s, l| lines.push((s, l.to_string())));
        lines
    }

    #[test]
    fn pieces_of_one_message_make_one_line() {
        let mut out = GuestOutput::default();
        assert!(collect(&mut out, Stream::Stderr, b"memory allocation of ").is_empty());
        assert!(collect(&mut out, Stream::Stderr, b"1048576").is_empty());
        assert_eq!(
            collect(&mut out, Stream::Stderr, b" bytes failed\nnote: run with"),
            [(Stream::Stderr, "memory allocation of 1048576 bytes failed".to_string())]
        );
        assert!(!out.is_empty());
        let mut rest = Vec::new();
        out.flush(|s, l| rest.push((s, l.to_string())));
        assert_eq!(rest, [(Stream::Stderr, "note: run with".to_string())]);
        assert!(out.is_empty());
    }

    #[test]
    fn streams_are_kept_apart_and_several_lines_split() {
        let mut out = GuestOutput::default();
        assert!(collect(&mut out, Stream::Stdout, b"half").is_empty());
        assert_eq!(
            collect(&mut out, Stream::Stderr, b"a\nb\n"),
            [(Stream::Stderr, "a".to_string()), (Stream::Stderr, "b".to_string())]
        );
        assert_eq!(
            collect(&mut out, Stream::Stdout, b" done\n"),
            [(Stream::Stdout, "half done".to_string())]
        );
        assert!(out.is_empty());
    }

    #[test]
    fn a_line_without_end_is_cut_at_the_limit() {
        let mut out = GuestOutput::default();
        let lines = collect(&mut out, Stream::Stdout, &vec![b'x'; MAX_PENDING + 1]);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].1.len(), MAX_PENDING + 1);
        assert!(out.is_empty());
    }
}
