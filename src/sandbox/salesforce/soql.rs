//! The SOQL subset the sandbox org answers, parsed with the client's own lexer.

use serde_json::{json, Value};

use super::schema::{err, ObjectDef};
use crate::salesforce::soql::{like_matches, Lexer, Token};
use crate::salesforce::{Record, SfError};

pub(super) fn sort_key(v: &Value) -> String {
    match v {
        Value::String(s) => s.to_lowercase(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

pub(super) struct SoqlQuery {
    /// `SELECT COUNT() FROM …`: only `totalSize` is answered.
    pub(super) count: bool,
    pub(super) fields: Vec<String>,
    pub(super) from: String,
    pub(super) filter: Option<Cond>,
    pub(super) order: Option<(String, bool)>,
    pub(super) limit: Option<usize>,
}

pub(super) enum Cond {
    And(Vec<Cond>),
    Or(Vec<Cond>),
    Not(Box<Cond>),
    Cmp(String, &'static str, Value),
    /// `field [NOT] IN (…)`; the string literals are also kept lowercased in a set, so a
    /// query with a long list over many records stays fast (Salesforce uses indexes).
    In(String, Vec<Value>, bool, std::collections::HashSet<String>),
    Like(String, String),
}

pub(super) fn check_fields(c: &Cond, o: &ObjectDef) -> Result<(), SfError> {
    match c {
        Cond::And(v) | Cond::Or(v) => v.iter().try_for_each(|c| check_fields(c, o)),
        Cond::Not(c) => check_fields(c, o),
        Cond::Cmp(f, ..) | Cond::In(f, ..) | Cond::Like(f, _) => {
            o.field(f).map(|_| ()).ok_or_else(|| {
                err(
                    400,
                    "INVALID_FIELD",
                    &format!("No such column '{f}' on entity '{}'", o.name),
                    &[],
                )
            })
        }
    }
}

pub(super) fn get_ci<'r>(r: &'r Record, field: &str) -> &'r Value {
    r.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(field))
        .map(|(_, v)| v)
        .unwrap_or(&Value::Null)
}

/// SOQL equality: strings compare case-insensitively; ids by their 15-char prefix.
pub(super) fn soql_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => {
            x.eq_ignore_ascii_case(y)
                || (x.len() == 18 && y.len() == 15 && x.starts_with(y.as_str()))
                // Unicode case folding without allocating (queries scan every record).
                || (!x.is_ascii() || !y.is_ascii())
                    && x.chars()
                        .flat_map(char::to_lowercase)
                        .eq(y.chars().flat_map(char::to_lowercase))
        }
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Null, Value::Null) => true,
        (x, y) => x == y,
    }
}

impl Cond {
    pub(super) fn eval(&self, r: &Record) -> bool {
        match self {
            Cond::And(v) => v.iter().all(|c| c.eval(r)),
            Cond::Or(v) => v.iter().any(|c| c.eval(r)),
            Cond::Not(c) => !c.eval(r),
            Cond::Cmp(f, op, lit) => {
                let v = get_ci(r, f);
                match *op {
                    "=" => soql_eq(v, lit),
                    "!=" => !soql_eq(v, lit),
                    _ => {
                        if v.is_null() || lit.is_null() {
                            return false;
                        }
                        let ord = match (v, lit) {
                            (Value::Number(a), Value::Number(b)) => {
                                a.as_f64().partial_cmp(&b.as_f64())
                            }
                            // Datetimes compare as instants, whatever their notation.
                            (Value::String(a), Value::String(b))
                                if instant(a).is_some() && instant(b).is_some() =>
                            {
                                instant(a).partial_cmp(&instant(b))
                            }
                            _ => Some(sort_key(v).cmp(&sort_key(lit))),
                        };
                        matches!(
                            (*op, ord),
                            ("<", Some(std::cmp::Ordering::Less))
                                | (">", Some(std::cmp::Ordering::Greater))
                                | (
                                    "<=",
                                    Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
                                )
                                | (
                                    ">=",
                                    Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
                                )
                        )
                    }
                }
            }
            Cond::In(f, list, negated, strings) => {
                let v = get_ci(r, f);
                let hit = match v {
                    Value::String(x) => {
                        let x = x.to_lowercase();
                        strings.contains(&x)
                            || (x.len() == 18
                                && x.is_char_boundary(15)
                                && strings.contains(&x[..15]))
                            || list.iter().any(|l| !l.is_string() && soql_eq(v, l))
                    }
                    _ => list.iter().any(|l| soql_eq(v, l)),
                };
                hit != *negated
            }
            Cond::Like(f, p) => get_ci(r, f).as_str().is_some_and(|v| like_matches(v, p)),
        }
    }
}

pub(super) struct Parser {
    toks: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek_kw(&self, kw: &str) -> bool {
        matches!(self.toks.get(self.pos), Some(Token::Word(w)) if w.eq_ignore_ascii_case(kw))
    }
    fn eat_kw(&mut self, kw: &str) -> bool {
        let yes = self.peek_kw(kw);
        if yes {
            self.pos += 1;
        }
        yes
    }
    fn expect_kw(&mut self, kw: &str) -> Result<(), String> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            Err(format!("expected {kw} at token {}", self.pos))
        }
    }
    fn eat_punct(&mut self, p: &str) -> bool {
        let yes = matches!(self.toks.get(self.pos), Some(Token::Punct(x)) if *x == p);
        if yes {
            self.pos += 1;
        }
        yes
    }
    fn word(&mut self) -> Result<String, String> {
        match self.toks.get(self.pos) {
            Some(Token::Word(w)) => {
                self.pos += 1;
                Ok(w.clone())
            }
            other => Err(format!("expected a name, found {other:?}")),
        }
    }
    fn literal(&mut self) -> Result<Value, String> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        match t {
            Some(Token::Str(s)) => Ok(Value::String(s)),
            Some(Token::Number(n)) => Ok(json!(n)),
            Some(Token::DateTime(t)) => Ok(Value::String(t)),
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("null") => Ok(Value::Null),
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("true") => Ok(Value::Bool(true)),
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("false") => Ok(Value::Bool(false)),
            other => Err(format!("expected a literal, found {other:?}")),
        }
    }
    fn or(&mut self) -> Result<Cond, String> {
        let mut v = vec![self.and()?];
        while self.eat_kw("OR") {
            v.push(self.and()?);
        }
        Ok(if v.len() == 1 {
            v.pop().unwrap()
        } else {
            Cond::Or(v)
        })
    }
    fn and(&mut self) -> Result<Cond, String> {
        let mut v = vec![self.unary()?];
        while self.eat_kw("AND") {
            v.push(self.unary()?);
        }
        Ok(if v.len() == 1 {
            v.pop().unwrap()
        } else {
            Cond::And(v)
        })
    }
    fn unary(&mut self) -> Result<Cond, String> {
        if self.eat_kw("NOT") {
            return Ok(Cond::Not(Box::new(self.unary()?)));
        }
        if self.eat_punct("(") {
            let c = self.or()?;
            if !self.eat_punct(")") {
                return Err("expected )".into());
            }
            return Ok(c);
        }
        let field = self.word()?;
        if self.eat_kw("LIKE") {
            let t = self.toks.get(self.pos).cloned();
            self.pos += 1;
            return match t {
                Some(Token::Pattern(p)) => Ok(Cond::Like(field, p)),
                _ => Err("LIKE needs a string".into()),
            };
        }
        let negated = if self.peek_kw("NOT") {
            self.pos += 1;
            true
        } else {
            false
        };
        if self.eat_kw("IN") {
            if !self.eat_punct("(") {
                return Err("expected ( after IN".into());
            }
            let mut list = vec![self.literal()?];
            while self.eat_punct(",") {
                list.push(self.literal()?);
            }
            if !self.eat_punct(")") {
                return Err("expected ) after IN list".into());
            }
            let strings = list
                .iter()
                .filter_map(|l| l.as_str().map(str::to_lowercase))
                .collect();
            return Ok(Cond::In(field, list, negated, strings));
        }
        if negated {
            return Err("expected IN after NOT".into());
        }
        for op in ["=", "!=", "<=", ">=", "<", ">"] {
            if self.eat_punct(op) {
                return Ok(Cond::Cmp(field, op, self.literal()?));
            }
        }
        Err(format!("expected an operator after {field}"))
    }
}

pub(super) fn parse_query(soql: &str) -> Result<SoqlQuery, String> {
    let toks = Lexer::new(soql).tokens()?;
    let mut p = Parser { toks, pos: 0 };
    p.expect_kw("SELECT")?;
    let count = p.peek_kw("COUNT")
        && matches!(p.toks.get(p.pos + 1), Some(Token::Punct("(")))
        && matches!(p.toks.get(p.pos + 2), Some(Token::Punct(")")));
    let mut fields = Vec::new();
    if count {
        p.pos += 3;
    } else {
        fields.push(p.word()?);
        while p.eat_punct(",") {
            fields.push(p.word()?);
        }
    }
    p.expect_kw("FROM")?;
    let from = p.word()?;
    let filter = if p.eat_kw("WHERE") {
        Some(p.or()?)
    } else {
        None
    };
    let order = if p.eat_kw("ORDER") {
        p.expect_kw("BY")?;
        let f = p.word()?;
        let desc = p.eat_kw("DESC");
        if !desc {
            p.eat_kw("ASC");
        }
        Some((f, desc))
    } else {
        None
    };
    let limit = if p.eat_kw("LIMIT") {
        match p.literal()? {
            Value::Number(n) => Some(n.as_f64().unwrap_or(0.0) as usize),
            _ => return Err("LIMIT needs a number".into()),
        }
    } else {
        None
    };
    if p.pos != p.toks.len() {
        return Err(format!("unexpected token {:?}", p.toks[p.pos]));
    }
    Ok(SoqlQuery {
        count,
        fields,
        from,
        filter,
        order,
        limit,
    })
}

/// A SOQL datetime literal or a stored datetime (`…T…Z`, `…T….000+0000`) as an instant.
fn instant(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s)
        .or_else(|_| chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}
