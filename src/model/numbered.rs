//! `{stem}_{n:05}.{ext}`: the one spelling of numbered outputs (HLS segments, images), which the
//! pipeline writes, the service creates and counts, delivery uploads, and the disk monitor and
//! retention find again.

/// The numbered files of one output: `dir/stem_00000.ext`, `dir/stem_00001.ext`, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NumberedName<'a> {
    pub stem: &'a str,
    pub ext: &'a str,
}

impl<'a> NumberedName<'a> {
    pub fn new(stem: &'a str, ext: &'a str) -> NumberedName<'a> {
        NumberedName { stem, ext }
    }

    /// The file name of number `n`.
    pub fn name(&self, n: u32) -> String {
        format!("{}_{n:05}.{}", self.stem, self.ext)
    }

    /// The printf pattern GStreamer's sinks take (`stem_%05d.ext`).
    pub fn pattern(&self) -> String {
        format!("{}_%05d.{}", self.stem, self.ext)
    }

    /// The number of `file_name` when it is one of these files.
    pub fn number(&self, file_name: &str) -> Option<u32> {
        let digits = file_name
            .strip_prefix(self.stem)?
            .strip_prefix('_')?
            .strip_suffix(self.ext)?
            .strip_suffix('.')?;
        (digits.len() >= 5 && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse().ok())
            .flatten()
    }
}

/// Whether `rest`, what follows `stem_` in a file name, is a number of 5 digits or more and an
/// extension (`00003.ts`, a sink's temporary `00001.4242.ts`): a file of that stem, never one
/// of a stem that only starts the same (`b_00000.ts` after `stem_`).
pub fn is_numbered_rest(rest: &str) -> bool {
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    digits >= 5 && rest.as_bytes().get(digits) == Some(&b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_formatted_and_read_back() {
        let n = NumberedName::new("show", "ts");
        assert_eq!(n.name(3), "show_00003.ts");
        assert_eq!(n.pattern(), "show_%05d.ts");
        assert_eq!(n.number("show_00003.ts"), Some(3));
        assert_eq!(n.number("show_123456.ts"), Some(123_456));
        for other in [
            "show_0003.ts",
            "show_b_00000.ts",
            "show_00003.jpg",
            "shows_00003.ts",
            "show_0000x.ts",
        ] {
            assert_eq!(n.number(other), None, "{other}");
        }
        assert!(is_numbered_rest("00001.4242.ts"));
        assert!(!is_numbered_rest("b_00000.ts"));
        assert!(!is_numbered_rest("0001.ts"));
    }
}
