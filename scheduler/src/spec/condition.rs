//! `when:` conditions: run a step only if an upstream output or a parameter has a given value.
//!
//! The grammar is one comparison, on purpose: `steps.monitor.outputs.drift == "true"` or
//! `params.mode != dry-run`. Values compare as numbers when both sides parse as numbers, otherwise
//! as text. Anything richer belongs in a step script, where it can be tested.

use std::cmp::Ordering;
use std::fmt;

/// A parsed `when:` expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// The value compared.
    pub left: Operand,
    /// The comparison.
    pub op: Comparison,
    /// The literal it is compared with.
    pub right: String,
}

/// What a condition reads.
#[derive(Debug, Clone, PartialEq, Eq)]
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

const OPERATORS: [(&str, Comparison); 6] = [
    ("==", Comparison::Eq),
    ("!=", Comparison::Ne),
    ("<=", Comparison::Le),
    (">=", Comparison::Ge),
    ("<", Comparison::Lt),
    (">", Comparison::Gt),
];

impl Condition {
    /// Parses `left op right`; the error says what part is wrong.
    pub fn parse(text: &str) -> Result<Condition, String> {
        let (at, symbol, op) = OPERATORS
            .iter()
            .filter_map(|(symbol, op)| text.find(symbol).map(|at| (at, *symbol, *op)))
            .min_by_key(|(at, symbol, _)| (*at, usize::MAX - symbol.len()))
            .ok_or_else(|| {
                "expected a comparison such as `steps.monitor.outputs.drift == true`".to_string()
            })?;
        let left = parse_operand(text[..at].trim())?;
        let right = unquote(text[at + symbol.len()..].trim())?;
        Ok(Condition { left, op, right })
    }

    /// Evaluates the condition with `value` as the left side; `None` (never set) is false.
    pub fn holds(&self, value: Option<&str>) -> bool {
        let Some(value) = value else {
            return false;
        };
        let ordering = match (value.parse::<f64>(), self.right.parse::<f64>()) {
            (Ok(a), Ok(b)) => a.partial_cmp(&b),
            _ => Some(value.cmp(self.right.as_str())),
        };
        let Some(ordering) = ordering else {
            return self.op == Comparison::Ne;
        };
        match self.op {
            Comparison::Eq => ordering == Ordering::Equal,
            Comparison::Ne => ordering != Ordering::Equal,
            Comparison::Lt => ordering == Ordering::Less,
            Comparison::Le => ordering != Ordering::Greater,
            Comparison::Gt => ordering == Ordering::Greater,
            Comparison::Ge => ordering != Ordering::Less,
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

fn unquote(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("the comparison has nothing on its right-hand side".into());
    }
    for quote in ['"', '\''] {
        if let Some(rest) = text.strip_prefix(quote) {
            return rest
                .strip_suffix(quote)
                .map(str::to_string)
                .ok_or_else(|| format!("unterminated quote in `{text}`"));
        }
    }
    if text.contains(char::is_whitespace) {
        return Err(format!("quote the value `{text}` on the right-hand side"));
    }
    Ok(text.to_string())
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operand::StepOutput { step, key } => write!(f, "steps.{step}.outputs.{key}"),
            Operand::Param(name) => write!(f, "params.{name}"),
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let symbol = OPERATORS
            .iter()
            .find(|(_, op)| *op == self.op)
            .map_or("==", |(s, _)| *s);
        write!(f, "{} {symbol} {:?}", self.left, self.right)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_step_outputs_and_params() {
        let c = Condition::parse("steps.monitor.outputs.drift == \"true\"").unwrap();
        assert_eq!(
            c.left,
            Operand::StepOutput {
                step: "monitor".into(),
                key: "drift".into()
            }
        );
        assert_eq!(c.op, Comparison::Eq);
        assert_eq!(c.right, "true");
        let c = Condition::parse("params.min >= 0.5").unwrap();
        assert_eq!(c.left, Operand::Param("min".into()));
        assert_eq!(c.op, Comparison::Ge);
    }

    #[test]
    fn compares_numbers_as_numbers_and_text_as_text() {
        let c = Condition::parse("params.x > 9").unwrap();
        assert!(c.holds(Some("10")), "10 > 9 numerically");
        let c = Condition::parse("params.x == yes").unwrap();
        assert!(c.holds(Some("yes")));
        assert!(!c.holds(Some("no")));
        assert!(!c.holds(None), "an unset value never satisfies a condition");
        let c = Condition::parse("params.x != 1.0").unwrap();
        assert!(!c.holds(Some("1")));
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        assert!(Condition::parse("drift")
            .unwrap_err()
            .contains("comparison"));
        assert!(Condition::parse("monitor.drift == 1")
            .unwrap_err()
            .contains("steps.<step>.outputs.<key>"));
        assert!(Condition::parse("params.x ==")
            .unwrap_err()
            .contains("right-hand"));
        assert!(Condition::parse("params.x == 'a")
            .unwrap_err()
            .contains("quote"));
    }
}
