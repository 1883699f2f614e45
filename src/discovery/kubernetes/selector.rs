//! Kubernetes label selectors (`app=prometheus,tier in (a, b),!canary`): parsed once at
//! start-up, so that a typo is a clear error rather than an empty set, and matched against
//! each pod, so that only pods the selector names ever become candidates whatever the API
//! server returns.

use std::collections::BTreeMap;
use std::fmt;

/// A parsed selector: every requirement must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSelector {
    text: String,
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl LabelSelector {
    /// Parses the selector syntax of `kubectl -l`: `=`, `==`, `!=`, `in`, `notin`, `key`
    /// (exists) and `!key` (does not exist), joined by commas.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut scanner = Scanner { rest: text };
        let mut requirements = Vec::new();
        loop {
            requirements.push(scanner.requirement()?);
            scanner.spaces();
            if scanner.rest.is_empty() {
                break;
            }
            if !scanner.eat(",") {
                return Err(format!("expected ',' before '{}'", scanner.rest));
            }
        }
        Ok(LabelSelector { text: text.trim().to_string(), requirements })
    }

    /// Whether a set of labels satisfies every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

struct Scanner<'a> {
    rest: &'a str,
}

impl Scanner<'_> {
    fn spaces(&mut self) {
        self.rest = self.rest.trim_start();
    }

    fn eat(&mut self, token: &str) -> bool {
        self.spaces();
        match self.rest.strip_prefix(token) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    /// A word: a label key or value (letters, digits, `-`, `_`, `.`, `/`).
    fn word(&mut self) -> &str {
        self.spaces();
        let end =
            self.rest.find(|c: char| !(c.is_ascii_alphanumeric() || "-_./".contains(c))).unwrap_or(self.rest.len());
        let (word, rest) = self.rest.split_at(end);
        self.rest = rest;
        word
    }

    fn key(&mut self) -> Result<String, String> {
        let key = self.word().to_string();
        validate_key(&key)?;
        Ok(key)
    }

    fn value(&mut self) -> Result<String, String> {
        let value = self.word().to_string();
        validate_value(&value)?;
        Ok(value)
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        if self.eat("!") {
            if self.rest.trim_start().starts_with('=') {
                return Err("expected a label key after '!'".into());
            }
            return Ok(Requirement::DoesNotExist(self.key()?));
        }
        let key = self.key()?;
        if self.eat("==") || self.eat("=") {
            return Ok(Requirement::Equals(key, self.value()?));
        }
        if self.eat("!=") {
            return Ok(Requirement::NotEquals(key, self.value()?));
        }
        let save = self.rest;
        match self.word() {
            "in" => Ok(Requirement::In(key, self.set()?)),
            "notin" => Ok(Requirement::NotIn(key, self.set()?)),
            "" => {
                self.rest = save;
                Ok(Requirement::Exists(key))
            }
            other => Err(format!("expected an operator after '{key}', found '{other}'")),
        }
    }

    fn set(&mut self) -> Result<Vec<String>, String> {
        if !self.eat("(") {
            return Err("expected '(' after in/notin".into());
        }
        let mut values = vec![self.value()?];
        while self.eat(",") {
            values.push(self.value()?);
        }
        if !self.eat(")") {
            return Err("expected ')' to close the set".into());
        }
        Ok(values)
    }
}

fn validate_name(part: &str, what: &str) -> Result<(), String> {
    let ok_chars = part.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    let ok_ends =
        part.starts_with(|c: char| c.is_ascii_alphanumeric()) && part.ends_with(|c: char| c.is_ascii_alphanumeric());
    if part.len() > 63 || !ok_chars || !ok_ends {
        return Err(format!("'{part}' is not a valid label {what}"));
    }
    Ok(())
}

fn validate_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("expected a label key".into());
    }
    match key.split_once('/') {
        Some((prefix, name)) => {
            let prefix_ok = !prefix.is_empty()
                && prefix.len() <= 253
                && prefix.split('.').all(|p| {
                    !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                });
            if !prefix_ok {
                return Err(format!("'{prefix}' is not a valid label key prefix"));
            }
            validate_name(name, "key")
        }
        None => validate_name(key, "key"),
    }
}

fn validate_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    validate_name(value, "value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn every_operator_matches_as_kubernetes_does() {
        let pod = labels(&[("app", "prometheus"), ("tier", "monitoring"), ("app.kubernetes.io/part-of", "ha")]);
        for (selector, expected) in [
            ("app=prometheus", true),
            ("app==prometheus", true),
            ("app!=prometheus", false),
            ("app!=grafana", true),
            ("tier in (monitoring, ops)", true),
            ("tier notin (monitoring)", false),
            ("missing notin (x)", true),
            ("missing in (x)", false),
            ("app.kubernetes.io/part-of", true),
            ("!canary", true),
            ("!app", false),
            ("app=prometheus, tier in (monitoring),!canary", true),
            ("app=prometheus,canary", false),
        ] {
            assert_eq!(LabelSelector::parse(selector).unwrap().matches(&pod), expected, "{selector}");
        }
    }

    #[test]
    fn malformed_selectors_are_errors() {
        for bad in ["", "app=", "=x", "app in x", "app in (a", "app ~ x", "app=a b", "-bad=x", "app=prometheus,", "!=x"]
        {
            let result = LabelSelector::parse(bad);
            if bad == "app=" {
                assert!(result.is_ok(), "an empty value is allowed");
                continue;
            }
            assert!(result.is_err(), "{bad:?} parsed");
        }
    }
}
