//! Validation helpers: a JSON object that remembers its path, refuses
//! unknown fields and words every error the same way.

use super::ConfigError;
use serde_json::{Map, Value};

pub(crate) fn err(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError { field: field.to_string(), message: message.into() }
}

/// A JSON object being validated: remembers its path and refuses fields
/// nobody asked for.
pub(crate) struct Fields<'a> {
    path: String,
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(path: &str, value: &'a Value, known: &[&str]) -> Result<Self, ConfigError> {
        let map = value.as_object().ok_or_else(|| err(path, format!("must be an object, got {}", kind(value))))?;
        if let Some(unknown) = map.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(err(&join(path, unknown), format!("unknown field; allowed fields here: {}", known.join(", "))));
        }
        Ok(Fields { path: path.to_string(), map })
    }

    pub(crate) fn path(&self, name: &str) -> String {
        join(&self.path, name)
    }

    pub(crate) fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    pub(crate) fn required(&self, name: &str) -> Result<&'a Value, ConfigError> {
        self.get(name).ok_or_else(|| err(&self.path(name), "is required"))
    }

    pub(crate) fn string(&self, name: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(err(&self.path(name), format!("must be a string, got {}", kind(other)))),
        }
    }

    pub(crate) fn required_string(&self, name: &str) -> Result<&'a str, ConfigError> {
        self.required(name)?;
        let s = self.string(name)?.unwrap_or_default();
        if s.is_empty() {
            return Err(err(&self.path(name), "must not be empty"));
        }
        Ok(s)
    }

    pub(crate) fn uint(&self, name: &str, default: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| err(&self.path(name), format!("must be an integer in {min}..={max}, got {v}"))),
        }
    }

    /// A number in `min..=max` (a JSON integer or fraction).
    pub(crate) fn fraction(&self, name: &str, default: f64, min: f64, max: f64) -> Result<f64, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| err(&self.path(name), format!("must be a number in {min}..={max}, got {v}"))),
        }
    }

    pub(crate) fn bool(&self, name: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(err(&self.path(name), format!("must be true or false, got {}", kind(other)))),
        }
    }
}

pub(crate) fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
