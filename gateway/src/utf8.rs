//! UTF-8 checks of text messages, whole or arriving in fragments.
//!
//! A text message may be split into fragments anywhere, also inside a character. The
//! check runs over each fragment as it passes and carries the start of a split character
//! (at most three bytes) to the next one, so a fragmented message is refused (1007) as
//! soon as it stops being UTF-8, without the gateway holding the message.

/// A text message that is not UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

/// The UTF-8 check of one text message, fed fragment by fragment.
#[derive(Debug, Default, Clone, Copy)]
pub struct Utf8Check {
    /// The start of a character split across fragments.
    partial: [u8; 4],
    partial_len: usize,
}

impl Utf8Check {
    /// Checks the next fragment's payload; `fin`: it ends the message, so it must not end
    /// inside a character.
    pub fn feed(&mut self, mut chunk: &[u8], fin: bool) -> Result<(), InvalidUtf8> {
        if self.partial_len > 0 {
            // Complete the character the last fragment started, a byte at a time.
            while self.partial_len < self.partial.len() {
                let Some((&byte, rest)) = chunk.split_first() else {
                    break;
                };
                self.partial[self.partial_len] = byte;
                self.partial_len += 1;
                chunk = rest;
                match std::str::from_utf8(&self.partial[..self.partial_len]) {
                    Ok(_) => {
                        self.partial_len = 0;
                        break;
                    }
                    Err(e) if e.error_len().is_some() => return Err(InvalidUtf8),
                    Err(_) => {}
                }
            }
            if self.partial_len > 0 {
                // This fragment ended inside the same character.
                return if fin { Err(InvalidUtf8) } else { Ok(()) };
            }
        }
        match std::str::from_utf8(chunk) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() || fin => Err(InvalidUtf8),
            Err(e) => {
                // Ends inside a character: keep its start for the next fragment.
                let tail = &chunk[e.valid_up_to()..];
                match self.partial.get_mut(..tail.len()) {
                    Some(partial) => {
                        partial.copy_from_slice(tail);
                        self.partial_len = tail.len();
                        Ok(())
                    }
                    None => Err(InvalidUtf8),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `text` split at `cuts` (fragment ends); the last fragment is final.
    fn fragments(text: &[u8], cuts: &[usize]) -> Result<(), InvalidUtf8> {
        let mut check = Utf8Check::default();
        let mut at = 0;
        for &cut in cuts {
            check.feed(&text[at..cut], false)?;
            at = cut;
        }
        check.feed(&text[at..], true)
    }

    #[test]
    fn characters_split_anywhere_pass() {
        let text = "a€😀ü".as_bytes(); // 1 + 3 + 4 + 2 bytes
        for a in 0..=text.len() {
            for b in a..=text.len() {
                assert_eq!(fragments(text, &[a, b]), Ok(()), "cut at {a}, {b}");
            }
        }
        // One byte per fragment.
        let all: Vec<usize> = (1..text.len()).collect();
        assert_eq!(fragments(text, &all), Ok(()));
    }

    #[test]
    fn bad_bytes_fail_wherever_they_fall() {
        assert_eq!(fragments(b"ok\xff", &[1]), Err(InvalidUtf8));
        // A split character whose next byte is not a continuation byte.
        assert_eq!(fragments(b"\xe2\x82A", &[2]), Err(InvalidUtf8));
        // A message that ends inside a character, split or not.
        assert_eq!(fragments(&"€".as_bytes()[..2], &[1]), Err(InvalidUtf8));
        assert_eq!(fragments(&"😀".as_bytes()[..3], &[1]), Err(InvalidUtf8));
        assert_eq!(fragments(&"😀".as_bytes()[..3], &[]), Err(InvalidUtf8));
        // A surrogate half (never valid UTF-8), split after its first byte.
        assert_eq!(fragments(b"\xed\xa0\x80", &[1]), Err(InvalidUtf8));
    }
}
