//! Scanning JSON text for its brackets, outside string literals: the nesting check before a job
//! message is parsed, and the salvage of complete weeks from a truncated LLM answer.

/// Positions and bytes of every `{`, `[`, `}` and `]` that is not inside a string literal.
pub fn brackets(text: &str) -> impl Iterator<Item = (usize, u8)> + '_ {
    let (mut in_string, mut escaped) = (false, false);
    text.bytes().enumerate().filter(move |&(_, b)| {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            return false;
        }
        if b == b'"' {
            in_string = true;
        }
        matches!(b, b'{' | b'[' | b'}' | b']')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brackets_inside_strings_are_skipped() {
        let found: String = brackets(r#"{"a":"[\"}",[1,{}]}"#)
            .map(|(_, b)| b as char)
            .collect();
        assert_eq!(found, "{[{}]}");
    }
}
