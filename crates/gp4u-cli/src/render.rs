//! How the customer commands print: tables for people, the API's JSON for scripts (`--json`:
//! nothing else on standard output).

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table};
use serde::Serialize;

/// Prints `value` as one line of JSON.
pub fn json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// A table with these headers and rows, fitted to the terminal.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(headers.iter().copied());
    for row in rows {
        table.add_row(row);
    }
    table.to_string()
}

/// Key/value lines, aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(key, _)| key.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(key, value)| format!("{key:>width$}  {value}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// An optional value, or `-`.
pub fn or_dash(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".to_string(), |value| value.to_string())
}

/// Currency units to the cent.
pub fn money(amount: f64) -> String {
    format!("{amount:.2}")
}

/// A JSON number rounded to `decimals`, other values as [`value`] shows them.
pub fn number(value: &serde_json::Value, decimals: usize) -> String {
    match value.as_f64() {
        Some(number) => format!("{number:.decimals$}"),
        None => self::value(value),
    }
}

/// A wire enum as its JSON name (`top_up`, `COMPLETE`).
pub fn label(value: &impl serde::Serialize) -> String {
    self::value(&serde_json::to_value(value).unwrap_or_default())
}

/// A JSON number or string as text, `-` for null.
pub fn value(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_and_fields_read_well() {
        let text = table(
            &["id", "status"],
            vec![vec!["job_a".into(), "RUNNING".into()]],
        );
        assert!(text.contains("job_a") && text.contains("status"), "{text}");
        assert_eq!(
            fields(&[("id", "job_a".into()), ("status", "OK".into())]),
            "    id  job_a\nstatus  OK"
        );
        assert_eq!(or_dash(None::<i32>), "-");
        assert_eq!(money(12.4), "12.40");
        assert_eq!(value(&serde_json::json!(null)), "-");
        assert_eq!(number(&serde_json::json!(84.652_145), 0), "85");
        assert_eq!(number(&serde_json::json!("x"), 1), "x");
    }
}
