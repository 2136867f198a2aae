//! `when:` conditions: run a step only if upstream outputs and parameters have given values.
//!
//! ```text
//! condition  = or
//! or         = and { ("or" | "||") and }
//! and        = unary { ("and" | "&&") unary }
//! unary      = ("not" | "!") unary | "(" condition ")" | comparison
//! comparison = term ("==" | "!=" | "<" | "<=" | ">" | ">=") term
//! term       = reference | quoted text | bare text
//! reference  = "steps." STEP ".outputs." KEY | "params." NAME
//! ```
//!
//! So `not` binds tighter than `and`, and `and` tighter than `or`. A bare word that starts with
//! `steps.` or `params.` reads that value; any other bare word, or text in quotes, is itself.
//! Each comparison reads at least one value. Values compare as numbers when both sides parse as
//! numbers, otherwise as text.
//!
//! A comparison that reads a value never set is neither true nor false but *undecided*, and
//! `not` leaves it undecided (so `not steps.check.outputs.failed == "true"` does not run a step
//! because `check` forgot to write `failed`). `and` and `or` decide without it only when their
//! other side settles the answer (`false and ?` is false, `true or ?` is true). A condition that
//! ends undecided does not hold: a step runs only when its condition would hold whatever the
//! unset values were.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::fmt;

/// A parsed `when:` expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// One comparison.
    Compare(Compare),
    /// `not c`.
    Not(Box<Condition>),
    /// `a and b ...`: two or more conditions, all of which must hold.
    And(Vec<Condition>),
    /// `a or b ...`: two or more conditions, one of which must hold.
    Or(Vec<Condition>),
}

/// One comparison: `left op right`, at least one side a value read from the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Compare {
    /// The left-hand side.
    pub left: Term,
    /// The comparison.
    pub op: Comparison,
    /// The right-hand side.
    pub right: Term,
}

/// One side of a comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Term {
    /// A value read from the run.
    Read(Operand),
    /// Text written in the condition (quoted or bare).
    Text(String),
}

/// What a condition reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Operand {
    /// `steps.<step>.outputs.<key>`: a value an upstream step wrote to `$SLUICE_OUTPUTS`.
    StepOutput {
        /// The upstream step.
        step: String,
        /// The output's key.
        key: String,
    },
    /// `params.<name>`: the run's parameter.
    Param(String),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// What a condition comes to on the values of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truth {
    /// It holds.
    True,
    /// It does not hold.
    False,
    /// It depends on a value that was never set, so it does not hold.
    Undecided,
}

/// A condition's answer with the values it read, to tell users why a step did not run.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The answer.
    pub truth: Truth,
    /// Every value the condition reads, in the order first written; `None` when never set.
    pub values: Vec<(Operand, Option<String>)>,
}

/// Parenthesised conditions nest at most this deep, so a hostile file cannot exhaust the stack
/// of the parser (or of the recursive evaluation and printing that follow it).
pub const MAX_NESTING: usize = 32;

const EXPECTED_COMPARISON: &str =
    "expected a comparison such as `steps.monitor.outputs.drift == true`";

const OPERATORS: [(&str, Comparison); 6] = [
    ("==", Comparison::Eq),
    ("!=", Comparison::Ne),
    ("<=", Comparison::Le),
    (">=", Comparison::Ge),
    ("<", Comparison::Lt),
    (">", Comparison::Gt),
];

impl Condition {
    /// Parses a `when:` expression; the error says what part is wrong.
    pub fn parse(text: &str) -> Result<Condition, String> {
        let tokens = tokens(text)?;
        let mut parser = Parser {
            tokens: &tokens,
            at: 0,
            depth: 0,
        };
        let condition = parser.or()?;
        match parser.peek() {
            None => Ok(condition),
            Some(Token::Close) => Err("`)` without a matching `(`".into()),
            Some(other) => Err(format!(
                "unexpected `{other}` after a comparison: join comparisons with `and` or `or`, and quote text that has spaces"
            )),
        }
    }

    /// Every value the condition reads, each once, in the order first written.
    pub fn operands(&self) -> Vec<&Operand> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        self.visit(&mut |c| {
            for term in [&c.left, &c.right] {
                if let Term::Read(operand) = term {
                    if seen.insert(operand) {
                        out.push(operand);
                    }
                }
            }
        });
        out
    }

    /// Text on either side of a comparison that reads like a reference (`"params.x"`): it was
    /// quoted, so it compares with those very characters, which is rarely what was meant.
    pub fn quoted_references(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.visit(&mut |c| {
            for term in [&c.left, &c.right] {
                if let Term::Text(text) = term {
                    if parse_operand(text.trim()).is_ok() {
                        out.push(text.as_str());
                    }
                }
            }
        });
        out
    }

    /// Whether the condition holds, with `lookup` giving each value read (`None`: never set).
    pub fn eval(&self, lookup: impl Fn(&Operand) -> Option<String>) -> bool {
        self.verdict(lookup).truth == Truth::True
    }

    /// The condition's answer and the values it read; `lookup` is asked once per value.
    pub fn verdict(&self, lookup: impl Fn(&Operand) -> Option<String>) -> Verdict {
        let values: Vec<(Operand, Option<String>)> = self
            .operands()
            .into_iter()
            .map(|operand| (operand.clone(), lookup(operand)))
            .collect();
        let by_operand: HashMap<&Operand, Option<&str>> = values
            .iter()
            .map(|(operand, value)| (operand, value.as_deref()))
            .collect();
        Verdict {
            truth: self.truth(&by_operand),
            values,
        }
    }

    fn truth(&self, values: &HashMap<&Operand, Option<&str>>) -> Truth {
        match self {
            Condition::Compare(compare) => compare.truth(values),
            Condition::Not(inner) => match inner.truth(values) {
                Truth::True => Truth::False,
                Truth::False => Truth::True,
                Truth::Undecided => Truth::Undecided,
            },
            Condition::And(items) => combine(items, values, Truth::False),
            Condition::Or(items) => combine(items, values, Truth::True),
        }
    }

    fn visit<'a>(&'a self, each: &mut impl FnMut(&'a Compare)) {
        match self {
            Condition::Compare(compare) => each(compare),
            Condition::Not(inner) => inner.visit(each),
            Condition::And(items) | Condition::Or(items) => {
                for item in items {
                    item.visit(each);
                }
            }
        }
    }
}

/// `and` (settled by the first false) or `or` (settled by the first true), in Kleene's logic:
/// an undecided item leaves the answer undecided unless another item settles it.
fn combine(items: &[Condition], values: &HashMap<&Operand, Option<&str>>, settles: Truth) -> Truth {
    let mut open = false;
    for item in items {
        match item.truth(values) {
            t if t == settles => return settles,
            Truth::Undecided => open = true,
            _ => {}
        }
    }
    match (open, settles) {
        (true, _) => Truth::Undecided,
        (false, Truth::False) => Truth::True,
        (false, _) => Truth::False,
    }
}

impl Compare {
    fn truth(&self, values: &HashMap<&Operand, Option<&str>>) -> Truth {
        match (side(&self.left, values), side(&self.right, values)) {
            (Some(left), Some(right)) if compares(left, self.op, right) => Truth::True,
            (Some(_), Some(_)) => Truth::False,
            _ => Truth::Undecided,
        }
    }
}

/// The value of one side; `None` for a value never set.
fn side<'a>(term: &'a Term, values: &HashMap<&Operand, Option<&'a str>>) -> Option<&'a str> {
    match term {
        Term::Read(operand) => values.get(operand).copied().flatten(),
        Term::Text(text) => Some(text),
    }
}

/// `left op right`: as numbers when both parse as numbers, otherwise as text.
fn compares(left: &str, op: Comparison, right: &str) -> bool {
    let ordering = match (left.parse::<f64>(), right.parse::<f64>()) {
        (Ok(a), Ok(b)) => a.partial_cmp(&b),
        _ => Some(left.cmp(right)),
    };
    let Some(ordering) = ordering else {
        // NaN: unequal to everything, ordered with nothing.
        return op == Comparison::Ne;
    };
    match op {
        Comparison::Eq => ordering == Ordering::Equal,
        Comparison::Ne => ordering != Ordering::Equal,
        Comparison::Lt => ordering == Ordering::Less,
        Comparison::Le => ordering != Ordering::Greater,
        Comparison::Gt => ordering == Ordering::Greater,
        Comparison::Ge => ordering != Ordering::Less,
    }
}

impl Verdict {
    /// Whether the condition holds.
    pub fn holds(&self) -> bool {
        self.truth == Truth::True
    }

    /// Why the condition does not hold, for people: the values never set when one left it
    /// undecided (`steps.check.outputs.ok was never set`), else the values it read
    /// (`value: "no"`); `None` when it holds.
    pub fn why_not(&self) -> Option<String> {
        match self.truth {
            Truth::True => None,
            Truth::Undecided => {
                let unset: Vec<String> = self
                    .values
                    .iter()
                    .filter(|(_, value)| value.is_none())
                    .map(|(operand, _)| operand.to_string())
                    .collect();
                let verb = if unset.len() == 1 { "was" } else { "were" };
                Some(format!("{} {verb} never set", unset.join(" and ")))
            }
            Truth::False => Some(match self.values.as_slice() {
                [(_, Some(value))] => format!("value: {value:?}"),
                values => values
                    .iter()
                    .map(|(operand, value)| match value {
                        Some(value) => format!("{operand} = {value:?}"),
                        None => format!("{operand} never set"),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }
}

/// Reads `steps.<step>.outputs.<key>` or `params.<name>`.
pub fn parse_operand(text: &str) -> Result<Operand, String> {
    let parts: Vec<&str> = text.split('.').collect();
    match parts.as_slice() {
        ["steps", step, "outputs", key] if !step.is_empty() && !key.is_empty() => {
            Ok(Operand::StepOutput {
                step: step.to_string(),
                key: key.to_string(),
            })
        }
        ["params", name] if !name.is_empty() => Ok(Operand::Param(name.to_string())),
        _ => Err(format!(
            "`{text}` is not something a condition can read: use `steps.<step>.outputs.<key>` or `params.<name>`"
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens and the parser
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open,
    Close,
    And,
    Or,
    Not,
    Op(Comparison),
    /// A word without quotes: a reference, a keyword's text or literal text.
    Bare(String),
    /// Text in single or double quotes, without them.
    Quoted(String),
}

/// Longest first, so `!=` is not read as `!` then `=`.
const SYMBOLS: [(&str, Token); 9] = [
    ("==", Token::Op(Comparison::Eq)),
    ("!=", Token::Op(Comparison::Ne)),
    ("<=", Token::Op(Comparison::Le)),
    (">=", Token::Op(Comparison::Ge)),
    ("&&", Token::And),
    ("||", Token::Or),
    ("<", Token::Op(Comparison::Lt)),
    (">", Token::Op(Comparison::Gt)),
    ("!", Token::Not),
];

/// Characters that end a bare word.
fn ends_word(c: char) -> bool {
    c.is_whitespace() || "()=!<>&|".contains(c)
}

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut rest = text.trim_start();
    while let Some(c) = rest.chars().next() {
        let (token, len) = if c == '(' {
            (Token::Open, 1)
        } else if c == ')' {
            (Token::Close, 1)
        } else if c == '"' || c == '\'' {
            let end = rest[1..]
                .find(c)
                .ok_or_else(|| format!("unterminated quote in `{rest}`"))?;
            (Token::Quoted(rest[1..1 + end].to_string()), end + 2)
        } else if let Some((symbol, token)) = SYMBOLS.iter().find(|(s, _)| rest.starts_with(s)) {
            (token.clone(), symbol.len())
        } else if ends_word(c) {
            let instead = match c {
                '=' => "`==`",
                '&' => "`and` (or `&&`)",
                _ => "`or` (or `||`)",
            };
            return Err(format!("`{c}` alone is not an operator: write {instead}"));
        } else {
            let end = rest.find(ends_word).unwrap_or(rest.len());
            let token = match &rest[..end] {
                "and" => Token::And,
                "or" => Token::Or,
                "not" => Token::Not,
                word => Token::Bare(word.to_string()),
            };
            (token, end)
        };
        out.push(token);
        rest = rest[len..].trim_start();
    }
    Ok(out)
}

struct Parser<'t> {
    tokens: &'t [Token],
    at: usize,
    /// Open parentheses and `not`s around the current position.
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<&Token> {
        let token = self.tokens.get(self.at);
        self.at += 1;
        token
    }

    fn eat(&mut self, token: &Token) -> bool {
        let found = self.peek() == Some(token);
        if found {
            self.at += 1;
        }
        found
    }

    fn or(&mut self) -> Result<Condition, String> {
        let mut items = vec![self.and()?];
        while self.eat(&Token::Or) {
            items.push(self.and()?);
        }
        Ok(one_or(items, Condition::Or))
    }

    fn and(&mut self) -> Result<Condition, String> {
        let mut items = vec![self.unary()?];
        while self.eat(&Token::And) {
            items.push(self.unary()?);
        }
        Ok(one_or(items, Condition::And))
    }

    fn unary(&mut self) -> Result<Condition, String> {
        match self.peek() {
            Some(Token::Not) => {
                self.at += 1;
                self.nested(|p| p.unary())
                    .map(|inner| Condition::Not(Box::new(inner)))
            }
            Some(Token::Open) => {
                self.at += 1;
                let inner = self.nested(|p| p.or())?;
                if !self.eat(&Token::Close) {
                    return Err("`(` without a matching `)`".into());
                }
                Ok(inner)
            }
            _ => self.comparison().map(Condition::Compare),
        }
    }

    fn nested(
        &mut self,
        inner: impl FnOnce(&mut Self) -> Result<Condition, String>,
    ) -> Result<Condition, String> {
        if self.depth >= MAX_NESTING {
            return Err(format!(
                "the condition nests more than {MAX_NESTING} levels of `not` and parentheses"
            ));
        }
        self.depth += 1;
        let result = inner(self);
        self.depth -= 1;
        result
    }

    fn comparison(&mut self) -> Result<Compare, String> {
        let left = match self.next().and_then(term) {
            Some(left) => left?,
            None => return Err(EXPECTED_COMPARISON.into()),
        };
        let op = match self.next() {
            Some(Token::Op(op)) => *op,
            _ => return Err(EXPECTED_COMPARISON.into()),
        };
        let right = match self.next() {
            None => return Err("the comparison has nothing on its right-hand side".into()),
            Some(token) => match term(token) {
                Some(right) => right?,
                None => {
                    return Err(format!(
                        "expected a value on the right-hand side of `{}`, found `{token}`",
                        symbol(op)
                    ))
                }
            },
        };
        let compare = Compare { left, op, right };
        if let (Term::Text(_), Term::Text(_)) = (&compare.left, &compare.right) {
            return Err(format!(
                "`{compare}` reads no value: one side must be `steps.<step>.outputs.<key>` or `params.<name>`"
            ));
        }
        Ok(compare)
    }
}

/// The one item itself, or `join` of two or more.
fn one_or(mut items: Vec<Condition>, join: fn(Vec<Condition>) -> Condition) -> Condition {
    if items.len() == 1 {
        items.remove(0)
    } else {
        join(items)
    }
}

/// The token as one side of a comparison; `None` for a token that cannot be one.
fn term(token: &Token) -> Option<Result<Term, String>> {
    match token {
        Token::Quoted(text) => Some(Ok(Term::Text(text.clone()))),
        Token::Bare(word) if word.starts_with("steps.") || word.starts_with("params.") => {
            Some(parse_operand(word).map(Term::Read))
        }
        Token::Bare(word) => Some(Ok(Term::Text(word.clone()))),
        _ => None,
    }
}

fn symbol(op: Comparison) -> &'static str {
    OPERATORS
        .iter()
        .find(|(_, o)| *o == op)
        .map_or("==", |(s, _)| *s)
}

// ---------------------------------------------------------------------------------------------
// Printing: what `parse` reads back as the same condition
// ---------------------------------------------------------------------------------------------

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Open => f.write_str("("),
            Token::Close => f.write_str(")"),
            Token::And => f.write_str("and"),
            Token::Or => f.write_str("or"),
            Token::Not => f.write_str("not"),
            Token::Op(op) => f.write_str(symbol(*op)),
            Token::Bare(word) => f.write_str(word),
            Token::Quoted(text) => write!(f, "{}", Term::Text(text.clone())),
        }
    }
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operand::StepOutput { step, key } => write!(f, "steps.{step}.outputs.{key}"),
            Operand::Param(name) => write!(f, "params.{name}"),
        }
    }
}

impl fmt::Display for Term {
    /// Text is always quoted (in `'` when it holds a `"`), so it never reads as a reference.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Term::Read(operand) => write!(f, "{operand}"),
            Term::Text(text) if text.contains('"') => write!(f, "'{text}'"),
            Term::Text(text) => write!(f, "\"{text}\""),
        }
    }
}

impl fmt::Display for Compare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.left, symbol(self.op), self.right)
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::Compare(compare) => write!(f, "{compare}"),
            Condition::Not(inner) => match **inner {
                Condition::Compare(_) | Condition::Not(_) => write!(f, "not {inner}"),
                _ => write!(f, "not ({inner})"),
            },
            // A nested `and` is in parentheses only because it was written so: printing it
            // without them would read back as one flat `and`.
            Condition::And(items) => join(f, items, "and", |c| {
                matches!(c, Condition::And(_) | Condition::Or(_))
            }),
            Condition::Or(items) => join(f, items, "or", |c| matches!(c, Condition::Or(_))),
        }
    }
}

fn join(
    f: &mut fmt::Formatter<'_>,
    items: &[Condition],
    word: &str,
    needs_parentheses: fn(&Condition) -> bool,
) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            write!(f, " {word} ")?;
        }
        if needs_parentheses(item) {
            write!(f, "({item})")?;
        } else {
            write!(f, "{item}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
