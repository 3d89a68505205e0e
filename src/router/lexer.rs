//! A Postgres SQL lexer, enough to find statement boundaries, keywords, function calls
//! and literal spans without being fooled by quotes, dollar quotes or comments.

/// A token kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An unquoted word (keyword or identifier); compare case-insensitively.
    Word,
    /// A `"quoted"` identifier.
    QuotedIdent,
    /// A string literal (`'…'`, `E'…'`, `$$…$$`, `B'…'`, `X'…'`, `U&'…'`).
    String,
    /// A numeric literal.
    Number,
    /// A `$n` parameter.
    Param,
    /// `;`
    Semicolon,
    /// `(`
    LParen,
    /// `)`
    RParen,
    /// `,`
    Comma,
    /// `=`
    Equals,
    /// `.`
    Dot,
    /// Any other operator or punctuation.
    Other,
}

/// A token: kind and byte range in the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    /// What it is.
    pub kind: Kind,
    /// Start offset.
    pub start: usize,
    /// End offset (exclusive).
    pub end: usize,
}

impl Token {
    /// The token's text.
    pub fn text<'a>(&self, src: &'a str) -> &'a str {
        &src[self.start..self.end]
    }

    /// Case-insensitive comparison for words.
    pub fn is(&self, src: &str, word: &str) -> bool {
        self.kind == Kind::Word && self.text(src).eq_ignore_ascii_case(word)
    }
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_char(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

/// Splits `src` into tokens. Unterminated quotes or comments end the token stream
/// (the server will reject such text; the proxy only needs not to misread it).
pub fn tokenize(src: &str) -> Vec<Token> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                // Nested block comments, as Postgres allows.
                let mut depth = 0usize;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                if depth > 0 {
                    return out;
                }
            }
            b'\'' => {
                let Some(end) = quoted_end(b, i + 1, false) else {
                    return out;
                };
                i = end;
                out.push(Token {
                    kind: Kind::String,
                    start,
                    end: i,
                });
            }
            b'"' => {
                let mut j = i + 1;
                loop {
                    match b.get(j) {
                        None => return out,
                        Some(b'"') if b.get(j + 1) == Some(&b'"') => j += 2,
                        Some(b'"') => break,
                        Some(_) => j += 1,
                    }
                }
                i = j + 1;
                out.push(Token {
                    kind: Kind::QuotedIdent,
                    start,
                    end: i,
                });
            }
            b'$' if b.get(i + 1).is_some_and(|d| d.is_ascii_digit()) => {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                out.push(Token {
                    kind: Kind::Param,
                    start,
                    end: i,
                });
            }
            b'$' => {
                // Dollar quote: $tag$ … $tag$
                let mut j = i + 1;
                while j < b.len() && is_ident_char(b[j]) && b[j] != b'$' {
                    j += 1;
                }
                if b.get(j) == Some(&b'$') {
                    let tag = &b[i..=j];
                    let body = j + 1;
                    let Some(pos) = find(&b[body..], tag) else {
                        return out;
                    };
                    i = body + pos + tag.len();
                    out.push(Token {
                        kind: Kind::String,
                        start,
                        end: i,
                    });
                } else {
                    i += 1;
                    out.push(Token {
                        kind: Kind::Other,
                        start,
                        end: i,
                    });
                }
            }
            c if c.is_ascii_digit()
                || (c == b'.' && b.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_')
                {
                    if (b[i] == b'e' || b[i] == b'E')
                        && matches!(b.get(i + 1), Some(b'+') | Some(b'-'))
                    {
                        i += 1;
                    }
                    i += 1;
                }
                out.push(Token {
                    kind: Kind::Number,
                    start,
                    end: i,
                });
            }
            c if is_ident_start(c) => {
                // E'…', B'…', X'…', U&'…' string prefixes.
                let next = b.get(i + 1).copied();
                if matches!(c, b'e' | b'E') && next == Some(b'\'') {
                    let Some(end) = quoted_end(b, i + 2, true) else {
                        return out;
                    };
                    i = end;
                    out.push(Token {
                        kind: Kind::String,
                        start,
                        end: i,
                    });
                    continue;
                }
                if matches!(c, b'b' | b'B' | b'x' | b'X' | b'n' | b'N') && next == Some(b'\'') {
                    let Some(end) = quoted_end(b, i + 2, false) else {
                        return out;
                    };
                    i = end;
                    out.push(Token {
                        kind: Kind::String,
                        start,
                        end: i,
                    });
                    continue;
                }
                if matches!(c, b'u' | b'U') && next == Some(b'&') && b.get(i + 2) == Some(&b'\'') {
                    let Some(end) = quoted_end(b, i + 3, false) else {
                        return out;
                    };
                    i = end;
                    out.push(Token {
                        kind: Kind::String,
                        start,
                        end: i,
                    });
                    continue;
                }
                while i < b.len() && is_ident_char(b[i]) {
                    i += 1;
                }
                out.push(Token {
                    kind: Kind::Word,
                    start,
                    end: i,
                });
            }
            b';' => {
                i += 1;
                out.push(Token {
                    kind: Kind::Semicolon,
                    start,
                    end: i,
                });
            }
            b'(' => {
                i += 1;
                out.push(Token {
                    kind: Kind::LParen,
                    start,
                    end: i,
                });
            }
            b')' => {
                i += 1;
                out.push(Token {
                    kind: Kind::RParen,
                    start,
                    end: i,
                });
            }
            b',' => {
                i += 1;
                out.push(Token {
                    kind: Kind::Comma,
                    start,
                    end: i,
                });
            }
            b'=' => {
                i += 1;
                out.push(Token {
                    kind: Kind::Equals,
                    start,
                    end: i,
                });
            }
            b'.' => {
                i += 1;
                out.push(Token {
                    kind: Kind::Dot,
                    start,
                    end: i,
                });
            }
            _ => {
                i += 1;
                out.push(Token {
                    kind: Kind::Other,
                    start,
                    end: i,
                });
            }
        }
    }
    out
}

/// End offset (after the closing quote) of a single-quoted literal whose body starts at
/// `from`. `backslash` enables E'' escapes.
fn quoted_end(b: &[u8], from: usize, backslash: bool) -> Option<usize> {
    let mut j = from;
    loop {
        match b.get(j)? {
            b'\\' if backslash => j += 2,
            b'\'' if b.get(j + 1) == Some(&b'\'') => j += 2,
            b'\'' => return Some(j + 1),
            _ => j += 1,
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Splits tokens into statements at top-level semicolons (empty statements dropped).
pub fn statements(tokens: &[Token]) -> Vec<&[Token]> {
    tokens
        .split(|t| t.kind == Kind::Semicolon)
        .filter(|s| !s.is_empty())
        .collect()
}

/// The value of a simple string literal token (`'…'` with `''` escapes), if it is one.
pub fn string_value(src: &str, t: &Token) -> Option<String> {
    if t.kind != Kind::String {
        return None;
    }
    let text = t.text(src);
    let inner = text.strip_prefix('\'')?.strip_suffix('\'')?;
    Some(inner.replace("''", "'"))
}

/// The text with every string and numeric literal replaced by `?`, or `None` when it
/// has none: queries that differ only in literal values share it (and their
/// classification), while comments and everything else are kept.
pub fn literal_shape(src: &str) -> Option<Vec<u8>> {
    let tokens = tokenize(src);
    if !tokens
        .iter()
        .any(|t| matches!(t.kind, Kind::String | Kind::Number))
    {
        return None;
    }
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut at = 0;
    for t in tokens
        .iter()
        .filter(|t| matches!(t.kind, Kind::String | Kind::Number))
    {
        out.extend_from_slice(&b[at..t.start]);
        out.push(b'?');
        at = t.end;
    }
    out.extend_from_slice(&b[at..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<(Kind, &str)> {
        tokenize(src)
            .iter()
            .map(|t| (t.kind, t.text(src)))
            .collect()
    }

    #[test]
    fn quotes_and_comments_hide_semicolons() {
        let src =
            "SELECT 'a;b', $$x;y$$, $t$ $$ ; $t$, \"c;d\" -- ;\n/* ; /* ; */ ; */; SELECT E'\\';'";
        let toks = tokenize(src);
        let stmts = statements(&toks);
        assert_eq!(stmts.len(), 2, "{:?}", kinds(src));
        assert_eq!(stmts[1].last().map(|t| t.text(src)), Some("E'\\';'"));
    }

    #[test]
    fn words_params_numbers() {
        assert_eq!(
            kinds("set x=$1+1.5e-3"),
            vec![
                (Kind::Word, "set"),
                (Kind::Word, "x"),
                (Kind::Equals, "="),
                (Kind::Param, "$1"),
                (Kind::Other, "+"),
                (Kind::Number, "1.5e-3")
            ]
        );
        assert_eq!(
            string_value("'it''s'", &tokenize("'it''s'")[0]).as_deref(),
            Some("it's")
        );
    }

    #[test]
    fn literal_shapes() {
        assert_eq!(
            literal_shape("SELECT * FROM t WHERE a = 5 AND b = 'x''y' /* c 7 */"),
            Some(b"SELECT * FROM t WHERE a = ? AND b = ? /* c 7 */".to_vec())
        );
        assert_eq!(literal_shape("SELECT a FROM t1 WHERE b = $1"), None);
        assert_eq!(
            literal_shape("SELECT $$x$$, E'\\n', 1.5e-3"),
            Some(b"SELECT ?, ?, ?".to_vec())
        );
    }

    #[test]
    fn unterminated_input_does_not_panic() {
        for src in ["'abc", "\"abc", "$$abc", "/* abc", "E'\\", "$a", "U&'x"] {
            let _ = tokenize(src);
        }
    }
}
