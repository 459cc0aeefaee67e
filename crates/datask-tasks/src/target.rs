//! Reading a task's `target` with errors that name the field.

use datask_engine::Invalid;
use serde_json::{Map, Value};

pub fn only_fields(target: &Map<String, Value>, allowed: &[&str]) -> Result<(), Invalid> {
    for key in target.keys() {
        if !allowed.contains(&key.as_str()) {
            return Err(Invalid::new(
                key.clone(),
                format!("unknown field; expected one of {}", allowed.join(", ")),
            ));
        }
    }
    Ok(())
}

pub fn string<'a>(target: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, Invalid> {
    match target.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(Invalid::new(
            field,
            format!("must be a string, not {other}"),
        )),
    }
}

pub fn required_string<'a>(
    target: &'a Map<String, Value>,
    field: &str,
) -> Result<&'a str, Invalid> {
    string(target, field)?.ok_or_else(|| Invalid::new(field, "is required"))
}

pub fn boolean(target: &Map<String, Value>, field: &str) -> Result<bool, Invalid> {
    match target.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(Invalid::new(
            field,
            format!("must be true or false, not {other}"),
        )),
    }
}

pub fn index(
    target: &Map<String, Value>,
    field: &str,
) -> Result<&'static datask_core::index::IndexDef, Invalid> {
    let name = required_string(target, field)?;
    datask_core::index::by_name(name).ok_or_else(|| {
        Invalid::new(
            field,
            format!(
                "'{name}' is not one of {}",
                datask_core::index::names().join(", ")
            ),
        )
    })
}
