//! SOQL building with every literal escaped (docs/rules.md "Salesforce").
//!
//! Values only ever enter a query through [`quote`] (or the helpers built on it:
//! [`eq`], [`in_list`], [`like_literal`]); field and object names only through [`field`]
//! / [`name`], which accept API names (`[A-Za-z][A-Za-z0-9_]*`) and nothing else — so a
//! learner's `username` such as `x' OR Email != '` stays one literal (R5, R8).
//! [`Lexer`] reads SOQL back; the sandbox's query engine and the round-trip tests use it.

/// Escape `s` as a single-quoted SOQL string literal.
///
/// Salesforce's escape sequences: `\'`, `\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f`.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A literal for `LIKE`: like [`quote`], with the wildcards `%` and `_` escaped too, so
/// the value matches only itself.
pub fn like_literal(s: &str) -> String {
    let q = quote(s);
    let mut out = String::with_capacity(q.len());
    for c in q.chars() {
        match c {
            '%' => out.push_str("\\%"),
            '_' => out.push_str("\\_"),
            c => out.push(c),
        }
    }
    out
}

/// Is `s` a Salesforce API name (`Email`, `SkillSync_User_Id__c`)?
pub fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 80
}

/// A field or sObject name that is not a Salesforce API name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a Salesforce API name: {0:?}")]
pub struct BadName(pub String);

/// A field or sObject API name, checked: `[A-Za-z][A-Za-z0-9_]*` (at most 80 chars).
/// Names are never interpolated into SOQL unchecked.
pub fn field(s: &str) -> Result<&str, BadName> {
    if is_name(s) {
        Ok(s)
    } else {
        Err(BadName(s.to_string()))
    }
}

/// [`field`] for names that come from validated configuration or code, never from event
/// data: panics on anything else (a programming error, not a runtime condition).
pub fn name(s: &str) -> &str {
    match field(s) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

/// The value of one quoted SOQL string literal (the inverse of [`quote`]); `None` when
/// `lit` is not exactly one string literal.
pub fn unquote(lit: &str) -> Option<String> {
    match Lexer::new(lit).tokens().ok()?.as_slice() {
        [Token::Str(s)] => Some(s.clone()),
        _ => None,
    }
}

/// `Field = 'value'`.
pub fn eq(field: &str, value: &str) -> String {
    format!("{} = {}", name(field), quote(value))
}

/// Split values into groups whose quoted `IN` list stays under `max_chars` (SOQL's
/// statement and a GET's request-line limits).
pub fn chunks_by_len<S: AsRef<str>>(values: &[S], max_chars: usize) -> Vec<&[S]> {
    let mut out = Vec::new();
    let (mut start, mut len) = (0, 0);
    for (i, v) in values.iter().enumerate() {
        let l = v.as_ref().len() + 4; // quotes, comma, space
        if i > start && len + l > max_chars {
            out.push(&values[start..i]);
            start = i;
            len = 0;
        }
        len += l;
    }
    if start < values.len() {
        out.push(&values[start..]);
    }
    out
}

/// `Field IN ('a', 'b')`; an empty list gives a condition that matches nothing.
pub fn in_list(field: &str, values: &[impl AsRef<str>]) -> String {
    if values.is_empty() {
        return "Id = null".to_string();
    }
    let list: Vec<String> = values.iter().map(|v| quote(v.as_ref())).collect();
    format!("{} IN ({})", name(field), list.join(", "))
}

/// One SOQL token.
#[derive(Clone, Debug, PartialEq)]
pub enum Token {
    /// Identifier or keyword (as written).
    Word(String),
    /// A string literal, unescaped.
    Str(String),
    /// The string literal right after `LIKE`, as a pattern: `%` and `_` are wildcards,
    /// `\x` is the literal character `x` (so `\%` is a percent sign). See [`like_matches`].
    Pattern(String),
    Number(f64),
    /// A datetime literal (`2026-11-25T10:00:00Z`, `…+01:00`), as written.
    DateTime(String),
    /// `(`, `)`, `,`, `=`, `!=`, `<`, `<=`, `>`, `>=`, `*`.
    Punct(&'static str),
}

/// A SOQL lexer (the subset the sandbox understands).
pub struct Lexer<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    pub fn new(s: &'a str) -> Self {
        Lexer { s, pos: 0 }
    }

    /// Every token, or an error message naming the position.
    pub fn tokens(mut self) -> Result<Vec<Token>, String> {
        let mut out = Vec::new();
        while let Some(t) = self.next_token()? {
            // A literal after LIKE is a pattern: keep its escaped wildcards apart.
            let t = match (out.last(), t) {
                (Some(Token::Word(w)), Token::Pattern(p)) if w.eq_ignore_ascii_case("LIKE") => {
                    Token::Pattern(p)
                }
                (_, Token::Pattern(p)) => Token::Str(pattern_value(&p)),
                (_, t) => t,
            };
            out.push(t);
        }
        Ok(out)
    }

    fn next_token(&mut self) -> Result<Option<Token>, String> {
        let rest = &self.s[self.pos..];
        let trimmed = rest.trim_start();
        self.pos += rest.len() - trimmed.len();
        let mut chars = trimmed.chars();
        let Some(c) = chars.next() else {
            return Ok(None);
        };
        if c == '\'' {
            return self.string().map(Some);
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let len = trimmed
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                .unwrap_or(trimmed.len());
            self.pos += len;
            return Ok(Some(Token::Word(trimmed[..len].to_string())));
        }
        if let Some(len) = datetime_len(trimmed) {
            self.pos += len;
            return Ok(Some(Token::DateTime(trimmed[..len].to_string())));
        }
        if c.is_ascii_digit() || (c == '-' && chars.next().is_some_and(|d| d.is_ascii_digit())) {
            let len = trimmed[1..]
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .map(|i| i + 1)
                .unwrap_or(trimmed.len());
            let n = trimmed[..len]
                .parse()
                .map_err(|_| format!("bad number at {}", self.pos))?;
            self.pos += len;
            return Ok(Some(Token::Number(n)));
        }
        for p in ["!=", "<=", ">=", "(", ")", ",", "=", "<", ">", "*"] {
            if trimmed.starts_with(p) {
                self.pos += p.len();
                return Ok(Some(Token::Punct(p)));
            }
        }
        Err(format!("unexpected character {c:?} at {}", self.pos))
    }

    /// A quoted literal, returned as a [`Token::Pattern`] (escapes kept as `\\x`);
    /// [`Lexer::tokens`] turns it into a plain [`Token::Str`] unless it follows `LIKE`.
    fn string(&mut self) -> Result<Token, String> {
        let start = self.pos;
        let mut out = String::new();
        let mut chars = self.s[self.pos + 1..].char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\'' => {
                    self.pos += 1 + i + 1;
                    return Ok(Token::Pattern(out));
                }
                '\\' => {
                    let Some((_, e)) = chars.next() else { break };
                    let lit = match e {
                        'n' => '\n',
                        'r' => '\r',
                        't' => '\t',
                        'b' => '\u{8}',
                        'f' => '\u{c}',
                        '\\' | '\'' | '"' | '%' | '_' => e,
                        other => return Err(format!("invalid escape \\{other} at {}", start + i)),
                    };
                    out.push('\\');
                    out.push(lit);
                }
                '%' | '_' => out.push(c),
                c => {
                    out.push('\\');
                    out.push(c);
                }
            }
        }
        Err(format!("unterminated string literal starting at {start}"))
    }
}

/// Length of a SOQL datetime literal at the start of `s` (`YYYY-MM-DDThh:mm:ss[.fff](Z|±hh:mm)`).
fn datetime_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| r.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    if !(digits(0..4)
        && b.get(4) == Some(&b'-')
        && digits(5..7)
        && b.get(7) == Some(&b'-')
        && digits(8..10)
        && b.get(10) == Some(&b'T')
        && digits(11..13)
        && b.get(13) == Some(&b':')
        && digits(14..16)
        && b.get(16) == Some(&b':')
        && digits(17..19))
    {
        return None;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
    }
    match b.get(i) {
        Some(b'Z') => Some(i + 1),
        Some(b'+' | b'-')
            if digits(i + 1..i + 3) && b.get(i + 3) == Some(&b':') && digits(i + 4..i + 6) =>
        {
            Some(i + 6)
        }
        _ => None,
    }
}

/// The plain value of a pattern: every character literal (`\%` → `%`).
fn pattern_value(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' {
            chars.next().unwrap_or(c)
        } else {
            c
        });
    }
    out
}

/// Does `value` match a [`Token::Pattern`]? `%` is any run, `_` any one character,
/// `\x` exactly `x`; letters compare case-insensitively (as Salesforce's `LIKE`).
pub fn like_matches(value: &str, pattern: &str) -> bool {
    enum P {
        Any,
        One,
        Lit(char),
    }
    let mut pat = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        pat.push(match c {
            '%' => P::Any,
            '_' => P::One,
            '\\' => P::Lit(chars.next().unwrap_or('\\')),
            c => P::Lit(c),
        });
    }
    let v: Vec<char> = value.chars().collect();
    // Classic wildcard matching, O(len(v) × len(pat)).
    let mut reach = vec![false; v.len() + 1]; // reach[i]: v[..i] matches the pattern so far
    reach[0] = true;
    for p in &pat {
        let mut next = vec![false; v.len() + 1];
        for i in 0..=v.len() {
            match p {
                P::Any => next[i] = reach[i] || (i > 0 && next[i - 1]),
                P::One => next[i] = i > 0 && reach[i - 1],
                P::Lit(c) => {
                    next[i] = i > 0 && reach[i - 1] && v[i - 1].to_lowercase().eq(c.to_lowercase())
                }
            }
        }
        reach = next;
    }
    reach[v.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hostile_values_stay_inside_their_literal() {
        let q = format!(
            "SELECT Id FROM Contact WHERE {}",
            eq("Email", "x' OR Email != '")
        );
        assert_eq!(
            q,
            r"SELECT Id FROM Contact WHERE Email = 'x\' OR Email != \''"
        );
        let toks = Lexer::new(&q).tokens().unwrap();
        assert_eq!(toks.len(), 8, "{toks:?}");
        assert_eq!(toks[7], Token::Str("x' OR Email != '".into()));
        assert_eq!(quote("a\\'b\nc"), r"'a\\\'b\nc'");
        assert_eq!(like_literal("50%_off"), r"'50\%\_off'");
        assert_eq!(in_list("Name", &["a", "b'c"]), r"Name IN ('a', 'b\'c')");
        assert_eq!(in_list("Name", &Vec::<String>::new()), "Id = null");
    }

    #[test]
    fn datetime_literals_are_one_token() {
        let toks = Lexer::new("SystemModstamp >= 2026-11-25T10:00:00Z AND X < 2026-11-25T10:00:00.5+01:00 AND N = 2026")
            .tokens()
            .unwrap();
        assert_eq!(toks[2], Token::DateTime("2026-11-25T10:00:00Z".into()));
        assert_eq!(
            toks[6],
            Token::DateTime("2026-11-25T10:00:00.5+01:00".into())
        );
        assert_eq!(toks[10], Token::Number(2026.0));
    }

    #[test]
    #[should_panic(expected = "not a Salesforce API name")]
    fn names_are_never_interpolated_unchecked() {
        eq("Email OR Id != null", "x");
    }

    proptest! {
        #[test]
        fn any_string_round_trips_as_exactly_one_literal(s in any::<String>()) {
            let toks = Lexer::new(&quote(&s)).tokens().unwrap();
            prop_assert_eq!(toks, vec![Token::Str(s.clone())]);
            // …also in context, followed by more SOQL.
            let q = format!("{} AND Id = null", eq("Email", &s));
            let toks = Lexer::new(&q).tokens().unwrap();
            prop_assert_eq!(&toks[2], &Token::Str(s));
            prop_assert_eq!(toks.len(), 7);
        }

        #[test]
        fn like_literals_round_trip(s in "[a-z%_' \\\\]{0,20}") {
            let toks = Lexer::new(&like_literal(&s)).tokens().unwrap();
            prop_assert_eq!(toks, vec![Token::Str(s.clone())]);
            // As a LIKE pattern it matches only itself (modulo case).
            let toks = Lexer::new(&format!("Name LIKE {}", like_literal(&s))).tokens().unwrap();
            let Token::Pattern(p) = &toks[2] else { panic!("{toks:?}") };
            prop_assert!(like_matches(&s, p));
            let other = format!("{s}x");
            prop_assert!(!like_matches(&other, p));
        }

        #[test]
        fn unquote_inverts_quote(s in any::<String>()) {
            prop_assert_eq!(unquote(&quote(&s)), Some(s));
        }
    }
}
