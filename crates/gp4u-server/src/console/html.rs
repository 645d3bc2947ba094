//! HTML by hand: every string that reaches a page goes through [`escape`] (text and attribute
//! values alike), and the layout, tables and charts are built here, so that no page template
//! can forget it.

use serde_json::Value;

/// `text` safe in HTML text and in double- or single-quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

/// JSON for a `<script type="application/json">` block: `<`, `>` and `&` as `\u` escapes, so
/// that no value can close the block (`</script>`) or open a comment.
pub fn json_for_script(value: &Value) -> String {
    serde_json::to_string(value)
        .unwrap_or_else(|_| "null".into())
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// Who is signed in, for the header.
pub struct Nav<'a> {
    pub user_id: &'a str,
    pub user_name: &'a str,
    pub role: &'a str,
    pub clearance: u8,
    pub csrf: &'a str,
}

/// A whole page: the header with its navigation (when signed in), then `main`.
pub fn page(title: &str, nav: Option<&Nav<'_>>, main: &str) -> String {
    let header = match nav {
        Some(nav) => {
            let mut links = String::from("<li><a href=\"/\">Jobs</a></li>");
            if nav.clearance >= crate::auth::CLEARANCE_PROVIDER {
                links.push_str("<li><a href=\"/console/provider\">Provider</a></li>");
            }
            if nav.clearance >= crate::auth::CLEARANCE_ADMIN {
                links.push_str("<li><a href=\"/console/admin\">Admin</a></li>");
            }
            format!(
                "<header><p class=\"brand\">GP4U console</p>\
                 <nav aria-label=\"Console\"><ul>{links}</ul></nav>\
                 <p class=\"who\">Signed in as <strong>{name}</strong> ({id}, {role})</p>\
                 <form method=\"post\" action=\"/console/sign-out\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <button type=\"submit\">Sign out</button></form></header>",
                name = escape(nav.user_name),
                id = escape(nav.user_id),
                role = escape(nav.role),
                csrf = escape(nav.csrf),
            )
        }
        None => "<header><p class=\"brand\">GP4U console</p></header>".into(),
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · GP4U</title>\
         <link rel=\"stylesheet\" href=\"/console/assets/console.css\">\
         <script src=\"/console/assets/console.js\" defer></script></head>\
         <body>{header}<main id=\"main\">{main}</main></body></html>\n",
        title = escape(title),
    )
}

/// A JSON value for people: scalars as text, objects as a definition list, arrays of objects
/// as a table (one column per key, in first-seen order), other arrays as a list.
pub fn json_block(value: &Value) -> String {
    match value {
        Value::Null => "<span class=\"muted\">none</span>".into(),
        Value::Bool(flag) => if *flag { "yes" } else { "no" }.into(),
        Value::Number(number) => escape(&number.to_string()),
        Value::String(text) => short_text(text),
        Value::Object(fields) => {
            let mut out = String::from("<dl>");
            for (key, field) in fields {
                out.push_str(&format!(
                    "<dt>{}</dt><dd>{}</dd>",
                    escape(key),
                    json_block(field)
                ));
            }
            out.push_str("</dl>");
            out
        }
        Value::Array(items) if items.is_empty() => "<span class=\"muted\">none</span>".into(),
        Value::Array(items) if items.iter().all(Value::is_object) => json_table(items, None),
        Value::Array(items) => {
            let mut out = String::from("<ul>");
            for item in items {
                out.push_str(&format!("<li>{}</li>", json_block(item)));
            }
            out.push_str("</ul>");
            out
        }
    }
}

/// Characters of a string value shown in full; longer ones (proof bytes, signatures) are cut.
const SHOWN_CHARS: usize = 400;

fn short_text(text: &str) -> String {
    let length = text.chars().count();
    if length <= SHOWN_CHARS {
        return escape(text);
    }
    let head: String = text.chars().take(64).collect();
    format!(
        "<span class=\"wrap\" title=\"{length} characters\">{}… ({length} characters)</span>",
        escape(&head)
    )
}

/// A table of JSON objects: one column per key, in first-seen order, with a caption.
pub fn json_table(rows: &[Value], caption: Option<&str>) -> String {
    let mut columns: Vec<&str> = Vec::new();
    for row in rows {
        if let Value::Object(fields) = row {
            for key in fields.keys() {
                if !columns.contains(&key.as_str()) {
                    columns.push(key);
                }
            }
        }
    }
    let mut out = String::from("<div class=\"scroll\"><table>");
    if let Some(caption) = caption {
        out.push_str(&format!("<caption>{}</caption>", escape(caption)));
    }
    out.push_str("<thead><tr>");
    for column in &columns {
        out.push_str(&format!("<th scope=\"col\">{}</th>", escape(column)));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for column in &columns {
            out.push_str(&format!("<td>{}</td>", json_block(&row[*column])));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
    out
}

/// One live chart's series: where its values come from in a sample, and its scale.
pub struct Series {
    /// The sample field (`gpu_utilization_pct`, …); also the chart's element id suffix.
    pub field: &'static str,
    pub title: &'static str,
    pub unit: &'static str,
    /// The y axis runs from 0 to the larger of this and the largest value shown.
    pub floor_max: f64,
    pub color: &'static str,
}

/// The charts of the job page, in order.
pub const SERIES: [Series; 4] = [
    Series {
        field: "gpu_utilization_pct",
        title: "GPU utilization",
        unit: "%",
        floor_max: 100.0,
        color: "#1f6fb4",
    },
    Series {
        field: "vram_used_gb",
        title: "VRAM used",
        unit: "GB",
        floor_max: 1.0,
        color: "#7a3db8",
    },
    Series {
        field: "power_draw_watts",
        title: "Power",
        unit: "W",
        floor_max: 50.0,
        color: "#c62828",
    },
    Series {
        field: "temperature_c",
        title: "Temperature",
        unit: "°C",
        floor_max: 100.0,
        color: "#2e7d32",
    },
];

/// Points a chart shows at most (the newest); `console.js` keeps the same number.
pub const CHART_POINTS: usize = 300;
pub const CHART_WIDTH: f64 = 480.0;
pub const CHART_HEIGHT: f64 = 160.0;

/// The polyline points of `values` (oldest first) across a chart of [`CHART_WIDTH`] ×
/// [`CHART_HEIGHT`], x by position (the values span the width), y from 0 to `max`.
/// `console.js` computes the same.
pub fn polyline_points(values: &[f64], max: f64) -> String {
    #[allow(clippy::cast_precision_loss)] // at most CHART_POINTS
    let steps = values.len().saturating_sub(1).max(1) as f64;
    let mut out = Vec::with_capacity(values.len());
    for (index, value) in values.iter().enumerate() {
        #[allow(clippy::cast_precision_loss)] // at most CHART_POINTS
        let x = index as f64 / steps * CHART_WIDTH;
        let y = CHART_HEIGHT - (value / max).clamp(0.0, 1.0) * CHART_HEIGHT;
        out.push(format!("{x:.1},{y:.1}"));
    }
    out.join(" ")
}

/// A chart with its current value: server-rendered from `values` (oldest first), updated by
/// `console.js` from the live stream.
pub fn chart(series: &Series, values: &[f64]) -> String {
    let max = values.iter().copied().fold(series.floor_max, f64::max);
    let current = values
        .last()
        .map_or_else(|| "no data yet".to_string(), |value| format!("{value:.1}"));
    format!(
        "<figure class=\"chart\"><figcaption id=\"cap-{field}\">{title} ({unit}): \
         <output id=\"now-{field}\" aria-live=\"polite\">{current}</output> \
         <span class=\"muted\">(scale 0–<span id=\"max-{field}\">{max:.0}</span>)</span></figcaption>\
         <svg id=\"chart-{field}\" class=\"live-chart\" data-field=\"{field}\" data-floor-max=\"{floor}\" \
         data-points=\"{count}\" data-values=\"{values}\" role=\"img\" aria-labelledby=\"cap-{field}\" \
         viewBox=\"0 0 {CHART_WIDTH} {CHART_HEIGHT}\" preserveAspectRatio=\"none\">\
         <rect class=\"plot\" width=\"{CHART_WIDTH}\" height=\"{CHART_HEIGHT}\"/>\
         <polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{points}\"/></svg></figure>",
        field = series.field,
        title = escape(series.title),
        unit = escape(series.unit),
        floor = series.floor_max,
        count = values.len(),
        color = series.color,
        points = polyline_points(values, max),
        values = values
            .iter()
            .map(|value| format!("{value}"))
            .collect::<Vec<_>>()
            .join(" "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_text_and_attributes() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
    }

    #[test]
    fn json_for_script_cannot_close_the_block() {
        let value = serde_json::json!({"body": "</script><script>alert(1)</script>&"});
        let text = json_for_script(&value);
        assert!(!text.contains('<') && !text.contains('>') && !text.contains('&'));
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn polyline_scales_and_clamps() {
        assert_eq!(
            polyline_points(&[0.0, 50.0, 200.0], 100.0),
            "0.0,160.0 240.0,80.0 480.0,0.0"
        );
        assert_eq!(polyline_points(&[-5.0], 100.0), "0.0,160.0");
    }
}
