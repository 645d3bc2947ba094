//! Server-sent events (`text/event-stream`), as the logs and telemetry routes send them.

use serde_json::Value;

/// The `data:` payloads of one server-sent event, decoded when they are JSON strings.
pub(crate) fn sse_data(event: &str) -> Vec<String> {
    let data: Vec<&str> = event
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|data| data.strip_prefix(' ').unwrap_or(data))
        .collect();
    if data.is_empty() {
        return Vec::new();
    }
    let joined = data.join("\n");
    match serde_json::from_str::<Value>(&joined) {
        Ok(Value::String(text)) => vec![text],
        Ok(value) => value
            .get("text")
            .and_then(Value::as_str)
            .map(|text| vec![text.to_string()])
            .unwrap_or_default(),
        Err(_) => vec![format!("{joined}\n")],
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_sent_events_are_decoded() {
        assert_eq!(sse_data("data: \"hello\\n\"\n\n"), vec!["hello\n"]);
        assert_eq!(sse_data("event: end\n\n"), Vec::<String>::new());
        assert_eq!(sse_data("data: plain text\n\n"), vec!["plain text\n"]);
    }
}
